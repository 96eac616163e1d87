"""torch.compile over quantc's modules on the GPU: a QuantLinear (fp8 W8A8) and QuantMoE layers (fp8 experts
with the softmax_topk router, bf16 experts with deepseek_v3's) compiled with the default backend, their
outputs against eager, and torch._dynamo.explain's graph and graph-break counts (the kernels are custom
ops, so a layer should trace as one graph).

    python bench/compile_check.py          # writes $OUT/compile_check.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels import wo_format as wf  # noqa: E402
from quantc.runtime.registry import LAUNCHERS  # noqa: E402
from quantc.runtime.tables import default_buckets  # noqa: E402
from quantc.runtime.modules import QuantLinear  # noqa: E402
from quantc.runtime.moe import QuantMoE  # noqa: E402


def _case(name: str, module: torch.nn.Module, x: torch.Tensor) -> dict:
    torch._dynamo.reset()
    with torch.no_grad():
        want = module(x)
        explained = torch._dynamo.explain(module)(x)
        torch._dynamo.reset()
        got = torch.compile(module)(x)
        again = torch.compile(module)(x)
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    return {"case": name, "graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "break_reasons": [str(b.reason)[:300] for b in explained.break_reasons][:5], "rel_err": err,
            "ok": err < 1e-2 and torch.equal(got, again)}


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": []}
    wk, ak = "fp8_per_channel", "fp8_dynamic_per_token"
    bufs = LAUNCHERS["fp8_scaled_gemm"].prepare(Q.quantize_weight(torch.randn(2048, 1024, device=dev) * 0.05, wk),
                                                wk, 2048, 1024)
    lin = QuantLinear("l", "fp8_scaled_gemm", wk, ak, 2048, 1024, dict(bufs), None,
                      default_buckets("fp8_scaled_gemm", 2048, 1024))
    for t in (1, 300):
        out["cases"].append(_case(f"quant_linear_fp8_T{t}", lin, torch.randn(t, 1024, device=dev, dtype=torch.bfloat16)))
    e, k, h, i = 32, 4, 1024, 512
    w13, w2 = torch.randn(e, 2 * i, h, device=dev) * 0.05, torch.randn(e, h, i, device=dev) * 0.05
    router = torch.randn(e, h, device=dev, dtype=torch.bfloat16)
    fp8 = QuantMoE("moe_fp8", wf.quantize(w13, "fp8_per_channel"), wf.quantize(w2, "fp8_per_channel"), router,
                   top_k=k, act_key="fp8_dynamic_per_token")
    bf16 = QuantMoE("moe_bf16", wf.quantize(w13, "none"), wf.quantize(w2, "none"), router, top_k=k,
                    router="deepseek_v3", correction_bias=torch.randn(e, device=dev) * 0.1,
                    router_args=dict(n_group=8, topk_group=4, routed_scaling_factor=2.5))
    for t in (1, 16, 300):
        x = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
        out["cases"].append(_case(f"quant_moe_fp8_T{t}", fp8, x))
        out["cases"].append(_case(f"quant_moe_bf16_deepseek_router_T{t}", bf16, x))
    out["ok"] = all(c["ok"] for c in out["cases"])
    for c in out["cases"]:
        print(c["case"], "graphs", c["graphs"], "breaks", c["graph_breaks"], "rel_err", f"{c['rel_err']:.1e}",
              "ok" if c["ok"] else "FAILED", c["break_reasons"][:2], flush=True)
    print("compile check:", "all ok" if out["ok"] else "FAILED", flush=True)
    Path(os.environ.get("OUT", "/tmp"), "compile_check.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
