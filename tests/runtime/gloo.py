"""One rank of a CPU torch.distributed test: gloo over a file rendezvous, Triton under the interpreter."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


@contextmanager
def gloo_rank(rank: int, world: int, tmp: str):
    """Run the body as ``rank`` of ``world``. On success the ranks meet at a barrier, tear gloo down
    and the process exits without the interpreter's teardown, which gloo's threads can abort
    ("terminate called without an active exception") after the work is saved. An exception in the
    body propagates (after the group is destroyed), so the spawn fails as it should."""
    os.environ["TRITON_INTERPRET"] = "1"
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
