"""Weight-only GEMM launcher for 4-bit weights (int4 sym/asym, mxfp4, nvfp4) with bf16 activations:
kernel ids ``int4_weight_only_gemm`` and ``fp4_weight_only_gemm`` (and the emulated MX / nvfp4 W4A4
pairs, which round the activations first: ``wo_mx``).

    out[m, n] = sum_k x[m, k] * deq(w)[n, k]          deq(w)[n, k] = v(code[n, k]) * s[n // RB, k // G]
                                                          (* global scale for nvfp4)

with v the signed int4 code (or code - zero point) or the e2m1 value. Layouts: ``wo_format``. Four
kernels read the same words: ``wo_gemv`` (CUDA cores, half2 arithmetic) runs every format at M = 1 on an sm_90
GPU (``wo_gemv.uses_gemv``); ``wo_plane_mma`` (mma_v2 on A fragments decoded straight from the natural order)
int4 g128, mxfp4 and nvfp4 at 2-8 rows there, int4 with zero points 2-16 (``wo_plane_mma.uses_plane_mma``); of the
other two tensor-core kernels, ``wo_planes`` (eight nibble planes per tile, the decoded weights never leave
registers) runs int4 at M <= 16 and every format at M = 1 elsewhere, and ``wo_mma4`` (decoded tile in K order)
the rest, prefill included. Measured on an H100 (bench/results/wo_h100.json):
planes is 1.3-1.6x faster than mma4 for int4 at decode and ~1.1x for fp4 at M = 1, slower for fp4 at
M = 16 (its per-element scales cost more there). This module is the
torch custom op (``quantc::wo_gemm``, so applied models run under torch.compile), the shape checks,
the plain-torch reference, and the configs: defaults without a table and the candidates
``quantc tune`` and bench/bench_wo.py time. fp8 / int8 weight-only layers run ``scaled_mm``.
"""

from __future__ import annotations

import torch

from ...plan import KernelConfig as WoConfig  # stdlib-only; any object with these fields works
from .common import cdiv
from .wo_dequant import launch_dequant, uses_dequant
from .wo_format import INT4, WoWeight, dequantize
from .wo_gemv import GEMV_ROWS_MAX, gemv_config, grid_sms, launch_gemv, uses_gemv
from .wo_mma4 import launch_mma4
from .wo_plane_mma import launch_plane_mma, plane_mma_split, uses_plane_mma
from .wo_planes import launch_planes


def _planes_rows(m: int, int4: bool) -> bool:
    """The rows the planes kernel takes: M = 1 for every format, up to 16 for int4."""
    return m == 1 or (m <= 16 and int4)


def uses_planes(m: int, fmt: int, k: int) -> bool:
    """Which kernel runs M rows of a weight of format ``fmt``: see the module docstring. The planes
    kernel needs 128-element K tiles (16-deep planes); K = 2880 (gpt-oss) and the like run mma4."""
    return _planes_rows(m, fmt == INT4) and k % 128 == 0


def _launch(x2, data, scale, zeros, gscale, fmt, sfmt, pack, group, row_block, n, cfg) -> torch.Tensor:
    w = WoWeight(fmt, n, x2.shape[1], data, scale, sfmt, group, row_block, zeros, gscale)
    if uses_plane_mma(x2, w):  # 2-8 rows on sm_90 (int4 with zero points 2-16): the natural layout's MMA kernel
        return launch_plane_mma(x2, w, 4, plane_mma_split(n, x2.shape[1], x2.shape[0], grid_sms(x2.device)))
    if uses_gemv(x2, w):  # 4-bit decode on sm_90: the CUDA-core GEMV at its own config
        m = x2.shape[0]  # up to GEMV_ROWS_MAX rows share a program; more take a program each
        cfg, warps_k = gemv_config(n if m <= GEMV_ROWS_MAX else m * n, x2.shape[1], grid_sms(x2.device))
        return launch_gemv(x2, w, cfg, warps_k)
    if uses_planes(x2.shape[0], fmt, x2.shape[1]):
        return launch_planes(x2, w, cfg)
    if uses_dequant(x2.shape[0], x2.device):
        return launch_dequant(x2, w)
    return launch_mma4(x2, w, cfg)


def _wo_gemm(
    x: torch.Tensor, data: torch.Tensor, scale: torch.Tensor | None, zeros: torch.Tensor | None,
    gscale: torch.Tensor | None, fmt: int, sfmt: int, pack: int, group: int, row_block: int, n: int,
    block_m: int, block_n: int, block_k: int, num_warps: int, num_stages: int, split_k: int,
) -> torch.Tensor:
    cfg = WoConfig(block_m, block_n, block_k, num_warps=num_warps, num_stages=num_stages, split_k=split_k)
    return _launch(x, data, scale, zeros, gscale, fmt, sfmt, pack, group, row_block, n, cfg)


# the op torch.compile sees; eager calls skip its dispatch (~30 us of host time, see runtime/modules.py)
_wo_gemm_op = torch.library.custom_op("quantc::wo_gemm", _wo_gemm, mutates_args=())


@_wo_gemm_op.register_fake
def _(x, data, scale, zeros, gscale, fmt, sfmt, pack, group, row_block, n, *cfg):
    return x.new_empty((x.shape[0], n), dtype=torch.bfloat16)


def check(x: torch.Tensor, w: WoWeight) -> None:
    if w.pack != 8:
        raise ValueError("wo_gemm runs 4-bit weights (int4, mxfp4, nvfp4); fp8 / int8 weight-only layers run "
                         "the scaled_mm kernels (fp8_weight_only_gemm, int8_weight_only_gemm)")
    if w.data.dim() != 2:
        raise ValueError(f"wo_gemm takes one (N, K) weight, got data of shape {tuple(w.data.shape)}")
    if x.shape[-1] != w.k:
        raise ValueError(f"activation has K = {x.shape[-1]}, the weight K = {w.k}")
    if w.k % 32:
        raise ValueError(f"K = {w.k} is not a multiple of 32 (4-bit weights need whole words)")


def launch(x: torch.Tensor, w: WoWeight, cfg) -> torch.Tensor:
    """bf16 (.., K) x WoWeight (N, K) -> bf16 (.., N). ``cfg`` is the plan's KernelConfig for M."""
    check(x, w)
    if w.k_perm is not None:
        x = x.index_select(-1, w.k_perm)
    x2 = x.reshape(-1, w.k).to(torch.bfloat16).contiguous()
    gemm = torch.ops.quantc.wo_gemm if torch.compiler.is_compiling() else _wo_gemm
    out = gemm(
        x2, w.data, w.scale, w.zeros, w.global_scale, w.fmt, w.sfmt, w.pack, w.group, w.row_block, w.n,
        cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps, cfg.num_stages, cfg.split_k,
    )
    return out.reshape(*x.shape[:-1], w.n)


def reference(x: torch.Tensor, w: WoWeight) -> torch.Tensor:
    """fp32 x @ dequantized(w).T, the same math in plain torch."""
    if w.k_perm is not None:
        x = x.index_select(-1, w.k_perm)
    return x.float() @ dequantize(w).T


def _split(n: int, k: int, bn: int, bk: int, sms: int, waves: int = 2) -> int:
    """K slices so that the grid covers the SMs about ``waves`` times (decode shapes have few N tiles);
    the planes kernel's two-warp programs want about four."""
    return max(1, min(cdiv(waves * sms, cdiv(n, bn)), k // bk, 32))


def default_config(m: int, n: int, k: int, sms: int = 132, int4: bool = False) -> WoConfig:
    """A reasonable config without a tuned table (measured on an H100: bench/results/wo_h100.json).
    M = 1 (and int4 up to 16) runs the planes kernel: two-warp programs on 32-64 weight rows, four
    stages, split-K to about four programs per SM; fp4 at 2..16 rows runs mma4 on 64 x 256 tiles."""
    if _planes_rows(m, int4):
        bn = 32 if m == 1 else 64
        return WoConfig(16, bn, 128, num_warps=2, num_stages=4, split_k=_split(n, k, bn, 128, sms, 4))
    if m <= 16:
        return WoConfig(16, 64, 256, num_warps=4, num_stages=3, split_k=_split(n, k, 64, 256, sms))
    if m <= 64:
        return WoConfig(64, 128, 128, num_warps=4, num_stages=3, split_k=_split(n, k, 128, 128, sms))
    return WoConfig(64, 128, 128, num_warps=4, num_stages=3)


def candidates(m: int, n: int, k: int, sms: int = 132, int4: bool | None = None) -> list[WoConfig]:
    """Configs ``quantc tune`` (and the bench) try for one (M, N, K); ``int4`` None: both formats'."""
    out = []
    if _planes_rows(m, int4 is not False) and k >= 128:
        for bn, warps, stages, waves in ((32, 2, 4, 4), (64, 2, 4, 4), (32, 2, 3, 8), (64, 2, 3, 8), (128, 4, 3, 4),
                                         # few waves: the large shapes (bench/results/wo_probe_h100_panels.json)
                                         (32, 2, 3, 2), (64, 2, 3, 2), (128, 4, 3, 2), (256, 4, 3, 2)):
            out.append(WoConfig(16, bn, 128, num_warps=warps, num_stages=stages,
                                split_k=_split(n, k, bn, 128, sms, waves)))
    if _planes_rows(m, int4 is True):  # only the planes kernel runs these rows
        return out
    if m <= 16:
        tiles = [(32, 256, 4), (64, 256, 4), (64, 512, 4), (128, 256, 8)]
        bm = 16
    else:
        tiles = [(64, 64, 4), (64, 128, 4), (128, 64, 4), (128, 128, 4), (128, 128, 8)]
        bm = 64 if m <= 64 else 128
    for bn, bk, warps in tiles:
        if bk > k:
            continue
        split = _split(n, k, bn, bk, sms) if m <= 256 else 1
        out.append(WoConfig(bm, bn, bk, num_warps=warps, num_stages=3, split_k=split))
    return out
