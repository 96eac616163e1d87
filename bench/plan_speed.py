"""Compiler speed: `quantc plan` on DeepSeek-V3 as a whole process, `quantc.load_plan` of its compiled
plan, and how lowering grows with module count (1k..1M) and rule count (1, 10, 100).

    python3 bench/plan_speed.py            # writes bench/results/plan_speed.json

Whole-process timings are the median of several runs after one warm-up (BENCH.md § Compiler speed).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quantc.config import Config, KindSetting, Pattern, Rule, Setting, Target  # noqa: E402
from quantc.diagnostics import Span  # noqa: E402
from quantc.inventory import synthetic_inventory  # noqa: E402
from quantc.lower import lower  # noqa: E402
from quantc.plan import load_plan  # noqa: E402

DEEPSEEK = ROOT / "examples/models/deepseek-v3.json"
CONFIG_TEXT = """quantc: 1
linear: fp8_per_block
moe: fp8_per_block
rules:
  - match: "re:model\\\\.layers\\\\.(0|1|2)\\\\..*"
    linear: {activation: fp8_dynamic_group_128}
ignore:
  - "*.mlp.gate"
"""


def whole_process(args: list[str], runs: int = 7) -> dict:
    subprocess.run(args, capture_output=True, check=False)  # warm-up (page cache, pyc)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": runs,
            "exit_code": proc.returncode}


def in_process(fn, runs: int = 5) -> dict:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 5), "min_s": round(min(times), 5), "runs": runs}


def _setting(value, line):
    return Setting(value, Span("bench.yaml", line, 3), "bench")


def synthetic_config(num_rules: int) -> Config:
    """Rules of both pattern kinds: half globs that any layer shares (matched once per name shape),
    half regexes that test layer indices (matched per name)."""
    rules = []
    for i in range(num_rules):
        if i % 2:
            pattern = f"re:model\\.layers\\.{i % 64}\\..*"
            kinds = {"linear": KindSetting(None, _setting("fp8_dynamic_per_token", i))}
        else:
            pattern = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.mlp.down_proj", "*.experts"][i // 2 % 6]
            kinds = {"linear": KindSetting(_setting("fp8_per_channel", i), None),
                     "moe": KindSetting(_setting("fp8_per_channel", i), _setting("fp8_dynamic_per_token", i))}
        rules.append(Rule(i, f"rules[{i}]", (Pattern(pattern, Span("bench.yaml", 10 + i, 5)),), kinds,
                          False, Span("bench.yaml", 10 + i, 3)))
    default = KindSetting(_setting("fp8_per_channel", 2), _setting("fp8_dynamic_per_token", 2))
    return Config(1, "bench.yaml", (("bench.yaml", "0" * 64),), {"linear": default, "moe": default},
                  tuple(rules), (), {}, Target())


def main() -> None:
    out: dict = {"machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}
    quantc = [sys.executable, "-m", "quantc.cli"] if not shutil_which("quantc") else ["quantc"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "deepseek.yaml"
        cfg.write_text(CONFIG_TEXT)
        plan_path = Path(tmp) / "plan.json"
        out["deepseek_v3_plan_process"] = whole_process([*quantc, "plan", str(cfg), "--model", str(DEEPSEEK)])
        out["deepseek_v3_compile_process"] = whole_process([*quantc, "compile", str(cfg), "--model", str(DEEPSEEK), "-o", str(plan_path)], runs=3)
        out["deepseek_v3_plan_bytes"] = plan_path.stat().st_size
        out["deepseek_v3_load_plan"] = in_process(lambda: load_plan(plan_path), runs=10)
        out["deepseek_v3_load_plan_and_expand_modules"] = in_process(lambda: load_plan(plan_path).modules, runs=5)
        out["validate_import_floor_process"] = whole_process([sys.executable, "-c", "import quantc.cli"])
    scaling = []
    for n in (1_000, 10_000, 100_000, 1_000_000):
        inv = synthetic_inventory(n, experts=128 if n >= 10_000 else 0)
        for rules in (1, 10, 100):
            if n == 1_000_000 and rules == 100:
                continue
            cfg = synthetic_config(rules)
            runs = 1 if n >= 1_000_000 else 3
            t = in_process(lambda: lower(cfg, inv), runs=runs)
            scaling.append({"modules": n, "rules": rules, **t, "us_per_module": round(t["median_s"] / n * 1e6, 2)})
            print(f"{n:>9} modules {rules:>3} rules: {t['median_s'] * 1000:9.1f} ms", flush=True)
    out["lower_scaling"] = scaling
    for k, v in out.items():
        if k != "lower_scaling":
            print(f"{k}: {v}")
    dest = ROOT / "bench/results/plan_speed.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


def shutil_which(name):
    import shutil

    return shutil.which(name)


if __name__ == "__main__":
    main()
