"""The warp-specialized raw-sum W8A8 kernel (``kernels/rowwise_mm_ws.py``, Gluon). Gluon kernels do not run
under the CPU interpreter, so CI checks what can be checked without a GPU: the kernel compiles for sm_90 with
Triton's bundled ptxas into the structure its speed depends on (the K loop's wgmma chain keeps one group in
flight, registers moved from the producer to the consumers, nothing in local memory) for both formats,
every scale mode and a bias; the routing rule; and the policy (never on a CPU tensor, so the interpreter
keeps the Triton kernels, which the dense tests check against the reference). On the GPU,
``bench/rowwise_ws_probe.py`` and bench_dense's GPU check compare its output with the tiled kernel's
(difference 0.0 on every shape and M measured)."""

import textwrap

import pytest
import torch

from tests.runtime.offline_sass import inspect_cases
from quantc.runtime.kernels import rowwise_mm_ws
from quantc.runtime.kernels import scaled_mm as S

SCRIPT = textwrap.dedent("""
    import json, os, re, subprocess, sys, pathlib
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from quantc.runtime.kernels import rowwise_mm_ws
    out = []
    for bn, stages, int8, a_mode, b_mode, bias, bm in json.loads(sys.argv[1]):
        c = rowwise_mm_ws.compile_for_hopper(bn, stages, int8, a_mode, b_mode, bias, bm)
        path = pathlib.Path(os.environ["TMPDIR_CUBIN"]) / "k.cubin"
        path.write_bytes(c.asm["cubin"])
        nvdisasm = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
        sass = subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True).stdout
        ptx = c.asm["ptx"]
        out.append({"mma": len(re.findall(r"\\b[QI]GMMA\\.64x%dx32" % bn, sass)),
                    "int_mma": "IGMMA" in sass,
                    "wait_one": len(re.findall(r"WARPGROUP\\.DEPBAR\\.LE gsb0, 0x1", sass)),
                    "wait_all": len(re.findall(r"WARPGROUP\\.DEPBAR\\.LE gsb0, 0x0", sass)),
                    "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\\.(inc|dec)", ptx))),
                    "local": len(re.findall(r"\\.local", ptx)) + len(re.findall(r"\\b(?:LDL|STL)\\b", sass)),
                    "tma": "cp.async.bulk.tensor" in ptx})
    print(json.dumps(out))
""")

# (block_n, stages, int8, a_mode, b_mode, bias, block_m): the runtime's two tiles (ROWWISE_WS_TILE and the
# 64-row ROWWISE_WS_NARROW_TILE, one consumer warpgroup) for both formats and every scale mode
CASES = [(128, 5, False, 2, 2, False, 128), (128, 5, True, 2, 2, False, 128), (128, 5, False, 1, 1, True, 128),
         (128, 5, True, 1, 2, True, 128), (256, 3, False, 2, 2, False, 128), (128, 8, False, 1, 2, False, 64),
         (128, 8, True, 2, 2, True, 64)]


def test_kernel_compiles_for_hopper_with_chained_mmas(tmp_path):
    for case, got in zip(CASES, inspect_cases(SCRIPT, CASES, tmp_path)):
        assert got["tma"] and got["local"] == 0, (case, got)
        assert "dec" in got["setmaxnreg"], (case, got)  # the producer gives registers back
        assert got["int_mma"] is case[2], (case, got)  # int8 x int8 -> int32 on the tensor cores
        # a consumer partition per 64 rows, four 32-deep MMAs a K step each; in the loop one wait that leaves
        # the step just issued running (ptxas serialising the chain would show waits of 0 after every MMA)
        consumers = case[6] // 64
        assert got["mma"] == 4 * consumers and got["wait_one"] == got["wait_all"] == consumers, (case, got)
        if consumers == 2:
            assert got["setmaxnreg"] == ["dec", "inc"], (case, got)  # ... to the consumer warpgroup of its own


WIDE, NARROW = S.ROWWISE_WS_TILE, S.ROWWISE_WS_NARROW_TILE


@pytest.mark.parametrize("m,n,int8,sms,want", [
    (256, 6144, False, 132, WIDE),     # 96 tiles of 128 x 128: more than half the SMs
    (256, 4096, False, 132, NARROW),   # 64 tiles: 64 x 128 tiles, one wave of 128 programs
    (128, 2048, True, 132, NARROW),
    (128, 28672, False, 132, WIDE),    # 224 tiles
    (1024, 4096, False, 132, None),    # fp8 from TMA_MIN_M: the persistent TMA kernel (256 tiles)
    (1024, 2048, False, 132, WIDE),    # ... unless 128 x 128 tiles make one wave at most (128 tiles)
    (1024, 2048, False, 100, None),    # (over one wave on a GPU of 100 SMs)
    (1024, 512, True, 132, None),      # few tiles from TMA_MIN_M: the 64-row tiles were not timed there
    (1024, 4096, True, 132, WIDE),     # int8 at every M past the tile count
    (8192, 2048, True, 132, WIDE),
    (64, 28672, True, 132, None),      # under ROWWISE_WS_MIN_M: the tile kernels' small-M configs
    (127, 4096, False, 132, None),
    (256, 6144, True, 200, NARROW),    # a GPU of more SMs: 96 tiles are under half of them
])
def test_routing_rule(m, n, int8, sms, want):
    assert S.rowwise_ws_tile(m, n, int8, sms) == want


@pytest.mark.parametrize("m,n,k,ok", [(256, 4096, 4096, True), (256, 4100, 4096, False), (256, 4096, 4104, False),
                                      (0, 4096, 4096, False)])
def test_supports(m, n, k, ok):
    assert rowwise_mm_ws.supports(m, n, k) is ok


def test_policy_never_takes_gluon_on_the_cpu(monkeypatch):
    monkeypatch.setenv("QUANTC_ROWWISE_WS", "1")
    assert S._rowwise_ws_policy(4096, 4096, True, torch.device("cpu")) is None
