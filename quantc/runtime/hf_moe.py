"""transformers (>= 5) fused experts on quantc's grouped MoE kernels, and ``apply_hf``.

transformers 5 stores a MoE layer's experts as one module with 3-D parameters (``mlp.experts`` with
``gate_up_proj`` and ``down_proj``); the live-module inventory plans them as
``<experts>.gate_up_proj`` / ``<experts>.down_proj`` (kind ``moe_experts``, ``moe_block`` =
``<experts>``). Those names are parameters, not modules, so ``quantc.runtime.apply`` cannot swap them.
``apply_hf`` does: it replaces each experts module by a ``QuantExperts`` that keeps the model's own
router (transformers calls ``experts(hidden, top_k_index, top_k_weights)``) and runs both GEMMs
through ``QuantMoE.experts``; everything else goes through ``quantc.runtime.apply``.

Layouts: Qwen3-MoE, DeepSeek-V3 and Mixtral store gate_up as (E, 2I, H) with the gate rows first and
down as (E, H, I), which is quantc's layout. gpt-oss stores (E, H, 2I) with gate and up interleaved
along the last dimension (plus biases) and down as (E, I, H): transposed and de-interleaved here.

All-or-nothing like ``apply``: every experts module is prepared before ``apply`` runs on the rest, and
swapped only once ``apply`` succeeded.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from quantc.diagnostics import Diagnostic, QuantcError, Span

from . import apply as runtime_apply  # the package function (the module was renamed apply_plan)
from .kernels import moe_gemm as mg
from .kernels import wo_format as wf
from .moe import QuantMoE


class QuantExperts(nn.Module):
    """Drop-in for a transformers experts module: forward(hidden (T, H), top_k_index (T, k),
    top_k_weights (T, k)) -> (T, H) in hidden's dtype."""

    def __init__(self, name: str, moe: QuantMoE):
        super().__init__()
        self.name, self.moe = name, moe

    def forward(self, hidden_states, top_k_index, top_k_weights):
        x = hidden_states.reshape(-1, hidden_states.shape[-1]).to(torch.bfloat16).contiguous()
        if top_k_index.shape[-1] != self.moe.top_k:
            raise ValueError(f"{self.name}: the router picked {top_k_index.shape[-1]} experts per token, "
                             f"the experts were prepared for top_k={self.moe.top_k}")
        out = self.moe.experts(x, top_k_weights.reshape(x.shape[0], -1),
                               top_k_index.reshape(x.shape[0], -1).to(torch.int32))
        return out.to(hidden_states.dtype).reshape(hidden_states.shape)

    def extra_repr(self) -> str:
        return f"kernel={self.moe.kernel}, experts={self.moe.num_experts}, activation={self.moe.act_key}"


def is_gpt_oss(mod: nn.Module) -> bool:
    return hasattr(mod, "alpha") and hasattr(mod, "limit") and hasattr(mod, "gate_up_proj_bias")


def expert_weights(mod: nn.Module, gate_up, down) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                           torch.Tensor | None]:
    """(w13 (E, 2I, H), w2 (E, H, I), b13, b2) in quantc's layout from a transformers experts module;
    ``gate_up`` / ``down`` are the plan entries (their N, K are checked)."""
    # transformers' use_experts_implementation records the layout on the module; older classes
    # without the flags are gpt-oss (transposed, interleaved, biased) or the (E, out, in) default
    gpt = is_gpt_oss(mod)
    transposed = getattr(mod, "is_transposed", gpt)
    interleaved = not getattr(mod, "is_concatenated", not gpt)
    w13, w2 = mod.gate_up_proj.detach(), mod.down_proj.detach()
    b13 = getattr(mod, "gate_up_proj_bias", None) if getattr(mod, "has_bias", gpt) else None
    b2 = getattr(mod, "down_proj_bias", None) if b13 is not None else None
    if gpt and (mod.alpha, mod.limit) != (mg.GPT_OSS_ALPHA, mg.GPT_OSS_LIMIT):
        raise ValueError(f"gpt-oss SwiGLU alpha={mod.alpha}, limit={mod.limit}; the kernel has "
                         f"alpha={mg.GPT_OSS_ALPHA}, limit={mg.GPT_OSS_LIMIT}")
    if transposed:
        w13, w2 = w13.transpose(1, 2), w2.transpose(1, 2)
    if interleaved:  # rows gate0, up0, gate1, up1, ... -> all gates, then all ups
        w13 = torch.cat([w13[:, 0::2], w13[:, 1::2]], 1)
        b13 = None if b13 is None else torch.cat([b13[:, 0::2], b13[:, 1::2]], 1)
    b13 = None if b13 is None else b13.detach()
    b2 = None if b2 is None else b2.detach()
    for what, w, mp in (("gate_up_proj", w13, gate_up), ("down_proj", w2, down)):
        if tuple(w.shape[1:]) != (mp.n, mp.k):
            raise ValueError(f"{what} is (N, K) = {tuple(w.shape[1:])} per expert, the plan says ({mp.n}, {mp.k})")
    return w13.contiguous(), w2.contiguous(), b13, b2


def _activation(mod: nn.Module) -> str:
    if is_gpt_oss(mod):
        return "gpt_oss"
    act = getattr(mod, "act_fn", None)
    if act is None or "silu" not in type(act).__name__.lower():
        raise ValueError(f"expert activation {type(act).__name__} is not SiLU; the grouped kernels fuse "
                         "SiLU-and-mul or gpt-oss's SwiGLU only")
    return "silu"


def _top_k(mod: nn.Module) -> int:
    k = getattr(getattr(mod, "config", None), "num_experts_per_tok", None)
    if not k:
        raise ValueError("the experts module has no config.num_experts_per_tok (transformers >= 5 sets it)")
    return int(k)


def prepare_experts(name: str, mod: nn.Module, gate_up, down) -> QuantExperts:
    if gate_up.weight != down.weight or gate_up.activation != down.activation or gate_up.kernel != down.kernel:
        raise ValueError("the experts of one MoE layer share one scheme; the plan gives gate_up_proj "
                         f"{gate_up.weight}/{gate_up.activation} and down_proj {down.weight}/{down.activation}")
    w13, w2, b13, b2 = expert_weights(mod, gate_up, down)
    moe = QuantMoE(gate_up.kernel, wf.quantize(w13, gate_up.weight), wf.quantize(w2, down.weight),
                   # routing stays in the model's own router module; QuantMoE's router weight is unused
                   torch.zeros(w13.shape[0], 1, device=w13.device), top_k=_top_k(mod), activation=_activation(mod),
                   act_key=gate_up.activation, gate_up_bias=None if b13 is None else b13.to(torch.bfloat16),
                   down_bias=None if b2 is None else b2.to(torch.bfloat16))
    return QuantExperts(name, moe)


def _fused_experts(model: nn.Module, plan) -> dict[str, dict]:
    """experts module name -> {"gate_up_proj": entry, "down_proj": entry} for fused experts with a
    kernel (experts planned ``none`` keep transformers' own module, as unquantized linears do)."""
    mods = dict(model.named_modules())
    out: dict[str, dict] = {}
    for mp in plan.modules:
        if mp.kind != "moe_experts":
            continue
        parent, _, param = mp.name.rpartition(".")
        mod = mods.get(parent)
        if mod is not None and param in ("gate_up_proj", "down_proj") and getattr(mod, param, None) is not None \
                and getattr(mod, param).dim() == 3 and mp.kernel is not None:
            out.setdefault(parent, {})[param] = mp
    return out


def _sub_plan(plan, drop: set[str]):
    from quantc.plan import Plan

    return Plan(modules=tuple(m for m in plan.modules if m.name not in drop), kernels=plan.kernels,
                target=plan.target, model=plan.model, sources=plan.sources, summary=plan.summary,
                warnings=plan.warnings, tuned_on=plan.tuned_on)


def _nbytes(mod: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*mod.parameters(), *mod.buffers()])


def apply_hf(model: nn.Module, plan, weights=None, *, rank=None, world=None, progress: bool = False):
    """``quantc.runtime.apply`` for a transformers model, fused experts included; returns its
    ``ApplyReport`` with the experts modules counted in. Pre-quantized ``weights`` are used for the
    dense modules only; fused experts are quantized from the model's own weights."""
    fused = _fused_experts(model, plan)
    mods = dict(model.named_modules())
    diags: list[Diagnostic] = []
    prepared: dict[str, nn.Module] = {}
    for name, entries in fused.items():
        try:
            if set(entries) != {"gate_up_proj", "down_proj"}:
                raise ValueError(f"the plan has only {', '.join(entries)} of this experts module")
            prepared[name] = prepare_experts(name, mods[name], entries["gate_up_proj"], entries["down_proj"])
        except Exception as exc:
            diags.append(Diagnostic("QC705", "error", f"cannot prepare the experts {name!r}: {exc}", Span(name),
                                    hint="compile the plan against this model", path=name))
    if diags:
        raise QuantcError(diags)
    drop = {mp.name for entries in fused.values() for mp in entries.values()}
    report = runtime_apply(model, _sub_plan(plan, drop), weights, rank=rank, world=world, progress=progress)
    before = sum(_nbytes(mods[n]) for n in prepared)
    after = sum(_nbytes(m) for m in prepared.values())
    for name, new in prepared.items():
        parent, _, child = name.rpartition(".")
        setattr(mods[parent] if parent else model, child, new)
    return replace(report, swapped=report.swapped + tuple(prepared), bytes_before=report.bytes_before + before,
                   bytes_after=report.bytes_after + after)
