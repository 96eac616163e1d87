"""int4 kept in fragment order only (QUANTC_WO_FRAG=1) against the default plane layout, through the layer's own
launcher (``wo_launch.run``: what a QuantLinear calls), on a GPU: every M from 1 to 512, weights rotated past L2
under CUDA graphs (bench_wo's timing). Each pair is checked against the other first.

    OUT=... python bench/frag_only_probe.py      # env: PROBE_SHAPES ("28672x4096,..."), PROBE_MS ("1,2,..."),
                                                 #      PROBE_KEYS ("int4_group_128,int4_group_128_asym"),
                                                 #      PROBE_FRAG_GEMV ("1x4x1x4,2x2x1x4,...": at M = 1 also
                                                 #      wo_frag_gemv at these RTxRSxWARPS_TxWARPS_S configs and
                                                 #      wo_frag's tensor cores, each timed alone)

Writes $OUT/frag_only_probe_<device>.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.bench_wo import n_copies, random_weight, rotated_us  # noqa: E402
from bench.timing import gpu_slug  # noqa: E402
from quantc.runtime.kernels import wo_frag as fr  # noqa: E402
from quantc.runtime.kernels import wo_frag_gemv as fg  # noqa: E402
from quantc.runtime.kernels import wo_launch  # noqa: E402

SHAPES = [tuple(int(v) for v in s.split("x")) for s in
          os.environ.get("PROBE_SHAPES", "28672x4096,4096x14336,4096x4096,7168x2048").split(",")]
MS = tuple(int(v) for v in os.environ.get("PROBE_MS", "1,2,16,32,64,128,512").split(","))
KEYS = os.environ.get("PROBE_KEYS", "int4_group_128").split(",")
FRAG_GEMV = [tuple(int(v) for v in c.split("x")) for c in os.environ.get("PROBE_FRAG_GEMV", "").split(",") if c]


def main() -> None:
    out_dir = os.environ.get("OUT", ".")
    res = {"device": torch.cuda.get_device_name(), "timing": "CUDA graphs, weights rotated past L2", "rows": []}
    for (n, k), key in [(s, key) for s in SHAPES for key in KEYS]:
        ws = [random_weight("int4_group_128", n, k) for _ in range(n_copies(n * k // 2))]
        if key.endswith("_asym"):
            ws = [dataclasses.replace(w, zeros=torch.randint(0, 16, w.scale.shape, dtype=torch.uint8,
                                                             device=w.scale.device)) for w in ws]
        plane = [[w.data, w.scale] + ([w.zeros] if w.zeros is not None else []) for w in ws]
        frag = [[fr.frag_pack(w).data, w.scale] + ([w.zeros] if w.zeros is not None else []) for w in ws]
        wkey = "int4_group_128_asym" if key.endswith("_asym") else "int4_group_128"
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            a = wo_launch.run(x, plane[0], None, wkey, "none", None).float()
            b = wo_launch.run(x, frag[0], None, wkey, "none", None).float()
            err = ((a - b).abs().max() / a.abs().max()).item()
            t_plane = rotated_us(lambda i: wo_launch.run(x, plane[i], None, wkey, "none", None), len(ws))
            t_frag = rotated_us(lambda i: wo_launch.run(x, frag[i], None, wkey, "none", None), len(ws))
            row = {"N": n, "K": k, "M": m, "key": wkey, "plane_us": t_plane, "frag_only_us": t_frag,
                   "frag_over_plane": t_plane / t_frag if t_plane and t_frag else None, "rel_err": err,
                   "ok": err < 2e-2}
            if m == 1:  # the one-row kernels on the fragment-order words, each alone
                fws = [wo_launch.frag_only(f, wkey) for f in frag]
                want = wo_launch.run(x, plane[0], None, wkey, "none", None).float()
                for cfg in FRAG_GEMV:
                    full = (*cfg, fg.frag_gemv_config(n, k, torch.cuda.get_device_properties(0).multi_processor_count)[4])
                    got = fg.launch_frag_gemv(x, fws[0], full).float()
                    row[f"frag_gemv_{'x'.join(map(str, cfg))}_us"] = rotated_us(
                        lambda i, c=full: fg.launch_frag_gemv(x, fws[i], c), len(ws))
                    row[f"frag_gemv_{'x'.join(map(str, cfg))}_rel_err"] = ((got - want).abs().max() / want.abs().max()).item()
                row["frag_mma_us"] = rotated_us(lambda i: fr.launch_frag(x, fws[i]), len(ws))
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
        del ws, plane, frag
        torch.cuda.empty_cache()
        with open(os.path.join(out_dir, f"frag_only_probe_{gpu_slug(res['device'])}.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
