"""Weight and activation quantizers in plain torch: the reference math of SPEC §7, bit for bit.

Every weight key of ``quantc.keys.WEIGHT_KEYS`` has a quantizer (online quantization of a bf16
checkpoint) and a dequantizer (the reference the GEMMs are checked against). Quantized weights are a
dict of tensors named as checkpoints name them:

=====================  ==========================================================================
key                    tensors (weight of shape (N, K))
=====================  ==========================================================================
fp8_per_tensor         ``weight`` e4m3 (N, K), ``weight_scale`` fp32 ()
fp8_per_channel        ``weight`` e4m3 (N, K), ``weight_scale`` fp32 (N, 1)
fp8_block_128x128      ``weight`` e4m3 (N, K), ``weight_scale_inv`` fp32 (ceil(N/128), K/128)
mxfp8                  ``weight`` e4m3 (N, K), ``weight_scale`` uint8 e8m0 (N, K/32)
int8_per_channel       ``weight`` int8 (N, K), ``weight_scale`` fp32 (N, 1)
int4_group_G           ``weight_packed`` uint8 (N, K/2), ``weight_scale`` bf16 (N, K/G)
int4_group_G_asym      as int4_group_G plus ``weight_zero_point`` uint8 (N, K/G)
mxfp4                  ``weight_packed`` uint8 (N, K/2), ``weight_scale`` uint8 e8m0 (N, K/32)
nvfp4                  ``weight_packed`` uint8 (N, K/2), ``weight_scale`` e4m3 (N, K/16),
                       ``weight_scale_2`` fp32 () (the global scale)
=====================  ==========================================================================

Packing of 4-bit codes: two per byte along K, element 2j in the low nibble, 2j+1 in the high one.
int4 (symmetric) codes are two's complement in [-7, 7]; uint4 codes are in [0, 15] with
``x ~ (q - zero) * scale``; e2m1 codes are sign << 3 | magnitude index into ``E2M1_VALUES``.

Formulas: scale = amax / fmt_max in fp32 with amax floored at 1e-12; values divided by the scale,
clamped to ±fmt_max, then rounded to nearest even. e8m0 scales follow OCP MX v1.0: the shared
exponent is floor(log2(amax)) - emax(element), stored biased by 127.
"""

from __future__ import annotations

from typing import Callable

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FP8_EMAX = 8  # 448 = 1.75 * 2**8
INT8_MAX = 127.0
FP4_MAX = 6.0
FP4_EMAX = 2  # 6 = 1.5 * 2**2
AMAX_FLOOR = 1e-12
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

Tensors = dict[str, torch.Tensor]

# ---------------------------------------------------------------------------- element rounding


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """fp32 values (already divided by their scale) -> e4m3, saturating, round to nearest even."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)


def _over(amax: torch.Tensor, fmt_max: float) -> torch.Tensor:
    """amax / fmt_max, correctly rounded: torch on CUDA divides by a Python scalar as a multiply by
    its reciprocal (1 ulp off at times), so the divisor is a tensor of the same shape."""
    return amax / torch.full_like(amax, fmt_max)


def _amax(x: torch.Tensor, dim=None, keepdim: bool = False) -> torch.Tensor:
    a = x.float().abs()
    a = a.amax() if dim is None else a.amax(dim=dim, keepdim=keepdim)
    return a.clamp_min(AMAX_FLOOR)


def e8m0_exponent(amax: torch.Tensor, emax: int) -> torch.Tensor:
    """Unbiased shared exponent floor(log2(amax)) - emax, read exactly off the fp32 bits."""
    bits = amax.float().contiguous().view(torch.int32)
    return ((bits >> 23) & 0xFF) - 127 - emax


def e8m0_to_float(e: torch.Tensor) -> torch.Tensor:
    """Biased e8m0 codes (uint8) -> fp32 powers of two (255 = NaN per the spec)."""
    e = e.to(torch.int32)
    out = torch.ldexp(torch.ones_like(e, dtype=torch.float32), e - 127)
    return torch.where(e == 255, torch.full_like(out, float("nan")), out)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> e2m1 codes (uint8 0..15), saturating at ±6, round to nearest even."""
    mag = x.abs().clamp(max=FP4_MAX)
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=x.device)
    # nearest grid point; on a tie pick the even code (even magnitude index = mantissa bit 0)
    dist = (mag.unsqueeze(-1) - grid).abs()
    best = dist.min(dim=-1, keepdim=True).values
    cand = dist == best
    idx_even = torch.arange(8, device=x.device) % 2 == 0
    tie_pick = (cand & idx_even).float().argmax(dim=-1)
    first = cand.float().argmax(dim=-1)
    idx = torch.where(cand.sum(-1) > 1, tie_pick, first)
    sign = (x < 0) & (idx > 0)
    return (idx | (sign.to(idx.dtype) << 3)).to(torch.uint8)


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    c = codes.to(torch.int64)
    v = grid[c & 7]
    return torch.where((c & 8) != 0, -v, v)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    c = codes.to(torch.uint8) & 0xF
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    lo, hi = packed & 0xF, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


# ---------------------------------------------------------------------------- activations


def quant_fp8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> e4m3 (M, K), fp32 scales (M, 1)."""
    s = _over(_amax(x, dim=-1, keepdim=True), FP8_MAX)
    return to_fp8(x.float() / s), s


def quant_fp8_per_tensor(x: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic (scale None) or static per-tensor: e4m3 (M, K), fp32 scale ()."""
    s = _over(_amax(x), FP8_MAX) if scale is None else scale.float().reshape(())
    return to_fp8(x.float() / s), s


def quant_fp8_group(x: torch.Tensor, group: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> e4m3 (M, K), fp32 scales (M, K/group)."""
    m, k = x.shape
    g = x.float().reshape(m, k // group, group)
    s = _over(_amax(g, dim=-1, keepdim=True), FP8_MAX)
    return to_fp8(g / s).reshape(m, k), s.reshape(m, k // group)


def quant_int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> int8 (M, K), fp32 scales (M, 1); round half to even."""
    s = _over(_amax(x, dim=-1, keepdim=True), INT8_MAX)
    return torch.round(x.float() / s).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), s


def quant_mx(x: torch.Tensor, group: int = 32, fp4: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, K) -> elements (e4m3, or e2m1 codes unpacked) and e8m0 codes uint8 (R, K/group)."""
    r, k = x.shape
    g = x.float().reshape(r, k // group, group)
    e = e8m0_exponent(_amax(g, dim=-1, keepdim=True), FP4_EMAX if fp4 else FP8_EMAX).clamp(-127, 127)
    scaled = g * torch.ldexp(torch.ones_like(g), -e)
    q = round_e2m1(scaled) if fp4 else to_fp8(scaled)
    return q.reshape(r, k), (e + 127).to(torch.uint8).reshape(r, k // group)


ACTIVATION_QUANTIZERS: dict[str, Callable] = {
    "fp8_dynamic_per_token": quant_fp8_per_token,
    "fp8_dynamic_per_tensor": quant_fp8_per_tensor,
    "fp8_static_per_tensor": quant_fp8_per_tensor,
    "fp8_dynamic_group_128": quant_fp8_group,
    "int8_dynamic_per_token": quant_int8_per_token,
    "mxfp8": quant_mx,
}

# ---------------------------------------------------------------------------- weights

WEIGHT_QUANTIZERS: dict[str, Callable[[torch.Tensor], Tensors]] = {}
WEIGHT_DEQUANTIZERS: dict[str, Callable[[Tensors], torch.Tensor]] = {}


def _register(*names: str):
    def deco(pair):
        q, dq = pair
        for n in names:
            WEIGHT_QUANTIZERS[n] = q
            WEIGHT_DEQUANTIZERS[n] = dq
        return pair

    return deco


_register("fp8_per_tensor")((
    lambda w: dict(zip(("weight", "weight_scale"), quant_fp8_per_tensor(w))),
    lambda t: t["weight"].float() * t["weight_scale"],
))
_register("fp8_per_channel")((
    lambda w: dict(zip(("weight", "weight_scale"), quant_fp8_per_token(w))),
    lambda t: t["weight"].float() * t["weight_scale"],
))


def _expand_blocks(s: torch.Tensor, n: int, k: int, block: int) -> torch.Tensor:
    return s.repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]


def _quant_fp8_block(w: torch.Tensor, block: int = 128) -> Tensors:
    """128x128 blocks; a ragged last block along N (or K) uses its own rows' amax."""
    n, k = w.shape
    nb, kb = -(-n // block), -(-k // block)
    wp = torch.zeros(nb * block, kb * block, dtype=torch.float32, device=w.device)
    wp[:n, :k] = w.float()
    blocks = wp.reshape(nb, block, kb, block)
    s = _over(blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR), FP8_MAX)
    q = to_fp8(blocks / s[:, None, :, None]).reshape(nb * block, kb * block)[:n, :k]
    return {"weight": q.contiguous(), "weight_scale_inv": s}


_register("fp8_block_128x128")((
    _quant_fp8_block,
    lambda t: t["weight"].float() * _expand_blocks(t["weight_scale_inv"], *t["weight"].shape, 128),
))


def _quant_mxfp8(w: torch.Tensor) -> Tensors:
    q, e = quant_mx(w, 32)
    return {"weight": q, "weight_scale": e}


_register("mxfp8")((
    _quant_mxfp8,
    lambda t: t["weight"].float() * e8m0_to_float(t["weight_scale"]).repeat_interleave(32, 1),
))
_register("int8_per_channel")((
    lambda w: dict(zip(("weight", "weight_scale"), quant_int8_per_token(w))),
    lambda t: t["weight"].float() * t["weight_scale"],
))


def _quant_int4(group: int, symmetric: bool):
    def quant(w: torch.Tensor) -> Tensors:
        n, k = w.shape
        g = w.float().reshape(n, k // group, group)
        if symmetric:
            s = (_amax(g, dim=-1, keepdim=True) / 7.0).to(torch.bfloat16)
            q = torch.round(g / s.float()).clamp(-7, 7).to(torch.int8)
            return {"weight_packed": pack_nibbles(q.reshape(n, k).view(torch.uint8)),
                    "weight_scale": s.reshape(n, k // group)}
        lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
        s = ((hi - lo).clamp_min(AMAX_FLOOR) / 15.0).to(torch.bfloat16)
        z = torch.round(-lo / s.float()).clamp(0, 15)
        q = (torch.round(g / s.float()) + z).clamp(0, 15).to(torch.uint8)
        return {"weight_packed": pack_nibbles(q.reshape(n, k)), "weight_scale": s.reshape(n, k // group),
                "weight_zero_point": z.to(torch.uint8).reshape(n, k // group)}

    def dequant(t: Tensors) -> torch.Tensor:
        codes = unpack_nibbles(t["weight_packed"]).to(torch.int32)
        if symmetric:
            codes = torch.where(codes >= 8, codes - 16, codes)
        else:
            codes = codes - t["weight_zero_point"].to(torch.int32).repeat_interleave(group, 1)
        return codes.float() * t["weight_scale"].float().repeat_interleave(group, 1)

    return quant, dequant


for _g in (32, 64, 128):
    _register(f"int4_group_{_g}")(_quant_int4(_g, True))
    _register(f"int4_group_{_g}_asym")(_quant_int4(_g, False))


def _quant_mxfp4(w: torch.Tensor) -> Tensors:
    q, e = quant_mx(w, 32, fp4=True)
    return {"weight_packed": pack_nibbles(q), "weight_scale": e}


_register("mxfp4")((
    _quant_mxfp4,
    lambda t: e2m1_to_float(unpack_nibbles(t["weight_packed"]))
    * e8m0_to_float(t["weight_scale"]).repeat_interleave(32, 1),
))


def quant_nvfp4(w: torch.Tensor, global_scale: torch.Tensor | None = None) -> Tensors:
    """nvfp4: the fp32 global scale amax / (448 * 6), or the one given (a checkpoint's calibrated
    activation ``input_scale``: block scales then saturate at 448 and codes at 6 for larger values)."""
    n, k = w.shape
    g = w.float().reshape(n, k // 16, 16)
    if global_scale is None:
        global_scale = _amax(w) / (FP8_MAX * FP4_MAX)
    else:
        global_scale = global_scale.float().reshape(()).to(w.device)
    block = to_fp8(_amax(g, dim=-1, keepdim=True) / FP4_MAX / global_scale)
    eff = block.float() * global_scale
    eff = torch.where(eff == 0, torch.ones_like(eff), eff)  # an all-zero block: any scale gives 0
    codes = round_e2m1(g / eff).reshape(n, k)
    return {"weight_packed": pack_nibbles(codes), "weight_scale": block.reshape(n, k // 16),
            "weight_scale_2": global_scale}


_register("nvfp4")((
    quant_nvfp4,
    lambda t: e2m1_to_float(unpack_nibbles(t["weight_packed"]))
    * t["weight_scale"].float().repeat_interleave(16, 1) * t["weight_scale_2"],
))


def quantize_weight(w: torch.Tensor, key: str) -> Tensors:
    """Quantize an (N, K) weight into ``key``; raises KeyError for a key with no quantizer."""
    return WEIGHT_QUANTIZERS[key](w)


def dequantize_weight(tensors: Tensors, key: str) -> torch.Tensor:
    """fp32 (N, K) values a quantized weight stands for (the reference operand of the GEMMs)."""
    return WEIGHT_DEQUANTIZERS[key](tensors)


def tensor_specs(key: str, n: int, k: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes of a quantized (N, K) weight in ``key`` (the table above)."""
    u8, f32 = torch.uint8, torch.float32
    if key in ("fp8_per_tensor", "fp8_per_channel", "fp8_block_128x128", "mxfp8", "int8_per_channel"):
        elem = torch.int8 if key == "int8_per_channel" else FP8
        scale = {
            "fp8_per_tensor": ("weight_scale", f32, ()),
            "fp8_per_channel": ("weight_scale", f32, (n, 1)),
            "int8_per_channel": ("weight_scale", f32, (n, 1)),
            "fp8_block_128x128": ("weight_scale_inv", f32, (-(-n // 128), -(-k // 128))),
            "mxfp8": ("weight_scale", u8, (n, k // 32)),
        }[key]
        return {"weight": (elem, (n, k)), scale[0]: (scale[1], scale[2])}
    packed = {"weight_packed": (u8, (n, k // 2))}
    if key.startswith("int4_group_"):
        g = int(key.split("_")[2])
        out = {**packed, "weight_scale": (torch.bfloat16, (n, k // g))}
        if key.endswith("_asym"):
            out["weight_zero_point"] = (u8, (n, k // g))
        return out
    if key == "mxfp4":
        return {**packed, "weight_scale": (u8, (n, k // 32))}
    if key == "nvfp4":
        return {**packed, "weight_scale": (FP8, (n, k // 16)), "weight_scale_2": (f32, ())}
    raise KeyError(f"no quantized layout for {key!r}")
