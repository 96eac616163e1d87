"""`quantc tune`, compiler side: which (kernel, N, K, M-bucket) to tune, the search space, shared-memory
pruning, and the kernel table it writes (``schemas/kernels.schema.json``). No torch here: measuring is
``quantc.runtime.tune``.

The table is rewritten atomically after every finished (kernel, N, K, bucket), so an interrupted run
keeps what it finished and a rerun skips it (resume).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from .emit import CONFIG_FIELDS, TABLE_FORMAT
from .gpus import Gpu
from .kernel_specs import KERNELS_BY_ID
from .keys import ACTIVATION_KEYS, WEIGHT_KEYS
from .plan import M_MAX_LAST, KernelConfig, Plan, write_atomic

# the M-buckets tuned, and the M measured for each (the last bucket is measured at 8192)
M_BUCKETS: tuple[tuple[int, int], ...] = ((1, 1), (16, 16), (64, 64), (256, 256), (1024, 1024), (4096, 4096), (M_MAX_LAST, 8192))

# dense kernels whose launch takes a KernelConfig (torch-family kernels choose their own; MoE kernels
# are tuned inside their module and keep their defaults for now)
TUNABLE = {k for k, spec in KERNELS_BY_ID.items() if spec.family != "torch" and spec.layer_kinds == {"linear"} and spec.min_sm < 100}


@dataclass(frozen=True)
class TuneJob:
    kernel: str
    n: int
    k: int
    weight_key: str
    activation_key: str
    m_max: int
    m: int

    @property
    def key(self) -> tuple:
        return (self.kernel, self.n, self.k, self.m_max)


def jobs_from_plan(plan: Plan, buckets=M_BUCKETS, kernels: set[str] | None = None) -> list[TuneJob]:
    """One job per (kernel, per-rank N, K) of the plan and M-bucket, with the keys of a module using it."""
    seen: dict[str, tuple[str, str]] = {}
    for m in plan.modules:
        if m.kernel_entry and m.kernel_entry not in seen:
            seen[m.kernel_entry] = (m.weight, m.activation)
    jobs = []
    for eid, (w, a) in sorted(seen.items()):
        e = plan.kernels[eid]
        if e.kernel not in TUNABLE or (kernels and e.kernel not in kernels):
            continue
        for m_max, m in buckets:
            jobs.append(TuneJob(e.kernel, e.n, e.k, w, a, m_max, m))
    return jobs


def _elem_bytes(key: str, role: str) -> float:
    qk = (WEIGHT_KEYS if role == "weight" else ACTIVATION_KEYS)[key]
    return 2.0 if qk.is_none else qk.bits / 8.0


def smem_bytes(cfg: KernelConfig, weight_key: str, activation_key: str) -> int:
    """Shared memory a software-pipelined GEMM tile needs: ``stages`` copies of the A and B tiles."""
    a = cfg.block_m * cfg.block_k * _elem_bytes(activation_key, "activation")
    b = cfg.block_n * cfg.block_k * _elem_bytes(weight_key, "weight")
    return int(cfg.num_stages * (a + b))


def search_space(job: TuneJob, gpu: Gpu, *, small: bool = False) -> list[KernelConfig]:
    """Candidate configs for one job, pruned before compiling: blocks no larger than the padded
    problem, split-K only for decode-sized M, and tiles that fit the GPU's shared memory."""
    def pow2_at_least(x: int) -> int:
        return 1 << max(0, (x - 1).bit_length())

    m_cap = max(16, pow2_at_least(job.m))
    n_cap = max(16, pow2_at_least(job.n))
    k_cap = max(16, pow2_at_least(job.k))
    if small:
        grid = itertools.product((16, 32), (32, 64), (32, 64), (4,), (2, 3), (1, 2))
    else:
        grid = itertools.product((16, 32, 64, 128, 256), (32, 64, 128, 256), (64, 128, 256), (4, 8), (3, 4, 5), (1, 2, 4, 8))
    out = []
    spec = KERNELS_BY_ID[job.kernel]
    for bm, bn, bk, warps, stages, split_k in grid:
        if bm > m_cap or bn > n_cap or bk > k_cap:
            continue
        if split_k > 1 and (job.m > 64 or job.k // split_k < bk):
            continue
        if spec.k_multiple > 1 and bk % min(spec.k_multiple, 128) and spec.k_multiple % bk:
            continue  # a K-tile must line up with the format's scale groups
        if bm >= 128 and warps == 4 and bn >= 256:
            continue
        cfg = KernelConfig(bm, bn, bk, 8, warps, stages, split_k)
        if smem_bytes(cfg, job.weight_key, job.activation_key) > gpu.smem_bytes:
            continue
        out.append(cfg)
    return out


# --- the table file --------------------------------------------------------------------------------


def read_or_new_table(path: Path, gpu: Gpu, meta: dict) -> dict:
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("format") != TABLE_FORMAT:
            raise ValueError(f"{path} exists and is not a quantc kernel table")
        return data
    return {"format": TABLE_FORMAT, "version": 1, "gpu": gpu.name, **meta, "defaults": {}, "entries": []}


def finished(table: dict) -> set[tuple]:
    return {(r["kernel"], r["n"], r["k"], r["m_max"]) for r in table.get("entries", [])}


def add_entry(path: Path, table: dict, job: TuneJob, cfg: KernelConfig, time_us: float, default_time_us: float | None) -> None:
    row = {"kernel": job.kernel, "n": job.n, "k": job.k, "m_max": job.m_max,
           **{f: getattr(cfg, f) for f in CONFIG_FIELDS}, "time_us": round(time_us, 3)}
    if default_time_us is not None:
        row["default_time_us"] = round(default_time_us, 3)
    table["entries"] = [r for r in table["entries"] if (r["kernel"], r["n"], r["k"], r["m_max"]) != job.key] + [row]
    table["entries"].sort(key=lambda r: (r["kernel"], r["n"], r["k"], r["m_max"]))
    write_atomic(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
