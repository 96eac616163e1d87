"""Kernel specs: what each kernel accepts, as plain data the compiler reads without torch.

The runtime (``quantc.runtime.registry``) maps the same ids to launchers; a test checks that both
registries name the same kernels. Candidates for a (layer kind, weight key, activation key) are tried in
the order of ``KERNEL_SPECS``; the first one whose constraints hold is chosen, and ``explain`` lists the
rejected ones with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

# families, for the config's `backend:` pin
FAMILIES = {
    "triton": "quantc's Triton kernels with native tensor-core math for the format",
    "triton_emulated": "quantc's Triton kernels that upcast a format the GPU has no MMA for (MX on sm_90)",
    "torch": "torch / cuBLAS through torch ops (bf16 matmul, torch._scaled_mm)",
}


# Rows of a dense 4-bit weight-only layer that an sm_90 GPU runs at a config of the runtime's own, whatever the
# layer's table says (explain and tune read these; the runtime's policies use the same numbers): the CUDA-core GEMV
# (runtime/kernels/wo_gemv.py) at one row (two where the next kernel does not take the weight), K a multiple of
# 128; the natural layout's MMA kernel (runtime/kernels/wo_plane_mma.py) from 2 rows up to PLANE_MMA_ROWS for int4 in
# groups of a multiple of 128, mxfp4 and nvfp4, PLANE_MMA_ROWS_ZERO for int4 with zero points (whose per-element
# subtraction the plane kernel pays).
GEMV_ROWS = 2
PLANE_MMA_ROWS = 8
PLANE_MMA_ROWS_ZERO = 16


def plane_mma_key(weight_key: str) -> bool:
    """Whether the natural layout's MMA kernel reads weights of this key: int4 in groups of a multiple of 128 (with
    or without zero points), mxfp4, nvfp4."""
    if weight_key.startswith("int4_group_"):
        return int(weight_key.split("_")[2]) % 128 == 0
    return weight_key in ("mxfp4", "nvfp4")


def own_config_rows(weight_key: str, k: int) -> int:
    """Up to how many rows a dense 4-bit weight-only layer of ``weight_key`` and reduction size ``k`` runs at the
    runtime's own config on sm_90 (0: none)."""
    if k % 128:
        return 0
    if weight_key.startswith("int4_group_"):
        if not plane_mma_key(weight_key):
            return GEMV_ROWS
        return PLANE_MMA_ROWS_ZERO if weight_key.endswith("_asym") else PLANE_MMA_ROWS
    return PLANE_MMA_ROWS


@dataclass(frozen=True)
class KernelSpec:
    id: str
    family: str
    layer_kinds: frozenset[str]
    weight_keys: frozenset[str]
    activation_keys: frozenset[str]
    method: str
    min_sm: int = 80
    max_sm: int | None = None
    k_multiple: int = 1
    n_multiple: int = 1
    needs_static_scales: bool = False
    description: str = ""


def _spec(id, family, kinds, weights, acts, method, **kw) -> KernelSpec:
    return KernelSpec(id, family, frozenset(kinds), frozenset(weights), frozenset(acts), method, **kw)


_FP8_W_SCALED = ("fp8_per_tensor", "fp8_per_channel")
_FP8_A_SCALED = ("fp8_dynamic_per_token", "fp8_dynamic_per_tensor", "fp8_static_per_tensor")
_INT4 = tuple(f"int4_group_{g}{s}" for g in (32, 64, 128) for s in ("", "_asym"))
_FP8_W_ALL = (*_FP8_W_SCALED, "fp8_block_128x128")

KERNEL_SPECS: tuple[KernelSpec, ...] = (
    # --- dense linear -------------------------------------------------------------------------
    _spec("bf16_matmul", "torch", ["linear"], ["none"], ["none"], "bf16",
          description="unquantized: torch.matmul (cuBLAS)"),
    _spec("fp8_scaled_gemm", "triton", ["linear"], _FP8_W_SCALED, _FP8_A_SCALED, "w8a8_fp8",
          min_sm=89, k_multiple=16,
          description="fp8 x fp8 with per-tensor/per-token activation scales and per-tensor/per-channel weight scales"),
    _spec("fp8_scaled_mm_cublas", "torch", ["linear"], _FP8_W_SCALED, _FP8_A_SCALED, "w8a8_fp8",
          min_sm=89, k_multiple=16, n_multiple=16,
          description="torch._scaled_mm (cuBLASLt) rowwise or per-tensor"),
    _spec("fp8_block_gemm", "triton", ["linear"], ["fp8_block_128x128"], ["fp8_dynamic_group_128"], "w8a8_fp8_block",
          min_sm=89, k_multiple=128,
          description="fp8 1x128 activation groups x 128x128 weight blocks; ragged last block along N allowed"),
    _spec("fp8_block_scaled_mm_cublas", "torch", ["linear"], ["fp8_block_128x128"], ["fp8_dynamic_group_128"], "w8a8_fp8_block",
          min_sm=90, max_sm=90, k_multiple=128, n_multiple=128,
          description="torch._scaled_mm with blockwise scales (cuBLAS >= 12.9); no ragged N, refuses M = 1"),
    _spec("int8_gemm", "triton", ["linear"], ["int8_per_channel"], ["int8_dynamic_per_token"], "w8a8_int8",
          min_sm=80, k_multiple=16,
          description="int8 x int8 -> int32, per-token x per-channel scales, bf16 out"),
    _spec("mxfp8_gemm_emulated", "triton_emulated", ["linear"], ["mxfp8"], ["mxfp8"], "w8a8_mx_emulated",
          min_sm=89, k_multiple=32,
          description="mxfp8 x mxfp8: fp8 MMA per 32-wide K slice with e8m0 scales applied in fp32 (sm_90 has no block-scaled MMA)"),
    _spec("fp8_weight_only_gemm", "triton", ["linear"], _FP8_W_ALL, ["none"], "weight_only",
          min_sm=80, k_multiple=16,
          description="fp8 weights dequantized in registers, bf16 activations"),
    _spec("int8_weight_only_gemm", "triton", ["linear"], ["int8_per_channel"], ["none"], "weight_only",
          min_sm=80, k_multiple=16,
          description="int8 weights dequantized in registers, bf16 activations"),
    _spec("int4_weight_only_gemm", "triton", ["linear"], _INT4, ["none"], "weight_only",
          min_sm=80, k_multiple=32,
          description="int4 groups (sym or zero point), dequantized in registers, bf16 activations"),
    _spec("fp4_weight_only_gemm", "triton", ["linear"], ["mxfp4", "nvfp4"], ["none"], "weight_only",
          min_sm=80, k_multiple=32,
          description="e2m1 weights with e8m0 (mxfp4) or e4m3+fp32 (nvfp4) scales, upcast in registers"),
    _spec("mxfp4_mxfp8_gemm_emulated", "triton_emulated", ["linear"], ["mxfp4"], ["mxfp8"], "w4a8_mx_emulated",
          min_sm=89, k_multiple=32,
          description="mxfp4 weights upcast to e4m3 x mxfp8 activations, scales per 32-wide K slice"),
    _spec("nvfp4_gemm", "triton", ["linear"], ["nvfp4"], ["nvfp4"], "w4a4_fp4",
          min_sm=100, k_multiple=32,
          description="nvfp4 x nvfp4 for Blackwell; the runtime emulates the block-scaled MMA exactly (fp4 weight-only kernel on e2m1 x e4m3 activations) until a native tcgen05 path lands"),
    # --- MoE experts (grouped GEMM over experts, routing fused around it) -----------------------
    _spec("moe_bf16", "triton", ["moe"], ["none"], ["none"], "bf16",
          description="grouped bf16 GEMM over experts"),
    _spec("moe_fp8", "triton", ["moe"], _FP8_W_SCALED, _FP8_A_SCALED, "w8a8_fp8",
          min_sm=89, k_multiple=16, description="grouped fp8 GEMM, per-token x per-channel scales"),
    _spec("moe_fp8_block", "triton", ["moe"], ["fp8_block_128x128"], ["fp8_dynamic_group_128"], "w8a8_fp8_block",
          min_sm=89, k_multiple=128, description="grouped fp8 GEMM with 128x128 weight blocks"),
    _spec("moe_int8", "triton", ["moe"], ["int8_per_channel"], ["int8_dynamic_per_token"], "w8a8_int8",
          min_sm=80, k_multiple=16, description="grouped int8 GEMM"),
    _spec("moe_weight_only", "triton", ["moe"], (*_FP8_W_ALL, "int8_per_channel", *_INT4, "mxfp4", "nvfp4"), ["none"],
          "weight_only", min_sm=80, k_multiple=32,
          description="grouped GEMM, weights dequantized in registers, bf16 activations"),
    _spec("moe_mxfp4_mxfp8_emulated", "triton_emulated", ["moe"], ["mxfp4"], ["mxfp8"], "w4a8_mx_emulated",
          min_sm=89, k_multiple=32, description="grouped mxfp4 x mxfp8, emulated on sm_90"),
    _spec("moe_mxfp8_emulated", "triton_emulated", ["moe"], ["mxfp8"], ["mxfp8"], "w8a8_mx_emulated",
          min_sm=89, k_multiple=32, description="grouped mxfp8 x mxfp8, emulated on sm_90"),
    # --- KV cache ----------------------------------------------------------------------------
    _spec("kv_cache_bf16", "torch", ["kv_cache"], ["none"], ["none"], "bf16",
          description="unquantized KV cache"),
    _spec("kv_cache_fp8", "triton", ["kv_cache"], ["none"], ["fp8_dynamic_per_tensor", "fp8_static_per_tensor"], "kv_fp8",
          min_sm=89, description="fp8 e4m3 KV cache with a per-tensor scale (planned; not applied by the runtime yet)"),
)

KERNELS_BY_ID: dict[str, KernelSpec] = {k.id: k for k in KERNEL_SPECS}


def candidates(layer_kind: str, weight_key: str, activation_key: str) -> list[KernelSpec]:
    """Kernels that accept this (kind, weight, activation), in preference order, before any
    hardware or shape filter."""
    return [
        k for k in KERNEL_SPECS
        if layer_kind in k.layer_kinds and weight_key in k.weight_keys and activation_key in k.activation_keys
    ]


def activation_pairs(layer_kind: str, weight_key: str) -> set[str]:
    """Activation keys some kernel pairs with this weight key for this layer kind (any GPU)."""
    out: set[str] = set()
    for k in KERNEL_SPECS:
        if layer_kind in k.layer_kinds and weight_key in k.weight_keys:
            out |= k.activation_keys
    return out
