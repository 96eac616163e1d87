"""Tensor parallelism for applied plans: each rank keeps only its shard of every split module.

A plan compiled with ``tensor_parallel = T`` holds per-rank shapes (SPEC §5). ``apply(model, plan,
rank=r, world=T)`` runs on every rank over the same full-size (unsharded) model: each column-parallel
module (q/k/v, gate/up, lm_head) keeps rows ``[r*N, (r+1)*N)`` of its weight and all-gathers its
output along N; each row-parallel module (o, down) keeps columns ``[r*K, (r+1)*K)``, reads its slice
of the input and all-reduces its partial sums (bias added once, after the reduction). Everything goes
through ``torch.distributed`` (NCCL on GPUs, gloo on the CPU); nothing is home-made. The model's
other modules stay as they are, so a Hugging Face model runs unchanged and its outputs match the
single-GPU plan.

Quantized tensors are sharded with their scales: a tensor whose dimension is proportional to N (or K)
is sliced by the same fraction, scales of whole tensors are kept. Because the plan guarantees that no
quantization block straddles a shard edge, the shard of a quantized weight equals the quantization of
the shard, except for keys with a whole-tensor scale (fp8_per_tensor, nvfp4's global scale): those are
quantized whole and then sliced, so every rank uses the same scale as the single-GPU plan.
"""

from __future__ import annotations

import torch
from torch import nn

from quantc.keys import WEIGHT_KEYS


def global_shape(mp, world: int) -> tuple[int, int]:
    """The unsharded (N, K) of a planned module."""
    if world == 1 or mp.kind == "moe_experts":
        return mp.n, mp.k
    if mp.tp_split == "column":
        return mp.n * world, mp.k
    if mp.tp_split == "row":
        return mp.n, mp.k * world
    return mp.n, mp.k


def is_split(mp, world: int) -> bool:
    return world > 1 and mp.kind != "moe_experts" and mp.tp_split in ("column", "row")


def shard_tensor(t: torch.Tensor, mp, full_n: int, full_k: int, rank: int, world: int) -> torch.Tensor:
    """This rank's part of one checkpoint-named tensor of a module whose weight is (full_n, full_k)."""
    if t.dim() == 0 or not is_split(mp, world):
        return t
    if mp.tp_split == "column":
        rows = t.shape[0]
        if rows == 1 or full_n % rows:
            return t
        per = rows // world
        return t[rank * per:(rank + 1) * per].contiguous()
    if t.dim() < 2:
        return t
    cols = t.shape[1]
    if cols == 1 or full_k % cols or cols % world:
        return t
    per = cols // world
    return t[:, rank * per:(rank + 1) * per].contiguous()


def needs_whole_quantization(weight_key: str) -> bool:
    key = WEIGHT_KEYS[weight_key]
    return bool((key.scale and key.scale.granularity == "tensor") or key.global_scale)


def shard_weight(w: torch.Tensor, mp, rank: int, world: int) -> torch.Tensor:
    """The bf16 weight's shard (for online quantization of keys without a whole-tensor scale)."""
    full_n, full_k = w.shape
    return shard_tensor(w, mp, full_n, full_k, rank, world)


class ShardedLinear(nn.Module):
    """Wraps a rank's module shard; gathers (column) or reduces (row) through torch.distributed."""

    def __init__(self, inner: nn.Module, split: str, rank: int, world: int, k_local: int,
                 bias: torch.Tensor | None, group=None) -> None:
        super().__init__()
        self.inner, self.split, self.rank, self.world, self.k_local, self.group = inner, split, rank, world, k_local, group
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self.split == "row":
            x_local = x[..., self.rank * self.k_local:(self.rank + 1) * self.k_local]
            out = self.inner(x_local.contiguous())
            dist.all_reduce(out, group=self.group)
        else:
            local = self.inner(x).contiguous()
            parts = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(parts, local, group=self.group)
            out = torch.cat(parts, dim=-1)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"{self.split}-parallel, rank {self.rank} of {self.world}"
