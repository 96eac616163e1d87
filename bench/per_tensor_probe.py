"""The cooperative dynamic per-tensor quantizer's constants on a GPU (issue 11: activation quantizers
>= 0.75 of the copy bandwidth at M >= 1024), timed as bench_quant times them (CUDA graphs, the same
input each replay), beside the two-kernel path (amax pass, then quantize pass) and the per-token
quantizer (one read: what one pass reaches) in the same run. Every configuration is checked against the
two-kernel path's bits first (and that path against the CPU reference on one shape).

    PROBE_CONFIGS="8192:4:8:1,16384:2:8:1" python bench/per_tensor_probe.py   # BLOCK:HELD:WARPS:PER_SM
    # writes $OUT/per_tensor_probe_<gpu>.json

The Gluon kernel that also keeps chunks in shared memory (``bench/per_tensor_hold.py``, an experiment that
lost) beside them:
PROBE_HOLD="8192:1:8:2,..." (BLOCK:HELD:WARPS:PER_SM; "" for none), columns ``hold_<config>_frac``, each checked
against the two-kernel path's bits first.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bandwidth import copy_gbps  # noqa: E402
from bench.bench_quant import KS, MS, written_bytes  # noqa: E402
from bench.timing import env_set, geomean, gpu_slug  # noqa: E402
from quantc.runtime.kernels import act_quant  # noqa: E402
from quantc.runtime.kernels.common import sm_count, tile_counters  # noqa: E402
from quantc.runtime.kernels.act_quant import quantize_activation, reference  # noqa: E402

OUT = os.environ.get("OUT", "/tmp")
KEY = "fp8_dynamic_per_tensor"
DEFAULT_CONFIGS = "16384:1:8:2"
DEFAULT_HOLD = "8192:1:8:2,16384:0:8:2,8192:0:8:2,16384:1:8:2,16384:1:8:1,16384:0:16:1,8192:1:4:4"


def configs(var: str = "PROBE_CONFIGS", default: str = DEFAULT_CONFIGS) -> list[tuple[int, ...]]:
    spec = os.environ.get(var, default)
    return [tuple(int(v) for v in c.split(":")) for c in spec.split(",") if c]


def hold_call(x: torch.Tensor, block: int, held: int, warps: int, per_sm: int):
    """The Gluon kernel on x at one configuration: a function returning (q, s)."""
    from bench import per_tensor_hold as ph

    q = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
    s = torch.empty((), device=x.device, dtype=torch.float32)
    counters = tile_counters(x.device, 3)

    def run():
        ph.per_tensor_hold(x, q, s, counters, sm_count(x.device), block, warps, per_sm, held)
        return q, s
    return run


def set_config(block: int, held: int, warps: int, per_sm: int) -> None:
    act_quant.COOP_BLOCK, act_quant.COOP_HELD, act_quant.COOP_WARPS, act_quant.COOP_PER_SM = block, held, warps, per_sm


def bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


def main() -> None:
    gpu = torch.cuda.get_device_name()
    ref_bw = copy_gbps()
    out = {"device": gpu, "torch": torch.__version__, "copy_GBps": ref_bw, "rows": [], "errors": {}}
    torch.manual_seed(0)
    x = (torch.randn(64, 16384, device="cuda") * torch.logspace(-3, 2, 16384, device="cuda")).to(torch.bfloat16)
    with env_set("QUANTC_PER_TENSOR_COOP", "0"):
        q2, s2 = quantize_activation(x, KEY)
    rq, rs = reference(x.cpu(), KEY)
    out["two_pass_exact"] = torch.equal(bits(q2).cpu(), bits(rq)) and torch.equal(s2.cpu().reshape(()), rs.reshape(()))
    names = [":".join(map(str, c)) for c in configs()]
    for m in MS:
        for k in KS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x.view(-1)[(m * k) // 3] = -77.0  # the maximum in some program's streamed (not held) chunk
            moved = 2 * m * k + written_bytes(m, k, KEY)
            row = {"M": m, "K": k}
            with env_set("QUANTC_PER_TENSOR_COOP", "0"):
                want_q, want_s = quantize_activation(x, KEY)
                want_q = want_q.clone()
                us = do_bench_cudagraph(lambda: quantize_activation(x, KEY), rep=30) * 1e3
            row["two_pass_frac"] = moved / us / 1e3 / ref_bw
            us = do_bench_cudagraph(lambda: quantize_activation(x, "fp8_dynamic_per_token"), rep=30) * 1e3
            row["per_token_frac"] = (2 * m * k + written_bytes(m, k, "fp8_dynamic_per_token")) / us / 1e3 / ref_bw
            for name, cfg in zip(names, configs()):
                set_config(*cfg)
                try:
                    q, s = quantize_activation(x, KEY)
                    ok = torch.equal(bits(q), bits(want_q)) and torch.equal(s.reshape(()), want_s.reshape(()))
                    if not ok:
                        out["errors"][f"{name}/{m}x{k}"] = "bits differ from the two-kernel path"
                        continue
                    us = do_bench_cudagraph(lambda: quantize_activation(x, KEY), rep=30) * 1e3
                    row[f"coop_{name}_frac"] = moved / us / 1e3 / ref_bw
                except Exception as e:  # a launch too large to be cooperative, registers: report and go on
                    out["errors"][f"{name}/{m}x{k}"] = f"{type(e).__name__}: {str(e)[:200]}"
            for cfg in configs("PROBE_HOLD", DEFAULT_HOLD):
                name = ":".join(map(str, cfg))
                try:
                    run = hold_call(x, *cfg)
                    q, s = run()
                    ok = torch.equal(bits(q), bits(want_q)) and torch.equal(s.reshape(()), want_s.reshape(()))
                    if not ok:
                        out["errors"][f"hold_{name}/{m}x{k}"] = "bits differ from the two-kernel path"
                        continue
                    us = do_bench_cudagraph(run, rep=30) * 1e3
                    row[f"hold_{name}_frac"] = moved / us / 1e3 / ref_bw
                except Exception as e:
                    out["errors"][f"hold_{name}/{m}x{k}"] = f"{type(e).__name__}: {str(e)[:300]}"
            out["rows"].append(row)
            print(json.dumps({a: round(v, 3) if isinstance(v, float) else v for a, v in row.items()}), flush=True)
    cols = (["two_pass_frac", "per_token_frac"] + [f"coop_{n}_frac" for n in names] +
            [f"hold_{':'.join(map(str, c))}_frac" for c in configs("PROBE_HOLD", DEFAULT_HOLD)])
    out["geomean"] = {c: geomean([r[c] for r in out["rows"] if c in r]) for c in cols}
    out["rows_measured"] = {c: sum(c in r for r in out["rows"]) for c in cols}
    print("geomean:", json.dumps(out["geomean"], indent=1), "errors:", out["errors"], flush=True)
    Path(OUT, f"per_tensor_probe_{gpu_slug(gpu)}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
