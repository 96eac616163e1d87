"""Python host time of an eager QuantLinear call, measured on any machine (no GPU): CPU tensors, every
Triton launch taking the fast launch's path (switch reads, specialization key, cache lookup) to a
compiled kernel that does nothing, so what is left is the launchers' own Python; each format with the
launch memo off (the launchers run every call) and on (``launch_memo`` replays the recorded launches). On a GPU, ``bench/host_overhead.py`` times the
real calls; this one separates the Python from the driver and is steady enough to compare two commits
on one machine (the minimum of many rounds).

    python bench/host_python.py [--m 2048] [--nk 2048] [--rounds 25] [--out results.json]   # --m 1: decode
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FORMATS = (("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"),
           ("int8_gemm", "int8_per_channel", "int8_dynamic_per_token"),
           ("fp8_block_gemm", "fp8_block_128x128", "fp8_dynamic_group_128"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--nk", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--out")
    a = ap.parse_args()

    import torch

    from quantc.plan import KernelConfig
    from quantc.runtime import quantize as Q
    from quantc.runtime.kernels import common
    from quantc.runtime.modules import QuantLinear
    from quantc.runtime.registry import LAUNCHERS

    launches = [0]

    class NoKernel:  # the compiled kernel the fast path calls: on the CPU, a count and nothing else
        function = packed_metadata = None

        def run(self, *args):
            launches[0] += 1

    class AlwaysCompiled(dict):  # every specialization "compiled": common.launch takes its fast path
        def get(self, key, default=None):
            return (NoKernel(), ())

    common._COMPILED = AlwaysCompiled()
    common.interpreted = lambda: False  # the GPU's switch reads, without the interpreter
    common.current_stream = lambda device: 0
    torch.manual_seed(0)
    w = torch.randn(a.nk, a.nk, dtype=torch.bfloat16) * 0.02
    x = torch.randn(1, a.m, a.nk, dtype=torch.bfloat16)  # (batch, tokens, hidden), as a model calls it
    # prefill: the large tile; decode (up to 16 rows): the split-K GEMV the H100 table picks at M = 1
    cfg = KernelConfig(128, 256, 128, 8, 8, 3, 1) if a.m > 16 else KernelConfig(1, 16, 512, 8, 4, 1, 4)
    mods = {}
    for kernel, wk, ak in FORMATS:
        bufs = LAUNCHERS[kernel].prepare(Q.quantize_weight(w, wk), wk, a.nk, a.nk)
        mods[kernel] = QuantLinear("m", kernel, wk, ak, a.nk, a.nk, dict(bufs), None, ((2**31 - 1, cfg),))
    calls = 300
    best: dict[str, float] = {}
    per_call: dict[str, float] = {}
    for _ in range(a.rounds):
        for name, mod in mods.items():
            for memo in ("0", "1"):
                os.environ["QUANTC_LAUNCH_MEMO"] = memo
                for _ in range(20):
                    mod(x)
                launches[0] = 0
                t = time.perf_counter()
                for _ in range(calls):
                    mod(x)
                col = f"{name} memo {'on' if memo == '1' else 'off'}"
                best[col] = min(best.get(col, float("inf")), (time.perf_counter() - t) / calls * 1e6)
                per_call[col] = launches[0] / calls
    for name, us in best.items():
        print(f"{us:7.1f} us  {name}: QuantLinear eager, {a.m} x {a.nk} x {a.nk}, {per_call[name]:.0f} launches",
              flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"m": a.m, "nk": a.nk, "rounds": a.rounds, "python_us": best}, indent=1))


if __name__ == "__main__":
    main()
