"""Registry launchers (``quantc.runtime.registry``) for the weight-only 4-bit GEMMs and the MoE kernel ids.

Dense ids take quantc's quantized tensors (``quantc.runtime.quantize`` names) and keep the buffers
``data``, ``scale`` and, where the key has them, ``zeros`` / ``global_scale``; ``run`` gets the plan's
``quantc.plan.KernelConfig`` for the live M (``wo_gemm.WoConfig`` is that class), or None, then the
shape's defaults. MoE ids run a whole block of experts (``apply`` groups them per ``moe_block``), so
the per-module launcher path refuses them with the reason.
"""

from __future__ import annotations

import torch

from . import common
from . import wo_format as wf

DENSE_IDS = ("int4_weight_only_gemm", "fp4_weight_only_gemm", "mxfp4_mxfp8_gemm_emulated")
MOE_IDS = ("moe_bf16", "moe_fp8", "moe_fp8_block", "moe_int8", "moe_weight_only", "moe_mxfp4_mxfp8_emulated",
           "moe_mxfp8_emulated")


def key_meta(key: str) -> tuple[int, int, int]:
    """(format, scale encoding, group) of a 4-bit weight key."""
    if key.startswith("int4_group_"):
        return wf.INT4, wf.S_FLOAT, int(key.split("_")[2])
    if key == "mxfp4":
        return wf.MXFP4, wf.S_E8M0, 32
    if key == "nvfp4":
        return wf.NVFP4, wf.S_FLOAT, 16
    raise ValueError(f"weight key {key!r} is not a 4-bit weight-only format")


def prepare(tensors: dict, weight_key: str, n: int, k: int) -> dict[str, torch.Tensor]:
    """The layer's buffers. QUANTC_WO_FRAG at load (opt-in; int4 weights ``wo_frag.frag_ok`` takes): 1 keeps the
    words in fragment order only (``data`` 4-D: every M runs from them, see ``run``); ``both`` keeps them beside
    the plane layout (twice the 4-bit bytes) for 2-16 activation rows."""
    key_meta(weight_key)
    w = wf.from_tensors(weight_key, tensors, n, k)
    mode = common.env("QUANTC_WO_FRAG")
    frag = None
    if mode in ("1", "both"):
        from .wo_frag import frag_ok, frag_pack

        frag = frag_pack(w).data if frag_ok(w) else None
    if frag is not None and mode == "1":
        out = {"data": frag, "scale": w.scale}
        return out if w.zeros is None else {**out, "zeros": w.zeros}
    out = {"data": w.data, "scale": w.scale}
    if w.zeros is not None:
        out["zeros"] = w.zeros
    if w.global_scale is not None:
        out["global_scale"] = w.global_scale
    if frag is not None:
        out["frag"] = frag
    return out


def rebuild(buffers, weight_key: str) -> tuple[wf.WoWeight, torch.Tensor | None]:
    """The ``WoWeight`` of a layer's buffers, and its fragment-order words where ``prepare`` kept them."""
    fmt, sfmt, group = key_meta(weight_key)
    data, scale, *rest = buffers
    zeros = rest.pop(0) if weight_key.endswith("_asym") else None
    gscale = rest.pop(0) if fmt == wf.NVFP4 else None
    # the fragment-order words: the one 4-D buffer (checkpoints may add others after these, e.g. an input scale)
    frag = next((t for t in rest if t.dim() == 4), None)
    return wf.WoWeight(fmt, data.shape[0], data.shape[1] * 8, data, scale, sfmt, group, 1, zeros, gscale), frag


def frag_only(buffers, weight_key: str):
    """The ``wo_frag.FragWeight`` of a layer kept in fragment order only (``data`` 4-D), else None."""
    if buffers[0].dim() != 4:
        return None
    from .wo_frag import STEP, FragWeight

    data, scale, *rest = buffers
    zeros = rest[0] if weight_key.endswith("_asym") else None
    # data (N / 16, K / 64, 32, 4): 16 rows a tile, 64-deep steps
    return FragWeight(data.shape[0] * 16, data.shape[1] * STEP, data, scale, key_meta(weight_key)[2], zeros)


def uses_frag_gemv(x, fw) -> bool:
    """Whether one row of a layer kept in fragment order runs ``wo_frag_gemv`` (the CUDA-core GEMV reading that
    layout) instead of ``wo_frag``'s tensor cores: on an sm_90 GPU (untimed yet: bench/frag_only_probe.py);
    QUANTC_WO_FRAG_GEMV=0 never, 1 on any device (the interpreter included)."""
    from .wo_frag_gemv import frag_gemv_ok

    switch = common.env("QUANTC_WO_FRAG_GEMV")
    if switch == "0" or not frag_gemv_ok(x, fw):
        return False
    return switch == "1" or common.on_sm90(x.device)


def _frag_split(n: int, k: int, m: int, device) -> int:
    """``wo_frag``'s split-K: twice ``wo_gemm._split`` for one 64-row token tile (the probe's best at 6 of 7 shapes:
    wo_frag's module doc), shared among the M rows' token tiles."""
    from . import wo_gemm
    from .wo_frag import frag_tokens
    from .wo_gemv import grid_sms

    return max(1, 2 * wo_gemm._split(n, k, 64, 64, grid_sms(device)) // common.cdiv(m, frag_tokens(m)))


def _run_frag_only(x, fw):
    """Every M from the fragment-order words: one row on ``wo_frag_gemv`` (``uses_frag_gemv``); the dequantized
    weight through cuBLAS where the plane layout takes that path too (``wo_dequant.uses_dequant``: from 256 rows on
    a GPU); else ``launch_frag`` in token tiles at twice ``wo_gemm._split`` for one tile, shared among them."""
    from .wo_dequant import uses_dequant
    from .wo_frag import frag_dequant_bf16, launch_frag
    from .wo_frag_gemv import launch_frag_gemv

    if uses_frag_gemv(x, fw):
        return launch_frag_gemv(x, fw)
    if uses_dequant(x.shape[0], x.device):
        return common.torch_op(torch.matmul, x, frag_dequant_bf16(fw).T)
    return launch_frag(x, fw, split_k=_frag_split(fw.n, fw.k, x.shape[0], x.device))


def run(x, buffers, config, weight_key, act_key, bias):
    from . import wo_gemm, wo_mx

    fw = frag_only(buffers, weight_key)
    if fw is not None:
        out = _run_frag_only(x, fw)
        return common.torch_op(torch.add, out, bias) if bias is not None else out
    w, frag = rebuild(buffers, weight_key)
    if frag is not None and 2 <= x.shape[0] <= 16 and act_key != "mxfp8":
        from .wo_frag import FragWeight, launch_frag

        out = launch_frag(x, FragWeight(w.n, w.k, frag, w.scale, w.group, w.zeros),
                          split_k=_frag_split(w.n, w.k, x.shape[0], x.device))
    else:
        cfg = config or wo_gemm.default_config(x.shape[0], w.n, w.k, int4=w.fmt == wf.INT4)  # a KernelConfig
        out = (wo_mx.launch if act_key == "mxfp8" else wo_gemm.launch)(x, w, cfg)
    return common.torch_op(torch.add, out, bias) if bias is not None else out


def _moe_per_module(*args, **kwargs):
    raise ValueError("MoE kernels run a whole MoE block: quantc.runtime.apply prepares one grouped "
                     "module per moe_block (quantc.runtime.moe_apply), or build quantc.runtime.moe.QuantMoE directly; "
                     "a single expert linear cannot run on a grouped kernel")


def register_all(register) -> None:
    """Called by ``quantc.runtime.registry`` with its ``register`` decorator factory."""
    for kid in DENSE_IDS:
        register(kid, prepare)(run)
    for kid in MOE_IDS:
        register(kid, _moe_per_module)(_moe_per_module)
