"""quantc's in-kernel weight layouts for the weight-only and MoE GEMMs, and the dequantization helpers.

A weight of shape (N, K) (or (E, N, K) for experts) is held as a ``WoWeight``:

==========  =================================  ===================================================
format      ``data``                           scales
==========  =================================  ===================================================
bf16        bf16 (.., N, K)                    none
int4        int32 (.., N, K/8): nibble j of    bf16 (.., N, K/G); asym: ``zeros`` uint8 (.., N, K/G)
            word p is element 8p + j           sym codes are two's complement in [-7, 7]
mxfp4       int32 (.., N, K/8), e2m1 codes     e8m0 uint8 (.., N, K/32)
nvfp4       int32 (.., N, K/8), e2m1 codes     e4m3 (.., N, K/16) and fp32 ``global_scale`` (E,)
fp8         e4m3 (.., N, K)                    fp32 (.., ceil(N/RB), K/G): per channel (RB=1, G=K),
                                               128x128 blocks (RB=G=128); mxfp8: e8m0 (RB=1, G=32)
int8        int8 (.., N, K)                    fp32 (.., N, 1)
==========  =================================  ===================================================

The int32 words of the 4-bit formats are the checkpoint's (N, K/2) uint8 bytes (low nibble = even k)
reinterpreted, so repacking costs nothing and one 32-bit load brings eight elements. Inside the GEMM a
K tile of BLOCK_K elements is BLOCK_K/8 words; the j-th nibble of every word gives the elements
k = 8p + j, which are multiplied with the activations at the same (strided) k. Scales are looked up
per word (G is a multiple of 8), so the eight nibbles of a word share one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import quantize as qz

# weight formats (constexpr FMT of the kernels)
BF16, INT4, MXFP4, NVFP4, FP8, INT8 = 0, 1, 2, 3, 4, 5
# scale encodings (constexpr SFMT)
S_NONE, S_FLOAT, S_E8M0 = 0, 1, 2
PACK = {BF16: 1, INT4: 8, MXFP4: 8, NVFP4: 8, FP8: 1, INT8: 1}


@dataclass(frozen=True, eq=False)
class WoWeight:
    """One weight (or a stack of expert weights) in a kernel layout; see the module docstring."""

    fmt: int
    n: int
    k: int
    data: torch.Tensor
    scale: torch.Tensor | None = None
    sfmt: int = S_NONE
    group: int = 1              # elements along K per scale
    row_block: int = 1          # rows along N per scale
    zeros: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None  # fp32 (E,) or (1,)
    k_perm: torch.Tensor | None = None  # GPTQ act-order: K was permuted at load; x[..., k_perm] is the input

    @property
    def pack(self) -> int:
        return PACK[self.fmt]

    @property
    def num_experts(self) -> int:
        return self.data.shape[0] if self.data.dim() == 3 else 1

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.zeros, self.global_scale)
                   if t is not None)


def _words(packed: torch.Tensor) -> torch.Tensor:
    """(.., N, K/2) uint8 -> (.., N, K/8) int32, the same bytes."""
    return packed.contiguous().view(torch.int32)


def from_tensors(key: str, t: dict[str, torch.Tensor], n: int, k: int) -> WoWeight:
    """quantc's quantized tensors (``quantc.runtime.quantize`` names; leading expert dim allowed) ->
    a WoWeight. Raises ValueError for a key no weight-only kernel reads."""
    if key == "none":
        return WoWeight(BF16, n, k, t["weight"].to(torch.bfloat16).contiguous())
    if key.startswith("int4_group_"):
        g = int(key.split("_")[2])
        z = t.get("weight_zero_point")
        return WoWeight(INT4, n, k, _words(t["weight_packed"]), t["weight_scale"].to(torch.bfloat16).contiguous(),
                        S_FLOAT, g, 1, None if z is None else z.to(torch.uint8).contiguous())
    if key == "mxfp4":
        return WoWeight(MXFP4, n, k, _words(t["weight_packed"]), t["weight_scale"].contiguous(), S_E8M0, 32)
    if key == "nvfp4":
        g = t["weight_scale_2"].float().reshape(-1).contiguous()
        return WoWeight(NVFP4, n, k, _words(t["weight_packed"]), t["weight_scale"].contiguous(), S_FLOAT, 16,
                        global_scale=g)
    if key == "mxfp8":
        return WoWeight(FP8, n, k, t["weight"].contiguous(), t["weight_scale"].contiguous(), S_E8M0, 32)
    if key in ("fp8_per_tensor", "fp8_per_channel", "int8_per_channel"):
        s = t["weight_scale"].float()
        lead = t["weight"].shape[:-2]
        s = s.reshape(*lead, -1, 1).expand(*lead, n, 1).contiguous()  # per tensor -> per channel
        return WoWeight(INT8 if key.startswith("int8") else FP8, n, k, t["weight"].contiguous(), s, S_FLOAT, k, 1)
    if key == "fp8_block_128x128":
        return WoWeight(FP8, n, k, t["weight"].contiguous(), t["weight_scale_inv"].float().contiguous(),
                        S_FLOAT, 128, 128)
    raise ValueError(f"no weight-only layout for weight key {key!r}")


def quantize(w: torch.Tensor, key: str) -> WoWeight:
    """Quantize a bf16 (N, K) or (E, N, K) weight with quantc's reference quantizers."""
    if key == "none":
        return from_tensors(key, {"weight": w}, w.shape[-2], w.shape[-1])
    if w.dim() == 3:
        per = [qz.quantize_weight(we, key) for we in w]
        t = {name: torch.stack([p[name] for p in per]) for name in per[0]}
    else:
        t = qz.quantize_weight(w, key)
    return from_tensors(key, t, w.shape[-2], w.shape[-1])


def dequantize(w: WoWeight) -> torch.Tensor:
    """fp32 values of a WoWeight (the reference operand), (.., N, K)."""
    if w.fmt == BF16:
        return w.data.float()
    if w.pack == 8:
        codes = qz.unpack_nibbles(w.data.view(torch.uint8)).to(torch.int32)
        if w.fmt == INT4:
            vals = (codes - w.zeros.to(torch.int32).repeat_interleave(w.group, -1) if w.zeros is not None
                    else torch.where(codes >= 8, codes - 16, codes)).float()
        else:
            vals = qz.e2m1_to_float(codes)
    else:
        vals = w.data.float()
    s = qz.e8m0_to_float(w.scale) if w.sfmt == S_E8M0 else w.scale.float()
    s = s.repeat_interleave(w.row_block, -2)[..., : w.n, :].repeat_interleave(w.group, -1)[..., : w.k]
    out = vals * s
    if w.global_scale is not None:
        g = w.global_scale.float()
        out = out * (g.reshape(-1, 1, 1) if out.dim() == 3 else g.reshape(()))
    return out


# ------------------------------------------------------------------------------- Triton helpers


@triton.jit
def e2m1_bits_to_f32(c):
    """e2m1 codes (int32, 0..15) -> fp32 values, built from the bits: magnitude index i = e<<1 | m is
    shifted into the fp32 exponent/mantissa (exponent bias moved from 1 to 127), 0.5 and 0 by select."""
    mag = c & 7
    bits = tl.where(mag >= 2, (mag << 22) + (126 << 23), (mag & 1) * (126 << 23))
    return (bits | ((c & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def e8m0_bits_to_f32(e):
    """Every e8m0 code: 2**(e-127) for 0..254 (code 0 = 2**-127 is an fp32 subnormal), 255 = NaN."""
    e = e.to(tl.int32)
    bits = tl.where(e == 0, 0x400000, e << 23)
    bits = tl.where(e == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def decode_scale(s, SFMT: tl.constexpr):
    if SFMT == 2:
        return e8m0_bits_to_f32(s)
    elif SFMT == 0:  # unscaled (bf16 weights): the load was of a dummy pointer
        return tl.full(s.shape, 1.0, tl.float32)
    return s.to(tl.float32)


@triton.jit
def decode_elements(words, z, J: tl.constexpr, FMT: tl.constexpr, HAS_ZERO: tl.constexpr):
    """Unscaled fp32 values of the J-th element of each word (4-bit formats) or of each element."""
    if FMT == 1:
        # float(n) for a small n as (n | bits of 2**23) - 2**23: an OR and an FSUB instead of the
        # quarter-rate int-to-float convert. Two's complement nibble c: c ^ 8 = q + 8.
        c = (words >> (4 * J)) & 0xF
        if HAS_ZERO:
            return (c | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + z)
        return ((c ^ 8) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
    elif FMT == 2 or FMT == 3:
        return e2m1_bits_to_f32((words >> (4 * J)) & 0xF)
    else:
        return words.to(tl.float32)


@triton.jit
def load_tile_scales(s_base, z_base, s_rows, n_mask, kw, k_mask, t,
                     SFMT: tl.constexpr, PACK: tl.constexpr, GROUP: tl.constexpr, HAS_ZERO: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """Scales (and zero points) of K tile ``t`` for rows at offsets ``s_rows``: (BLOCK_N,) when the tile
    lies inside one scale group (applied once to the partial sums), else (BLOCK_N, BLOCK_K/PACK) per word."""
    if GROUP % BLOCK_K == 0:
        gi = (t * BLOCK_K) // GROUP
        s = decode_scale(tl.load(s_base + s_rows + gi, mask=n_mask, other=0.0), SFMT)
        z = tl.zeros((1, 1), tl.float32)  # unused without zero points
        if HAS_ZERO:
            z = tl.load(z_base + s_rows + gi, mask=n_mask, other=0).to(tl.float32)[:, None]
    else:
        gi = (kw * PACK) // GROUP
        sm = n_mask[:, None] & k_mask[None, :]
        s = decode_scale(tl.load(s_base + s_rows[:, None] + gi[None, :], mask=sm, other=0.0), SFMT)
        z = tl.zeros((1, 1), tl.float32)  # unused without zero points
        if HAS_ZERO:
            z = tl.load(z_base + s_rows[:, None] + gi[None, :], mask=sm, other=0).to(tl.float32)
    return s, z


@triton.jit
def dequant_tile(words, s, z, FMT: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_EACH: tl.constexpr,
                 PACK: tl.constexpr):
    """(BLOCK_N, BLOCK_K/PACK) words -> (BLOCK_N, BLOCK_K) fp32 values in K order (column 8p + j holds
    nibble j of word p), scaled per word when SCALE_EACH. The eight nibble planes are interleaved by
    three levels of tl.join: the last join's index is the fastest-varying one after the reshape."""
    if PACK == 1:
        v = decode_elements(words, z, 0, FMT, HAS_ZERO)
        if SCALE_EACH:
            v = v * s
        return v
    else:
        v0 = decode_elements(words, z, 0, FMT, HAS_ZERO)
        v1 = decode_elements(words, z, 1, FMT, HAS_ZERO)
        v2 = decode_elements(words, z, 2, FMT, HAS_ZERO)
        v3 = decode_elements(words, z, 3, FMT, HAS_ZERO)
        v4 = decode_elements(words, z, 4, FMT, HAS_ZERO)
        v5 = decode_elements(words, z, 5, FMT, HAS_ZERO)
        v6 = decode_elements(words, z, 6, FMT, HAS_ZERO)
        v7 = decode_elements(words, z, 7, FMT, HAS_ZERO)
        even = tl.join(tl.join(v0, v4), tl.join(v2, v6))
        odd = tl.join(tl.join(v1, v5), tl.join(v3, v7))
        v = tl.reshape(tl.join(even, odd), (words.shape[0], words.shape[1] * 8))
        if SCALE_EACH:
            # one scale per word: repeat it over the word's eight elements the same way
            s8 = tl.reshape(tl.broadcast_to(s[:, :, None], (words.shape[0], words.shape[1], 8)),
                            (words.shape[0], words.shape[1] * 8))
            v = v * s8
        return v
