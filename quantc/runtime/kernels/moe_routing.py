"""MoE routing (plain torch ops: small, graph-capturable, no host sync) and token sorting by expert.

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


def softmax_topk(logits: torch.Tensor, top_k: int, renormalize: bool = True):
    p = torch.softmax(logits.float(), dim=-1)
    w, ids = torch.topk(p, top_k, dim=-1)
    if renormalize:
        w = w / w.sum(-1, keepdim=True)
    return w, ids.to(torch.int32)


def deepseek_v3(logits: torch.Tensor, top_k: int, correction_bias: torch.Tensor, n_group: int, topk_group: int,
                routed_scaling_factor: float = 1.0, renormalize: bool = True):
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
    vals, ids = torch.topk(logits.float(), top_k, dim=-1)
    return torch.softmax(vals, dim=-1), ids.to(torch.int32)


ROUTERS = {"softmax_topk": softmax_topk, "deepseek_v3": deepseek_v3, "gpt_oss": gpt_oss}


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """Sort the T*k (token, slot) pairs by expert and pad every expert's run to a multiple of block_m.

    Returns ``sorted_ids`` int32 (L,): flattened pair indices (t * k + slot), T*k marking padding;
    ``block_expert`` int32 (L / block_m,): the expert of each block of block_m entries (num_experts
    past the end); ``total`` int32 (1,): entries in use. L = T*k + min(E, T*k) * (block_m - 1) is a
    bound fixed by the shapes, so every output has a static size (CUDA graphs) and nothing syncs.
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    n = flat.numel()
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = torch.cumsum(padded, 0)
    order = torch.argsort(flat, stable=True)
    sorted_e = flat[order]
    rank = torch.arange(n, device=flat.device) - (torch.cumsum(counts, 0) - counts)[sorted_e]
    dest = (pad_end - padded)[sorted_e] + rank
    length = n + min(num_experts, n) * (block_m - 1)
    length = (length + block_m - 1) // block_m * block_m
    sorted_ids = torch.full((length,), n, dtype=torch.int32, device=flat.device)
    sorted_ids[dest] = order.to(torch.int32)
    starts = torch.arange(0, length, block_m, device=flat.device)
    block_expert = torch.searchsorted(pad_end, starts, right=True).to(torch.int32)
    return sorted_ids, block_expert, pad_end[-1:].to(torch.int32)
