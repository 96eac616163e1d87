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

Pre-quantized experts in ``weights`` are loaded without dequantizing: gpt-oss MXFP4
``<b>.gate_up_proj_blocks`` / ``_scales`` / ``down_proj_blocks`` / ``_scales`` (+ biases) for a fused
module, and per-expert tensors ``<b>.{e}.gate_proj.weight`` + scales in any dense checkpoint layout
(``prequantized.LAYOUTS``: fp8 ``weight_scale_inv`` blocks for DeepSeek-V3 / Qwen3-FP8, AWQ, GPTQ,
compressed-tensors, ModelOpt) for either layout of the block: each expert's gate and up are converted
and stacked as [gate; up] rows. A block's pre-quantized tensors must cover every expert.

Anything else is a QC704 that names the block and these layouts. Each GEMM takes its KernelConfig
from the plan's table entry of its module (gate_up: ``gate_up_proj`` / ``gate_proj``; down:
``down_proj``) for the live token count, or ``tables.default_buckets`` where the plan has none.
"""

from __future__ import annotations

import torch
from torch import nn

import re

from . import checkpoint_layouts as cl
from . import quantize as Q
from .hf_moe import _activation, distribute, is_interleaved, prepare_experts, quantize_shard
from .kernels import wo_format as wf
from .moe import MOE_KERNELS, QuantMoE
from .prequantized import checkpoint_tensors, is_prequantized

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
        return self.moe.total_experts  # all of the block's experts, also where this rank holds a part

    def __getitem__(self, e) -> _ExpertView:
        e = int(e)
        if not -len(self) <= e < len(self):
            raise IndexError(f"{self.name}: expert {e} of {len(self)}")
        return _ExpertView(self.moe, e % len(self))

    def __iter__(self):
        return (self[e] for e in range(len(self)))

    def forward(self, hidden_states, top_k_index, top_k_weights):
        x = hidden_states.reshape(-1, hidden_states.shape[-1]).to(torch.bfloat16).contiguous()
        out = self.moe.experts(x, top_k_weights.reshape(x.shape[0], -1), top_k_index.reshape(x.shape[0], -1))
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


# ---------------------------------------------------------------------------- pre-quantized experts

GPT_OSS_TENSORS = ("gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales")
_PER_EXPERT = re.compile(r"(\d+)\.(" + "|".join(sorted({x for ls in PER_EXPERT_LEAVES for x in ls})) + r")\.(\w+)")


def _block_state(state, block: str) -> dict[str, torch.Tensor]:
    """The weights' tensors under ``block``, by name relative to it."""
    if state is None:
        return {}
    prefix = block + "."
    return {n[len(prefix):]: state[n] for n in state if n.startswith(prefix)}


def _target(t: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
    if like is None or like.is_meta:  # a meta-device model is filled where apply() puts it
        from .apply_plan import _META_TARGET

        return t.to(_META_TARGET["device"] or "cpu")
    return t.to(like.device)


def _deinterleave(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else torch.cat([t[:, 0::2], t[:, 1::2]], 1)


def _gpt_oss_experts(block: str, mod: nn.Module, rel: dict, gu, dn):
    """gpt-oss MXFP4 expert tensors -> (w13, w2, b13, b2) in quantc's layout, never dequantized."""
    found = sorted(n for n in rel if n in GPT_OSS_TENSORS)
    if gu.weight != "mxfp4":
        t = rel[found[0]]
        raise ValueError(f"the weights hold {block}.{found[0]} ({str(t.dtype).removeprefix('torch.')}): pre-quantized "
                         f"expert tensors in gpt-oss's MXFP4 layout, but the plan stores these experts as {gu.weight}; "
                         "compile against the checkpoint's quantization_config (quant_method mxfp4)")
    missing = [f"{block}.{n}" for n in GPT_OSS_TENSORS if n not in rel]
    if missing:
        raise ValueError(f"gpt-oss MXFP4 experts: the weights lack {', '.join(missing)}")
    like = getattr(mod, "gate_up_proj", None)
    inter = is_interleaved(mod)
    try:
        w13 = cl.gpt_oss_mxfp4(*(_target(rel[n], like) for n in GPT_OSS_TENSORS[:2]), deinterleave=inter)
        w2 = cl.gpt_oss_mxfp4(*(_target(rel[n], like) for n in GPT_OSS_TENSORS[2:]))
    except cl.LayoutError as exc:
        raise ValueError(f"gpt-oss MXFP4 experts: {exc}") from None
    for what, w, mp in (("gate_up_proj", w13, gu), ("down_proj", w2, dn)):
        if (w.n, w.k) != (mp.n, mp.k) or w.num_experts != w13.num_experts:
            raise ValueError(f"gpt-oss MXFP4 experts: {what}_blocks hold {w.num_experts} experts of (N, K) = "
                             f"({w.n}, {w.k}), the plan says ({mp.n}, {mp.k})")

    def bias(name):
        t = rel.get(name, getattr(mod, name, None))
        return None if t is None else _target(t.detach(), like).to(torch.bfloat16)

    b13, b2 = bias("gate_up_proj_bias"), bias("down_proj_bias")
    return w13, w2, (_deinterleave(b13) if inter else b13), b2


def _expert_part(block: str, e: int, leaf: str, given: dict, key: str, n: int, k: int, fallback) -> dict:
    """One expert linear's quantc tensors: converted from the weights, or quantized from ``fallback``
    (the model's own bf16 weight of a ModuleList expert) where the weights hold none."""
    name = f"{block}.{e}.{leaf}"
    if not given:
        if fallback is None or fallback.is_meta:
            raise ValueError(f"the weights hold pre-quantized experts of this block but lack {name}; every "
                             "expert of one MoE layer comes from the checkpoint")
        out = Q.quantize_weight(fallback.detach(), key)
    elif is_prequantized(given):
        try:
            out = checkpoint_tensors(given, key, n, k)
        except ValueError as exc:
            first = sorted(given)[0]
            raise ValueError(f"the weights hold {name}.{first} ({str(given[first].dtype).removeprefix('torch.')}): "
                             f"pre-quantized expert tensors are not loaded by this runtime unless they form a layout "
                             f"of the planned {key}: {exc}") from None
        if "k_perm" in out:
            raise ValueError(f"{name}: act-order expert weights (g_idx) are not supported by the grouped kernels")
    else:
        out = Q.quantize_weight(given["weight"], key)
        if "bias" in given:
            out["bias"] = given["bias"]
    if key in ("fp8_per_tensor",):  # per-row scales, so that gate and up can share one tensor
        out["weight_scale"] = out["weight_scale"].float().reshape(1, 1).expand(n, 1)
    return out


def _gate_up(gate: dict, up: dict, key: str, inter: int, name: str) -> dict:
    if key == "fp8_block_128x128" and inter % 128:
        raise ValueError(f"{name}: gate and up of {inter} rows cannot share 128x128 weight blocks (a ragged block "
                         "would sit between them); this layout needs the expert width to be a multiple of 128")
    out = {}
    for n in gate:
        if n == "weight_scale_2":
            if not torch.equal(gate[n].float(), up[n].float()):
                raise ValueError(f"{name}: gate_proj and up_proj have different nvfp4 global scales "
                                 f"({gate[n].item()} and {up[n].item()}); the grouped kernel takes one per expert")
            out[n] = gate[n].float().reshape(())
        elif n != "input_scale":
            out[n] = torch.cat([gate[n], up[n]], 0)
    return out


def _per_expert_prequantized(block: str, count: int, leaves: tuple, gu, dn, state, fallbacks=None):
    """Per-expert checkpoint tensors ``<block>.{e}.<leaf>.*`` -> (w13, w2, b13, b2) WoWeights, stacked."""
    key, inter, hidden = gu.weight, dn.k, dn.n
    gate, up, down = leaves
    w13s, w2s = [], []
    under = state.under if hasattr(state, "under") else (
        lambda m: {n[len(m) + 1:]: t for n, t in state.items() if n.rpartition(".")[0] == m})
    for e in range(count):
        parts = {}
        for leaf, (n, k) in ((gate, (inter, hidden)), (up, (inter, hidden)), (down, (hidden, inter))):
            given = under(f"{block}.{e}.{leaf}")
            fb = None if fallbacks is None else fallbacks(e, leaf)
            parts[leaf] = _expert_part(block, e, leaf, given, key, n, k, fb)
            if fb is not None:
                parts[leaf] = {n_: t.to(fb.device) for n_, t in parts[leaf].items()}
        w13s.append(_gate_up(parts[gate], parts[up], key, inter, f"{block}.{e}"))
        w2s.append({n: t for n, t in parts[down].items() if n != "input_scale"})

    def stack(ts: list[dict], name: str):
        present = [t.get(name) for t in ts]
        if all(t is None for t in present):
            return None
        if any(t is None for t in present):
            raise ValueError(f"{block}: some experts have a {name} and others not")
        return torch.stack(present)

    out = []
    for ts, (n, k) in ((w13s, (2 * inter, hidden)), (w2s, (hidden, inter))):
        tensors = {name: stack(ts, name) for name in ts[0] if name != "bias"}
        out.append(wf.from_tensors(key, tensors, n, k))
    b13 = stack(w13s, "bias")
    b2 = stack(w2s, "bias")
    return out[0], out[1], None if b13 is None else b13.to(torch.bfloat16), None if b2 is None else b2.to(torch.bfloat16)


def _fused_prequantized(block: str, mod: nn.Module, rel: dict, gu, dn):
    """None where the weights hold no pre-quantized experts for this fused module."""
    if any(n in GPT_OSS_TENSORS for n in rel):
        return _gpt_oss_experts(block, mod, rel, gu, dn)
    per = [n for n in rel if _PER_EXPERT.fullmatch(n)]
    if not per:
        return None
    found_leaves = {_PER_EXPERT.fullmatch(n).group(2) for n in per}
    leaves = next((ls for ls in PER_EXPERT_LEAVES if found_leaves <= set(ls)), None)
    if leaves is None:
        raise ValueError(f"the weights name the experts of {block} with {', '.join(sorted(found_leaves))}; "
                         f"expected one of {' / '.join('/'.join(ls) for ls in PER_EXPERT_LEAVES)}")
    count = mod.gate_up_proj.shape[0]
    like = mod.gate_up_proj
    w13, w2, b13, b2 = _per_expert_prequantized(block, count, leaves, gu, dn, _Moved(rel, block, like))
    return w13, w2, b13, b2


class _Moved:
    """``state.under`` over a block's relative tensors, moved to the model's device."""

    def __init__(self, rel: dict, block: str, like: torch.Tensor):
        self.rel, self.block, self.like = rel, block, like

    def under(self, module: str) -> dict:
        prefix = module[len(self.block) + 1:] + "."
        return {n[len(prefix):]: _target(t, self.like) for n, t in self.rel.items()
                if n.startswith(prefix) and "." not in n[len(prefix):]}


def _prepare_fused(block: str, mod: nn.Module, entries: list, plan, state, shard=None) -> nn.Module:
    by_param = {mp.name.rpartition(".")[2]: mp for mp in entries}
    if set(by_param) != set(FUSED_PARAMS):
        raise ValueError(f"the plan has only {', '.join(sorted(by_param))} of this experts module")
    _scheme(entries)
    gu, dn = by_param["gate_up_proj"], by_param["down_proj"]
    rel = _block_state(state, block)
    pre = _fused_prequantized(block, mod, rel, gu, dn)
    if pre is not None:
        return prepare_experts(block, mod, gu, dn, tables=_tables(plan, gu, dn), prequantized=pre, shard=shard)
    params = ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias")
    sources = {f"{block}.{p}": getattr(mod, p) for p in params if isinstance(getattr(mod, p, None), torch.Tensor)}
    given = {n[len(block) + 1:]: t for n, t in _state_tensors(state, block, sources).items()}
    return prepare_experts(block, mod, gu, dn, tables=_tables(plan, gu, dn), tensors=given, shard=shard)


def _prepare_per_expert(block: str, mod: nn.ModuleList, entries: list, plan, state, shard=None) -> nn.Module:
    leaves = _per_expert_leaves(mod)
    by_name = {mp.name: mp for mp in entries}
    missing = [f"{block}.{e}.{leaf}" for e in range(len(mod)) for leaf in leaves if f"{block}.{e}.{leaf}" not in by_name]
    if missing:
        raise ValueError(f"the plan lacks {len(missing)} expert linear(s) of this block, e.g. {missing[0]}; "
                         "all experts of one MoE layer are quantized together")
    first = _scheme(entries)
    sources = {f"{block}.{e}.{leaf}.{p}": getattr(getattr(x, leaf), p) for e, x in enumerate(mod) for leaf in leaves
               for p in ("weight", "bias") if getattr(getattr(x, leaf), p, None) is not None}
    rel = _block_state(state, block)
    if any(is_prequantized({n.rpartition(".")[2]: t}) for n, t in rel.items()):
        return _per_expert_module_list(block, mod, entries, plan, state, leaves, first, shard)
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
        q13, q2, b13, b2 = quantize_shard(w13, w2, b13, b2, first.weight, shard)
        moe = QuantMoE(first.kernel, q13, q2,
                       # routing stays in the model's own block; QuantMoE's router weight is unused
                       torch.zeros(q13.num_experts, 1, device=w13.device), top_k=1, activation=_activation(mod[0]),
                       act_key=first.activation, gate_up_bias=b13, down_bias=b2, tables=_tables(plan, gu, dn))
    return QuantExpertList(block, distribute(moe, shard, len(mod)))


def _per_expert_module_list(block: str, mod: nn.ModuleList, entries: list, plan, state, leaves, first,
                            shard=None) -> nn.Module:
    """A ModuleList block whose weights hold pre-quantized expert tensors (the rest from the model)."""
    gate, _, down = leaves
    by_name = {mp.name: mp for mp in entries}
    gu, dn = by_name[f"{block}.0.{gate}"], by_name[f"{block}.0.{down}"]
    for mp in entries:
        leaf = mp.name.rpartition(".")[2]
        want = (dn.k, gu.k) if leaf != down else (gu.k, dn.k)
        if (mp.n, mp.k) != want:
            raise ValueError(f"{mp.name} is planned ({mp.n}, {mp.k}); the experts of one block share one shape")

    def fallback(e, leaf):
        return getattr(mod[e], leaf).weight

    w13, w2, b13, b2 = _per_expert_prequantized(block, len(mod), leaves, gu, dn, state, fallback)
    if b13 is None:
        b13 = _module_bias(mod, leaves[:2])
    if b2 is None:
        b2 = _module_bias(mod, leaves[2:])
    if shard is not None:
        w13, w2, b13, b2 = shard.weights(w13, w2, b13, b2)
    with torch.no_grad():
        moe = QuantMoE(first.kernel, w13, w2, torch.zeros(w13.num_experts, 1, device=w13.data.device), top_k=1,
                       activation=_activation(mod[0]), act_key=first.activation, gate_up_bias=b13, down_bias=b2,
                       tables=_tables(plan, gu, dn))
    return QuantExpertList(block, distribute(moe, shard, len(mod)))


def _module_bias(mod: nn.ModuleList, leaves: tuple) -> torch.Tensor | None:
    if all(getattr(getattr(x, leaf), "bias", None) is None for x in mod for leaf in leaves):
        return None
    rows = []
    for x in mod:
        parts = [getattr(x, leaf).bias if getattr(x, leaf).bias is not None else
                 torch.zeros(getattr(x, leaf).out_features, device=getattr(x, leaf).weight.device) for leaf in leaves]
        rows.append(torch.cat([p.detach().float() for p in parts]))
    return torch.stack(rows).to(torch.bfloat16)


def prepare_block(block: str, mod: nn.Module, entries: list, plan, state=None, rank: int = 0,
                  world: int = 1) -> nn.Module:
    """The grouped module that replaces ``block`` (raises ValueError with the reason). Under tensor
    parallelism (``world`` > 1) it holds only this rank's part (``parallel.ExpertShard``) and sums the
    ranks' outputs through torch.distributed."""
    from .parallel import expert_shard, global_expert_entry

    shard = expert_shard(plan, rank, world)
    entries = [global_expert_entry(mp, shard) for mp in entries]
    if layout(block, mod, entries) == "fused":
        return _prepare_fused(block, mod, entries, plan, state, shard)
    return _prepare_per_expert(block, mod, entries, plan, state, shard)

