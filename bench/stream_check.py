"""Launches that wait or reduce inside one launch, on two CUDA streams at once (``common.workspace_key``:
each stream has its own arrival counters, amax slots and split-K sums). A split-K decode GEMV (fp8,
(4096, 14336), M = 1, four K slices), the 4-bit decode kernel at 16 rows, and the cooperative dynamic
per-tensor quantizer (4096 x 2048) run on streams A and B in the same rounds; every result is compared,
bit for bit, with the same call on one stream. Run it under ``timeout``: two cooperative launches that
could not both be resident would hang rather than fail.

    timeout 120 python bench/stream_check.py      # writes $OUT/stream_check.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quantc.plan import KernelConfig as C  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.kernels import wo_gemm  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation  # noqa: E402
from quantc.runtime.kernels.scaled_mm import scaled_mm  # noqa: E402

ROUNDS = 50


def main() -> None:
    torch.manual_seed(0)
    x1 = torch.randn(1, 14336, device="cuda", dtype=torch.bfloat16)
    t = Q.quantize_weight(torch.randn(4096, 14336, device="cuda") * 0.05, "fp8_per_channel")
    gemv_cfg = C(1, 8, 256, 1, 4, 1, 4)  # block_m 1: the GEMV, four K slices reduced in the launch
    w4 = wf.quantize(torch.randn(4096, 4096, device="cuda") * 0.05, "int4_group_128")
    x16 = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    cfg4 = wo_gemm.default_config(16, w4.n, w4.k, int4=True)
    xq = torch.randn(4096, 2048, device="cuda", dtype=torch.bfloat16)
    calls = {
        "fp8_gemv_split4": lambda: scaled_mm(x1, t["weight"], t["weight_scale"], "fp8_per_channel",
                                             "fp8_dynamic_per_token", gemv_cfg),
        "int4_decode_m16": lambda: wo_gemm.launch(x16, w4, cfg4),
        "fp8_per_tensor_coop": lambda: quantize_activation(xq, "fp8_dynamic_per_tensor")[0].view(torch.uint8),
    }
    want = {name: fn().clone() for name, fn in calls.items()}
    torch.cuda.synchronize()
    streams = (torch.cuda.Stream(), torch.cuda.Stream())
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    out = {"device": torch.cuda.get_device_name(), "rounds": ROUNDS, "mismatches": {n: 0 for n in calls}}
    for _ in range(ROUNDS):
        got = []
        for s in streams:
            with torch.cuda.stream(s):
                got.append({name: fn() for name, fn in calls.items()})
        torch.cuda.synchronize()
        for g in got:
            for name, v in g.items():
                # the 4-bit kernel's split-K sums arrive by atomics: its last bits may differ between runs
                same = torch.equal(v, want[name]) if name != "int4_decode_m16" else \
                    ((v.float() - want[name].float()).norm() / want[name].float().norm()).item() < 1e-3
                out["mismatches"][name] += not same
    out["ok"] = not any(out["mismatches"].values())
    print(json.dumps(out), flush=True)
    Path(os.environ.get("OUT", "/tmp"), "stream_check.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
