"""Issue 8 end to end for one model and one config: build the transformers model from an
examples/models description (reduced in layer count, random seeded weights, no download), compile
the config against the live model, apply the plan at startup, run prefill and decode (on the GPU
both under CUDA graphs on a static cache and eagerly: ``quantc.hf.measure``), and compare with the
bf16 model.

    python examples/run_e2e.py --model examples/models/llama-3.1-8b.json \\
        --config examples/configs/llama31_8b_fp8.yaml --layers 2 --device cuda

On a host without the compiler's dependencies, compile first and pass the plan:

    quantc compile CONFIG --model ... -o plan.json   (or: --compile-only -o plan.json here)
    python examples/run_e2e.py --model ... --plan plan.json --device cuda

The API it shows: ``quantc.hf.build_model``, ``quantc.compile(config, model)``, ``quantc.hf.apply``
(= ``quantc.runtime.apply`` plus transformers' fused experts) and ``quantc.hf.run_e2e``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="examples/models/<name>.json (or its name)")
    ap.add_argument("--config", help="a quantc config (YAML/TOML/JSON)")
    ap.add_argument("--plan", help="a compiled plan (instead of --config)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--gpu", default="h100", help="plan target when compiling here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="path=value, as quantc --set")
    ap.add_argument("--tiny", action="store_true", help="quantc.hf.TINY dimensions (CPU runs)")
    ap.add_argument("--prompt", type=int, default=2048, help="prefill tokens")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="decode batch sizes")
    ap.add_argument("--compile-only", action="store_true", help="write the plan to -o and stop")
    ap.add_argument("-o", "--output", help="plan path (--compile-only) or result JSON path")
    a = ap.parse_args()

    import quantc
    from quantc import hf

    if a.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    if (a.config is None) == (a.plan is None):
        ap.error("give exactly one of --config and --plan")
    try:
        if a.plan:
            plan = quantc.load_plan(a.plan)
        else:
            skeleton = hf.build_model(a.model, a.layers, tiny=a.tiny, device="meta")  # names and shapes only
            plan = quantc.compile(a.config, skeleton, gpu=a.gpu, tp=1, overrides=a.overrides)
            for w in plan.warnings:
                print(f"warning: {w}", file=sys.stderr)
        if a.compile_only:
            if not a.output:
                ap.error("--compile-only needs -o PLAN")
            plan.save(a.output)
            print(f"wrote {a.output}")
            return 0
        row = hf.run_e2e(a.model, a.layers, plan, a.device, prompt=a.prompt, batches=a.batches, tiny=a.tiny)
    except quantc.QuantcError as exc:
        print(exc, file=sys.stderr)
        return 1
    row.pop("baseline")
    text = json.dumps(row, indent=1)
    if a.output:
        Path(a.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
