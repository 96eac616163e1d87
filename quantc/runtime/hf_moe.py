"""transformers (>= 5) fused experts on quantc's grouped MoE kernels.

transformers 5 stores a MoE layer's experts as one module with 3-D parameters (``mlp.experts`` with
``gate_up_proj`` and ``down_proj``); the live-module inventory plans them as
``<experts>.gate_up_proj`` / ``<experts>.down_proj`` (kind ``moe_experts``, ``moe_block`` =
``<experts>``). ``quantc.runtime.apply`` (through ``moe_apply``) replaces each such experts module by
a ``QuantExperts`` that keeps the model's own router (transformers calls
``experts(hidden, top_k_index, top_k_weights)``) and runs both GEMMs through ``QuantMoE.experts``.

Layouts: Qwen3-MoE, DeepSeek-V3 and Mixtral store gate_up as (E, 2I, H) with the gate rows first and
down as (E, H, I), which is quantc's layout. gpt-oss stores (E, H, 2I) with gate and up interleaved
along the last dimension (plus biases) and down as (E, I, H): transposed and de-interleaved here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import moe_gemm as mg
from .kernels import wo_format as wf
from .kernels.moe_routing import (deepseek_v3_torch, group_router_kernel_on, group_topk_route, router_kernel_on,
                                  softmax_topk_torch, topk_route)
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
                               top_k_index.reshape(x.shape[0], -1))
        return out.to(hidden_states.dtype).reshape(hidden_states.shape)

    def extra_repr(self) -> str:
        return f"kernel={self.moe.kernel}, experts={self.moe.num_experts}, activation={self.moe.act_key}"


# transformers' routers that ``QuantRouter`` stands in for: class name -> (rule, renormalise: True or the
# router's attribute that says, weights returned in the logits' dtype). softmax_topk (Mixtral, Qwen3-MoE):
# F.linear, softmax in fp32, top-k, the renormalisation, (the cast), 4-5 kernels besides the GEMM;
# deepseek_v3: F.linear in fp32, then sigmoid, bias, group top-2 sums, group top-k, masked top-k, gather,
# renormalise, scale, ~12 kernels; gpt_oss: F.linear with a bias, top-k of the logits, softmax of the k in
# the logits' dtype; one launch each here after the GEMM.
HF_ROUTERS = {"MixtralTopKRouter": ("softmax_topk", True, False),
              "Qwen3MoeTopKRouter": ("softmax_topk", "norm_topk_prob", True),
              "GptOssTopKRouter": ("gpt_oss", True, True),
              "DeepseekV3TopkRouter": ("deepseek_v3", "norm_topk_prob", False)}
_ROUTER_ATTRS = {"softmax_topk": ("weight", "top_k", "hidden_dim"),
                 "gpt_oss": ("weight", "bias", "top_k", "hidden_dim"),
                 "deepseek_v3": ("weight", "top_k", "hidden_dim", "e_score_correction_bias", "num_group",
                                 "topk_group", "routed_scaling_factor")}


class QuantRouter(nn.Module):
    """Drop-in for a transformers router of ``HF_ROUTERS``: forward(hidden) -> (logits, weights, int64 ids)
    as the original returns them, the routing after the router GEMM in one Triton launch
    (``moe_routing.topk_route`` / ``group_topk_route``) where the kernel's conditions hold, the same math in
    torch ops otherwise (QUANTC_MOE_ROUTER_KERNEL=0, a CPU without the interpreter). Holds the router's own
    weight Parameter (and gpt-oss's bias, DeepSeek-V3's correction bias) under the same names, so the state
    dict is unchanged.
    Among tied scores the lower expert is taken, where torch.topk's pick is its own (same weights)."""

    def __init__(self, name: str, router: nn.Module, rule: str, renormalize: bool, cast: bool):
        super().__init__()
        self.name, self.rule = name, rule
        self.weight = router.weight
        self.top_k, self.hidden_dim = int(router.top_k), int(router.hidden_dim)
        self.renormalize, self.cast = bool(renormalize), bool(cast)
        self.source_class = type(router).__name__
        if rule == "gpt_oss":
            self.bias = router.bias
        if rule == "deepseek_v3":
            self.register_buffer("e_score_correction_bias", router.e_score_correction_bias,
                                 persistent="e_score_correction_bias" not in getattr(router, "_non_persistent_buffers_set", ()))
            self.num_group, self.topk_group = int(router.num_group), int(router.topk_group)
            self.routed_scaling_factor = float(router.routed_scaling_factor)

    def forward(self, hidden_states):
        h = hidden_states.reshape(-1, self.hidden_dim)
        if self.rule == "deepseek_v3":
            logits = F.linear(h.float(), self.weight.float())
            args = (self.top_k, self.e_score_correction_bias, self.num_group, self.topk_group,
                    self.routed_scaling_factor, self.renormalize)
            if group_router_kernel_on(logits, self.top_k, self.num_group, self.topk_group):
                w, ids = group_topk_route(logits, *args, ids_dtype=torch.int64)
                return logits, w, ids
            w, ids = deepseek_v3_torch(logits, *args)
            return logits, w, ids.long()
        gpt_oss = self.rule == "gpt_oss"
        logits = F.linear(h, self.weight, self.bias if gpt_oss else None)
        out_dtype = logits.dtype if self.cast else torch.float32
        if router_kernel_on(logits, self.top_k) and out_dtype in (torch.float32, torch.bfloat16):
            w, ids = topk_route(logits, self.top_k, full_softmax=not self.renormalize, weight_dtype=out_dtype,
                                ids_dtype=torch.int64)
            return logits, w, ids
        if gpt_oss:  # top-k of the logits as they are, softmax of the k in their dtype
            v, ids = torch.topk(logits, self.top_k, dim=-1)
            return logits, torch.softmax(v, dim=1, dtype=v.dtype), ids
        w, ids = softmax_topk_torch(logits, self.top_k, self.renormalize)
        return logits, w.to(out_dtype), ids

    def extra_repr(self) -> str:
        return f"{self.source_class}, top_k={self.top_k}, renormalize={self.renormalize}"


def quant_router(name: str, router: nn.Module | None) -> QuantRouter | None:
    """The ``QuantRouter`` for ``router`` (a module named ``name``), or None where its class is not one
    of ``HF_ROUTERS`` or it lacks an attribute that class has and the rule reads."""
    spec = HF_ROUTERS.get(type(router).__name__)
    if spec is None:
        return None
    rule, renorm, cast = spec
    if not all(hasattr(router, a) for a in _ROUTER_ATTRS[rule]):
        return None
    if renorm is not True:
        if not hasattr(router, renorm):
            return None
        renorm = getattr(router, renorm)
    return QuantRouter(name, router, rule, bool(renorm), cast)


def is_gpt_oss(mod: nn.Module) -> bool:
    return hasattr(mod, "alpha") and hasattr(mod, "limit") and hasattr(mod, "gate_up_proj_bias")


def is_interleaved(mod: nn.Module) -> bool:
    """gate/up rows interleaved (gpt-oss) rather than [gate; up]. transformers' use_experts_implementation
    records the layout on the module; older classes without the flags are gpt-oss or the default."""
    return not getattr(mod, "is_concatenated", not is_gpt_oss(mod))


def expert_weights(mod: nn.Module, gate_up, down, tensors: dict | None = None) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(w13 (E, 2I, H), w2 (E, H, I), b13, b2) in quantc's layout from a transformers experts module;
    ``gate_up`` / ``down`` are the plan entries (their N, K are checked). ``tensors`` (parameter name
    -> tensor, in the module's layout) replaces the module's own parameters, e.g. from a checkpoint."""

    def get(name):
        return (tensors or {}).get(name, getattr(mod, name, None))

    gpt = is_gpt_oss(mod)
    transposed = getattr(mod, "is_transposed", gpt)
    interleaved = is_interleaved(mod)
    w13, w2 = get("gate_up_proj").detach(), get("down_proj").detach()
    b13 = get("gate_up_proj_bias") if getattr(mod, "has_bias", gpt) else None
    b2 = get("down_proj_bias") if b13 is not None else None
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
    if act is None:
        raise ValueError(f"the experts ({type(mod).__name__}) have no act_fn attribute, so their activation is "
                         "unknown; the grouped kernels fuse SiLU-and-mul or gpt-oss's SwiGLU only")
    if "silu" not in type(act).__name__.lower():
        raise ValueError(f"expert activation {type(act).__name__} is not SiLU; the grouped kernels fuse "
                         "SiLU-and-mul or gpt-oss's SwiGLU only")
    return "silu"


def _top_k(mod: nn.Module) -> int:
    k = getattr(getattr(mod, "config", None), "num_experts_per_tok", None)
    if not k:
        raise ValueError("the experts module has no config.num_experts_per_tok (transformers >= 5 sets it)")
    return int(k)


def prepare_experts(name: str, mod: nn.Module, gate_up, down, tables=None, tensors: dict | None = None,
                    prequantized: tuple | None = None, shard=None) -> QuantExperts:
    """A ``QuantExperts`` for one fused experts module. ``tables``: (gate_up buckets, down buckets), the
    plan's kernel-table entries (None, or None for one of them: the kernel's defaults). ``prequantized``:
    (w13, w2 ``WoWeight``s in quantc's layout, b13, b2) loaded from a checkpoint, used as they are.
    ``shard`` (``parallel.ExpertShard``): keep only this rank's part; ``gate_up`` / ``down`` then carry
    the unsharded (N, K) (``parallel.global_expert_entry``)."""
    if gate_up.weight != down.weight or gate_up.activation != down.activation or gate_up.kernel != down.kernel:
        raise ValueError("the experts of one MoE layer share one scheme; the plan gives gate_up_proj "
                         f"{gate_up.weight}/{gate_up.activation} and down_proj {down.weight}/{down.activation}")
    if prequantized is not None:
        q13, q2, b13, b2 = prequantized
        total = q13.num_experts
        if is_gpt_oss(mod) and (mod.alpha, mod.limit) != (mg.GPT_OSS_ALPHA, mg.GPT_OSS_LIMIT):
            raise ValueError(f"gpt-oss SwiGLU alpha={mod.alpha}, limit={mod.limit}; the kernel has "
                             f"alpha={mg.GPT_OSS_ALPHA}, limit={mg.GPT_OSS_LIMIT}")
        if shard is not None:
            q13, q2, b13, b2 = shard.weights(q13, q2, b13, b2)
    else:
        w13, w2, b13, b2 = expert_weights(mod, gate_up, down, tensors)
        total = w13.shape[0]
        q13, q2, b13, b2 = quantize_shard(w13, w2, b13, b2, gate_up.weight, shard)
    moe = QuantMoE(gate_up.kernel, q13, q2,
                   # routing stays in the model's own router module; QuantMoE's router weight is unused
                   torch.zeros(q13.num_experts, 1, device=q13.data.device), top_k=_top_k(mod), activation=_activation(mod),
                   act_key=gate_up.activation, gate_up_bias=None if b13 is None else b13.to(torch.bfloat16),
                   down_bias=None if b2 is None else b2.to(torch.bfloat16), tables=tables)
    return QuantExperts(name, distribute(moe, shard, total))


def quantize_shard(w13, w2, b13, b2, key: str, shard=None):
    """Quantize bf16 experts to ``key``, keeping this rank's part only: sliced before quantization,
    except keys with a whole-tensor scale, quantized whole and then sliced (the tp=1 scale)."""
    if shard is None:
        return wf.quantize(w13, key), wf.quantize(w2, key), b13, b2
    from .parallel import needs_whole_quantization

    if key != "none" and needs_whole_quantization(key):
        return shard.weights(wf.quantize(w13, key), wf.quantize(w2, key), b13, b2)
    w13, w2, b13, b2 = shard.bf16(w13, w2, b13, b2)
    return wf.quantize(w13, key), wf.quantize(w2, key), b13, b2


def distribute(moe: QuantMoE, shard, total_experts: int) -> QuantMoE:
    """Tell ``moe`` (built from this rank's part) which experts it holds and whom to reduce with."""
    if shard is None:
        return moe
    first, _ = shard.expert_range(total_experts)
    return moe.distribute(first, total_experts, shard.world)
