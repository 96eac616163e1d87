"""The warp-specialized fp8 128-block kernel (``kernels/block_mm_ws.py``, Gluon). Gluon kernels do not run
under the CPU interpreter, so CI checks what can be checked without a GPU: the kernel compiles for sm_90
with Triton's bundled ptxas into the structure the speed depends on (each K step's four wgmma
instructions issued back to back and waited for once, the FMAs of the previous step between issue and
wait, registers moved from the producer to the consumers, nothing spilled), the tile rule, and the
launcher's policy (never on a CPU tensor, so the interpreter keeps the tiled kernel, whose result is
checked against the reference). On the GPU, ``bench/block_ws_probe.py`` compares its output with the
tiled kernel's (difference 0.0 on every shape and M measured) before timing it."""

import textwrap

import pytest
import torch

from tests.runtime.offline_sass import inspect_cases
from quantc.plan import KernelConfig
from quantc.runtime import quantize as Q
from quantc.runtime.kernels import block_mm_ws, scaled_mm as S
from quantc.runtime.kernels.act_quant import quantize_activation

SCRIPT = textwrap.dedent("""
    import json, os, re, subprocess, sys, pathlib
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from quantc.runtime.kernels import block_mm_ws
    out = []
    for bm, bn, stages, split, bias in json.loads(sys.argv[1]):
        c = block_mm_ws.compile_for_hopper(bm, bn, stages, split, bias)
        ptx = c.asm["ptx"]
        path = pathlib.Path(os.environ["TMPDIR_CUBIN"]) / "k.cubin"
        path.write_bytes(c.asm["cubin"])
        nvdisasm = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
        sass = subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True).stdout
        ops = [m.group(1) for m in re.finditer(r"(QGMMA|WARPGROUP\\.DEPBAR|FFMA)", sass)]
        # wgmma instructions whose A operand is a register (gdesc: shared memory), and ldmatrix loads
        reg_a = len(re.findall(r"QGMMA\\.\\S+ R\\d+, R\\d+, gdesc", sass))
        ldsm = len(re.findall(r"\\bLDSM\\.", sass))
        # FFMAs issued while a step's wgmma group is in flight (between its last QGMMA and its wait)
        overlapped, inflight = 0, False
        for op in ops:
            if op == "QGMMA":
                inflight = True
            elif op.startswith("WARPGROUP"):
                inflight = False
            elif inflight:
                overlapped += 1
        # QGMMAs between two waits (FMAs interleaved among them do not break a run)
        runs = re.findall(r"(?:QGMMA )+", " ".join(o for o in ops if o != "FFMA") + " ")
        out.append({"qgmma": ops.count("QGMMA"), "waits": sum(o.startswith("WARPGROUP") for o in ops),
                    "ffma": ops.count("FFMA"), "overlapped_ffma": overlapped, "reg_a": reg_a, "ldsm": ldsm,
                    "runs": sorted({r.count("QGMMA") for r in runs}),
                    "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\\.(inc|dec)", ptx))),
                    "local": len(re.findall(r"\\.local", ptx)), "tma_load": "cp.async.bulk.tensor" in ptx})
    print(json.dumps(out))
""")

CASES = [(128, 128, 4, True, False), (128, 128, 4, False, False), (64, 128, 4, False, False),
         (128, 128, 5, True, True), (128, 256, 3, True, False), (128, 256, 3, True, True)]


def test_kernel_compiles_for_hopper_with_overlapped_scaling(tmp_path):
    for case, got in zip(CASES, inspect_cases(SCRIPT, CASES, tmp_path)):
        assert got["tma_load"] and got["local"] == 0, (case, got)
        assert got["setmaxnreg"] == ["dec", "inc"], (case, got)  # the producer gives registers back
        # each K step (a half of it at 256-wide tiles): four 32-deep wgmma back to back, one wait. ptxas
        # serialises a kernel's wgmmas (a wait after every one) when registers of a running wgmma are
        # read: runs of 1 would show it
        assert got["runs"] == [4] and got["qgmma"] == 4 * got["waits"], (case, got)
        if case[1] == 128:
            # the previous step's scaling (64 FMAs a thread per 64 x 128 warpgroup tile) runs under the MMA
            assert got["overlapped_ffma"] >= 64, (case, got)
            assert got["reg_a"] == 0, (case, got)
        else:
            # 256 wide: A from registers, loaded once a K step for both halves' MMAs (one ldmatrix x4 per
            # 32-deep slice, two wgmma on it); two 64 x 128 halves scaled per partition (2 x 64 FMAs)
            assert got["reg_a"] == got["qgmma"] and got["ldsm"] * 2 == got["qgmma"], (case, got)
            assert got["ffma"] >= 2 * 2 * 64, (case, got)


@pytest.mark.parametrize("m,n,k,sms,want", [
    (4096, 4096, 4096, 132, (128, 256, 3, True, 8)),    # 512 256-wide tiles: 3.9 waves
    (1024, 6144, 4096, 132, (128, 128, 4, True, 4)),    # 192 256-wide tiles: 1.45 waves, the last 45% busy
    (4096, 7168, 2048, 132, (128, 128, 4, True, 4)),    # K = 2048: 128-wide
    (1024, 4096, 14336, 132, (128, 256, 3, True, 8)),   # 128 256-wide tiles: 0.97 of a wave
    (256, 6144, 4096, 132, (128, 128, 4, True, 4)),     # 96 tiles of 128 rows: more than half the SMs
    (256, 4096, 4096, 132, (64, 128, 4, False, 8)),     # 64 tiles: 64-row tiles double the programs
    (128, 2048, 7168, 132, (64, 128, 4, False, 8)),
    (256, 4096, 4096, 100, (128, 128, 4, True, 4)),     # a GPU of fewer SMs
    (256, 28672, 4096, 132, (128, 256, 3, True, 8)),    # 224 256-wide tiles: the last wave 85% busy
    (256, 24576, 7168, 132, (128, 128, 4, False, 8)),   # long K, wide, 1.45 waves at 256: one 8-warp partition
    (1024, 2048, 7168, 132, (128, 128, 4, True, 4)),    # long K, narrow, 64 256-wide tiles: split 128 x 128
    (4096, 2048, 7168, 132, (128, 256, 3, True, 8)),
])
def test_tile_rule(m, n, k, sms, want):
    assert block_mm_ws.tile_for(m, n, k, sms) == want


@pytest.mark.parametrize("m,n,k,bn,ok", [
    (256, 4096, 4096, 128, True), (1, 576, 7168, 128, True),  # a ragged last weight block (N = 576)
    (256, 4100, 4096, 128, False),   # bf16 output rows not 16-byte aligned
    (256, 4096, 4104, 128, False),   # fp8 rows not 16-byte aligned
    (256, 4096, 4096, 256, True),    # two weight blocks a tile (the 256-wide kernel)
    (256, 4096, 4096, 192, False),   # a tile across a weight block's middle
    (0, 4096, 4096, 128, False),
])
def test_supports(m, n, k, bn, ok):
    assert block_mm_ws.supports(m, n, k, bn) is ok


def test_policy_never_takes_gluon_on_the_cpu(monkeypatch):
    monkeypatch.setenv("QUANTC_BLOCK_WS", "1")
    assert S._block_ws_policy(4096, torch.device("cpu")) is False


def test_forced_policy_leaves_the_cpu_path_exact(monkeypatch):
    """QUANTC_BLOCK_WS=1 on a CPU tensor runs the tiled kernel (interpreter) and matches the reference."""
    monkeypatch.setenv("QUANTC_BLOCK_WS", "1")
    torch.manual_seed(0)
    m, n, k = 130, 192, 256
    w = torch.randn(n, k, dtype=torch.bfloat16) * 0.05
    t = Q.quantize_weight(w, "fp8_block_128x128")
    x = torch.randn(m, k, dtype=torch.bfloat16)
    xq, sx = quantize_activation(x, "fp8_dynamic_group_128")
    got = S.scaled_mm(xq, t["weight"], t["weight_scale_inv"], "fp8_block_128x128", "fp8_dynamic_group_128",
                      KernelConfig(64, 64, 128, 8, 4, 2), x_scale=sx).float()
    a = xq.float() * sx.repeat_interleave(128, dim=1)[:, :k]
    b = t["weight"].float() * t["weight_scale_inv"].float().repeat_interleave(128, 0).repeat_interleave(128, 1)[:n, :k]
    want = a @ b.T
    assert torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
