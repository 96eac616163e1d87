"""Where an applied model's time goes: torch.profiler over one prefill (and one eager decode step) of a
reduced transformers model, bf16 first, then with a compiled plan applied. Prints the top CUDA kernels
and the host/device split (a step whose wall time far exceeds its kernel time is host-bound).

    python bench/e2e_profile.py --model llama-3.1-8b --plan .out/e2e_plans/llama-3.1-8b__fp8_per_channel.json \
        [--tokens 2048] [--layers 2] [--out $OUT/profile.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _profile(fn, label: str, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    kernel_us = 0.0
    for e in prof.key_averages():
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = e.self_cuda_time_total
        if dev > 0 and e.device_type.name == "CUDA":
            kernel_us += dev
            rows.append({"name": e.key[:90], "calls": e.count, "us": round(dev, 1)})
    rows.sort(key=lambda r: -r["us"])
    print(f"== {label}: wall {wall * 1e3:.2f} ms, kernels {kernel_us / 1e3:.2f} ms", flush=True)
    for r in rows[:top]:
        print(f"   {r['us']:>9.1f} us  x{r['calls']:<4} {r['name']}", flush=True)
    return {"label": label, "wall_ms": wall * 1e3, "kernel_ms": kernel_us / 1e3, "top": rows[:top]}


def main() -> None:
    import torch

    from quantc import hf
    from quantc.plan import load_plan

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--plan", action="append", required=True, help="repeatable: one profile per plan")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out")
    a = ap.parse_args()

    out = {"device": torch.cuda.get_device_name(), "model": a.model, "tokens": a.tokens, "runs": []}
    gen = torch.Generator("cuda").manual_seed(0)

    def steps(model):
        ids = torch.randint(0, model.config.vocab_size, (1, a.tokens), device="cuda", generator=gen)
        one = torch.randint(0, model.config.vocab_size, (1, 1), device="cuda", generator=gen)

        def prefill():
            with torch.no_grad():
                model(ids, use_cache=False, logits_to_keep=1)

        def decode():
            with torch.no_grad():
                model(one, use_cache=False, logits_to_keep=1)

        return prefill, decode

    for i, plan_path in enumerate(a.plan):
        model = hf.build_model(a.model, a.layers, device="cuda")
        prefill, decode = steps(model)
        if i == 0:
            out["runs"].append(_profile(prefill, "bf16 prefill", a.top))
            out["runs"].append(_profile(decode, "bf16 one token", a.top))
        hf.apply(model, load_plan(plan_path))
        name = Path(plan_path).stem
        out["runs"].append(_profile(prefill, f"{name} prefill", a.top))
        out["runs"].append(_profile(decode, f"{name} one token", a.top))
        del model
        torch.cuda.empty_cache()
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
