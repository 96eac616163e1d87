"""The quant-key catalog (SPEC §2): weight keys, activation keys and scheme shorthands, as plain data.

A *quant key* names one quantized format. Shapes of the scale tensors, for a weight of shape (N, K)
and an activation of shape (M, K):

==================  ==========================================================================
granularity         scale shape
==================  ==========================================================================
``tensor``          ``()``                      one scale for the whole tensor
``channel``         ``(N, 1)``                  one scale per output channel (weights)
``token``           ``(M, 1)``                  one scale per row (activations)
``group`` (1×G)     ``(N, K/G)`` / ``(M, K/G)`` one scale per G consecutive elements along K
``block`` (B×B)     ``(ceil(N/B), K/B)``        one scale per B×B tile of the weight
==================  ==========================================================================

Nothing here imports torch: the runtime maps these names to tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

Role = Literal["weight", "activation"]

# element formats: name -> (bits, largest finite magnitude)
ELEMENT_FORMATS: dict[str, tuple[int, float]] = {
    "fp8_e4m3": (8, 448.0),
    "fp4_e2m1": (4, 6.0),
    "int8": (8, 127.0),
    "int4": (4, 7.0),
    "uint4": (4, 15.0),
    "bf16": (16, 3.3895313892515355e38),
}
SCALE_DTYPES = ("fp32", "bf16", "e8m0", "fp8_e4m3")
GRANULARITIES = ("tensor", "channel", "token", "group", "block")


@dataclass(frozen=True)
class Scale:
    """How a tensor is scaled. ``shape`` is the group shape (rows, cols): (1, G) for groups of G
    along K, (B, B) for square weight blocks; None for tensor/channel/token granularity."""

    dtype: str
    granularity: str
    shape: tuple[int, int] | None = None
    dynamic: bool = False


@dataclass(frozen=True)
class QuantKey:
    name: str
    role: Role
    dtype: str
    scale: Scale | None = None
    global_scale: Scale | None = None
    symmetric: bool = True
    description: str = ""

    @property
    def bits(self) -> int:
        return ELEMENT_FORMATS[self.dtype][0]

    @property
    def is_none(self) -> bool:
        return self.dtype == "bf16"

    @property
    def group_k(self) -> int | None:
        """Elements along K that share one scale, when that is a fixed number (groups and blocks)."""
        if self.scale and self.scale.shape:
            return self.scale.shape[1]
        return None

    @property
    def block_n(self) -> int | None:
        """Rows of N that share one scale (square weight blocks only)."""
        if self.scale and self.scale.granularity == "block" and self.scale.shape:
            return self.scale.shape[0]
        return None

    def bytes_per_element(self) -> float:
        """Storage per weight element, scales included (amortised); used for the plan summary."""
        bits = float(self.bits)
        if self.scale and self.scale.shape:
            rows, cols = self.scale.shape
            scale_bits = 32 if self.scale.dtype == "fp32" else (16 if self.scale.dtype == "bf16" else 8)
            bits += scale_bits / (rows * cols)
            if not self.symmetric:
                bits += (8 if self.dtype in ("int4", "uint4") else scale_bits) / (rows * cols)
        return bits / 8.0


def _w(name, dtype, scale=None, global_scale=None, symmetric=True, description=""):
    return QuantKey(name, "weight", dtype, scale, global_scale, symmetric, description)


def _a(name, dtype, scale=None, global_scale=None, description=""):
    return QuantKey(name, "activation", dtype, scale, global_scale, True, description)


_FP32 = "fp32"

WEIGHT_KEYS: dict[str, QuantKey] = {
    k.name: k
    for k in [
        _w("none", "bf16", description="not quantized (bf16/fp16 as stored)"),
        _w("fp8_per_tensor", "fp8_e4m3", Scale(_FP32, "tensor"), description="fp8 e4m3, one fp32 scale"),
        _w("fp8_per_channel", "fp8_e4m3", Scale(_FP32, "channel"), description="fp8 e4m3, fp32 scale per output channel"),
        _w("fp8_block_128x128", "fp8_e4m3", Scale(_FP32, "block", (128, 128)), description="fp8 e4m3, fp32 scale per 128x128 block (DeepSeek-V3 style)"),
        _w("mxfp8", "fp8_e4m3", Scale("e8m0", "group", (1, 32)), description="OCP MX fp8: e4m3, e8m0 scale per 1x32"),
        _w("mxfp4", "fp4_e2m1", Scale("e8m0", "group", (1, 32)), description="OCP MX fp4: e2m1, e8m0 scale per 1x32"),
        _w("nvfp4", "fp4_e2m1", Scale("fp8_e4m3", "group", (1, 16)), Scale(_FP32, "tensor"), description="NVIDIA fp4: e2m1, e4m3 scale per 1x16, fp32 global scale"),
        _w("int8_per_channel", "int8", Scale(_FP32, "channel"), description="int8 symmetric, fp32 scale per output channel"),
        *[
            _w(f"int4_group_{g}", "int4", Scale("bf16", "group", (1, g)), description=f"int4 symmetric, bf16 scale per 1x{g}")
            for g in (32, 64, 128)
        ],
        *[
            _w(f"int4_group_{g}_asym", "uint4", Scale("bf16", "group", (1, g)), symmetric=False, description=f"uint4 with zero point, bf16 scale per 1x{g}")
            for g in (32, 64, 128)
        ],
    ]
}

ACTIVATION_KEYS: dict[str, QuantKey] = {
    k.name: k
    for k in [
        _a("none", "bf16", description="not quantized: bf16 activations (weight-only path)"),
        _a("fp8_dynamic_per_token", "fp8_e4m3", Scale(_FP32, "token", dynamic=True), description="fp8 e4m3, scale per token computed at run time"),
        _a("fp8_dynamic_per_tensor", "fp8_e4m3", Scale(_FP32, "tensor", dynamic=True), description="fp8 e4m3, one scale computed at run time"),
        _a("fp8_static_per_tensor", "fp8_e4m3", Scale(_FP32, "tensor", dynamic=False), description="fp8 e4m3, one calibrated scale from the checkpoint"),
        _a("fp8_dynamic_group_128", "fp8_e4m3", Scale(_FP32, "group", (1, 128), dynamic=True), description="fp8 e4m3, scale per 1x128 group along K, at run time"),
        _a("mxfp8", "fp8_e4m3", Scale("e8m0", "group", (1, 32), dynamic=True), description="OCP MX fp8 activations, e8m0 scale per 1x32"),
        _a("int8_dynamic_per_token", "int8", Scale(_FP32, "token", dynamic=True), description="int8 symmetric, scale per token at run time"),
        _a("nvfp4", "fp4_e2m1", Scale("fp8_e4m3", "group", (1, 16), dynamic=True), Scale(_FP32, "tensor"), description="NVIDIA fp4 activations"),
    ]
}

KEYS_BY_ROLE: dict[str, dict[str, QuantKey]] = {"weight": WEIGHT_KEYS, "activation": ACTIVATION_KEYS}

# shorthand -> (weight key, activation key)
SHORTHANDS: dict[str, tuple[str, str]] = {
    "fp8_per_tensor": ("fp8_per_tensor", "fp8_dynamic_per_tensor"),
    "fp8_per_channel": ("fp8_per_channel", "fp8_dynamic_per_token"),
    "fp8_per_block": ("fp8_block_128x128", "fp8_dynamic_group_128"),
    "mxfp8": ("mxfp8", "mxfp8"),
    "mxfp4": ("mxfp4", "none"),
    "mxfp4_mxfp8": ("mxfp4", "mxfp8"),
    "int8": ("int8_per_channel", "int8_dynamic_per_token"),
    "w4a16": ("int4_group_128", "none"),
    "nvfp4": ("nvfp4", "nvfp4"),
    "nvfp4a16": ("nvfp4", "none"),
    "none": ("none", "none"),
}

# the fields a key written out as a mapping may carry
MAPPING_FIELDS = ("dtype", "scale", "global_scale", "symmetric")
SCALE_FIELDS = ("dtype", "granularity", "shape", "dynamic")


def key_from_mapping(role: Role, mapping: Mapping) -> tuple[QuantKey | None, str]:
    """Match a key written out as a mapping against the catalog.

    Returns (key, "") or (None, reason). A mapping must describe a catalog key exactly: quantc only
    plans formats that a kernel can run, so there is no free-form key.
    """
    catalog = KEYS_BY_ROLE[role]
    want_scale = mapping.get("scale")
    want_global = mapping.get("global_scale")

    def scale_matches(have: Scale | None, want) -> bool:
        if want is None:
            return True
        if have is None:
            return want in ("none",) or want == {}
        if not isinstance(want, Mapping):
            return False
        if "dtype" in want and want["dtype"] != have.dtype:
            return False
        if "granularity" in want and want["granularity"] != have.granularity:
            return False
        if "shape" in want:
            shape = want["shape"]
            if not isinstance(shape, (list, tuple)) or tuple(shape) != tuple(have.shape or ()):
                return False
        if "dynamic" in want and bool(want["dynamic"]) != have.dynamic:
            return False
        return True

    candidates = []
    for key in catalog.values():
        if "dtype" in mapping and mapping["dtype"] != key.dtype:
            continue
        if "symmetric" in mapping and bool(mapping["symmetric"]) != key.symmetric:
            continue
        if not scale_matches(key.scale, want_scale):
            continue
        if want_global is not None and not scale_matches(key.global_scale, want_global):
            continue
        candidates.append(key)
    if len(candidates) == 1:
        return candidates[0], ""
    if not candidates:
        return None, f"no {role} key in the catalog has these fields"
    names = ", ".join(k.name for k in candidates)
    return None, f"ambiguous: the mapping fits {len(candidates)} {role} keys ({names}); add fields to pick one"
