"""On a GPU: the tile GEMM's unmasked main loop (``scaled_mm.EVEN_TILES``, tiles dividing M, N and K) gives
the masked loop's bits, for every operand family the tiled kernel runs (the Gluon and TMA kernels switched
off), with split-K and without. Prints one line per case and ``even tiles check: all ok`` or the failures.

    python3 bench/even_tiles_check.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels import scaled_mm as S  # noqa: E402

CASES = [("fp8_per_channel", "fp8_dynamic_per_token"), ("int8_per_channel", "int8_dynamic_per_token"),
         ("fp8_block_128x128", "fp8_dynamic_group_128"), ("fp8_per_tensor", "fp8_dynamic_per_tensor"),
         ("fp8_per_channel", "none"), ("mxfp8", "mxfp8")]
CONFIGS = [C(64, 128, 128, 8, 4, 4), C(64, 128, 128, 8, 4, 4, 2), C(16, 64, 128, 8, 4, 4, 4), C(128, 128, 64, 8, 8, 3)]


def main() -> None:
    os.environ.update(QUANTC_BLOCK_WS="0", QUANTC_ROWWISE_WS="0", QUANTC_TMA="0")
    torch.manual_seed(0)
    bad = []
    for wk, ak in CASES:
        t = Q.quantize_weight(torch.randn(1024, 2048, device="cuda") * 0.05, wk)
        sc = t.get("weight_scale", t.get("weight_scale_inv"))
        for m in (64, 256):
            x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
            for cfg in CONFIGS:
                S.EVEN_TILES = True
                even = S.scaled_mm(x, t["weight"], sc, wk, ak, cfg)
                S.EVEN_TILES = False
                masked = S.scaled_mm(x, t["weight"], sc, wk, ak, cfg)
                ok = torch.equal(even, masked)
                label = f"{wk}/{ak}/M{m}/{tuple(cfg.__dict__.values())}"
                print(label, "ok" if ok else "MISMATCH", flush=True)
                bad += [] if ok else [label]
    S.EVEN_TILES = True
    print("even tiles check:", "all ok" if not bad else f"FAILED {bad}", flush=True)


if __name__ == "__main__":
    main()
