"""MoE routing (each router one Triton launch a layer on a GPU and in the interpreter, torch ops elsewhere or
past the kernels' sizes; all graph-capturable, no host sync) and token sorting by expert (one Triton
program at decode sizes, torch ops beyond).

Routers, router logits (T, E) -> (weights fp32 (T, k), expert ids int32 (T, k)):

============  ==============================================================================
name          rule (as the Hugging Face implementations compute it)
============  ==============================================================================
softmax_topk  softmax over all E, top-k; ``renormalize`` divides by the sum of the k kept
              (Mixtral: always; Qwen3-MoE: ``norm_topk_prob``)
deepseek_v3   sigmoid scores; choice scores = scores + e_score_correction_bias; experts split
              into n_group groups, a group scored by the sum of its top-2 choice scores, only
              the best topk_group groups kept; top-k of the choice scores; weights are the
              plain sigmoid scores of the chosen experts, normalised (norm_topk_prob) and
              multiplied by routed_scaling_factor
gpt_oss       top-k of the logits, then softmax over those k logits
============  ==============================================================================
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import env, interpreted, launch, next_pow2


def softmax_topk(logits: torch.Tensor, top_k: int, renormalize: bool = True):
    if router_kernel_on(logits, top_k):
        return topk_route(logits, top_k, full_softmax=not renormalize)
    w, ids = softmax_topk_torch(logits, top_k, renormalize)
    return w, ids.to(torch.int32)


def softmax_topk_torch(logits: torch.Tensor, top_k: int, renormalize: bool = True):
    """``softmax_topk`` in torch ops (every size and device): fp32 weights, torch.topk's int64 ids."""
    w, ids = torch.topk(torch.softmax(logits.float(), dim=-1), top_k, dim=-1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, ids


def deepseek_v3(logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor, n_group: int, topk_group: int,
                routed_scaling_factor: float = 1.0, renormalize: bool = True):
    if group_router_kernel_on(logits, top_k, n_group, topk_group):
        return group_topk_route(logits, top_k, correction_bias, n_group, topk_group, routed_scaling_factor,
                                renormalize)
    return deepseek_v3_torch(logits, top_k, correction_bias, n_group, topk_group, routed_scaling_factor, renormalize)


def deepseek_v3_torch(logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor, n_group: int,
                      topk_group: int, routed_scaling_factor: float = 1.0, renormalize: bool = True):
    """``deepseek_v3`` in torch ops (every size and device)."""
    t, e = logits.shape
    scores = torch.sigmoid(logits.float())
    choice = scores + correction_bias.float()
    group_scores = choice.view(t, n_group, e // n_group).topk(2, dim=-1).values.sum(-1)
    keep_groups = group_scores.topk(topk_group, dim=-1).indices
    group_mask = torch.zeros_like(group_scores).scatter_(1, keep_groups, 1.0)
    expert_mask = group_mask.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
    ids = choice.masked_fill(expert_mask == 0, float("-inf")).topk(top_k, dim=-1).indices
    w = scores.gather(1, ids)
    if renormalize:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return w * routed_scaling_factor, ids.to(torch.int32)


def gpt_oss(logits: torch.Tensor, top_k: int):
    if router_kernel_on(logits, top_k):  # softmax over the k kept logits = the renormalised full softmax
        return topk_route(logits, top_k, full_softmax=False)
    vals, ids = torch.topk(logits.float(), top_k, dim=-1)
    return torch.softmax(vals, dim=-1), ids.to(torch.int32)


ROUTERS = {"softmax_topk": softmax_topk, "deepseek_v3": deepseek_v3, "gpt_oss": gpt_oss}

# softmax_topk and gpt_oss in one Triton program a token (``_topk_router_kernel``), where torch takes 3-5
# kernels (softmax, top-k, sum, divide, the ids' cast): the top-k by k passes of max over the row (ties
# to the lower expert; torch.topk's pick among equal values is its own), the weights exp(l - max) over the sum of the k kept
# (renormalised softmax_topk and gpt-oss alike: the full softmax's denominator cancels) or of all E.
ROUTER_KERNEL_MAX_EXPERTS = 1024
ROUTER_KERNEL_MAX_TOP_K = 32


@triton.jit
def _take_best(score, free, index, NONE: tl.constexpr):
    """One pass of a top-k: the largest score among the ``free`` entries, its index (the lowest among
    ties) and ``free`` without it. NaN scores match nothing: index 0 then, in range all the same."""
    v = tl.max(tl.where(free, score, float("-inf")), axis=0)
    i = tl.min(tl.where(free & (score == v), index, NONE), axis=0)
    i = tl.where(i < NONE, i, 0)
    return v, i, free & (index != i)


@triton.jit
def _topk_router_kernel(logits_ptr, w_ptr, ids_ptr, num_experts, stride_t, TOP_K: tl.constexpr,
                        K_POW2: tl.constexpr, E_POW2: tl.constexpr, FULL: tl.constexpr, ROUND_BF16: tl.constexpr):
    t = tl.program_id(0)
    e = tl.arange(0, E_POW2)
    valid = e < num_experts
    logit = tl.load(logits_ptr + t.to(tl.int64) * stride_t + e, mask=valid, other=float("-inf")).to(tl.float32)
    slot = tl.arange(0, K_POW2)
    vals = tl.full((K_POW2,), float("-inf"), tl.float32)
    ids = tl.zeros((K_POW2,), tl.int32)
    free = valid
    for j in tl.static_range(TOP_K):
        v, i, free = _take_best(logit, free, e, E_POW2)
        vals = tl.where(slot == j, v, vals)
        ids = tl.where(slot == j, i, ids)
    top = tl.max(vals, axis=0)  # the row's max: the first pick
    kept = slot < TOP_K
    ex = tl.where(kept, tl.exp(vals - top), 0.0)
    if FULL:
        denom = tl.sum(tl.where(valid, tl.exp(logit - top), 0.0), axis=0)
    else:
        denom = tl.sum(ex, axis=0)
    w = ex / denom
    if ROUND_BF16:  # to the nearest even bf16 by hand: the interpreter's store truncates, a GPU's rounds
        bits = w.to(tl.int32, bitcast=True)
        w = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    out = t.to(tl.int64) * TOP_K + slot
    tl.store(w_ptr + out, w, mask=kept)
    tl.store(ids_ptr + out, ids, mask=kept)


# deepseek_v3 in one program a token (``_group_topk_router_kernel``) where torch takes ~12 kernels: sigmoid,
# the biased choice scores viewed as (groups, experts a group), each group's top-2 sum (max, then the max of
# the rest), the best topk_group groups and the top-k of their experts by k passes of max (ties to the lower
# index), the plain sigmoid scores of those experts renormalised and scaled. Power-of-two E and group count
# (DeepSeek-V3: 256 experts in 8 groups); other sizes keep the torch ops.
@triton.jit
def _group_topk_router_kernel(logits_ptr, bias_ptr, w_ptr, ids_ptr, stride_t, scale, TOP_K: tl.constexpr,
                              K_POW2: tl.constexpr, E: tl.constexpr, N_GROUP: tl.constexpr,
                              TOPK_GROUP: tl.constexpr, RENORM: tl.constexpr):
    GS: tl.constexpr = E // N_GROUP
    t = tl.program_id(0)
    e = tl.arange(0, E)
    logit = tl.load(logits_ptr + t.to(tl.int64) * stride_t + e).to(tl.float32)
    score = 1.0 / (1.0 + tl.exp(-logit))
    choice = score + tl.load(bias_ptr + e).to(tl.float32)
    by_group = tl.reshape(choice, (N_GROUP, GS))
    j = tl.arange(0, GS)
    best = tl.max(by_group, axis=1)
    first = tl.min(tl.where(by_group == best[:, None], j[None, :], GS), axis=1)
    second = tl.max(tl.where(j[None, :] == first[:, None], float("-inf"), by_group), axis=1)
    group_score = best + second
    g = tl.arange(0, N_GROUP)
    free_group = g >= 0
    for _ in tl.static_range(TOPK_GROUP):
        v, pick, free_group = _take_best(group_score, free_group, g, N_GROUP)
    kept = tl.reshape(tl.broadcast_to((free_group == 0)[:, None], (N_GROUP, GS)), (E,))
    slot = tl.arange(0, K_POW2)
    w = tl.zeros((K_POW2,), tl.float32)
    ids = tl.zeros((K_POW2,), tl.int32)
    free = kept
    for k in tl.static_range(TOP_K):
        v, i, free = _take_best(choice, free, e, E)
        w = tl.where(slot == k, tl.sum(tl.where(e == i, score, 0.0), axis=0), w)
        ids = tl.where(slot == k, i, ids)
    if RENORM:
        w = w / (tl.sum(w, axis=0) + 1e-20)
    out = t.to(tl.int64) * TOP_K + slot
    tl.store(w_ptr + out, w * scale, mask=slot < TOP_K)
    tl.store(ids_ptr + out, ids, mask=slot < TOP_K)


def group_router_kernel_on(logits: torch.Tensor, top_k: int, n_group: int, topk_group: int) -> bool:
    """Whether ``group_topk_route`` runs these logits: the conditions of ``router_kernel_on``, E and
    n_group powers of two with at least two experts a group, 1 <= topk_group <= n_group, and enough
    experts in the kept groups for k."""
    if not router_kernel_on(logits, top_k):
        return False
    e = logits.shape[1]
    if e & (e - 1) or n_group <= 0 or n_group & (n_group - 1) or e // n_group < 2:
        return False
    return 1 <= topk_group <= n_group and top_k <= topk_group * (e // n_group)


def group_topk_route(logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor, n_group: int,
                     topk_group: int, routed_scaling_factor: float = 1.0, renormalize: bool = True, *,
                     ids_dtype=torch.int32):
    """deepseek_v3's routing in one launch: (weights fp32 (T, k), ids (T, k) ``ids_dtype``), best choice
    score first. Callers check ``group_router_kernel_on`` first."""
    fn = torch.ops.quantc.group_topk_route if torch.compiler.is_compiling() else _group_topk_route
    return fn(logits, top_k, correction_bias, n_group, topk_group, float(routed_scaling_factor), bool(renormalize),
              ids_dtype)


def _group_topk_route(logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor, n_group: int,
                      topk_group: int, routed_scaling_factor: float, renormalize: bool,
                      ids_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    t, e = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    w = torch.empty((t, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((t, top_k), dtype=ids_dtype, device=logits.device)
    launch(_group_topk_router_kernel, (t,),
           (logits, correction_bias.contiguous(), w, ids, logits.stride(0), routed_scaling_factor),
           dict(TOP_K=top_k, K_POW2=next_pow2(top_k), E=e, N_GROUP=n_group, TOPK_GROUP=topk_group,
                RENORM=renormalize), 4 if e > 256 else 2)
    return w, ids


# The routing launches as custom ops where torch.compile traces (opaque to it, as the GEMMs are); eager
# calls go to the functions directly (an op's dispatch costs host time at every call).
_group_topk_route_op = torch.library.custom_op("quantc::group_topk_route", _group_topk_route, mutates_args=())


@_group_topk_route_op.register_fake
def _(logits, top_k, correction_bias, n_group, topk_group, routed_scaling_factor, renormalize, ids_dtype):
    t = logits.shape[0]
    return logits.new_empty((t, top_k), dtype=torch.float32), logits.new_empty((t, top_k), dtype=ids_dtype)


def router_kernel_on(logits: torch.Tensor, top_k: int) -> bool:
    """Whether ``topk_route`` runs these logits: (T, E) with T >= 1, E <= ROUTER_KERNEL_MAX_EXPERTS,
    1 <= k <= min(E, ROUTER_KERNEL_MAX_TOP_K), on a GPU (or the interpreter) unless
    QUANTC_MOE_ROUTER_KERNEL=0."""
    if logits.dim() != 2 or logits.shape[0] == 0 or not 1 <= top_k <= min(logits.shape[1], ROUTER_KERNEL_MAX_TOP_K):
        return False
    if logits.shape[1] > ROUTER_KERNEL_MAX_EXPERTS or env("QUANTC_MOE_ROUTER_KERNEL", "1") == "0":
        return False
    return interpreted() or logits.device.type == "cuda"


def topk_route(logits: torch.Tensor, top_k: int, *, full_softmax: bool, weight_dtype=torch.float32,
               ids_dtype=torch.int32):
    """(T, E) logits -> (weights (T, k) ``weight_dtype``, ids (T, k) ``ids_dtype``), best first, in one
    launch: the weights are softmax over the k kept logits, or with ``full_softmax`` the full softmax's
    values at them. Callers check ``router_kernel_on`` first."""
    fn = torch.ops.quantc.topk_route if torch.compiler.is_compiling() else _topk_route
    return fn(logits, top_k, bool(full_softmax), weight_dtype, ids_dtype)


def _topk_route(logits: torch.Tensor, top_k: int, full_softmax: bool, weight_dtype: torch.dtype,
                ids_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    t, e = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    w = torch.empty((t, top_k), dtype=weight_dtype, device=logits.device)
    ids = torch.empty((t, top_k), dtype=ids_dtype, device=logits.device)
    launch(_topk_router_kernel, (t,), (logits, w, ids, e, logits.stride(0)),
           dict(TOP_K=top_k, K_POW2=next_pow2(top_k), E_POW2=max(16, next_pow2(e)), FULL=full_softmax,
                ROUND_BF16=weight_dtype == torch.bfloat16),
           4 if e > 256 else 1)
    return w, ids


_topk_route_op = torch.library.custom_op("quantc::topk_route", _topk_route, mutates_args=())


@_topk_route_op.register_fake
def _(logits, top_k, full_softmax, weight_dtype, ids_dtype):
    t = logits.shape[0]
    return logits.new_empty((t, top_k), dtype=weight_dtype), logits.new_empty((t, top_k), dtype=ids_dtype)


# Up to ALIGN_KERNEL_MAX_PAIRS (token, slot) pairs one Triton program (``_align_kernel``) does
# ``align_by_expert``'s work in one launch, where the torch ops take 14 (each a kernel, under a CUDA graph
# too, and ~7 us of eager dispatch on the H100's host). Past it the torch ops: one program walks the pairs
# in chunks, serially, and at prefill sizes the GEMMs dwarf the routing's launches.
ALIGN_KERNEL_MAX_PAIRS = 1024
ALIGN_FILL = 1024  # padding entries written per step


@triton.jit
def _align_kernel(ids_ptr, sorted_ptr, block_expert_ptr, total_ptr, n, num_experts, length, n_blocks,
                  BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, CHUNK: tl.constexpr, FILL: tl.constexpr):
    experts = tl.arange(0, E_POW2)
    counts = tl.zeros((E_POW2,), tl.int32)
    for c in range(0, n, CHUNK):
        offs = c + tl.arange(0, CHUNK)
        e = tl.load(ids_ptr + offs, mask=offs < n, other=-1)
        counts += tl.sum((e[:, None] == experts[None, :]).to(tl.int32), axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    pad_end = tl.cumsum(padded, axis=0)
    for c in range(0, length, FILL):  # padding everywhere, then the pairs over it (after the barrier)
        offs = c + tl.arange(0, FILL)
        tl.store(sorted_ptr + offs, n, mask=offs < length)
    tl.debug_barrier()
    slot = pad_end - padded  # each expert's next free entry
    for c in range(0, n, CHUNK):  # stable: a pair's rank among its expert's pairs follows pair order
        offs = c + tl.arange(0, CHUNK)
        e = tl.load(ids_ptr + offs, mask=offs < n, other=-1)
        onehot = (e[:, None] == experts[None, :]).to(tl.int32)
        earlier = tl.cumsum(onehot, axis=0) - onehot  # this chunk's earlier pairs of the same expert
        dest = tl.sum(onehot * (slot[None, :] + earlier), axis=1)
        tl.store(sorted_ptr + dest, offs, mask=offs < n)
        slot += tl.sum(onehot, axis=0)
    # a block's expert: how many experts' padded runs end at or before its first entry (searchsorted, right)
    ends = tl.where(experts < num_experts, pad_end, 2147483647)
    for c in range(0, n_blocks, CHUNK):
        b = c + tl.arange(0, CHUNK)
        ended = (ends[None, :] <= (b * BLOCK_M)[:, None]).to(tl.int32)
        tl.store(block_expert_ptr + b, tl.sum(ended, axis=1), mask=b < n_blocks)
    tl.store(total_ptr, tl.sum(padded, axis=0))


# On by default on a GPU since the sixteenth session's H100 check: bit-identical to the torch ops in every
# bench_moe kernel, and the decode layer 1.1-1.9x faster (moe_h100_s16_align.json).
ALIGN_KERNEL_GPU_DEFAULT = "1"


def align_kernel_on(n: int, device: torch.device) -> bool:
    """Whether ``n`` pairs on ``device`` take ``_align_kernel``: at most ALIGN_KERNEL_MAX_PAIRS, under the
    interpreter unless QUANTC_MOE_ALIGN_KERNEL=0, on a GPU where QUANTC_MOE_ALIGN_KERNEL (default
    ALIGN_KERNEL_GPU_DEFAULT) is not 0."""
    if not 0 < n <= ALIGN_KERNEL_MAX_PAIRS:
        return False
    if interpreted():
        return env("QUANTC_MOE_ALIGN_KERNEL", "1") != "0"
    return device.type == "cuda" and env("QUANTC_MOE_ALIGN_KERNEL", ALIGN_KERNEL_GPU_DEFAULT) != "0"


def _align_launch(flat: torch.Tensor, num_experts: int, block_m: int,
                  length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``align_by_expert`` up to ALIGN_KERNEL_MAX_PAIRS pairs: one launch of ``_align_kernel``."""
    n = flat.numel()
    sorted_ids = torch.empty(length, dtype=torch.int32, device=flat.device)
    block_expert = torch.empty(length // block_m, dtype=torch.int32, device=flat.device)
    total = torch.empty(1, dtype=torch.int32, device=flat.device)
    e_pow2 = next_pow2(num_experts)
    launch(_align_kernel, (1,), (flat, sorted_ids, block_expert, total, n, num_experts, length, length // block_m),
           dict(BLOCK_M=block_m, E_POW2=e_pow2, CHUNK=max(1, 4096 // e_pow2), FILL=ALIGN_FILL), 4)
    return sorted_ids, block_expert, total


_align_op = torch.library.custom_op("quantc::align_by_expert", _align_launch, mutates_args=())


@_align_op.register_fake
def _(flat, num_experts, block_m, length):
    return (flat.new_empty(length, dtype=torch.int32), flat.new_empty(length // block_m, dtype=torch.int32),
            flat.new_empty(1, dtype=torch.int32))


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort the T*k (token, slot) pairs by expert and pad every expert's run to a multiple of block_m.

    Returns ``sorted_ids`` int32 (L,): flattened pair indices (t * k + slot), T*k marking padding;
    ``block_expert`` int32 (L / block_m,): the expert of each block of block_m entries (num_experts
    past the end); ``total`` int32 (1,): entries in use. L = T*k + min(E, T*k) * (block_m - 1) is a
    bound fixed by the shapes, so every output has a static size (CUDA graphs) and nothing syncs.
    Pairs of one expert keep their order (the kernel and the torch ops give the same bits).
    """
    n = topk_ids.numel()
    length = n + min(num_experts, n) * (block_m - 1)
    length = (length + block_m - 1) // block_m * block_m
    if align_kernel_on(n, topk_ids.device):
        flat = topk_ids.reshape(-1).contiguous()  # int32 or int64 (transformers' routers): the kernel reads either
        if flat.dtype not in (torch.int32, torch.int64):
            flat = flat.to(torch.int32)
        fn = torch.ops.quantc.align_by_expert if torch.compiler.is_compiling() else _align_launch
        return fn(flat, num_experts, block_m, length)
    flat = topk_ids.reshape(-1).to(torch.int64)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    sorted_e = flat[order]
    rank = torch.arange(n, device=flat.device) - (torch.cumsum(counts, 0) - counts)[sorted_e]
    dest = (pad_end - padded)[sorted_e] + rank
    sorted_ids = torch.full((length,), n, dtype=torch.int32, device=flat.device)
    sorted_ids[dest] = order.to(torch.int32)
    starts = torch.arange(0, length, block_m, device=flat.device)
    block_expert = torch.searchsorted(pad_end, starts, right=True).to(torch.int32)
    return sorted_ids, block_expert, pad_end[-1:].to(torch.int32)
