"""Pre-quantized checkpoint tensors of one module -> quantc's tensors for the planned weight key.

``apply(model, plan, weights=...)`` hands each module's tensors (``<module>.<name>``) to
``checkpoint_tensors``. The layout is detected from the tensor names present, told apart by the
dtype/shape of one tensor where two formats share names, and must hold the plan's weight key; a set
that matches no layout, or more than one, is an error listing what was found. Layouts (weight N x K):

=============================  ============================================  ===========================
layout                         tensors                                       weight keys
=============================  ============================================  ===========================
quantc / fp8 / CT / ModelOpt   ``quantize.tensor_specs`` names: fp8          every key
                               ``weight`` + ``weight_scale(_inv)``, CT
                               float/int-quantized, ModelOpt FP8 and MXFP8,
                               CT mxfp4-pack-quantized (uint8 weight_packed)
compressed-tensors fp8 block   ``weight`` e4m3 + ``weight_scale`` (N/128,    fp8_block_128x128
                               K/128)
ModelOpt NVFP4                 ``weight`` uint8 (N, K/2), ``weight_scale``   nvfp4
                               e4m3 (N, K/16), ``weight_scale_2`` fp32 ()
compressed-tensors nvfp4       ``weight_packed`` uint8, ``weight_scale``,    nvfp4
                               ``weight_global_scale`` (a divisor)
compressed-tensors pack int4   ``weight_packed`` int32 (N, K/8), codes +8,   int4_group_*
                               ``weight_scale``; ``weight_zero_point``,
                               ``weight_g_idx`` (act-order), ``weight_shape``
compressed-tensors pack int8   ``weight_packed`` int32 (N, K/4), codes +128  int8_per_channel
AWQ (GEMM)                     ``qweight`` int32 (K, N/8), ``qzeros``,       int4_group_*
                               ``scales``
GPTQ                           ``qweight`` int32 (K/8, N), ``qzeros``,       int4_group_*
                               ``scales``, ``g_idx`` (act-order)
GPTQ 8-bit                     ``qweight`` int32 (K/4, N), ``qzeros``,       int8_per_channel
                               ``scales`` (1, N), ``g_idx``
=============================  ============================================  ===========================

``bias`` and ``input_scale`` ride along; all-zero zero points of symmetric keys (older
compressed-tensors writes them) are dropped. int4 zero points are normalised to the key: symmetric
GPTQ/AWQ (every zero point 8) become two's complement codes. Act-order checkpoints (GPTQ ``g_idx``,
compressed-tensors ``weight_g_idx``) are loaded with K permuted so groups are contiguous; the
returned ``k_perm`` is the input permutation ``PermutedQuantLinear`` applies before its kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import checkpoint_layouts as cl
from . import quantize as Q
from .kernels import wo_format as wf
from .modules import QuantLinear

RIDE_ALONG = ("bias", "input_scale")
_ZERO_POINTS = ("weight_zero_point", "input_zero_point")


def _desc(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


def check_native(key: str, given: dict, want: dict) -> dict[str, torch.Tensor]:
    """``given`` in quantc's own names (``tensor_specs``): dtypes and shapes checked, scales widened."""
    missing = [n for n in want if n not in given]
    if missing:
        raise ValueError(f"pre-quantized {key} weights lack {', '.join(missing)} (found {', '.join(sorted(given))})")
    out = {}
    for n, (dtype, shape) in want.items():
        t = given[n]
        shape_ok = t.numel() == (torch.Size(shape).numel()) and (len(shape) < 2 or t.shape[0] == shape[0])
        # scales stored as bf16/fp16 where fp32 is planned are widened exactly; elements must match
        dtype_ok = t.dtype == dtype or (dtype == torch.float32 and t.is_floating_point() and t.element_size() >= 2)
        if not (shape_ok and dtype_ok):
            need = f"{str(dtype).removeprefix('torch.')} {shape}"
            raise ValueError(f"{n} is {_desc(t)}, {key} needs {need}")
        out[n] = t.to(dtype).reshape(shape)
    return out


# ---------------------------------------------------------------------------- WoWeight -> tensors


def _int4_to_key(w: wf.WoWeight, key: str, fmt: str) -> wf.WoWeight:
    """Zero points as the key says: symmetric keys take two's complement codes, asym keys uint4 + zeros."""
    asym = key.endswith("_asym")
    if asym and w.zeros is None:  # two's complement q -> offset binary q + 8, zero point 8
        return wf.WoWeight(w.fmt, w.n, w.k, w.data ^ cl._FLIP_BIT3, w.scale, w.sfmt, w.group, 1,
                           torch.full_like(w.scale, 8, dtype=torch.uint8), None, w.k_perm)
    if not asym and w.zeros is not None:
        if not bool((w.zeros == 8).all()):
            raise ValueError(f"{fmt}: the zero points are not all 8, so these weights are asymmetric; the plan "
                             f"says {key} (symmetric): compile against this checkpoint's quantization_config")
        return wf.WoWeight(w.fmt, w.n, w.k, w.data ^ cl._FLIP_BIT3, w.scale, w.sfmt, w.group, 1, None, None, w.k_perm)
    return w


def wo_tensors(w: wf.WoWeight, key: str, fmt: str) -> dict[str, torch.Tensor]:
    """A 4-bit ``WoWeight`` (from ``checkpoint_layouts``) -> quantc tensors of ``key`` (+ ``k_perm``)."""
    if w.fmt == wf.INT4:
        w = _int4_to_key(w, key, fmt)
    out = {"weight_packed": w.data.contiguous().view(torch.uint8), "weight_scale": w.scale}
    if w.zeros is not None:
        out["weight_zero_point"] = w.zeros
    if w.global_scale is not None:
        out["weight_scale_2"] = w.global_scale.reshape(())
    if w.k_perm is not None:
        out["k_perm"] = w.k_perm
    return out


def _permute_k(w: wf.WoWeight, perm: torch.Tensor | None) -> wf.WoWeight:
    if perm is None:
        return w
    codes = Q.unpack_nibbles(w.data.view(torch.uint8))[:, perm]
    data = Q.pack_nibbles(codes).contiguous().view(torch.int32)
    return wf.WoWeight(w.fmt, w.n, w.k, data, w.scale, w.sfmt, w.group, 1, w.zeros, w.global_scale, perm)


# ---------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    name: str                                    # how messages name the format
    holds: Callable[[str], bool]                 # the planned weight keys it can store
    names: Callable[[str], tuple[tuple, tuple]]  # key -> (required, optional) tensor names
    # key, n, k -> (tensor, dtype, shape) that tells this layout apart from others with the same names
    primary: Callable[[str, int, int], tuple[str, torch.dtype, tuple]]
    convert: Callable[[dict, str, int, int], dict]


def _int4(key: str) -> bool:
    return key.startswith("int4_group_")


def _group(key: str) -> int:
    return int(key.split("_")[2])


def _native_names(key):
    return tuple(Q.tensor_specs(key, 128, 128)), ()


def _native_primary(key, n, k):
    name, (dtype, shape) = next(iter(Q.tensor_specs(key, n, k).items()))
    return name, dtype, shape


def _native(t, key, n, k):
    return check_native(key, t, Q.tensor_specs(key, n, k))


def _ct_fp8_block(t, key, n, k):
    return _native({"weight": t["weight"], "weight_scale_inv": t["weight_scale"]}, key, n, k)


def _modelopt_nvfp4(t, key, n, k):
    return _native({"weight_packed": t["weight"], "weight_scale": t["weight_scale"],
                    "weight_scale_2": t["weight_scale_2"]}, key, n, k)


def _ct_nvfp4(t, key, n, k):
    _check_weight_shape(t, n, k)
    return wo_tensors(cl.ct_nvfp4(t["weight_packed"], t["weight_scale"], t["weight_global_scale"]), key,
                      "compressed-tensors nvfp4")


def _check_weight_shape(t, n, k):
    if "weight_shape" in t and [int(v) for v in t["weight_shape"].reshape(-1).tolist()] != [n, k]:
        raise ValueError(f"weight_shape says {t['weight_shape'].tolist()}, the plan says [{n}, {k}]")


def _ct_int4(t, key, n, k):
    _check_weight_shape(t, n, k)
    g = _group(key)
    w = cl.ct_int4(t["weight_packed"], t["weight_scale"], g, t.get("weight_zero_point"))
    perm = None
    if "weight_g_idx" in t:
        perm = cl.act_order_perm(t["weight_g_idx"], g, k, k // g, "weight_g_idx")
    return wo_tensors(_permute_k(w, perm), key, "compressed-tensors pack-quantized")


def _ct_int8(t, key, n, k):
    _check_weight_shape(t, n, k)
    codes = t["weight_packed"].contiguous().view(torch.uint8)  # little-endian: byte j = element 4p + j
    weight = (codes ^ 0x80).view(torch.int8)                  # offset binary (q + 128) -> two's complement
    return _native({"weight": weight, "weight_scale": t["weight_scale"]}, key, n, k)


def _awq(t, key, n, k):
    return wo_tensors(cl.awq(t["qweight"], t["qzeros"], t["scales"], _group(key)), key, "AWQ")


def _gptq(t, key, n, k):
    return wo_tensors(cl.gptq(t["qweight"], t["qzeros"], t["scales"], _group(key), t.get("g_idx")), key, "GPTQ")


def _gptq_int8(t, key, n, k):
    qweight, qzeros, scales = t["qweight"], t["qzeros"], t["scales"]
    codes = qweight.contiguous().view(torch.uint8).reshape(k // 4, n, 4).permute(0, 2, 1).reshape(k, n)
    if "g_idx" in t and not bool((t["g_idx"].to(torch.int64) == 0).all()):
        raise ValueError("GPTQ 8-bit: g_idx names more than one group; int8_per_channel has one scale per row")
    cl._expect("scales", scales, (1, n))
    cl._expect("qzeros", qzeros, (1, n // 4))
    zeros = (qzeros.contiguous().view(torch.uint8).reshape(n).to(torch.int32) + 1) & 0xFF  # stored as zero - 1
    if not bool((zeros == 128).all()):
        raise ValueError("GPTQ 8-bit: the zero points are not all 128; int8_per_channel is symmetric")
    weight = (codes.T ^ 0x80).contiguous().view(torch.int8)
    return _native({"weight": weight, "weight_scale": scales.reshape(n, 1)}, key, n, k)


I32, U8, FP8 = torch.int32, torch.uint8, torch.float8_e4m3fn
_INT4_NAMES = (("qweight", "qzeros", "scales"), ())
LAYOUTS: tuple[Layout, ...] = (
    Layout("quantc / fp8 / compressed-tensors / ModelOpt (quantc's own names)", lambda key: key != "none",
           _native_names, _native_primary, _native),
    Layout("compressed-tensors fp8 block", lambda key: key == "fp8_block_128x128",
           lambda key: (("weight", "weight_scale"), ()), lambda key, n, k: ("weight", FP8, (n, k)), _ct_fp8_block),
    Layout("ModelOpt NVFP4", lambda key: key == "nvfp4", lambda key: (("weight", "weight_scale", "weight_scale_2"), ()),
           lambda key, n, k: ("weight", U8, (n, k // 2)), _modelopt_nvfp4),
    Layout("compressed-tensors nvfp4-pack-quantized", lambda key: key == "nvfp4",
           lambda key: (("weight_packed", "weight_scale", "weight_global_scale"), ("input_global_scale", "weight_shape")),
           lambda key, n, k: ("weight_packed", U8, (n, k // 2)), _ct_nvfp4),
    Layout("compressed-tensors pack-quantized int4", _int4,
           lambda key: (("weight_packed", "weight_scale"), ("weight_zero_point", "weight_shape", "weight_g_idx")),
           lambda key, n, k: ("weight_packed", I32, (n, k // 8)), _ct_int4),
    Layout("compressed-tensors pack-quantized int8", lambda key: key == "int8_per_channel",
           lambda key: (("weight_packed", "weight_scale"), ("weight_shape",)),
           lambda key, n, k: ("weight_packed", I32, (n, k // 4)), _ct_int8),
    Layout("AWQ", _int4, lambda key: _INT4_NAMES, lambda key, n, k: ("qweight", I32, (k, n // 8)), _awq),
    Layout("GPTQ", _int4, lambda key: (_INT4_NAMES[0], ("g_idx",)), lambda key, n, k: ("qweight", I32, (k // 8, n)),
           _gptq),
    Layout("GPTQ 8-bit", lambda key: key == "int8_per_channel", lambda key: (_INT4_NAMES[0], ("g_idx",)),
           lambda key, n, k: ("qweight", I32, (k // 4, n)), _gptq_int8),
)



# ---------------------------------------------------------------------------- tensor-parallel slices
# How each packed checkpoint tensor follows the weight's N (column split) or K (row split): (dim, how
# many weight rows or columns one index along that dim covers; "G" = the key's group). Tensors not
# listed are read whole: scalars (global and input scales), GPTQ's g_idx under a column split, GPTQ
# 8-bit's single row of scales/zeros, per-row scales under a row split.
_FOLLOWS = {
    ("AWQ", "column"): {"qweight": (1, 8), "qzeros": (1, 8), "scales": (1, 1)},
    ("AWQ", "row"): {"qweight": (0, 1), "qzeros": (0, "G"), "scales": (0, "G")},
    ("GPTQ", "column"): {"qweight": (1, 1), "qzeros": (1, 8), "scales": (1, 1)},
    ("GPTQ", "row"): {"qweight": (0, 8), "qzeros": (0, "G"), "scales": (0, "G")},
    ("GPTQ 8-bit", "column"): {"qweight": (1, 1), "qzeros": (1, 4), "scales": (1, 1)},
    ("GPTQ 8-bit", "row"): {"qweight": (0, 4)},
    ("compressed-tensors pack-quantized int4", "column"):
        {"weight_packed": (0, 1), "weight_scale": (0, 1), "weight_zero_point": (0, 8)},
    ("compressed-tensors pack-quantized int4", "row"):
        {"weight_packed": (1, 8), "weight_scale": (1, "G"), "weight_zero_point": (1, "G")},
    ("compressed-tensors pack-quantized int8", "column"): {"weight_packed": (0, 1), "weight_scale": (0, 1)},
    ("compressed-tensors pack-quantized int8", "row"): {"weight_packed": (1, 4)},
    ("compressed-tensors nvfp4-pack-quantized", "column"): {"weight_packed": (0, 1), "weight_scale": (0, 1)},
    ("compressed-tensors nvfp4-pack-quantized", "row"): {"weight_packed": (1, 2), "weight_scale": (1, 16)},
    ("ModelOpt NVFP4", "column"): {"weight": (0, 1), "weight_scale": (0, 1)},
    ("ModelOpt NVFP4", "row"): {"weight": (1, 2), "weight_scale": (1, 16)},
    ("compressed-tensors fp8 block", "column"): {"weight": (0, 1), "weight_scale": (0, 128)},
    ("compressed-tensors fp8 block", "row"): {"weight": (1, 1), "weight_scale": (1, 128)},
}
G_IDX_NAMES = ("g_idx", "weight_g_idx")


def _full_shapes(layout: str, group: int, n: int, k: int) -> dict[str, tuple]:
    """The stored shapes of a packed module with an (n, k) weight (see the module's table); scalars and
    ``weight_shape`` are left out (read whole, checked by the conversion or by ``packed_slices``)."""
    return {"AWQ": {"qweight": (k, n // 8), "qzeros": (k // group, n // 8), "scales": (k // group, n)},
            "GPTQ": {"qweight": (k // 8, n), "qzeros": (k // group, n // 8), "scales": (k // group, n), "g_idx": (k,)},
            "GPTQ 8-bit": {"qweight": (k // 4, n), "qzeros": (1, n // 4), "scales": (1, n), "g_idx": (k,)},
            "compressed-tensors pack-quantized int4": {"weight_packed": (n, k // 8), "weight_scale": (n, k // group),
                                                       "weight_zero_point": (n // 8, k // group), "weight_g_idx": (k,)},
            "compressed-tensors pack-quantized int8": {"weight_packed": (n, k // 4), "weight_scale": (n, 1)},
            "compressed-tensors nvfp4-pack-quantized": {"weight_packed": (n, k // 2), "weight_scale": (n, k // 16)},
            "ModelOpt NVFP4": {"weight": (n, k // 2), "weight_scale": (n, k // 16)},
            "compressed-tensors fp8 block": {"weight": (n, k), "weight_scale": (n // 128, k // 128)}}[layout]


def packed_slices(shapes: dict[str, tuple], g_idx: torch.Tensor | None, key: str, n: int, k: int, split: str,
                  lo: int, hi: int, weight_shape: torch.Tensor | None = None) -> dict[str, tuple | None] | None:
    """The part of each packed checkpoint tensor (``shapes``: name -> stored shape, for a weight (n, k))
    that holds exactly the weight's ``[lo, hi)`` along N (``split`` "column") or K ("row"): name ->
    ``(dim, start, stop)``, or None to read it whole; a name left out is not read. Converting those
    parts gives the same tensors as converting the whole module and slicing. Formats: AWQ, GPTQ (4- and
    8-bit), compressed-tensors pack-quantized int4 / int8, nvfp4 and fp8 block, ModelOpt NVFP4.

    None (read the module whole) when the tensors are no such layout of ``key``, when a bound cuts a
    packed word, a group or a scale block, or, under a row split, when ``g_idx`` (GPTQ ``g_idx`` or
    compressed-tensors ``weight_g_idx``: the whole one, which the caller reads, it is small) is
    act-order: a K slice then refers to groups anywhere, and the whole read reports that act-order
    cannot be row-split. A plain ``g_idx`` (``arange(K) // G``) is dropped from a row shard, which
    converts as if it had none. A stored ``weight_shape`` (the caller passes its value) must say
    ``[n, k]`` and is then left out of the shard; otherwise None, and the whole read reports it."""
    names = set(shapes)
    group = _group(key) if _int4(key) else k  # GPTQ 8-bit: one scale per output row
    # every tensor must have its full shape: a rank's slice of a wrong one could convert without error
    layouts = [lay for lay in LAYOUTS if (lay.name, split) in _FOLLOWS and lay.holds(key) and _by_names(lay, key, names)
               and all(tuple(shapes[name]) == shape for name, shape in _full_shapes(lay.name, group, n, k).items()
                       if name in names)]
    if len(layouts) != 1:
        return None
    if "weight_shape" in names:
        if weight_shape is None or [int(v) for v in weight_shape.reshape(-1).tolist()] != [n, k]:
            return None
        names = names - {"weight_shape"}
    g_name = next((name for name in G_IDX_NAMES if name in names), None)
    if split == "row" and g_name is not None:
        if g_idx is None or not torch.equal(g_idx.to(torch.int64), torch.arange(k, device=g_idx.device) // group):
            return None
        names = names - {g_name}
    out: dict[str, tuple | None] = {name: None for name in names}
    for name, (dim, unit) in _FOLLOWS[(layouts[0].name, split)].items():
        if name not in names:  # an optional tensor (zero points) this module does not have
            continue
        unit = group if unit == "G" else unit
        if lo % unit or hi % unit:
            return None
        out[name] = (dim, lo // unit, hi // unit)
    return out


def _by_names(layout: Layout, key: str, names: set[str]) -> bool:
    required, optional = layout.names(key)
    return set(required) <= names <= set(required) | set(optional)


def _primary_ok(layout: Layout, given: dict, key: str, n: int, k: int) -> bool:
    name, dtype, shape = layout.primary(key, n, k)
    t = given[name]
    return t.dtype == dtype and tuple(t.shape) == tuple(shape)



def _listing(given: dict) -> str:
    return ", ".join(f"{n} ({_desc(t)})" for n, t in sorted(given.items()))


def is_prequantized(given: dict) -> bool:
    """Whether a module's checkpoint tensors are more than a high-precision ``weight`` (and riders)."""
    rest = {n: t for n, t in given.items() if n not in RIDE_ALONG}
    if set(rest) - {"weight"}:
        return True
    w = rest.get("weight")
    return w is not None and not (w.is_floating_point() and w.element_size() >= 2)


def checkpoint_tensors(given: dict[str, torch.Tensor], key: str, n: int, k: int) -> dict[str, torch.Tensor]:
    """One module's pre-quantized tensors (checkpoint names, riders included) -> quantc tensors of ``key``
    for an (n, k) weight, plus ``k_perm`` for act-order; ``bias`` / ``input_scale`` are passed through.
    Raises ValueError naming the format, the tensor and what was expected."""
    core = {nm: t for nm, t in given.items() if nm not in RIDE_ALONG}
    for zp in _ZERO_POINTS:  # symmetric checkpoints may still carry all-zero zero points
        if zp in core and not key.endswith("_asym") and not core[zp].is_floating_point() and not bool(core[zp].any()):
            del core[zp]
    names = set(core)
    named = [lay for lay in LAYOUTS if lay.holds(key) and _by_names(lay, key, names)]
    hits = [lay for lay in named if _primary_ok(lay, core, key, n, k)]
    if len(hits) > 1:
        raise ValueError(f"the tensors {_listing(core)} fit several checkpoint layouts for {key} "
                         f"({'; '.join(lay.name for lay in hits)}); rename or drop the extra tensors")
    if not hits and len(named) == 1:
        lay = named[0]
        name, dtype, shape = lay.primary(key, n, k)
        raise ValueError(f"{lay.name}: {name} is {_desc(core[name])}, expected {str(dtype).removeprefix('torch.')} "
                         f"{tuple(shape)} for a {key} weight of (N, K) = ({n}, {k})")
    if not hits:
        raise ValueError(_incomplete(core, key, n, k) or _unknown(core, key, n, k, named))
    try:
        out = hits[0].convert(core, key, n, k)
    except (ValueError, RuntimeError) as exc:  # LayoutError is a ValueError; RuntimeError: a reshape that cannot fit
        msg = str(exc)
        raise ValueError(msg if msg.startswith(hits[0].name) else f"{hits[0].name}: {msg}") from None
    try:
        final = check_native(key, {nm: t for nm, t in out.items() if nm != "k_perm"}, Q.tensor_specs(key, n, k))
    except ValueError as exc:
        raise ValueError(f"{hits[0].name}: after conversion, {exc}") from None
    if "k_perm" in out:
        final["k_perm"] = out["k_perm"]
    final.update({nm: given[nm] for nm in RIDE_ALONG if nm in given})
    return final


def _incomplete(core: dict, key: str, n: int, k: int) -> str | None:
    """The message for a set that is one layout's minus some tensors (a missing scale), if exactly one."""
    names, partial = set(core), []
    for lay in LAYOUTS:
        req, opt = lay.names(key)
        if lay.holds(key) and names < set(req) | set(opt) and not set(req) <= names:
            prim = lay.primary(key, n, k)[0]
            if prim not in core or _primary_ok(lay, core, key, n, k):
                partial.append(lay)
    lacks = [", ".join(x for x in lay.names(key)[0] if x not in names) for lay in partial]
    if len(partial) == 1:
        return f"{partial[0].name}: pre-quantized {key} weights lack {lacks[0]} (found {_listing(core)})"
    if partial:
        return (f"pre-quantized {key} weights lack " + " or ".join(f"{m} ({lay.name})" for m, lay in zip(lacks, partial))
                + f" (found {_listing(core)})")
    return None


def _unknown(core: dict, key: str, n: int, k: int, named: list) -> str:
    known = []
    for lay in LAYOUTS:
        if lay.holds(key):
            req, opt = lay.names(key)
            known.append(f"{lay.name}: {', '.join(req)}" + (f" [+ {', '.join(opt)}]" if opt else ""))
    other = [lay.name for lay in LAYOUTS if not lay.holds(key) and any(
        _by_names(lay, other_key, set(core)) for other_key in ("int4_group_128", "nvfp4", "int8_per_channel",
                                                                "fp8_block_128x128"))]
    extra = f"; these names are the layout of {' / '.join(other)}, which does not hold {key}" if other else ""
    if named:
        extra = "; by name: " + ", ".join(lay.name for lay in named) + " (dtype or shape differ)"
    return (f"the weights hold {_listing(core)} for this module, which is no pre-quantized layout of {key} "
            f"(N, K) = ({n}, {k}){extra}. Layouts for {key}: " + "; ".join(known))


class PermutedQuantLinear(QuantLinear):
    """A QuantLinear whose weight's K was permuted at load (act-order checkpoints): the input is permuted
    the same way with a stored index (``index_select``: no host sync, CUDA-graph friendly)."""

    def __init__(self, inner_args: tuple, k_perm: torch.Tensor):
        super().__init__(*inner_args)
        self.register_buffer("k_perm", k_perm.to(torch.int64).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.index_select(-1, self.k_perm))
