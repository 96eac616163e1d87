"""Tuned vs default kernel configs, per kernel: geomean speedup from a table written by `quantc tune`
(each tuned row records its own time and the default config's time, measured in the same run).

    python3 bench/tuned_vs_default.py ~/.cache/quantc/kernels/h100.json [-o bench/results/tuned_vs_default_h100.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def summarize(table: dict) -> dict:
    per_kernel: dict[str, list[float]] = {}
    for row in table.get("entries", []):
        if row.get("default_time_us") and row.get("time_us"):
            per_kernel.setdefault(row["kernel"], []).append(row["default_time_us"] / row["time_us"])
    out = {"device_name": table.get("device_name"), "torch": table.get("torch"), "triton": table.get("triton"),
           "kernels": {}}
    for kernel, ratios in sorted(per_kernel.items()):
        out["kernels"][kernel] = {
            "entries": len(ratios),
            "geomean_speedup": round(math.exp(sum(math.log(r) for r in ratios) / len(ratios)), 4),
            "worst": round(min(ratios), 4),
            "best": round(max(ratios), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    result = summarize(json.loads(Path(args.table).read_text()))
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
