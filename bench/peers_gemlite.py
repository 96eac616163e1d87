"""GemLite (Mobius Labs' Triton low-bit GEMMs) as a benchmark peer, built through its own helpers.

Formats GemLite shares with quantc (issues 11 and 12):

| quantc weight key  | GemLite helper                        | GemLite layer math                      |
| ------------------ | ------------------------------------- | --------------------------------------- |
| fp8_per_channel    | ``A8W8_fp8_dynamic().from_weights``   | per-token fp8 activations, fp32 scales  |
| int8_per_channel   | ``A8W8_int8_dynamic().from_weights``  | per-token int8 activations, fp32 scales |
| fp8_block_128x128  | ``A8W8_fp8_dynamic(block_quant=True)``| 1x128 fp8 activations, 128x128 weights  |
| int4_group_128     | ``A16W4_HQQ_INT().from_weights``      | bf16 x, w = (code - 8) * s, 1x128 groups|

The 8-bit layers are built from quantc's own quantized weight and (N, 1) scale, so both sides read the
same weight bytes. The 4-bit layer takes codes 0..15 with zero point 8, which is quantc's symmetric
int4 (q in -8..7) shifted by 8.

``build`` never raises: a missing or broken GemLite gives a ``Peer`` with ``error`` set, so a
benchmark keeps its own rows. Import is lazy: GemLite's ``core`` queries the CUDA device at import.
Where it comes from: ``$GEMLITE_SRC`` (a folder holding ``gemlite/``), else ``<repo>/.whl/gemlite_src``
(what ``shared/tools/gemlite-src.sh`` writes), else an installed ``gemlite``.
Tuning: GemLite's default "fast" autotune mode seeded with its shipped ``configs/h100.json`` (loaded
explicitly, so an H200 uses it too); a shape missing from the file is tuned by Triton's autotuner on
the first call, on the GPU, with no network and no cache file. Call each peer once before capturing it
in a CUDA graph.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CARRIED = os.path.join(ROOT, ".whl", "gemlite_src")
FORMATS = ("fp8_per_channel", "int8_per_channel", "int4_group_128", "fp8_block_128x128")
GROUP = 128  # int4 group size

_loaded: dict[str, Any] = {}  # "mod" -> the gemlite module, or "error" -> why it is unavailable


@dataclass(frozen=True)
class Peer:
    """One GemLite layer for a (N, K) weight. ``module(x)``: bf16 (M, K) -> bf16 (M, N), activation
    quantization included (GemLite's layer call). ``kernel(xq, sx)``: the same GEMM on activations
    already quantized per token ((M, K) fp8/int8, (M, 1) fp32 scales), the kernel floor; None for the
    weight-only format, where module and kernel are the same call. ``error``: why there is no peer."""

    fmt: str
    n: int
    k: int
    module: Callable | None = None
    kernel: Callable | None = None
    error: str | None = None


def source_dir() -> str | None:
    """The folder put on sys.path for ``import gemlite``; None means "use an installed gemlite"."""
    env = os.environ.get("GEMLITE_SRC")
    if env:
        return env
    return CARRIED if os.path.isdir(os.path.join(CARRIED, "gemlite")) else None


def load():
    """(gemlite module, None) or (None, reason). Imported once; the h100 config table loaded once."""
    if "mod" in _loaded or "error" in _loaded:
        return _loaded.get("mod"), _loaded.get("error")
    src = source_dir()
    if src is not None:
        if not os.path.isdir(os.path.join(src, "gemlite")):
            _loaded["error"] = f"GemLite absent: no gemlite/ under {src} (run shared/tools/gemlite-src.sh, carry .whl)"
            return None, _loaded["error"]
        if src not in sys.path:
            sys.path.insert(0, src)
    try:
        import gemlite
        import gemlite.helper  # noqa: F401  (needs tqdm and numpy besides torch/triton)
    except ModuleNotFoundError as e:
        if e.name == "gemlite":
            _loaded["error"] = "GemLite absent: not installed and no .whl/gemlite_src (set GEMLITE_SRC or carry .whl)"
        else:
            _loaded["error"] = f"GemLite import failed: missing module {e.name!r}"
        return None, _loaded["error"]
    except Exception as e:  # GemLite's import queries the GPU; on a CPU host it fails here
        _loaded["error"] = f"GemLite import failed: {type(e).__name__}: {str(e)[:200]}"
        return None, _loaded["error"]
    table = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
    if not gemlite.load_config(table, print_error=False):
        _loaded["error"] = f"GemLite config table not loadable: {table}"
        return None, _loaded["error"]
    _loaded["mod"] = gemlite
    return gemlite, None


def version() -> str | None:
    mod, _ = load()
    return getattr(mod, "__version__", None)


def build(fmt: str, weight=None, scale=None, *, n: int | None = None, k: int | None = None) -> Peer:
    """A GemLite peer for one weight.

    - ``fp8_per_channel`` / ``int8_per_channel``: ``weight`` (N, K) fp8 e4m3 / int8 and ``scale``
      ((N,) or (N, 1) fp32), i.e. quantc's ``quantize_weight`` output.
    - ``fp8_block_128x128``: ``weight`` (N, K) fp8 e4m3 and ``scale`` (ceil(N/128), ceil(K/128)) fp32
      (quantc's ``weight_scale_inv``); the kernel floor takes (M, K) fp8 activations with (M, K/128)
      fp32 scales, the layout of both quantc's and GemLite's per-block activation quantizers.
    - ``int4_group_128``: ``weight`` (N, K) uint8 codes 0..15 and ``scale`` (N, K/128) (bf16 or
      fp32); zero point 8. With ``weight=None`` and ``n``, ``k``: random valid codes and scales on
      the GPU (timing does not depend on the values).
    """
    n = weight.shape[0] if weight is not None else n
    k = weight.shape[1] if weight is not None else k
    if fmt not in FORMATS:
        return Peer(fmt, n, k, error=f"GemLite has no peer for {fmt} (it has {', '.join(FORMATS)})")
    mod, err = load()
    if err:
        return Peer(fmt, n, k, error=err)
    try:
        return _build(mod, fmt, weight, scale, n, k)
    except Exception as e:  # a shape GemLite refuses, an out-of-memory: the bench goes on without it
        return Peer(fmt, n, k, error=f"GemLite {fmt} setup failed at {n}x{k}: {type(e).__name__}: {str(e)[:200]}")


def _build(mod, fmt: str, weight, scale, n: int, k: int) -> Peer:
    import torch
    from gemlite import helper

    bf = torch.bfloat16
    dev = f"cuda:{torch.cuda.current_device()}"
    if fmt == "int4_group_128":
        if weight is None:
            weight = torch.randint(0, 16, (n, k), dtype=torch.uint8, device=dev)
            scale = torch.rand(n, k // GROUP, device=dev, dtype=bf) * 0.01 + 1e-3
        zeros = torch.full((n, k // GROUP), 8.0, device=dev, dtype=bf)
        layer = helper.A16W4_HQQ_INT(device=dev, dtype=bf).from_weights(weight, scale.to(bf), zeros)
        return Peer(fmt, n, k, module=layer)
    if fmt == "fp8_block_128x128":
        layer = helper.A8W8_fp8_dynamic(device=dev, dtype=bf, block_quant=True).from_weights(
            weight, scales=scale.float())
        return Peer(fmt, n, k, module=layer, kernel=_kernel_floor(mod, layer))
    maker = helper.A8W8_fp8_dynamic if fmt == "fp8_per_channel" else helper.A8W8_int8_dynamic
    layer = maker(device=dev, dtype=bf).from_weights(weight, scales=scale.reshape(n, 1).float())
    return Peer(fmt, n, k, module=layer, kernel=_kernel_floor(mod, layer))


def _kernel_floor(mod, layer) -> Callable:
    """GemLite's GEMM without its activation quantizer: the dispatch of ``core.forward_functional``
    (same matmul-type choice by M, same arguments), fed already-quantized activations."""
    core = mod.core
    meta = layer.get_meta_args()
    tensors = layer.get_tensor_args()
    w_nbits, in_dtype = meta[1], meta[5]
    if in_dtype == core.DType.BF16.value:  # as forward_functional: fp16 and bf16 share tuning keys
        in_dtype = core.DType.FP16.value
    type_id = in_dtype * 100 + w_nbits
    is_mx = core.is_mx_dtype(core.DType(meta[5]))

    def kernel(xq, sx):
        matmul_type = core.get_matmul_type(xq.shape[0], w_nbits, is_mx)
        # forward_functional passes bool(meta_args[1]) as data_contiguous; mirrored so the same kernel runs
        return core.GEMLITE_TRITON_MAPPING[matmul_type].forward(
            xq, *tensors[:3], sx, *meta[1:-1], bool(meta[1]), type_id, meta_scale=0.0)

    return kernel


def rel_err(y, ref) -> float:
    """||y - ref|| / ||ref|| in fp32: a wiring check of the peer against the bench's own reference."""
    y, ref = y.float(), ref.float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def selfcheck_int4(n: int = 512, k: int = 1024, ms=(1, 16, 64)) -> dict:
    """GemLite's A16W4 layer against plain torch on its own operands: y = x @ ((codes - 8) * s).T.
    {"M<m>": rel_err} or {"error": why}; a wiring check before its timings are trusted."""
    import torch

    dev = f"cuda:{torch.cuda.current_device()}"
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device=dev)
    s = torch.rand(n, k // GROUP, device=dev, dtype=torch.bfloat16) * 0.01 + 1e-3
    peer = build("int4_group_128", codes, s)
    if peer.error:
        return {"error": peer.error}
    w = (codes.float() - 8) * s.float().repeat_interleave(GROUP, dim=1)
    out = {}
    for m in ms:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        try:
            out[f"M{m}"] = rel_err(peer.module(x), x.float() @ w.T)
        except Exception as e:
            out[f"M{m}"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out
