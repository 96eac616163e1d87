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
reinterpreted, so repacking costs nothing and one 32-bit load brings eight elements (nibble j of word
p = element 8p + j). ``nibble_decode`` turns them into bf16 values inside the 4-bit kernels; the
helpers below serve the 8-bit and bf16 tiles of the MoE kernel and the scale encodings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import quantize as qz

# The CPU interpreter mis-computes tl.dot on bf16 operands (it sees raw bits); kernels upcast there only.
UPCAST_DOT = os.environ.get("TRITON_INTERPRET") == "1"

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
def e8m0_bits_to_f32(e):
    """Every e8m0 code: 2**(e-127) for 0..254 (code 0 = 2**-127 is an fp32 subnormal), 255 = NaN."""
    e = e.to(tl.int32)
    bits = tl.where(e == 0, 0x400000, e << 23)
    bits = tl.where(e == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def group_scales_bf16(s_ptr, s_rows, n_mask, k0, SFMT: tl.constexpr, GROUP: tl.constexpr, NG: tl.constexpr,
                      FOLD: tl.constexpr):
    """bf16 (BLOCK_N, NG) scales of the NG groups from element k0 on, exact: e8m0 codes become the
    exponent field (code 0 = 2**-127, a subnormal), e4m3 and bf16 fit bf16. FOLD (float scales only):
    times 2**62, computed in fp32 (exact; the interpreter has no bf16 arithmetic)."""
    s = tl.load(s_ptr + s_rows[:, None] + k0 // GROUP + tl.arange(0, NG)[None, :], mask=n_mask[:, None], other=0.0)
    if SFMT == 2:
        e = s.to(tl.int16)
        return tl.where(e == 0, 0x40, e << 7).to(tl.bfloat16, bitcast=True)
    if FOLD:
        return (s.to(tl.float32) * 4.611686018427388e18).to(tl.bfloat16)
    return s.to(tl.bfloat16)


@triton.jit
def group_zeros(z_ptr, s_rows, n_mask, k0, GROUP: tl.constexpr, NG: tl.constexpr):
    """uint8 (BLOCK_N, NG) zero points of the NG groups from element k0 on."""
    return tl.load(z_ptr + s_rows[:, None] + k0 // GROUP + tl.arange(0, NG)[None, :], mask=n_mask[:, None], other=0)


@triton.jit
def repeat_groups(t, BLOCK_N: tl.constexpr, NG: tl.constexpr, R: tl.constexpr):
    """(BLOCK_N, NG) per-group values -> (BLOCK_N, NG * R), each repeated over its R columns."""
    return tl.reshape(tl.broadcast_to(t[:, :, None], (BLOCK_N, NG, R)), (BLOCK_N, NG * R))


@triton.jit
def decode_scale(s, SFMT: tl.constexpr):
    if SFMT == 2:
        return e8m0_bits_to_f32(s)
    elif SFMT == 0:  # unscaled (bf16 weights): the load was of a dummy pointer
        return tl.full(s.shape, 1.0, tl.float32)
    return s.to(tl.float32)


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
def dequant_tile(words, s, SCALE_EACH: tl.constexpr):
    """An 8-bit or bf16 weight tile (BLOCK_N, BLOCK_K) -> fp32 values, scaled per element when
    SCALE_EACH (scales vary inside the tile), else left for the caller to scale per tile. The 4-bit
    formats decode in ``nibble_decode``."""
    v = words.to(tl.float32)
    if SCALE_EACH:
        v = v * s
    return v
