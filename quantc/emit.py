"""Emission: kernel configurations per (kernel, N, K) and M-bucket, from the tables under kernels/.

Lookup for a (kernel, N, K) on a GPU, first hit wins:

1. the GPU's own table (``kernels/<gpu>.json``, plus any ``--tables DIR`` on top), exact (N, K);
2. the same table, nearest shape: the tuned (N', K') of that kernel minimising
   ``|log2(N/N')| + |log2(K/K')|`` (ties: the smaller N', then K'), when that distance is at most 2
   (within a factor of 4 overall);
3. the table's hand-picked defaults for the kernel;
4. for a GPU without a table of its own for this kernel (H200 without an H200 entry), the H100
   table by the same rules; the entry's ``source`` says so and ``plan`` prints it.

A tuned entry's largest bucket extends to every larger M when it was measured at prefill sizes
(M >= 1024); an entry measured only at decode sizes hands the larger M to the kernel's defaults (the
4-bit weight-only rows stop at M = 64, so prefill keeps the prefill default, not a split-K decode tile).
Every config is clamped so that its blocks never exceed the padded problem (BLOCK_N <= next_pow2(N)).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .plan import M_MAX_LAST, KernelConfig, KernelTableEntry

TABLE_FORMAT = "quantc-kernels"
CONFIG_FIELDS = ("block_m", "block_n", "block_k", "group_m", "num_warps", "num_stages", "split_k")
NEAREST_MAX_DISTANCE = 2.0


def data_dir(name: str) -> Path:
    """``schemas`` / ``kernels``: inside the installed package (quantc/_data/), else the repo root."""
    here = Path(__file__).resolve().parent
    packaged = here / "_data" / name
    if packaged.is_dir():
        return packaged
    return here.parent / name


@dataclass(frozen=True)
class KernelTable:
    gpu: str
    path: str
    meta: dict
    defaults: dict  # kernel -> tuple[(m_max, KernelConfig)]
    entries: dict  # (kernel, n, k) -> tuple[(m_max, KernelConfig)]


# A tuned entry measured only below this M (decode and small batches) says nothing about prefill tiles.
PREFILL_M = 1024


def _rows_to_buckets(rows: list[dict], above: tuple = ()) -> tuple[tuple[int, KernelConfig], ...]:
    """Rows -> M-buckets. The largest bucket extends to every M, except when it lies below PREFILL_M:
    then the buckets of ``above`` (the kernel's defaults) with a larger bound take over past it."""
    rows = sorted(rows, key=lambda r: r["m_max"])
    buckets = [(int(r["m_max"]), KernelConfig(**{f: int(r[f]) for f in CONFIG_FIELDS if f in r})) for r in rows]
    if buckets and buckets[-1][0] < M_MAX_LAST:
        higher = [b for b in above if b[0] > buckets[-1][0]] if buckets[-1][0] < PREFILL_M else []
        if higher:
            buckets += higher
        else:
            buckets[-1] = (M_MAX_LAST, buckets[-1][1])
    return tuple(buckets)


def read_table(path: Path) -> KernelTable:
    data = json.loads(Path(path).read_text())
    if data.get("format") != TABLE_FORMAT:
        raise ValueError(f"{path}: not a quantc kernel table (format must be {TABLE_FORMAT!r})")
    defaults = {kernel: _rows_to_buckets(rows) for kernel, rows in data.get("defaults", {}).items()}
    grouped: dict[tuple, list[dict]] = {}
    for row in data.get("entries", []):
        grouped.setdefault((row["kernel"], int(row["n"]), int(row["k"])), []).append(row)
    entries = {key: _rows_to_buckets(rows, defaults.get(key[0], ())) for key, rows in grouped.items()}
    meta = {k: data.get(k) for k in ("gpu", "device_name", "torch", "triton") if k in data}
    return KernelTable(data.get("gpu", Path(path).stem), str(path), meta, defaults, entries)


def load_tables(gpu_table: str, extra_dirs: tuple[str, ...] = ()) -> list[KernelTable]:
    """The tables consulted for a GPU, most specific first: user --tables dirs, then shipped."""
    tables = []
    for d in extra_dirs:
        p = Path(d) / f"{gpu_table}.json"
        if p.is_file():
            try:
                tables.append(read_table(p))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}: {exc}") from None
    shipped = data_dir("kernels") / f"{gpu_table}.json"
    if shipped.is_file():
        tables.append(read_table(shipped))
    return tables


def tables_and_fallback(gpu_table: str, extra_dirs: tuple[str, ...] = ()) -> tuple[list[KernelTable], list[KernelTable]]:
    """``lookup``'s two table lists for a GPU: its own, and the H100's for shapes its own lack (none for the H100)."""
    return load_tables(gpu_table, extra_dirs), (load_tables("h100", extra_dirs) if gpu_table != "h100" else [])


def _clamp(cfg: KernelConfig, n: int, k: int) -> KernelConfig:
    n_pow2 = max(16, 1 << max(0, (n - 1)).bit_length())
    k_pow2 = max(16, 1 << max(0, (k - 1)).bit_length())
    if cfg.block_n <= n_pow2 and cfg.block_k <= k_pow2:
        return cfg
    return KernelConfig(cfg.block_m, min(cfg.block_n, n_pow2), min(cfg.block_k, k_pow2), cfg.group_m,
                        cfg.num_warps, cfg.num_stages, cfg.split_k)


def shape_distance(n: int, k: int, tn: int, tk: int) -> float:
    """How far a tuned shape (N', K') is from (N, K): ``|log2(N/N')| + |log2(K/K')|``."""
    return abs(math.log2(max(n, 1) / max(tn, 1))) + abs(math.log2(max(k, 1) / max(tk, 1)))


def _nearest(table: KernelTable, kernel: str, n: int, k: int):
    best = None
    for (kern, tn, tk), buckets in table.entries.items():
        if kern != kernel:
            continue
        dist = shape_distance(n, k, tn, tk)
        key = (dist, tn, tk)
        if dist <= NEAREST_MAX_DISTANCE and (best is None or key < best[0]):
            best = (key, tn, tk, buckets)
    return best


FALLBACK_BUCKETS = _rows_to_buckets([
    {"m_max": 16, "block_m": 16, "block_n": 64, "block_k": 128, "num_warps": 4, "num_stages": 4},
    {"m_max": 64, "block_m": 64, "block_n": 64, "block_k": 128, "num_warps": 4, "num_stages": 4},
    {"m_max": 256, "block_m": 64, "block_n": 128, "block_k": 128, "num_warps": 4, "num_stages": 4},
    {"m_max": M_MAX_LAST, "block_m": 128, "block_n": 128, "block_k": 128, "num_warps": 8, "num_stages": 3},
])


def element_bytes(key: str, role: str) -> float:
    """Bytes an element of a quant key takes in a GEMM tile (``role``: "weight" or "activation"): bf16 for
    "none" and for a key this build does not know."""
    from .keys import ACTIVATION_KEYS, WEIGHT_KEYS

    qk = (WEIGHT_KEYS if role == "weight" else ACTIVATION_KEYS).get(key)
    return 2.0 if qk is None or qk.is_none else qk.bits / 8.0


def tile_smem_bytes(cfg: KernelConfig, a_bytes: float, b_bytes: float, b_tiles: int = 1) -> int:
    """Shared memory of a software-pipelined tile: ``stages`` copies of the A tile and of ``b_tiles`` B tiles
    (two for a MoE gate_up, whose fused activation reads the gate and the up rows)."""
    return int(cfg.num_stages * (cfg.block_m * cfg.block_k * a_bytes + b_tiles * cfg.block_n * cfg.block_k * b_bytes))


def fit_smem(cfg: KernelConfig, limit: int, a_bytes: float, b_bytes: float, b_tiles: int) -> KernelConfig:
    """``cfg`` with fewer stages (down to 2), then narrower N and K tiles (down to 32), until its tile fits
    ``limit`` bytes of shared memory; unchanged where it fits."""
    while tile_smem_bytes(cfg, a_bytes, b_bytes, b_tiles) > limit:
        if cfg.num_stages > 2:
            cfg = KernelConfig(cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages - 1,
                               cfg.split_k)
        elif cfg.block_n > 32:
            cfg = KernelConfig(cfg.block_m, cfg.block_n // 2, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages,
                               cfg.split_k)
        elif cfg.block_k > 32:
            cfg = KernelConfig(cfg.block_m, cfg.block_n, cfg.block_k // 2, cfg.group_m, cfg.num_warps, cfg.num_stages,
                               cfg.split_k)
        else:
            break
    return cfg


@dataclass(frozen=True)
class SmemFit:
    """What ``lookup`` needs to fit configs to the target GPU: its shared memory and the operands' bytes."""
    limit: int
    a_bytes: float
    b_bytes: float
    b_tiles: int  # 2 for MoE kernels: a gate_up's two weight tiles (the down GEMM's one is then conservative)
    tuned_limit: dict  # table GPU name -> its shared memory (rows tuned there fit it)


def lookup(tables: list[KernelTable], fallback_tables: list[KernelTable], kernel: str, n: int, k: int, entry_id: str,
           gpu: str = "", fit: SmemFit | None = None) -> KernelTableEntry:
    """The table entry for (kernel, N, K): this GPU's tuned row, else its nearest tuned shape, else its
    defaults, then the same in the fallback tables, else the built-in fallback. With ``fit``, every config not
    tuned for this shape on a GPU with at least this much shared memory is fitted to it (``fit_smem``): a
    nearest shape's or a default row, the built-in fallback, or another GPU's table, would otherwise fail to
    launch (a MoE gate_up's two weight tiles need twice a dense tile's room)."""
    def search(ts: list[KernelTable], suffix: str):
        for t in ts:
            if (kernel, n, k) in t.entries:
                return t.entries[(kernel, n, k)], f"tuned ({t.gpu}{suffix})", t.gpu
        for t in ts:
            near = _nearest(t, kernel, n, k)
            if near:
                _, tn, tk, buckets = near
                return buckets, f"nearest tuned shape n={tn} k={tk} ({t.gpu}{suffix})", None
        for t in ts:
            if kernel in t.defaults:
                return t.defaults[kernel], f"default ({t.gpu}{suffix})", None
        return None

    found = search(tables, "")
    if found is None and fallback_tables:
        found = search(fallback_tables, f" table; no {gpu or 'table for this GPU'} entry")
    if found is None:
        buckets, source, tuned_on = FALLBACK_BUCKETS, "built-in fallback (no table)", None
    else:
        buckets, source, tuned_on = found
    buckets = tuple((m_max, _clamp(cfg, n, k)) for m_max, cfg in buckets)
    if fit is not None and not (tuned_on is not None and fit.tuned_limit.get(tuned_on, 0) <= fit.limit):
        fitted = tuple((m_max, fit_smem(cfg, fit.limit, fit.a_bytes, fit.b_bytes, fit.b_tiles)) for m_max, cfg in buckets)
        if fitted != buckets:
            buckets, source = fitted, f"{source}; fitted to {fit.limit // 1024} KB of shared memory"
    return KernelTableEntry(entry_id, kernel, n, k, buckets, source)


def smem_fit(gpu, kernel: str, weight_key: str, activation_key: str) -> SmemFit:
    """``lookup``'s fit for a module of ``gpu`` (a ``quantc.gpus.Gpu``) running ``kernel`` on these keys. A is
    bf16 where the activation is not quantized or the kernel emulates its format in bf16."""
    from .gpus import GPUS

    bf16_a = "emulated" in kernel or "weight_only" in kernel
    a_bytes = 2.0 if bf16_a else element_bytes(activation_key, "activation")
    return SmemFit(gpu.smem_bytes, a_bytes, element_bytes(weight_key, "weight"), 2 if kernel.startswith("moe_") else 1,
                   {g.table: g.smem_bytes for g in GPUS.values() if g.name == g.table})


def entry_id(kernel: str, n: int, k: int, num_experts: int = 1) -> str:
    return f"{kernel}/n{n}_k{k}" + (f"_e{num_experts}" if num_experts > 1 else "")
