"""MoE experts in ``apply``: the plan's ``moe_experts`` entries grouped per ``moe_block``, each block
prepared as one grouped module (``QuantMoE`` on the grouped kernels) in apply's all-or-nothing phase.

Two layouts of a block ``<b>`` are supported:

- fused (transformers >= 5): ``<b>`` has 3-D ``gate_up_proj`` / ``down_proj`` parameters, planned as
  ``<b>.gate_up_proj`` / ``<b>.down_proj``; replaced by ``hf_moe.QuantExperts``, which keeps the
  model's router (``experts(hidden, top_k_index, top_k_weights)``);
- per expert (older transformers, custom models): ``<b>`` is a ``ModuleList`` of expert MLPs whose
  Linears are planned as ``<b>.{e}.gate_proj`` / ``up_proj`` / ``down_proj`` (Mixtral: ``w1`` / ``w3`` /
  ``w2``); replaced by ``QuantExpertList``: the E experts' weights stacked once, and ``experts[e](x)``
  runs expert e on the grouped kernel, so the block's own routing loop keeps working unchanged.

Anything else is a QC704 that names the block and these layouts. Each GEMM takes its KernelConfig
from the plan's table entry of its module (gate_up: ``gate_up_proj`` / ``gate_proj``; down:
``down_proj``) for the live token count, or ``tables.default_buckets`` where the plan has none.
"""

from __future__ import annotations

import torch
from torch import nn

from .hf_moe import _activation, prepare_experts
from .kernels import wo_format as wf
from .moe import MOE_KERNELS, QuantMoE

FUSED_PARAMS = ("gate_up_proj", "down_proj")
PER_EXPERT_LEAVES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))  # (gate, up, down)
SUPPORTED = ("fused experts (a module with 3-D gate_up_proj/down_proj parameters, transformers >= 5) or a "
             "ModuleList of expert MLPs with gate_proj/up_proj/down_proj (or w1/w3/w2) Linears and a SiLU act_fn")


class _ExpertView:
    """``experts[e]``: expert e alone, (.., H) -> (.., H), every token routed to it with weight 1."""

    def __init__(self, moe: QuantMoE, e: int):
        self.moe, self.e = moe, e

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        ids = torch.full((x2.shape[0], 1), self.e, dtype=torch.int32, device=x2.device)
        out = self.moe.experts(x2, torch.ones(x2.shape[0], 1, device=x2.device), ids)
        return out.to(x.dtype).reshape(x.shape)


class QuantExpertList(nn.Module):
    """Drop-in for a ``ModuleList`` of expert MLPs: indexing, ``len`` and iteration give per-expert
    callables on the grouped weights; ``forward(hidden, top_k_index, top_k_weights)`` runs all at once."""

    def __init__(self, name: str, moe: QuantMoE):
        super().__init__()
        self.name, self.moe = name, moe

    def __len__(self) -> int:
        return self.moe.num_experts

    def __getitem__(self, e) -> _ExpertView:
        e = int(e)
        if not -len(self) <= e < len(self):
            raise IndexError(f"{self.name}: expert {e} of {len(self)}")
        return _ExpertView(self.moe, e % len(self))

    def __iter__(self):
        return (self[e] for e in range(len(self)))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        x = hidden_states.reshape(-1, hidden_states.shape[-1]).to(torch.bfloat16).contiguous()
        out = self.moe.experts(x, top_k_weights.reshape(x.shape[0], -1), top_k_index.reshape(x.shape[0], -1).to(torch.int32))
        return out.to(hidden_states.dtype).reshape(hidden_states.shape)

    def extra_repr(self) -> str:
        return f"kernel={self.moe.kernel}, experts={self.moe.num_experts}, activation={self.moe.act_key}"


# ---------------------------------------------------------------------------- planning the blocks


def expert_blocks(plan) -> dict[str, list]:
    """moe_block -> its planned ``moe_experts`` entries that have a kernel (experts planned ``none``
    keep the model's own module, as unquantized linears do)."""
    out: dict[str, list] = {}
    for mp in plan.modules:
        if mp.kind == "moe_experts" and mp.kernel is not None:
            out.setdefault(mp.moe_block or mp.name.rpartition(".")[0], []).append(mp)
    return out


def _per_expert_leaves(mod: nn.Module) -> tuple[str, str, str] | None:
    if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
        return None
    for leaves in PER_EXPERT_LEAVES:
        if all(isinstance(getattr(e, leaf, None), nn.Linear) for e in mod for leaf in leaves):
            return leaves
    return None


def layout(block: str, mod: nn.Module | None, entries: list) -> str:
    """``fused`` or ``per_expert``; raises ValueError (the QC704 message) for anything else."""
    names = sorted(mp.name for mp in entries)
    if mod is not None and {n.rpartition(".")[0] for n in names} == {block} \
            and {n.rpartition(".")[2] for n in names} <= set(FUSED_PARAMS) \
            and all(getattr(getattr(mod, p, None), "dim", lambda: 0)() == 3 for p in FUSED_PARAMS):
        return "fused"
    leaves = _per_expert_leaves(mod) if mod is not None else None
    if leaves is not None:
        want = {f"{block}.{e}.{leaf}" for e in range(len(mod)) for leaf in leaves}
        if set(names) <= want:
            return "per_expert"
    what = "is not in the model" if mod is None else f"is a {type(mod).__name__}"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise ValueError(f"MoE block {block!r} {what}; its planned experts ({shown}) match no layout this runtime "
                     f"runs. Supported: {SUPPORTED}")


# ---------------------------------------------------------------------------- preparing a block


def _scheme(entries: list):
    first = entries[0]
    for mp in entries[1:]:
        if (mp.weight, mp.activation, mp.kernel) != (first.weight, first.activation, first.kernel):
            raise ValueError(f"the experts of one MoE layer share one scheme; the plan gives {first.name} "
                             f"{first.weight}/{first.activation} and {mp.name} {mp.weight}/{mp.activation}")
    if first.kernel not in MOE_KERNELS:
        raise ValueError(f"kernel {first.kernel!r} is not a grouped MoE kernel ({', '.join(sorted(MOE_KERNELS))})")
    return first


def _tables(plan, gate_up, down):
    return tuple(plan.kernels[mp.kernel_entry].buckets if mp.kernel_entry in plan.kernels else None
                 for mp in (gate_up, down))


def _state_tensors(state: dict | None, block: str, sources: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors of a block that replace the model's own: bf16/fp16/fp32 tensors named like the
    model's parameters (``sources``: full name -> live tensor). Pre-quantized expert tensors are refused
    (this runtime quantizes experts from high-precision weights)."""
    prefix = block + "."
    given = {n: state[n] for n in (state if state is not None else ()) if n.startswith(prefix)}
    out = {}
    for n, t in sorted(given.items()):
        live = sources.get(n)
        if live is None or not t.is_floating_point() or t.element_size() < 2:
            raise ValueError(f"the weights hold {n} ({str(t.dtype).removeprefix('torch.')}): pre-quantized expert "
                             "tensors are not loaded by this runtime, which quantizes experts from bf16; load the "
                             "bf16 checkpoint into the model and pass no expert tensors")
        if tuple(t.shape) != tuple(live.shape):
            raise ValueError(f"{n} in the weights has shape {tuple(t.shape)}, the model's is {tuple(live.shape)}")
        if live.is_meta:  # a meta-device model is filled where apply() puts it
            from .apply_plan import _META_TARGET

            out[n] = t.to(_META_TARGET["device"] or "cpu")
        else:
            out[n] = t.to(live.device)
    return out


def _prepare_fused(block: str, mod: nn.Module, entries: list, plan, state) -> nn.Module:
    by_param = {mp.name.rpartition(".")[2]: mp for mp in entries}
    if set(by_param) != set(FUSED_PARAMS):
        raise ValueError(f"the plan has only {', '.join(sorted(by_param))} of this experts module")
    _scheme(entries)
    params = ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias")
    sources = {f"{block}.{p}": getattr(mod, p) for p in params if isinstance(getattr(mod, p, None), torch.Tensor)}
    given = {n[len(block) + 1:]: t for n, t in _state_tensors(state, block, sources).items()}
    gu, dn = by_param["gate_up_proj"], by_param["down_proj"]
    return prepare_experts(block, mod, gu, dn, tables=_tables(plan, gu, dn), tensors=given)


def _prepare_per_expert(block: str, mod: nn.ModuleList, entries: list, plan, state) -> nn.Module:
    leaves = _per_expert_leaves(mod)
    by_name = {mp.name: mp for mp in entries}
    missing = [f"{block}.{e}.{leaf}" for e in range(len(mod)) for leaf in leaves if f"{block}.{e}.{leaf}" not in by_name]
    if missing:
        raise ValueError(f"the plan lacks {len(missing)} expert linear(s) of this block, e.g. {missing[0]}; "
                         "all experts of one MoE layer are quantized together")
    first = _scheme(entries)
    sources = {f"{block}.{e}.{leaf}.{p}": getattr(getattr(x, leaf), p) for e, x in enumerate(mod) for leaf in leaves
               for p in ("weight", "bias") if getattr(getattr(x, leaf), p, None) is not None}
    given = _state_tensors(state, block, sources)

    def stack(leaf: str, p: str = "weight") -> torch.Tensor | None:
        ts = [given.get(f"{block}.{e}.{leaf}.{p}", sources.get(f"{block}.{e}.{leaf}.{p}")) for e in range(len(mod))]
        present = [t for t in ts if t is not None]
        if not present:
            return None
        return torch.stack([t.detach() if t is not None else torch.zeros_like(present[0]) for t in ts]).to(torch.bfloat16)

    gate, up, down = leaves
    for e, x in enumerate(mod):
        for leaf in leaves:
            mp, w = by_name[f"{block}.{e}.{leaf}"], getattr(x, leaf).weight
            if tuple(w.shape) != (mp.n, mp.k):
                raise ValueError(f"{mp.name} has weight shape {tuple(w.shape)}, the plan says ({mp.n}, {mp.k})")
    w13 = torch.cat([stack(gate), stack(up)], 1).contiguous()
    w2 = stack(down).contiguous()
    b_g, b_u, b2 = stack(gate, "bias"), stack(up, "bias"), stack(down, "bias")
    b13 = None
    if b_g is not None or b_u is not None:
        b_g = b_g if b_g is not None else torch.zeros_like(b_u)
        b_u = b_u if b_u is not None else torch.zeros_like(b_g)
        b13 = torch.cat([b_g, b_u], 1)
    gu, dn = by_name[f"{block}.0.{gate}"], by_name[f"{block}.0.{down}"]
    with torch.no_grad():
        moe = QuantMoE(first.kernel, wf.quantize(w13, first.weight), wf.quantize(w2, first.weight),
                       # routing stays in the model's own block; QuantMoE's router weight is unused
                       torch.zeros(len(mod), 1, device=w13.device), top_k=1, activation=_activation(mod[0]),
                       act_key=first.activation, gate_up_bias=b13, down_bias=b2, tables=_tables(plan, gu, dn))
    return QuantExpertList(block, moe)


def prepare_block(block: str, mod: nn.Module, entries: list, plan, state=None) -> nn.Module:
    """The grouped module that replaces ``block`` (raises ValueError with the reason)."""
    if layout(block, mod, entries) == "fused":
        return _prepare_fused(block, mod, entries, plan, state)
    return _prepare_per_expert(block, mod, entries, plan, state)

