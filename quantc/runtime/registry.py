"""Kernel id -> launcher: the runtime side of ``quantc.kernel_specs.KERNEL_SPECS``.

A ``Launcher`` has two steps:

- ``prepare(tensors, weight_key, n, k) -> dict[str, Tensor]``: checkpoint-named tensors of one module
  (``quantc.runtime.quantize`` names: ``weight``, ``weight_scale``, ...; plus ``input_scale`` for static
  activations) -> the buffers the kernel reads, in a fixed order. Runs once, at apply time.
- ``run(x, buffers, config, weight_key, act_key, bias) -> Tensor``: bf16 (M, K) -> bf16 (M, N), with
  ``buffers`` the values of ``prepare``'s dict in its order and ``config`` the KernelConfig for this M
  (None for torch-family kernels, which have no table entry).

Dense launchers are filled here. Layer kinds other than linear (MoE) may also give ``make_module``:
``make_module(module_plan, tensors, kernel_entry) -> nn.Module``, which ``apply`` then uses instead
of ``QuantLinear``. A test checks that every non-kv_cache id of KERNEL_SPECS has a launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .kernels.scaled_mm import WEIGHT_MODE, scaled_mm
from .tables import default_config


@dataclass(frozen=True)
class Launcher:
    prepare: Callable
    run: Callable
    make_module: Callable | None = None


LAUNCHERS: dict[str, Launcher] = {}


def register(kernel_id: str, prepare: Callable, make_module: Callable | None = None):
    """Decorator for a ``run`` function."""

    def deco(run):
        LAUNCHERS[kernel_id] = Launcher(prepare, run, make_module)
        return run

    return deco


def _with_input_scale(out: dict, tensors: dict) -> dict:
    """A checkpoint's calibrated activation scale, when it has one, rides last in the buffers."""
    if "input_scale" in tensors:
        out["input_scale"] = tensors["input_scale"].float().reshape(())
    return out


def _prepare_scaled(tensors, weight_key, n, k):
    scale_name = WEIGHT_MODE[weight_key][1]
    out = {"weight": tensors["weight"].contiguous(), "weight_scale": tensors[scale_name].float().contiguous()}
    if weight_key == "mxfp8":
        out["weight_scale"] = tensors[scale_name].to(torch.uint8).contiguous()
    return _with_input_scale(out, tensors)


def _scaled_runner(kernel_id: str):
    def run(x, buffers, config, weight_key, act_key, bias):
        if config is None:  # no table entry: the kernel's defaults
            config = default_config(kernel_id, x.shape[0])
        return scaled_mm(x, buffers[0], buffers[1], weight_key, act_key, config,
                         input_scale=buffers[2] if len(buffers) > 2 else None, bias=bias)

    return run


for _id in ("fp8_scaled_gemm", "fp8_block_gemm", "int8_gemm", "mxfp8_gemm_emulated",
            "fp8_weight_only_gemm", "int8_weight_only_gemm"):
    register(_id, _prepare_scaled)(_scaled_runner(_id))


@register("bf16_matmul", lambda t, wk, n, k: {"weight": t["weight"].to(torch.bfloat16).contiguous()})
def _run_bf16(x, buffers, config, weight_key, act_key, bias):
    return F.linear(x, buffers[0], bias)


def _act_quant(x, act_key, input_scale):
    from .kernels.act_quant import quantize_activation

    return quantize_activation(x, act_key, input_scale)


@register("fp8_scaled_mm_cublas", _prepare_scaled)
def _run_scaled_mm_cublas(x, buffers, config, weight_key, act_key, bias):
    w, s, *rest = buffers
    xq, sa = _act_quant(x, act_key, rest[0] if rest else None)
    sa = sa.reshape(-1, 1) if sa.numel() > 1 else sa.reshape(())
    sb = s.reshape(1, -1) if s.numel() > 1 else s.reshape(())
    if sa.dim() != sb.dim():  # _scaled_mm wants both 0-d or both 2-d
        sa, sb = sa.expand(x.shape[0], 1).reshape(-1, 1).contiguous(), sb.expand(1, w.shape[0]).contiguous()
    return torch._scaled_mm(xq, w.t(), scale_a=sa, scale_b=sb, bias=bias, out_dtype=torch.bfloat16)


@register("fp8_block_scaled_mm_cublas", _prepare_scaled)
def _run_block_scaled_mm_cublas(x, buffers, config, weight_key, act_key, bias):
    w, s = buffers[:2]
    if x.shape[0] == 1 or x.device.type != "cuda":
        # cuBLAS blockwise refuses M = 1 (and needs a GPU): the Triton block kernel takes those calls
        from .kernels.scaled_mm import scaled_mm as triton_mm

        return triton_mm(x, w, s, weight_key, act_key, config or default_config("fp8_block_gemm", x.shape[0]), bias=bias)
    xq, sa = _act_quant(x, act_key, None)
    sa = sa.t().contiguous().t()  # (M, K/128) stored column-major, as cuBLAS wants
    out = torch._scaled_mm(xq, w.t(), scale_a=sa, scale_b=s.t(), out_dtype=torch.bfloat16)
    return out + bias if bias is not None else out


# Runtime II: the weight-only 4-bit GEMMs and the MoE ids (quantc/runtime/kernels/wo_launch.py)
from .kernels.wo_launch import register_all as _register_runtime2  # noqa: E402

_register_runtime2(register)


# nvfp4 x nvfp4 (W4A4). The native path is Blackwell's block-scaled MMA, which this runtime does not
# have yet; this launcher emulates it exactly: the activation is quantized to nvfp4 (e2m1 codes, an e4m3
# scale per 1x16, an fp32 global scale), each code times its block scale (at most 6 significant bits,
# exact in bf16) feeds the fp4 weight-only kernel, and the activation's global scale multiplies the
# fp32-accumulated result. Same math as the native MMA up to summation order. The global scale is the
# checkpoint's calibrated ``input_scale`` where it has one (ModelOpt NVFP4: amax / (448 * 6), the key's
# static tensor scale), else computed from the activation at run time.
def _prepare_nvfp4_w4a4(tensors, weight_key, n, k):
    from .kernels import wo_launch

    return _with_input_scale(wo_launch.prepare(tensors, weight_key, n, k), tensors)


def _run_nvfp4_w4a4(x, buffers, config, weight_key, act_key, bias):
    from . import quantize as Q
    from .kernels import wo_launch

    input_scale = buffers[3] if len(buffers) > 3 else None
    q = Q.quant_nvfp4(x.float(), input_scale)
    codes = Q.e2m1_to_float(Q.unpack_nibbles(q["weight_packed"]))
    x_part = (codes * q["weight_scale"].float().repeat_interleave(16, 1)).to(torch.bfloat16)
    out = wo_launch.run(x_part, buffers, config, weight_key, "none", None)
    out = (out.float() * q["weight_scale_2"]).to(torch.bfloat16)
    return out + bias if bias is not None else out


def _register_nvfp4_w4a4() -> None:
    register("nvfp4_gemm", _prepare_nvfp4_w4a4)(_run_nvfp4_w4a4)


_register_nvfp4_w4a4()
