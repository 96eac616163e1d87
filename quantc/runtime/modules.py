"""``QuantLinear`` and the torch custom op it calls under torch.compile, so applied models run there
and under CUDA graphs: the op is opaque to the compiler (``register_fake`` gives its output shape) and
its body only launches kernels on preallocated buffers (no host sync, one output allocation).

Eager calls skip the custom op: its dispatch costs ~30 us of host time a call (an H100 profile of a
two-layer Llama decode step spent more time on the host than on the GPU), so ``QuantLinear.forward``
calls the same body directly unless torch.compile is tracing, with the module's bucket bounds and
configs decoded once at construction; a call whose input signature (rows, alignment, device, stream) the module
has seen replays its recorded launches (``launch_memo``) instead of running the launchers' Python.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Optional

import torch
from torch import nn

from quantc.plan import KernelConfig

from . import launch_memo
from .kernels.common import stream_key
from .registry import LAUNCHERS
from .tables import bucket_lookup, pick

_CFG_FIELDS = 8  # m_max, block_m, block_n, block_k, group_m, num_warps, num_stages, split_k


def flatten_buckets(buckets) -> list[int]:
    out: list[int] = []
    for m_max, c in buckets:
        out += [m_max, c.block_m, c.block_n, c.block_k, c.group_m, c.num_warps, c.num_stages, c.split_k]
    return out


@lru_cache(maxsize=1024)
def _lookup(table: tuple[int, ...]):
    rows = [table[i : i + _CFG_FIELDS] for i in range(0, len(table), _CFG_FIELDS)]
    return bucket_lookup([(r[0], KernelConfig(*r[1:])) for r in rows])


def run_dense(x: torch.Tensor, buffers: list[torch.Tensor], bias: Optional[torch.Tensor], kernel: str,
              weight_key: str, act_key: str, lookup) -> torch.Tensor:
    """bf16 (M, K) -> bf16 (M, N) through the plan's kernel, with the KernelConfig for this M
    (``lookup``: the (bounds, configs) of ``bucket_lookup``, or None for the launcher's defaults)."""
    config = pick(*lookup, x.shape[0]) if lookup is not None else None
    if _FAILED and config is not None and (kernel, config) in _FAILED:
        config = None
    try:
        return LAUNCHERS[kernel].run(x, buffers, config, weight_key, act_key, bias)
    except Exception as exc:
        if config is None:
            raise
        # a tuned config that does not run here (out of shared memory on another GPU, a Triton
        # version that refuses it): the launcher's default takes over, with one warning per config
        _FAILED.add((kernel, config))
        warnings.warn(f"quantc: kernel {kernel} failed with the plan's config {config} ({type(exc).__name__}: "
                      f"{str(exc)[:200]}); using its default config from now on", RuntimeWarning, stacklevel=2)
        return LAUNCHERS[kernel].run(x, buffers, None, weight_key, act_key, bias)


_FAILED: set = set()  # (kernel, KernelConfig) pairs that failed once in this process


@torch.library.custom_op("quantc::dense", mutates_args=())
def dense(x: torch.Tensor, buffers: list[torch.Tensor], bias: Optional[torch.Tensor], kernel: str,
          weight_key: str, act_key: str, table: list[int], n: int) -> torch.Tensor:
    """``run_dense`` as a custom op (torch.compile); ``table`` is ``flatten_buckets``'s list."""
    return run_dense(x, buffers, bias, kernel, weight_key, act_key, _lookup(tuple(table)) if table else None)


@dense.register_fake
def _(x, buffers, bias, kernel, weight_key, act_key, table, n):
    return x.new_empty((x.shape[0], n), dtype=torch.bfloat16)


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantized; the plan's kernel computes it."""

    def __init__(self, name: str, kernel: str, weight_key: str, act_key: str, n: int, k: int,
                 buffers: dict[str, torch.Tensor], bias: torch.Tensor | None, buckets) -> None:
        super().__init__()
        self.name, self.kernel, self.weight_key, self.act_key = name, kernel, weight_key, act_key
        self.in_features, self.out_features = k, n
        self._names = tuple(buffers)
        for key, t in buffers.items():
            self.register_buffer(key, t)
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))
        self._table = flatten_buckets(buckets) if buckets else []
        self._lookup = _lookup(tuple(self._table)) if buckets else None
        self._memo: dict = {}  # launch_memo's recordings, by input signature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.bfloat16 or not x2.is_contiguous():
            x2 = x2.to(torch.bfloat16).contiguous()
        if torch.compiler.is_compiling():
            out = dense(x2, [getattr(self, key) for key in self._names], self.bias, self.kernel, self.weight_key,
                        self.act_key, self._table, self.out_features)
        else:
            buffers = self._buffers  # what getattr reads for a buffer, without nn.Module.__getattr__'s lookups
            tensors = [buffers[key] for key in self._names]
            bias = buffers["bias"]
            if x2.shape[0] and launch_memo.enabled():
                tensors.append(bias)
                out = launch_memo.run(self._memo, (x2.shape[0], not x2.data_ptr() & 15, x2.device,
                                                   stream_key(x2.device)), tensors, self._run_dense, x2)
            else:
                out = run_dense(x2, tensors, bias, self.kernel, self.weight_key, self.act_key, self._lookup)
        return out.reshape(*lead, self.out_features)

    def __getstate__(self):
        # recordings hold compiled kernels (not picklable) and the buffers (a deep copy would duplicate them)
        state = dict(super().__getstate__())
        state["_memo"] = {}
        return state

    def _apply(self, fn, recurse=True):
        self._memo = {}  # recordings hold the old buffers (and would keep them alive)
        return super()._apply(fn, recurse)

    def _run_dense(self, x2: torch.Tensor) -> torch.Tensor:
        """``run_dense`` on the module's current buffers (``launch_memo`` records and replays it)."""
        buffers = self._buffers
        return run_dense(x2, [buffers[key] for key in self._names], buffers["bias"], self.kernel, self.weight_key,
                         self.act_key, self._lookup)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, kernel={self.kernel}, weight={self.weight_key}, "
                f"activation={self.act_key}")
