"""Run a kernel-inspection script in a fresh interpreter (no ``TRITON_INTERPRET``, so Triton compiles for
sm_90 with its bundled ptxas) and return what it printed as JSON: one dict per case. The Gluon kernels'
structure tests use it, since Gluon cannot run under the CPU interpreter."""

import json
import os
import subprocess
import sys


def inspect_cases(script: str, cases: list, cubin_dir) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "TMPDIR_CUBIN": str(cubin_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
