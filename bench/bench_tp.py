"""Issue 14: a Llama-3.1-70B-shaped model (reduced in layer count) at tensor_parallel = 2 against tp = 1.

Per scheme (fp8_per_block, w4a16 by default): apply() startup time on each rank, decode tokens/s at
batch 1 (eager), the share of decode time spent in collectives (all-reduce / all-gather kernels, from
the torch profiler), and fidelity of the tp = 2 logits against the tp = 1 plan's (cosine, top-1).

    python3 bench/bench_tp.py prepare --layers 2 --out .out/tp          # here: compile tp=1 and tp=2 plans
    python3 bench/bench_tp.py run --plans .out/tp --world 2 --device cuda  # on the 2-GPU machine
    python3 bench/bench_tp.py run --plans .out/tp --world 2 --device cpu --tiny   # CPU smoke run (gloo)

On the GPU machine keep NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1
set; this script sets them for its own processes too. Results: bench/results/tp_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = "llama-3.1-70b"
for _k, _v in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_k, _v)


def prepare(args) -> None:
    """Compile the plans on this machine (the GPU image lacks the compiler's YAML/schema deps)."""
    import quantc
    import quantc.hf as H

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = H.build_model(MODEL, layers=args.layers, tiny=args.tiny, device="meta")
    for scheme in args.schemes:
        for tp in (1, args.world):
            cfg = out / f"{scheme}.yaml"
            cfg.write_text(f"quantc: 1\nlinear: {scheme}\ntarget: {{gpu: h100, tensor_parallel: {tp}}}\n")
            plan = quantc.compile(str(cfg), model)
            plan.save(out / f"{scheme}_tp{tp}.json")
            print(f"{scheme} tp={tp}: {plan.summary['modules']} modules")
    (out / "meta.json").write_text(json.dumps({"layers": args.layers, "tiny": args.tiny, "schemes": args.schemes,
                                               "world": args.world}))


def _collective_share(model, tok, cache, device) -> float:
    """Fraction of one decode step's device time spent in collective kernels."""
    import copy

    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    with torch.no_grad(), profile(activities=acts) as prof:
        model(tok, past_key_values=copy.deepcopy(cache), use_cache=True, logits_to_keep=1)
        if device == "cuda":
            torch.cuda.synchronize()
    total = comm = 0.0
    for e in prof.key_averages():
        t = e.device_time_total if device == "cuda" else e.self_cpu_time_total
        total += t
        name = e.key.lower()
        if any(s in name for s in ("nccl", "allreduce", "all_reduce", "allgather", "all_gather", "gloo")):
            comm += t
    return comm / total if total else 0.0


def _worker(rank: int, world: int, args, meta: dict, results: dict) -> None:
    import torch
    import torch.distributed as dist

    import quantc
    import quantc.hf as H
    import quantc.runtime

    device = args.device
    if device == "cuda":
        torch.cuda.set_device(rank)
    if world > 1:
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{args.rendezvous}",
                                rank=rank, world_size=world)
    dev = f"cuda:{rank}" if device == "cuda" else "cpu"
    rows = []
    for scheme in meta["schemes"]:
        plan = quantc.load_plan(Path(args.plans) / f"{scheme}_tp{world}.json")
        model = H.build_model(MODEL, layers=meta["layers"], tiny=meta["tiny"], device=dev)
        t0 = time.perf_counter()
        report = quantc.runtime.apply(model, plan, rank=rank if world > 1 else None, world=world if world > 1 else None,
                                      progress=False)
        apply_s = time.perf_counter() - t0
        logits = H.reference_logits(model, dev, tokens=args.tokens)
        decode = H.decode_tokens_per_s(model, 1, dev, context=64, steps=4, graphs=False)  # eager, as before
        g = torch.Generator(dev).manual_seed(12)
        ids = torch.randint(0, model.config.vocab_size, (1, 64), device=dev, generator=g)
        tok = torch.randint(0, model.config.vocab_size, (1, 1), device=dev, generator=g)
        with torch.no_grad():
            cache = model(ids, use_cache=True, logits_to_keep=1).past_key_values
        share = _collective_share(model, tok, cache, device) if world > 1 else 0.0
        if rank == 0:
            torch.save(logits, Path(args.plans) / f"logits_{scheme}_tp{world}.pt")
            rows.append({"scheme": scheme, "world": world, "apply_s": round(apply_s, 3),
                         "decode_b1_tokens_per_s": round(decode, 2), "collective_share_of_decode": round(share, 4),
                         "bytes_after_rank0": report.bytes_after, "swapped": len(report.swapped)})
        del model
    if rank == 0:
        results.update({"rows": rows})
        (Path(args.plans) / f"rows_tp{world}.json").write_text(json.dumps(rows))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip teardown: gloo/NCCL threads can abort it after the work is saved


def run(args) -> None:
    import torch
    import torch.multiprocessing as mp

    meta = json.loads((Path(args.plans) / "meta.json").read_text())
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    args.rendezvous = str(Path(args.plans).resolve() / "rendezvous")
    for world in (1, args.world):
        if os.path.exists(args.rendezvous):
            os.remove(args.rendezvous)
        if world == 1:
            _worker(0, 1, args, meta, {})
        else:
            mp.start_processes(_worker, args=(world, args, meta, {}), nprocs=world, join=True, start_method="spawn")
    import quantc.hf as H

    out = {"model": f"{MODEL} reduced to {meta['layers']} layers" + (" (tiny dims)" if meta["tiny"] else ""),
           "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (TRITON_INTERPRET, gloo)",
           "torch": torch.__version__, "rows": []}
    tp1 = {r["scheme"]: r for r in json.loads((Path(args.plans) / "rows_tp1.json").read_text())}
    for r in json.loads((Path(args.plans) / f"rows_tp{args.world}.json").read_text()):
        a = torch.load(Path(args.plans) / f"logits_{r['scheme']}_tp1.pt").float()
        b = torch.load(Path(args.plans) / f"logits_{r['scheme']}_tp{args.world}.pt").float()
        r["fidelity_vs_tp1"] = H.fidelity(a, b)
        r["decode_speedup_vs_tp1"] = round(r["decode_b1_tokens_per_s"] / tp1[r["scheme"]]["decode_b1_tokens_per_s"], 3)
        r["tp1"] = tp1[r["scheme"]]
        out["rows"].append(r)
    dest = ROOT / "bench" / "results" / f"tp_{'h100' if args.device == 'cuda' else 'cpu'}.json"
    if args.output:
        dest = Path(args.output)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--schemes", nargs="+", default=["fp8_per_block", "w4a16"])
    p.add_argument("--out", default=".out/tp")
    r = sub.add_parser("run")
    r.add_argument("--plans", default=".out/tp")
    r.add_argument("--world", type=int, default=2)
    r.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    r.add_argument("--tokens", type=int, default=64)
    r.add_argument("-o", "--output")
    args = ap.parse_args()
    (prepare if args.cmd == "prepare" else run)(args)


if __name__ == "__main__":
    main()
