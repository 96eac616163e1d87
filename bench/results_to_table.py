"""Write the configs a benchmark run measured into a shipped kernel table (kernels/<gpu>.json).

    python bench/results_to_table.py kernels/h100.json --wo bench/results/wo_h100.json \
        [--dense bench/results/dense_configs_h100.json] [--tuned OUT/h100.json] [--gpu h100] \
        [--kernels fp8_scaled_gemm,int8_gemm] [--m-max 1,16]

- ``--wo`` (bench_wo.py / wo_summary.py output): each row's best config per format and M becomes the
  entry of (kernel, N, K, m_max = M): int4_group_128 -> int4_weight_only_gemm, mxfp4 ->
  fp4_weight_only_gemm (nvfp4 runs the same kernel id; its best tiles are close to mxfp4's).
- ``--dense`` (bench_dense.py's configs file): its rows are entries already.
- ``--tuned`` (a table ``quantc tune`` / bench/tune_plan.py / bench/tune_kernels.py wrote into its OUT
  folder): its entries as they are. The tuner measures every seed, the merged table's own row for the key
  among them, in one run, so its winner replaces that row.
- ``--kernels``, ``--m-max``: keep only those kernel ids / buckets of what is read (e.g. a tuner run on
  the wrong GPU whose one kernel is worth keeping, or bench_dense's decode rows only).

Entries of other kernels and shapes are kept. A kernel that gets entries here also gets the H100
table's defaults for it, if the table has none: the compiler hands M above a shape's largest tuned
bucket (decode-only rows) to the defaults. Kernels with no entries get no defaults, so the compiler
falls back to the H100 table for them (its tuned rows before its defaults) and says so in the plan.
Written atomically, sorted, with the device name and versions of the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantc.gpus import GPUS  # noqa: E402
from quantc.plan import KernelConfig  # noqa: E402
from quantc.tune import CONFIG_FIELDS, TABLE_FORMAT, write_atomic  # noqa: E402

WO_KERNELS = {"int4_group_128": "int4_weight_only_gemm", "mxfp4": "fp4_weight_only_gemm"}
H100 = Path(__file__).resolve().parent.parent / "kernels" / "h100.json"


def wo_entries(result: dict) -> list[dict]:
    out = []
    for row in result["rows"]:
        for key, kernel in WO_KERNELS.items():
            r = row.get(key)
            if not r or not r.get("cfg"):
                continue
            bm, bn, bk, warps, stages, split = r["cfg"]
            cfg = KernelConfig(bm, bn, bk, 8, warps, stages, split)
            out.append({"kernel": kernel, "n": row["N"], "k": row["K"], "m_max": row["M"],
                        **{f: getattr(cfg, f) for f in CONFIG_FIELDS}, "time_us": round(r["us"], 2),
                        **({"default_time_us": round(r["default_us"], 2)} if r.get("default_us") else {})})
    return out


def dense_entries(result: dict) -> list[dict]:
    out = []
    for r in result["rows"]:
        row = {k: r[k] for k in ("kernel", "n", "k", "m_max")}
        row.update({f: r[f] for f in CONFIG_FIELDS}, time_us=r["us"])
        if r.get("default_us"):
            row["default_time_us"] = r["default_us"]
        out.append(row)
    return out


def update(table_path: Path, gpu: str, entries: list[dict], meta: dict) -> dict:
    if table_path.is_file():
        table = json.loads(table_path.read_text())
        if table.get("format") != TABLE_FORMAT:
            raise SystemExit(f"{table_path} exists and is not a quantc kernel table")
    else:
        table = {"format": TABLE_FORMAT, "version": 1, "gpu": GPUS[gpu].name, "defaults": {}, "entries": []}
    table.update(meta)
    new = {(e["kernel"], e["n"], e["k"], e["m_max"]) for e in entries}
    table["entries"] = [e for e in table["entries"] if (e["kernel"], e["n"], e["k"], e["m_max"]) not in new] + entries
    table["entries"].sort(key=lambda r: (r["kernel"], r["n"], r["k"], r["m_max"]))
    h100 = json.loads(H100.read_text())["defaults"]
    for kernel in sorted({e["kernel"] for e in table["entries"]}):
        if kernel not in table["defaults"] and kernel in h100:
            table["defaults"][kernel] = h100[kernel]
    write_atomic(table_path, json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", type=Path)
    p.add_argument("--wo", type=Path)
    p.add_argument("--dense", type=Path)
    p.add_argument("--tuned", type=Path)
    p.add_argument("--kernels", default="", help="comma-separated kernel ids to keep (default: all)")
    p.add_argument("--m-max", default="", help="comma-separated M-buckets (m_max) to keep (default: all)")
    p.add_argument("--gpu", default=None, help="GPU name for a new table (default: the file's stem)")
    p.add_argument("--note", default=None)
    a = p.parse_args()
    entries, meta = [], {}
    for path, read in ((a.wo, wo_entries), (a.dense, dense_entries)):
        if path:
            result = json.loads(path.read_text())
            entries += read(result)
            meta = {"device_name": result["device"], "torch": result["torch"].split("+")[0],
                    "triton": result["triton"]}
    if a.tuned:
        tuned = json.loads(a.tuned.read_text())
        if not isinstance(tuned, dict) or tuned.get("format") != TABLE_FORMAT:
            raise SystemExit(f"{a.tuned} is not a quantc kernel table")
        entries += tuned["entries"]
    kernels = {k for k in a.kernels.split(",") if k}
    buckets = {int(b) for b in a.m_max.split(",") if b}
    entries = [e for e in entries if (not kernels or e["kernel"] in kernels) and (not buckets or e["m_max"] in buckets)]
    if a.note:
        meta["note"] = a.note
    table = update(a.table, a.gpu or a.table.stem, entries, meta)
    print(f"{a.table}: {len(entries)} entries written, {len(table['entries'])} in all")


if __name__ == "__main__":
    main()
