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

from dataclasses import dataclass, replace

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


def shard_bounds(shape: tuple[int, ...], mp, full_n: int, full_k: int, rank: int, world: int):
    """(dim, start, stop) of this rank's part of a tensor of ``shape`` belonging to a module whose
    weight is (full_n, full_k), or None when the tensor stays whole (scalars, per-row scales of a
    row-parallel module, anything not proportional to the split dimension)."""
    if len(shape) == 0 or not is_split(mp, world):
        return None
    if mp.tp_split == "column":
        rows = shape[0]
        if rows == 1 or full_n % rows:
            return None
        per = rows // world
        return 0, rank * per, (rank + 1) * per
    if len(shape) < 2:
        return None
    cols = shape[1]
    if cols == 1 or full_k % cols or cols % world:
        return None
    per = cols // world
    return 1, rank * per, (rank + 1) * per


def shard_tensor(t: torch.Tensor, mp, full_n: int, full_k: int, rank: int, world: int) -> torch.Tensor:
    """This rank's part of one checkpoint-named tensor of a module whose weight is (full_n, full_k)."""
    bounds = shard_bounds(tuple(t.shape), mp, full_n, full_k, rank, world)
    if bounds is None:
        return t
    dim, start, stop = bounds
    return t.narrow(dim, start, stop - start).contiguous()


def needs_whole_quantization(weight_key: str) -> bool:
    key = WEIGHT_KEYS[weight_key]
    return bool((key.scale and key.scale.granularity == "tensor") or key.global_scale)


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


# ---------------------------------------------------------------------------- MoE experts
#
# Experts follow one of two modes (SPEC §5, plan.target["expert_parallel"]):
# - "expert": rank r keeps experts [r*E/W, (r+1)*E/W) whole; routing is replicated, so every rank sees
#   every token, computes its local experts' contributions (others count zero) and the block output is
#   all-reduced;
# - "tensor": every expert is kept, split along its intermediate dimension I: rows [r*I/W, (r+1)*I/W)
#   of gate and the same rows of up (quantc's w13 is [gate; up], so two matching slices, never a
#   contiguous half of 2I), the same columns of down; the partial outputs are all-reduced. The down
#   bias stays on rank 0 only, so the sum adds it once.


@dataclass(frozen=True)
class ExpertShard:
    mode: str  # "expert" | "tensor"
    rank: int
    world: int

    def expert_range(self, num_experts: int) -> tuple[int, int]:
        if self.mode != "expert":
            return 0, num_experts
        if num_experts % self.world:
            raise ValueError(f"{num_experts} experts do not split evenly over {self.world} ranks (expert parallel)")
        per = num_experts // self.world
        return self.rank * per, (self.rank + 1) * per

    def _inter(self, inter: int, row_block: int = 1, group: int = 1) -> tuple[int, int]:
        if inter % self.world:
            raise ValueError(f"the expert width I = {inter} does not split evenly over {self.world} ranks")
        per = inter // self.world
        if per % row_block or per % group:
            raise ValueError(f"each rank's expert width I/{self.world} = {per} cuts a quantization block "
                             f"({max(row_block, group)}) at a shard edge; use expert_parallel or a per-channel key")
        return self.rank * per, (self.rank + 1) * per

    def bf16(self, w13, w2, b13, b2):
        """(w13 (E, 2I, H), w2 (E, H, I), b13 (E, 2I), b2 (E, H)) in quantc's layout -> this rank's part."""
        if self.mode == "expert":
            lo, hi = self.expert_range(w13.shape[0])
            return tuple(None if t is None else t[lo:hi].contiguous() for t in (w13, w2, b13, b2))
        inter = w2.shape[-1]
        lo, hi = self._inter(inter)
        rows = _gate_up_rows(lo, hi, inter, w13.device)
        return (w13[:, rows].contiguous(), w2[..., lo:hi].contiguous(),
                None if b13 is None else b13[:, rows].contiguous(), b2 if self.rank == 0 else None)

    def weights(self, q13, q2, b13, b2):
        """The same for quantized ``WoWeight``s (sliced with their scales) and biases."""
        if self.mode == "expert":
            lo, hi = self.expert_range(q13.num_experts)
            return (_expert_slice(q13, lo, hi), _expert_slice(q2, lo, hi),
                    None if b13 is None else b13[lo:hi].contiguous(), None if b2 is None else b2[lo:hi].contiguous())
        inter = q2.k
        lo, hi = self._inter(inter, q13.row_block, q2.group if q2.scale is not None and q2.scale.shape[-1] > 1 else 1)
        rows = _gate_up_rows(lo, hi, inter, q13.data.device)
        return (_row_slice(q13, rows), _k_slice(q2, lo, hi),
                None if b13 is None else b13[:, rows].contiguous(), b2 if self.rank == 0 else None)


def _gate_up_rows(lo: int, hi: int, inter: int, device) -> torch.Tensor:
    r = torch.arange(lo, hi, device=device)
    return torch.cat([r, r + inter])


def _expert_slice(w, lo: int, hi: int):
    e = w.num_experts

    def cut(t):
        return t if t is None or t.dim() == 0 or t.shape[0] != e else t[lo:hi].contiguous()

    return replace(w, data=cut(w.data), scale=cut(w.scale), zeros=cut(w.zeros), global_scale=cut(w.global_scale))


def _row_slice(w, rows: torch.Tensor):
    """Rows ``rows`` of every expert of a (E, N, K) weight; scales of row blocks follow their first row."""
    def cut(t):
        if t is None:
            return None
        if t.shape[1] == w.n:
            return t[:, rows].contiguous()
        return t[:, rows[::w.row_block] // w.row_block].contiguous()

    return replace(w, n=rows.numel(), data=w.data[:, rows].contiguous(), scale=cut(w.scale), zeros=cut(w.zeros))


def _k_slice(w, lo: int, hi: int):
    """Columns [lo, hi) of every expert's (N, K) weight; a scale of whole rows (per channel) is kept."""
    def cut(t):
        if t is None or t.shape[-1] == 1:
            return t
        return t[..., lo // w.group:hi // w.group].contiguous()

    data = w.data[..., lo // w.pack:hi // w.pack].contiguous()
    return replace(w, k=hi - lo, data=data, scale=cut(w.scale), zeros=cut(w.zeros))


def expert_shard(plan, rank: int, world: int) -> ExpertShard | None:
    if world == 1:
        return None
    return ExpertShard("expert" if plan.target.get("expert_parallel") else "tensor", rank, world)


def global_expert_entry(mp, shard: ExpertShard | None):
    """A plan entry of experts with its unsharded (N, K) (tensor mode keeps per-rank shapes in the plan)."""
    if shard is None or shard.mode == "expert":
        return mp
    n, k = (mp.n * shard.world, mp.k) if mp.tp_split == "column" else (mp.n, mp.k * shard.world)
    return mp._replace(n=n, k=k)
