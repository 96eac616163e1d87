"""`quantc tune --plan` without the CLI (typer's argument parsing imports pydantic, which GPU images may
lack): tune every kernel of compiled plans on this GPU into one table folder.

    python3 bench/tune_plan.py OUT_DIR plan.json [plan2.json ...] [--m-buckets 1,16,64] [--kernels moe_,fp8_]
        [--space full|small|seeded] [--small]

``--kernels``: comma-separated kernel-id prefixes to tune (default: every kernel of the plans).
``--space``: the search space (``quantc.tune.SPACES``; default full); ``--small`` is ``--space small``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from quantc.gpus import GPUS
    from quantc.plan import load_plan
    from quantc.tune import M_BUCKETS, SPACES, jobs_from_plan

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("plans", nargs="+")
    ap.add_argument("--m-buckets", default="")
    ap.add_argument("--kernels", default="")
    ap.add_argument("--space", choices=SPACES, default="full")
    ap.add_argument("--small", action="store_true", help="the same as --space small")
    args = ap.parse_args()
    if args.small and args.space not in ("full", "small"):
        ap.error(f"--small is --space small; it cannot be combined with --space {args.space}")
    space = "small" if args.small else args.space
    from quantc.runtime.tune import tune  # after the arguments: a usage error needs no torch
    wanted = {int(b) for b in args.m_buckets.split(",") if b}
    buckets = tuple(b for b in M_BUCKETS if not wanted or b[0] in wanted or b[1] in wanted)
    for path in args.plans:
        plan = load_plan(path)
        prefixes = tuple(k for k in args.kernels.split(",") if k)
        jobs = [j for j in jobs_from_plan(plan, buckets) if not prefixes or j.kernel.startswith(prefixes)]
        stats = tune(jobs, GPUS[plan.target["gpu"]], args.out, space=space, progress=sys.stderr.isatty())
        print(path, stats, flush=True)


if __name__ == "__main__":
    main()
