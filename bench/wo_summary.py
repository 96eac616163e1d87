"""Summary of bench_wo.py rows (no GPU needed), and the merge of several bench_wo runs into one file.

    python bench/wo_summary.py run_a.json run_b.json -o bench/results/wo_h100.json

Each row keeps the ratios of its own run (peers timed side by side with ours in that run); the
merged file lists each run's device, versions and reference bandwidth under ``runs``.
"""

from __future__ import annotations

import argparse
import json
import math

FORMATS = ("int4_group_128", "mxfp4", "nvfp4")
MS = (1, 16, 64)
LARGE = [(28672, 4096), (4096, 14336), (24576, 7168)]


def _geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(rows, formats=FORMATS, ms=MS, large=LARGE, gemlite_error=None) -> dict:
    large = [tuple(s) for s in large]
    s = {}
    for key in formats:
        for m in ms:
            sel = [r for r in rows if r["M"] == m and key in r]
            if not sel:
                continue
            sp = [r[key]["over_bf16"] for r in sel if r[key]["over_bf16"]]
            big = [r[key]["over_bf16"] for r in sel if (r["N"], r["K"]) in large and r[key]["over_bf16"]]
            bw = [r[key]["frac_ref_bw"] for r in sel if (r["N"], r["K"]) in large]
            s[f"{key}/M{m}"] = {
                "geomean_over_bf16": _geomean(sp), "min_over_bf16": min(sp) if sp else None,
                "large_min_over_bf16": min(big) if big else None, "large_min_frac_ref_bw": min(bw) if bw else None,
                "geomean_over_tinygemm": _geomean([r[key]["over_tinygemm"] for r in sel]),
                "worst_over_tinygemm": min((r[key]["over_tinygemm"] for r in sel if r[key]["over_tinygemm"]),
                                           default=None),
                "shapes": len(sel),
            }
    for m in ms:
        gl = [r["int4_group_128"]["over_gemlite"] for r in rows
              if r["M"] == m and r.get("int4_group_128", {}).get("over_gemlite")]
        if gl:
            s[f"int4_group_128/M{m}_over_gemlite"] = {"geomean": _geomean(gl), "worst": min(gl), "best": max(gl),
                                                      "n": len(gl)}
    if not any(k.endswith("_over_gemlite") for k in s):
        s["gemlite"] = f"no GemLite column: {gemlite_error or 'no rows timed'}"
    s["tinygemm/M1_geomean_over_bf16"] = _geomean([r["bf16_us"] / r["tinygemm_us"] for r in rows
                                                   if r["M"] == 1 and r.get("tinygemm_us")])
    return s


def merge(paths: list[str]) -> dict:
    runs = [json.load(open(p)) for p in paths]
    out = {k: v for k, v in runs[0].items() if k not in ("rows", "check", "notes", "summary")}
    out["runs"] = [{k: r.get(k) for k in ("device", "torch", "triton", "copy_GBps", "bf16_m1_GBps", "ref_GBps")}
                   | {"shapes": sorted({(row["N"], row["K"]) for row in r["rows"]})} for r in runs]
    devices = {r["device"] for r in runs}
    if len(devices) > 1:
        raise SystemExit(f"runs come from different devices: {sorted(devices)}")
    out["rows"] = [row for r in runs for row in r["rows"]]
    out["check"] = [c for r in runs for c in r.get("check", [])]
    out["notes"] = [n for r in runs for n in r.get("notes", [])]
    out["summary"] = summarize(out["rows"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("-o", "--out", required=True)
    a = p.parse_args()
    merged = merge(a.runs)
    with open(a.out, "w") as f:
        json.dump(merged, f, indent=1)
    for k, v in merged["summary"].items():
        print(k, v)


if __name__ == "__main__":
    main()
