"""Issue 8 on the GPU: real transformers models (published dimensions, reduced in layer count, random
seeded weights), each issue-8 scheme compiled, applied and measured against bf16 in the same run.

Two steps, because the GPU image lacks the compiler's dependencies (pydantic, ruamel, jsonschema):

    python bench/bench_e2e.py prepare --plans .out/e2e_plans      # here, on the CPU: compile every plan
    python bench/bench_e2e.py run --plans .out/e2e_plans --out bench/results/e2e_h100.json   # on the GPU

``prepare`` compiles each (model, scheme) against the live module tree of the model built on the meta
device (transformers 5 names: fused ``mlp.experts``), so the plan matches the model ``run`` builds;
an infeasible plan is recorded with its diagnostics. ``run`` needs only quantc.plan, quantc.runtime
and quantc.hf; it writes the JSON after every row and stops at ``--budget`` seconds. Decode is timed
twice per batch size (``quantc.hf.measure``): under CUDA graphs on a static cache
(``decode_b{b}_tokens_per_s``) and eagerly on the dynamic cache (``decode_b{b}_eager_tokens_per_s``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantc import hf  # noqa: E402

MODELS = {  # examples/models file -> decoder layers kept
    "llama-3.1-8b": 2,
    "qwen3-30b-a3b": 2,
    "gpt-oss-20b-bf16": 2,
}


def prepare(plans: Path, gpu: str, tiny: bool) -> None:
    import quantc

    plans.mkdir(parents=True, exist_ok=True)
    index = []
    for name, layers in MODELS.items():
        model = hf.build_model(name, layers, device="meta", tiny=tiny)
        jobs = [(s, *hf.scheme_config(s, plans / "configs", gpu)) for s in hf.SCHEMES]
        jobs += [(f"example:{c}", hf.CONFIGS_DIR / c, ()) for c in hf.MODEL_EXAMPLES.get(hf.model_path(name).name, ())]
        for scheme, config, overrides in jobs:
            row = {"model": name, "layers": layers, "tiny": tiny, "scheme": scheme}
            try:
                plan = quantc.compile(config, model, gpu=gpu, tp=1, overrides=list(overrides))
            except quantc.QuantcError as exc:
                row["infeasible"] = str(exc)
            else:
                path = plans / f"{name}__{scheme.replace(':', '_')}.json"
                plan.save(path)
                row["plan"] = path.name
                row["plan_summary"] = plan.summary
            index.append(row)
            print(name, scheme, "infeasible" if "infeasible" in row else "ok", flush=True)
    (plans / "index.json").write_text(json.dumps(index, indent=1))


def _environment(device: str) -> dict:
    import torch
    import transformers
    import triton

    return {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
            "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def run(plans: Path, out: Path, device: str, budget: float, prompt: int, batches: list[int], only: list[str],
        models: list[str] = ()) -> None:
    from quantc.plan import load_plan

    start = time.perf_counter()
    index = json.loads((plans / "index.json").read_text())
    result = {"env": _environment(device), "prompt_tokens": prompt,
              "decode": "after a 128-token context: decode_b{b}_tokens_per_s on a transformers StaticCache, one "
              "step captured in a CUDA graph and replayed 32 times (median of 3 runs); decode_b{b}_eager_tokens_per_s "
              "eager on the dynamic cache, no CUDA graphs, 8 steps (the figure of earlier runs). A step that "
              "cannot be captured records None and its error under the row's bf16/quantized \"errors\"",
              "fidelity": "logits of a 256-token random prompt vs the bf16 model", "rows": []}
    baselines: dict[str, dict] = {}
    if only:  # in the order given, scheme by scheme across the models (a cut-short run keeps every model)
        index = sorted((r for r in index if r["scheme"] in only), key=lambda r: only.index(r["scheme"]))
    if models:
        index = [r for r in index if r["model"] in models]
    for row in index:
        if time.perf_counter() - start > budget:
            row = {**row, "skipped": "time budget"}
        elif "plan" in row:
            try:
                got = hf.run_e2e(row["model"], row["layers"], load_plan(plans / row["plan"]), device,
                                 baseline=baselines.get(row["model"]), prompt=prompt, batches=batches,
                                 tiny=row.get("tiny", False))
                baselines[row["model"]] = got.pop("baseline")
                row = {**row, **got}
            except Exception as exc:  # one failing scheme must not lose the rest of the run
                row = {**row, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        row.pop("plan_summary", None)
        result["rows"].append(row)
        print(json.dumps({k: row.get(k) for k in ("model", "scheme", "apply_s", "speedup", "fidelity", "error",
                                                  "infeasible", "skipped")})[:600], flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--plans", type=Path, default=Path(".out/e2e_plans"))
    p.add_argument("--gpu", default="h100")
    p.add_argument("--tiny", action="store_true", help="quantc.hf.TINY dimensions (a CPU dry run)")
    r = sub.add_parser("run")
    r.add_argument("--plans", type=Path, default=Path(".out/e2e_plans"))
    r.add_argument("--out", type=Path, default=Path("bench/results/e2e_h100.json"))
    r.add_argument("--device", default="cuda")
    r.add_argument("--budget", type=float, default=240.0, help="seconds; later rows are recorded as skipped")
    r.add_argument("--prompt", type=int, default=2048)
    r.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    r.add_argument("--only", nargs="*", default=[], help="schemes to run (default: all)")
    r.add_argument("--models", nargs="*", default=[], help=f"models to run (default: all of {', '.join(MODELS)})")
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.plans, a.gpu, a.tiny)
    else:
        run(a.plans, a.out, a.device, a.budget, a.prompt, a.batches, a.only, a.models)


if __name__ == "__main__":
    main()
