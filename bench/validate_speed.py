"""Time `quantc validate` of a 200-line config as a whole process (median of 7 after 1 warm-up) and
record a `python -X importtime` top-15 breakdown. Writes bench/results/validate_speed.json.

    python bench/validate_speed.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CMD = [sys.executable, "-c", "from quantc.cli import main; main()", "validate"]


def config_200_lines() -> str:
    lines = ["# yaml-language-server: $schema=../../schemas/quantc.schema.json", "quantc: 1",
             "linear: fp8_per_channel", "moe: {weight: mxfp4, activation: mxfp8}",
             "kv_cache: {activation: fp8_dynamic_per_tensor}", "target: {gpu: h100, tensor_parallel: 2}",
             "ignore: [lm_head, '*.mlp.gate']", "rules:"]
    layer = 0
    while len(lines) < 197:
        lines += [f"  - match: 're:model\\.layers\\.{layer}\\.self_attn\\..*'",
                  "    linear: {weight: fp8_per_tensor, activation: fp8_dynamic_per_tensor}",
                  f"  - match: ['model.layers.{layer}.mlp.experts.*']",
                  "    moe: mxfp4"]
        layer += 1
    return "\n".join(lines[:200]) + "\n"


def main() -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w") as fh:
            fh.write(config_200_lines())
        times = []
        for i in range(8):
            start = time.perf_counter()
            proc = subprocess.run(CMD + [path], env=env, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            assert proc.returncode == 0, proc.stdout + proc.stderr
            if i:
                times.append(elapsed)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        bare = time.perf_counter() - start
        proc = subprocess.run([sys.executable, "-X", "importtime"] + CMD[1:] + [path], env=env,
                              capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, cum_us, name = (p.strip() for p in line[len("import time:"):].split("|"))
            if self_us.isdigit():
                rows.append({"module": name.strip(), "self_ms": int(self_us) / 1000, "cumulative_ms": int(cum_us) / 1000})
    top = sorted(rows, key=lambda r: r["cumulative_ms"], reverse=True)[:15]
    result = {
        "benchmark": "quantc validate, 200-line YAML config, whole process",
        "median_s": round(statistics.median(times), 4),
        "runs_s": [round(t, 4) for t in times],
        "python_startup_s": round(bare, 4),
        "target_s": 0.3,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "importtime_top15": top,
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "results", "validate_speed.json")
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(f"median {result['median_s']:.3f} s over {len(times)} runs (python startup {bare:.3f} s); wrote {out}")
    for r in top:
        print(f"  {r['cumulative_ms']:8.1f} ms  {r['module']}")


if __name__ == "__main__":
    main()
