"""The copy bandwidth of the GPU in this run: the reference the benches report bandwidth against
(shared/BENCH.md: a 1 GiB device-to-device copy, read + write bytes over its time)."""

from __future__ import annotations


def copy_gbps(nbytes: int = 1 << 30, device: str = "cuda") -> float:
    import torch
    from triton.testing import do_bench

    a = torch.empty(nbytes, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    return 2 * nbytes / do_bench(lambda: b.copy_(a)) / 1e6


def moe_roofline(row: dict, flops: int, copy_gbps_: float) -> dict:
    """bench_moe's bf16 gate_up row (tokens, top_k, H, I, active_experts, the dense GEMM's and our times)
    against the floor's reference (a dense bf16 GEMM of equal FLOPs, same run) and
    against what the weight bytes allow: the active experts' weights, the tokens and the fused output
    must cross DRAM at least once, so no kernel beats bytes / copy bandwidth; with ~128 (token, expert)
    pairs an expert that bound sits below the dense GEMM's rate."""
    t, k, h, inter = row["tokens"], row["top_k"], row["H"], row["I"]
    bytes_min = 2 * (row["active_experts"] * 2 * inter * h + t * h + t * k * inter)
    dense = flops / row["dense_bf16_equal_flops_us"] / 1e6
    bound = min(dense, flops / (bytes_min / (copy_gbps_ * 1e3)) / 1e6)
    out = {"dense_bf16_tflops": dense, "gate_up_bf16_roofline_tflops": bound, "roofline_over_dense": bound / dense}
    for key in ("gate_up_ours_bf16_table", "gate_up_ours_bf16_best"):
        if row.get(f"{key}_us"):
            tf = flops / row[f"{key}_us"] / 1e6
            out[f"{key}_over_dense"] = tf / dense
            out[f"{key}_over_roofline"] = tf / bound
    return out
