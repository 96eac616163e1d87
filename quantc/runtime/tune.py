"""`quantc tune`, runtime side: measure candidate KernelConfigs of the dense kernels and of the grouped
MoE GEMMs on the live device.

For one job (kernel, N, K, M): random operands with a fixed seed, the weight quantized with the
runtime's own quantizer and prepared by the kernel's launcher; every candidate's output is checked
against the output of the kernel's default config before it is timed, and that output is first checked
against the plain-torch reference of the same math (``plain_reference_error``: dequantized operands, one
fp32 matmul; for MoE the experts that received the most rows, up to ``MOE_CHECK_EXPERTS``), so a
candidate that agrees with the default agrees with the reference. A candidate that fails to compile or
run, or disagrees, is dropped; a job whose default config disagrees with the reference writes no row
(counted as ``default_disagrees``). On a GPU the time is the median of ``triton.testing.do_bench``
(CUDA-graph replay where it captures); on the CPU interpreter the flow runs the same, with wall-clock
times that mean nothing.
A dense job's weight buffers are copied until the copies pass ``ROTATE_BYTES`` (twice an H100's or
H200's 50 MB L2) and each timed call cycles through them, so a decode-sized job reads its weights
from HBM as it does in a model, not from L2 (shared/BENCH.md); time per call = total / copies.

A MoE job (``quantc.tune`` says what it holds) gets ``num_experts`` random expert weights quantized
with the runtime's quantizers (``wo_format.quantize``, as ``apply`` does), ``m`` tokens with seeded
random top-k routing, and the input rounded the way ``QuantMoE`` rounds it; each candidate runs
``moe_gemm.grouped_gemm`` (the function ``QuantMoE.experts`` calls) on a routing padded to its own
BLOCK_M, and is checked against the config ``QuantMoE`` uses without a table entry. Only the grouped
GEMM is timed (the routing sort and activation quantization are outside the config's reach).

``space="seeded"`` searches ``quantc.tune.seeded_space``: the winners of the table being written (rows
finished earlier in this run or a previous one), then of ``tables`` (default: the shipped ones), with
the job's default config (``job_default``, measured once) among the candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import torch

from quantc.plan import KernelConfig

from .quantize import quantize_weight
from .registry import LAUNCHERS
from .tables import bucket_lookup, default_buckets, pick


@dataclass
class Operands:
    x: torch.Tensor
    buffers: list
    reference: torch.Tensor
    rotation: list = field(default_factory=list)  # more copies of ``buffers`` (timing only)
    tensors: dict = field(default_factory=dict)  # the quantized weight as quantize_weight gave it (reference)


ROTATE_BYTES = 128 << 20


def rotation_copies(nbytes: int, device: str, budget: int = ROTATE_BYTES) -> int:
    """How many copies of a weight of ``nbytes`` the timed loop cycles through (1: no rotation)."""
    if device != "cuda" or nbytes <= 0:
        return 1
    return max(1, min(64, -(-budget // nbytes)))


@dataclass
class MoeOperands:
    a: torch.Tensor  # the GEMM input as the kernel reads it (bf16, or fp8/int8 with a_scale)
    a_scale: torch.Tensor | None
    a_quant: int
    a_group: int
    weight: object  # wo_format.WoWeight, (E, rows, K)
    topk_ids: torch.Tensor  # (tokens, top_k) int32
    topk_weights: torch.Tensor | None  # (tokens * top_k,) fp32, down only
    reference: torch.Tensor | None = None
    routings: dict = field(default_factory=dict)  # BLOCK_M -> align_by_expert output


def make_operands(job, device: str):
    if job.num_experts:
        return _moe_operands(job, device)
    gen = torch.Generator(device="cpu").manual_seed(1234 + job.n * 7 + job.k)
    w = (torch.randn(job.n, job.k, generator=gen) * 0.05).to(torch.bfloat16)
    x = torch.randn(job.m, job.k, generator=gen).to(torch.bfloat16)
    tensors = quantize_weight(w, job.weight_key)
    launcher = LAUNCHERS[job.kernel]
    buffers = [t.to(device) for t in launcher.prepare(tensors, job.weight_key, job.n, job.k).values()]
    x = x.to(device)
    ref = launcher.run(x, buffers, job_default(job), job.weight_key, job.activation_key, None)
    copies = rotation_copies(sum(b.numel() * b.element_size() for b in buffers), device)
    return Operands(x, buffers, ref, [[b.clone() for b in buffers] for _ in range(copies - 1)],
                    {n: t.to(device) for n, t in tensors.items()})


def _moe_default(job) -> KernelConfig:
    """What QuantMoE runs without a table entry (a down job at its gate_up's BLOCK_M)."""
    from .moe import default_config as moe_default

    cfg = moe_default(job.m, job.top_k, job.kernel)
    return replace(cfg, block_m=job.block_m) if job.block_m else cfg


def job_default(job) -> KernelConfig:
    """The config a module of this job runs without a table row: MoE as QuantMoE picks it; dense from
    the kernel's default buckets, shape-aware for the 4-bit weight-only kernels (their split-K depends
    on N and K), as apply() builds them."""
    if job.num_experts:
        return _moe_default(job)
    return pick(*bucket_lookup(default_buckets(job.kernel, job.n, job.k)), job.m)


def _moe_operands(job, device: str) -> MoeOperands:
    from .kernels import wo_format as wf
    from .moe import QuantMoE

    gen = torch.Generator(device=device).manual_seed(4321 + job.rows * 7 + job.k * 3 + job.num_experts + job.m)
    e, t, top_k = job.num_experts, job.m, job.top_k
    w = torch.randn(e, job.rows, job.k, generator=gen, device=device, dtype=torch.bfloat16) * 0.05
    weight = wf.quantize(w, job.weight_key)
    del w
    ids = torch.rand(t, e, generator=gen, device=device).topk(top_k, dim=-1).indices.to(torch.int32)
    rows = t if job.role == "gate_up" else t * top_k  # gate_up reads a token per pair, down a row per pair
    x = torch.randn(rows, job.k, generator=gen, device=device, dtype=torch.bfloat16)
    # QuantMoE's own input rounding (it reads only the kernel id and the activation key)
    a, sa, code, group = QuantMoE._act_in(SimpleNamespace(kernel=job.kernel, act_key=job.activation_key), x)
    topw = None if job.role == "gate_up" else torch.rand(t * top_k, generator=gen, device=device)
    ops = MoeOperands(a, sa, code, group, weight, ids, topw)
    ops.reference = _moe_run(job, _moe_default(job), ops)
    return ops


def _moe_run(job, cfg: KernelConfig, ops: MoeOperands) -> torch.Tensor:
    from .kernels import moe_gemm as mg
    from .kernels.moe_routing import align_by_expert

    routing = ops.routings.get(cfg.block_m)
    if routing is None:
        sorted_ids, block_expert, total = align_by_expert(ops.topk_ids, job.num_experts, cfg.block_m)
        routing = ops.routings[cfg.block_m] = (sorted_ids, block_expert, total, ops.topk_ids.numel())
    gate_up = job.role == "gate_up"
    return mg.grouped_gemm(ops.a, ops.a_scale, ops.weight, routing, a_div=job.top_k if gate_up else 1,
                           act=job.act if gate_up else "none", a_quant=ops.a_quant, a_group=ops.a_group, cfg=cfg,
                           topk_weights=ops.topk_weights)


MOE_CHECK_EXPERTS = 8  # experts a MoE job's default output is checked on (the most-routed ones)
REFERENCE_RTOL = 2e-2


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    err = (got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-6)
    return float(err) if torch.isfinite(err) else float("inf")


def plain_reference_error(job, ops) -> float:
    """Relative error of the default config's output (``ops.reference``) against plain torch: the
    dense kernels' ``scaled_mm.reference`` (the activation through the reference quantizer, both
    operands dequantized, one fp32 matmul); for a MoE job, per checked expert, its rows' dequantized
    input times the dequantized expert weight, the fused activation (gate_up) or the routing weight
    (down) applied as ``moe_gemm.reference_expert_loop`` does (``moe_gemm.reference_activation``)."""
    if not job.num_experts:
        from .kernels.scaled_mm import reference

        return _rel_err(ops.reference, reference(ops.x, ops.tensors, job.weight_key, job.activation_key))
    from dataclasses import replace as replace_weight

    from .kernels import moe_gemm as mg
    from .kernels.wo_format import dequantize

    a = ops.a.float()
    if ops.a_scale is not None:
        s = ops.a_scale.float()
        a = a * (s.repeat_interleave(ops.a_group, 1)[:, : a.shape[1]] if s.shape[1] > 1 else s)
    ids = ops.topk_ids.reshape(-1).long()
    gate_up = job.role == "gate_up"
    rows_in = torch.arange(ids.numel(), device=ids.device) // (job.top_k if gate_up else 1)
    w = ops.weight
    got, want = [], []
    for e in torch.bincount(ids, minlength=job.num_experts).argsort(descending=True)[:MOE_CHECK_EXPERTS].tolist():
        pairs = torch.nonzero(ids == e).flatten()
        if pairs.numel() == 0:
            continue
        we = replace_weight(w, data=w.data[e], scale=None if w.scale is None else w.scale[e],
                            zeros=None if w.zeros is None else w.zeros[e],
                            global_scale=None if w.global_scale is None else w.global_scale[e].reshape(1))
        h = a[rows_in[pairs]] @ dequantize(we).T
        if gate_up:
            h = mg.reference_activation(h, job.act)
        elif ops.topk_weights is not None:
            h = h * ops.topk_weights[pairs].float().reshape(-1, 1)
        got.append(ops.reference[pairs])
        want.append(h)
    return _rel_err(torch.cat(got), torch.cat(want))


def _time_us(fn) -> float:
    """GPU time of ``fn`` in microseconds, replayed in a CUDA graph."""
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=20)) * 1000.0
    except Exception:  # capture can fail for a kernel that syncs: time it eagerly then
        return float(triton.testing.do_bench(fn, warmup=5, rep=20)) * 1000.0


def measure(job, cfg: KernelConfig, ops: Operands, device: str, rtol: float = 2e-2) -> float | None:
    """Time of one candidate in microseconds, or None when it does not run or does not agree."""
    if job.num_experts:
        def fn():
            return _moe_run(job, cfg, ops)
    else:
        launcher = LAUNCHERS[job.kernel]

        def fn():
            return launcher.run(ops.x, ops.buffers, cfg, job.weight_key, job.activation_key, None)

    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception:  # a config the compiler or the kernel refuses is simply not a candidate
        return None
    checked_us = (time.perf_counter() - t0) * 1e6
    if _rel_err(out, ops.reference) > rtol:  # a non-finite error is inf
        return None
    if device != "cuda":
        # the interpreter: its time says nothing about a GPU, so the checked run is the timing rather
        # than a second interpreted run (CI tunes on the CPU to test the tuner, not the configs)
        return checked_us
    if job.num_experts or not ops.rotation:
        return _time_us(fn)
    every = [ops.buffers, *ops.rotation]

    def rotated():
        for buffers in every:
            launcher.run(ops.x, buffers, cfg, job.weight_key, job.activation_key, None)

    return _time_us(rotated) / len(every)


def tune(jobs, gpu, out_dir: str | Path, *, small: bool = False, space: str = "full", tables: list[dict] | None = None,
         progress: bool = True, device: str | None = None) -> dict:
    """Tune every job not already in ``out_dir/<gpu>.json`` over ``space`` (``quantc.tune.SPACES``;
    ``small=True``: the small one); returns counts for the report. ``tables``: the seeded space's
    parsed tables after the one being written (default: the shipped ones)."""
    import triton

    from quantc.tune import (add_entry, finished, partner_block_m, read_or_new_table, resolve_space, search_space,
                             shipped_tables)

    space = resolve_space(space, small)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{gpu.table}.json"
    meta = {"device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET)",
            "torch": torch.__version__.split("+")[0], "triton": triton.__version__}
    table = read_or_new_table(path, gpu, meta)
    # the table being written seeds first: add_entry updates it in place, so later jobs see earlier winners
    seeds = [table, *(shipped_tables(gpu) if tables is None else tables)] if space == "seeded" else None
    done = finished(table)
    todo = [j for j in jobs if j.key not in done]
    stats = {"jobs": len(jobs), "skipped_done": len(jobs) - len(todo), "tuned": 0, "no_valid_config": 0,
             "default_disagrees": 0, "path": str(path)}
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("tuning", total=len(todo))
        for job in todo:
            job = partner_block_m(job, table)  # a down GEMM runs at the BLOCK_M its gate_up row picked
            ops = make_operands(job, device)
            err = plain_reference_error(job, ops)
            if err > REFERENCE_RTOL:
                stats["default_disagrees"] += 1
                bar.console.print(f"[red]{job.kernel} n={job.n} k={job.k} m={job.m}: the default config's output is "
                                  f"{err:.3g} (relative) from the plain-torch reference; no row written[/red]")
                bar.advance(task)
                continue
            default = job_default(job)
            default_us = measure(job, default, ops, device)
            best, best_us = None, None
            for cfg in search_space(job, gpu, space=space, tables=seeds, default=default):
                us = default_us if cfg == default else measure(job, cfg, ops, device)
                if us is not None and (best_us is None or us < best_us):
                    best, best_us = cfg, us
            if best is None:
                stats["no_valid_config"] += 1
            else:
                add_entry(path, table, job, best, best_us, default_us)
                stats["tuned"] += 1
            bar.advance(task)
    return stats
