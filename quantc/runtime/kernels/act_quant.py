"""Activation quantizers (Triton), bit-exact against ``quantc.runtime.quantize``.

One kernel covers every activation key: a program owns one row and one group of GROUP columns
(GROUP = K for per-token and per-tensor scales, 128 for fp8 groups, 32 for mxfp8), finds its scale,
then writes the quantized elements.

=======================  ==========================  ===========================
key                      elements                    scales
=======================  ==========================  ===========================
fp8_dynamic_per_token    e4m3 (M, K)                 fp32 (M, 1)
fp8_dynamic_per_tensor   e4m3 (M, K)                 fp32 () (amax by atomic max)
fp8_static_per_tensor    e4m3 (M, K)                 the given fp32 ()
fp8_dynamic_group_128    e4m3 (M, K)                 fp32 (M, K/128)
int8_dynamic_per_token   int8 (M, K)                 fp32 (M, 1)
mxfp8                    e4m3 (M, K)                 e8m0 uint8 (M, K/32)
=======================  ==========================  ===========================
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import quantize as ref
from .common import floor_log2, pow2, quant_e4m3, quant_int8, round_e4m3

# scale sources
_FROM_GROUP, _FROM_AMAX, _STATIC = 0, 1, 2


@triton.jit
def _amax_kernel(x_ptr, amax_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0).to(tl.float32)
    tl.atomic_max(amax_ptr, tl.max(tl.abs(x), axis=0))


@triton.jit
def _quant_rows_kernel(
    x_ptr, q_ptr, s_ptr, src_ptr,          # input, quantized out, scale out, amax/static scale in
    K, stride_xm, stride_qm, stride_sm,
    GROUP: tl.constexpr, BLOCK: tl.constexpr,
    SRC: tl.constexpr,                      # 0 group amax, 1 amax in src_ptr, 2 static scale in src_ptr
    INT8: tl.constexpr, MX: tl.constexpr,   # element format: int8, e4m3 with e8m0 scale, else e4m3
):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    x_row = x_ptr + row * stride_xm + g * GROUP
    q_row = q_ptr + row * stride_qm + g * GROUP
    fmt_max = 127.0 if INT8 else 448.0
    if SRC == 2:
        scale = tl.load(src_ptr)
    else:
        if SRC == 1:
            amax = tl.load(src_ptr)
        else:
            amax = tl.zeros((BLOCK,), tl.float32)
            for c in range(0, GROUP, BLOCK):
                offs = c + tl.arange(0, BLOCK)
                m = (offs < GROUP) & (g * GROUP + offs < K)
                amax = tl.maximum(amax, tl.abs(tl.load(x_row + offs, mask=m, other=0.0).to(tl.float32)))
            amax = tl.max(amax, axis=0)
        amax = tl.maximum(amax, 1e-12)
        if MX:
            e = floor_log2(amax) - 8
            scale = pow2(e)
            tl.store(s_ptr + row * stride_sm + g, (e + 127).to(tl.uint8))
        else:
            scale = tl.math.div_rn(amax, fmt_max)
            if SRC == 1:
                if row == 0:
                    tl.store(s_ptr, scale)
            else:
                tl.store(s_ptr + row * stride_sm + g, scale)
    for c in range(0, GROUP, BLOCK):
        offs = c + tl.arange(0, BLOCK)
        m = (offs < GROUP) & (g * GROUP + offs < K)
        x = tl.load(x_row + offs, mask=m, other=0.0).to(tl.float32)
        if INT8:
            q = quant_int8(x, scale)
        elif MX:
            q = round_e4m3(x * pow2(-e)).to(tl.float8e4nv)  # power-of-two scale: exact multiply
        else:
            q = quant_e4m3(x, scale)
        tl.store(q_row + offs, q, mask=m)


def quantize_activation(x: torch.Tensor, key: str, static_scale: torch.Tensor | None = None):
    """bf16 (M, K) -> (elements, scales) for an activation key, on x's device (Triton)."""
    m, k = x.shape
    x = x.contiguous()
    int8 = key == "int8_dynamic_per_token"
    mx = key == "mxfp8"
    q = torch.empty((m, k), dtype=torch.int8 if int8 else ref.FP8, device=x.device)
    src, group = _FROM_GROUP, k
    if key in ("fp8_dynamic_group_128", "mxfp8"):
        group = 128 if key == "fp8_dynamic_group_128" else 32
        s = torch.empty((m, k // group), dtype=torch.uint8 if mx else torch.float32, device=x.device)
    elif key in ("fp8_dynamic_per_tensor", "fp8_static_per_tensor"):
        s = torch.empty((), dtype=torch.float32, device=x.device)
        if key == "fp8_static_per_tensor":
            if static_scale is None:
                raise ValueError("fp8_static_per_tensor needs the checkpoint's input_scale")
            src, s = _STATIC, static_scale.float().reshape(())
            aux = s
        else:
            src = _FROM_AMAX
            aux = torch.zeros((), dtype=torch.float32, device=x.device)
            _amax_kernel[(triton.cdiv(m * k, 4096),)](x, aux, m * k, BLOCK=4096)
    elif key in ("fp8_dynamic_per_token", "int8_dynamic_per_token"):
        s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    else:
        raise KeyError(f"no activation quantizer for {key!r}")
    if src == _FROM_GROUP:
        aux = s
    block = min(triton.next_power_of_2(group), 2048)
    _quant_rows_kernel[(m, k // group)](
        x, q, s, aux, k, x.stride(0), q.stride(0), s.stride(0) if s.dim() == 2 else 0,
        GROUP=group, BLOCK=block, SRC=src, INT8=int8, MX=mx,
    )
    return q, s


def reference(x: torch.Tensor, key: str, static_scale: torch.Tensor | None = None):
    """The same math in plain torch (``quantc.runtime.quantize``)."""
    if key == "fp8_static_per_tensor":
        return ref.quant_fp8_per_tensor(x, static_scale)
    return ref.ACTIVATION_QUANTIZERS[key](x)
