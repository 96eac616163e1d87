"""Pre-quantized checkpoint tensors -> quantc's kernel layouts (``kernels.wo_format.WoWeight``).

==================================  ============================================================
source                              tensors (a linear of out N, in K; groups of G along K)
==================================  ============================================================
AWQ (GEMM)                          ``qweight`` int32 (K, N/8), ``qzeros`` int32 (K/G, N/8), both
                                    packed along N in the order 0 2 4 6 1 3 5 7; ``scales`` (K/G, N)
GPTQ                                ``qweight`` int32 (K/8, N) packed along K; ``qzeros`` int32
                                    (K/G, N/8) packed along N, stored as zero - 1 (v1 format);
                                    ``scales`` (K/G, N); ``g_idx`` int32 (K,) group of each input
                                    row. Act-order (non-monotonic g_idx): K is permuted at load so
                                    groups are contiguous; the layer then permutes its input.
gpt-oss mxfp4                       ``*_blocks`` uint8 (E, N, K/32, 16), ``*_scales`` uint8 e8m0
                                    (E, N, K/32); gate_up rows interleave gate (even) and up (odd)
compressed-tensors pack-quantized   ``weight_packed`` int32 (N, K/8), codes offset by +8;
                                    ``weight_scale`` (N, K/G); asym: ``weight_zero_point`` int32
                                    (N/8, K/G) packed along N, also offset by +8
compressed-tensors nvfp4            ``weight_packed`` uint8 (N, K/2), ``weight_scale`` e4m3 (N, K/16),
                                    ``weight_global_scale`` fp32 (1,): the *divisor*
                                    (x = e2m1 * weight_scale / weight_global_scale)
==================================  ============================================================

Every 4-bit word is little-endian sequential (nibble j = element 8p + j) unless a row above says
otherwise. Errors are ``LayoutError`` naming the tensor, the shape found and the shape expected.
"""

from __future__ import annotations

import torch

from .kernels.wo_format import INT4, MXFP4, NVFP4, S_E8M0, S_FLOAT, WoWeight

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_FLIP_BIT3 = 0x88888888 - (1 << 32)  # the bit pattern 0x88888888 as an int32 value  # nibble i of an AWQ word holds element AWQ_ORDER[i] of its 8


class LayoutError(ValueError):
    pass


def _expect(name: str, t: torch.Tensor, shape: tuple, dtype=None) -> None:
    if tuple(t.shape) != tuple(shape):
        raise LayoutError(f"{name}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise LayoutError(f"{name}: dtype {t.dtype}, expected {dtype}")


def unpack_int32(words: torch.Tensor, dim: int, order=tuple(range(8))) -> torch.Tensor:
    """int32 words holding eight 4-bit codes -> uint8 codes, unpacked along ``dim`` (8x longer);
    nibble i of a word holds element ``order[i]`` of its eight."""
    w = words.to(torch.int32)
    nib = torch.stack([(w >> (4 * i)) & 0xF for i in range(8)], dim=-1)  # (..., 8) by nibble
    inv = [order.index(e) for e in range(8)]
    nib = nib[..., inv]  # by element
    nib = nib.movedim(-1, dim + 1 if dim >= 0 else dim)
    shape = list(words.shape)
    shape[dim] *= 8
    return nib.reshape(shape).to(torch.uint8)


def pack_words(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (.., K) -> quantc's int32 words (.., K/8), nibble j = element 8p + j."""
    c = codes.to(torch.uint8) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous().view(torch.int32)


def _int4(codes_nk: torch.Tensor, scales_ng: torch.Tensor, zeros_ng: torch.Tensor, group: int, perm=None):
    n, k = codes_nk.shape
    return WoWeight(INT4, n, k, pack_words(codes_nk), scales_ng.to(torch.bfloat16).contiguous(), S_FLOAT, group, 1,
                    zeros_ng.to(torch.uint8).contiguous(), None, perm)


def awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int) -> WoWeight:
    k, n8 = qweight.shape
    n = n8 * 8
    _expect("qzeros", qzeros, (k // group, n8))
    _expect("scales", scales, (k // group, n))
    codes = unpack_int32(qweight, 1, AWQ_ORDER)  # (K, N)
    zeros = unpack_int32(qzeros, 1, AWQ_ORDER)   # (K/G, N)
    return _int4(codes.T, scales.T, zeros.T, group)


def gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group: int,
         g_idx: torch.Tensor | None = None, zeros_minus_one: bool = True) -> WoWeight:
    k8, n = qweight.shape
    k = k8 * 8
    ng = scales.shape[0]
    _expect("scales", scales, (ng, n))
    _expect("qzeros", qzeros, (ng, n // 8))
    codes = unpack_int32(qweight, 0)                     # (K, N)
    zeros = unpack_int32(qzeros, 1).to(torch.int32)      # (groups, N)
    if zeros_minus_one:
        zeros = (zeros + 1) & 0xF
    perm = None if g_idx is None else act_order_perm(g_idx, group, k, ng)
    if perm is not None:
        codes = codes[perm]
    if ng * group != k:
        raise LayoutError(f"scales: {ng} groups of {group} do not cover K = {k}")
    return _int4(codes.T, scales.T, zeros.T, group, perm)


def act_order_perm(g_idx: torch.Tensor, group: int, k: int, groups: int, name: str = "g_idx") -> torch.Tensor | None:
    """The permutation of K that makes act-order groups contiguous (None when ``g_idx`` is already
    ``arange(K) // group``): the weight's K is reordered by it at load, and the layer's input too."""
    _expect(name, g_idx, (k,))
    g_idx = g_idx.to(torch.int64)
    if torch.equal(g_idx, torch.arange(k, device=g_idx.device) // group):
        return None
    counts = torch.bincount(g_idx.clamp_min(0), minlength=groups)
    if g_idx.min() < 0 or counts.numel() != groups or (counts != group).any():
        raise LayoutError(f"{name}: every group must hold exactly {group} input rows (group_size), "
                          f"found counts {sorted(set(counts.tolist()))}")
    return torch.argsort(g_idx, stable=True)


def gpt_oss_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, deinterleave: bool = False) -> WoWeight:
    """(E, N, K/32, 16) blocks + (E, N, K/32) e8m0 scales. ``deinterleave`` reorders gate_up's rows from
    gate/up interleaved to [gate; up] (what quantc's fused SwiGLU reads)."""
    if blocks.dim() != 4 or blocks.shape[-1] != 16:
        raise LayoutError(f"*_blocks: shape {tuple(blocks.shape)}, expected (E, N, K/32, 16) uint8")
    e, n, kb, _ = blocks.shape
    _expect("*_scales", scales, (e, n, kb), torch.uint8)
    data = blocks.contiguous().view(torch.uint8).reshape(e, n, kb * 16)
    s = scales
    if deinterleave:
        rows = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)])
        data, s = data[:, rows], s[:, rows]
    return WoWeight(MXFP4, n, kb * 32, data.contiguous().view(torch.int32), s.contiguous(), S_E8M0, 32)


def ct_int4(weight_packed: torch.Tensor, weight_scale: torch.Tensor, group: int,
            weight_zero_point: torch.Tensor | None = None) -> WoWeight:
    n, k8 = weight_packed.shape
    k = k8 * 8
    _expect("weight_scale", weight_scale, (n, k // group))
    if weight_zero_point is None:
        # offset binary (q + 8) -> two's complement nibbles: flip bit 3 of every nibble
        data = (weight_packed.to(torch.int32) ^ _FLIP_BIT3).contiguous()
        return WoWeight(INT4, n, k, data, weight_scale.to(torch.bfloat16).contiguous(), S_FLOAT, group, 1)
    _expect("weight_zero_point", weight_zero_point, (n // 8, k // group))
    zeros = unpack_int32(weight_zero_point, 0)  # (N, K/G), offset binary like the codes: q - z unchanged
    return WoWeight(INT4, n, k, weight_packed.to(torch.int32).contiguous(),
                    weight_scale.to(torch.bfloat16).contiguous(), S_FLOAT, group, 1, zeros.contiguous())


def ct_nvfp4(weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_global_scale: torch.Tensor) -> WoWeight:
    n, k2 = weight_packed.shape
    k = k2 * 2
    _expect("weight_packed", weight_packed, (n, k2), torch.uint8)
    _expect("weight_scale", weight_scale, (n, k // 16), torch.float8_e4m3fn)
    if weight_global_scale.numel() != 1:
        raise LayoutError(f"weight_global_scale: shape {tuple(weight_global_scale.shape)}, expected (1,)")
    g = (1.0 / weight_global_scale.float()).reshape(1).contiguous()
    return WoWeight(NVFP4, n, k, weight_packed.contiguous().view(torch.int32), weight_scale.contiguous(),
                    S_FLOAT, 16, global_scale=g)


LAYOUTS = {
    "awq": (awq, ("qweight", "qzeros", "scales")),
    "gptq": (gptq, ("qweight", "qzeros", "scales")),
    "ct_int4": (ct_int4, ("weight_packed", "weight_scale")),
    "ct_nvfp4": (ct_nvfp4, ("weight_packed", "weight_scale", "weight_global_scale")),
}


def load(tensors, prefix: str, layout: str, **kw) -> WoWeight:
    """Read one module's tensors (``prefix`` + "." + name) from a state dict or a safetensors file path
    and convert them. ``kw`` carries group size etc.; optional tensors (g_idx, weight_zero_point) are
    picked up when present."""
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown checkpoint layout {layout!r}; known: {', '.join(sorted(LAYOUTS))}")
    if isinstance(tensors, (str, bytes)) or hasattr(tensors, "__fspath__"):
        from safetensors.torch import load_file

        tensors = load_file(str(tensors))
    fn, names = LAYOUTS[layout]
    missing = [f"{prefix}.{n}" for n in names if f"{prefix}.{n}" not in tensors]
    if missing:
        raise LayoutError(f"{layout}: missing tensor(s) {', '.join(missing)}")
    args = [tensors[f"{prefix}.{n}"] for n in names]
    for opt in ("g_idx", "weight_zero_point"):
        if f"{prefix}.{opt}" in tensors:
            kw[opt] = tensors[f"{prefix}.{opt}"]
    if layout == "ct_int4":
        return fn(args[0], args[1], kw.pop("group"), **kw)
    if layout in ("awq", "gptq"):
        return fn(*args, kw.pop("group"), **kw)
    return fn(*args)
