"""The one-row GEMV over int4 weights in fragment order (wo_frag_gemv): the twin against the reference under the
interpreter, its PTX emulated in numpy, the Gluon kernel compiled for sm_90, and the fragment-order layer's routing."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from quantc.runtime.kernels import half2_ptx as hp
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_frag as fr
from quantc.runtime.kernels import wo_frag_gemv as fg
from quantc.runtime.kernels import wo_gemm as wg
from quantc.runtime.kernels import half2_ptx as hp
from tests.runtime.test_wo_gemv import _fma, _h2


def _rel_err(out, ref):
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_64_asym"])
@pytest.mark.parametrize("n,k", [(48, 1024), (32, 768), (64, 2048)])
def test_twin_matches_the_reference(key, n, k):
    """Configs with one and two row tiles a thread, 2-4 warps along K, split-K (its workspace and one arrival count
    for both row halves), and K = 768 (12 steps: the launch shrinks its 16-step blocks to 4)."""
    torch.manual_seed(n + k)
    w = wf.quantize(torch.randn(n, k) * 0.1, key)
    fw = fr.frag_pack(w)
    x = torch.randn(1, k).bfloat16()
    ref = wg.reference(x, w)
    for cfg in (None, (1, 4, 1, 4, 2), (2, 2, 1, 4, 1), (1, 2, 1, 2, 3)):
        out = fg.launch_frag_gemv(x, fw, cfg)
        assert out.shape == (1, n) and out.dtype == torch.bfloat16
        assert _rel_err(out, ref) < 1e-2, (key, cfg)


def test_zero_activation_chunks_and_refusals():
    w = wf.quantize(torch.randn(32, 1024), "int4_group_128")
    fw = fr.frag_pack(w)
    x = torch.zeros(1, 1024).bfloat16()
    x[0, 512:] = torch.randn(512).bfloat16()  # zero chunks: their power of two stays finite
    out = fg.launch_frag_gemv(x, fw)
    assert torch.isfinite(out.float()).all() and _rel_err(out, wg.reference(x, w)) < 1e-2
    with pytest.raises(ValueError, match=r"one 8-byte aligned row .* got \(2, 1024\)"):
        fg.launch_frag_gemv(torch.randn(2, 1024).bfloat16(), fw)
    odd = torch.zeros(1, 1027).bfloat16()[:, 1:1025]  # 2-byte aligned
    assert not fg.frag_gemv_ok(odd, fw) and fg.frag_gemv_ok(x, fw)
    assert not fg.frag_gemv_ok(torch.randn(1, 192).bfloat16(), fr.frag_pack(wf.quantize(torch.randn(32, 192),
                                                                                      "int4_group_64")))  # K % 128


def _decode(word: int, c0: int, c1: int, asm: str) -> list[np.ndarray]:
    """DECODE_* step by step (``tests/runtime/test_wo_gemv.py``'s emulation of the same instructions)."""
    lo = int(re.search(r"lop3\.b32 t0, \$4, 0x000F000F, (0x[0-9A-F]+)", asm).group(1), 16)
    hi = int(re.search(r"lop3\.b32 t1, \$4, 0x00F000F0, (0x[0-9A-F]+)", asm).group(1), 16)
    w8 = word >> 8
    t = [(word & 0x000F000F) ^ lo, (word & 0x00F000F0) ^ hi, (w8 & 0x000F000F) ^ lo, (w8 & 0x00F000F0) ^ hi]
    s16 = _h2(0x2C002C00)
    return [(_h2(t[0]).astype(np.float64) - _h2(c0)).astype(np.float16), _fma(_h2(t[1]), s16, _h2(c1)),
            (_h2(t[2]).astype(np.float64) - _h2(c0)).astype(np.float16), _fma(_h2(t[3]), s16, _h2(c1))]


def _dot_frag4(ts: list[list[np.ndarray]], pa: list[int], pb: list[int]) -> tuple[float, float]:
    """DOT_FRAG4 as its instructions list them (operands read back from the asm text)."""
    asm = fg.DOT_FRAG4.value
    ops = {}
    for v in range(4):
        for j in range(4):
            ops[f"${2 + 4 * v + j}"] = ts[v][j]
        ops[f"${18 + 2 * v}"], ops[f"${19 + 2 * v}"] = _h2(pa[v]), _h2(pb[v])
    acc = {}
    for line in asm.splitlines():
        m = re.match(r"(mul|fma)\.rn\.f16x2 (a[gh]), (\$\d+), (\$\d+)(?:, (a[gh]))?;", line)
        if m:
            prod = ops[m.group(3)].astype(np.float64) * ops[m.group(4)].astype(np.float64)
            acc[m.group(2)] = (prod + (acc[m.group(5)].astype(np.float64) if m.group(5) else 0)).astype(np.float16)
    return float(acc["ag"][0]) + float(acc["ag"][1]), float(acc["ah"][0]) + float(acc["ah"][1])


@pytest.mark.parametrize("zero", [None, 3])
def test_ptx_reads_every_code_of_both_rows_exactly(zero):
    """Each word v of a chunk, each nibble p + 4 h (row g + 8 (p % 2), K 4 v + 2 (p // 2) + h), every code: with
    x = 1 at that K alone, DOT_FRAG4 returns the value on its row and code 0's on the other (0, or -zero)."""
    asm = hp.DECODE_SYM.value if zero is None else hp.DECODE_ZERO.value
    c0 = 0x64086408 if zero is None else (0x6400 + zero) * 0x10001
    c1 = 0xD480D480 if zero is None else (0xD400 + 16 * zero) * 0x10001
    one = 0x3C00
    for v in range(4):
        for p in range(4):
            for h in range(2):
                for code in range(16):
                    words = [0] * 4
                    words[v] = code << (4 * (p + 4 * h))
                    pa, pb = [0] * 4, [0] * 4
                    (pa if p < 2 else pb)[v] = one << (16 * h)
                    g_val, h_val = _dot_frag4([_decode(wd, c0, c1, asm) for wd in words], pa, pb)
                    want = (code - 16 if code >= 8 else code) if zero is None else code - zero
                    other = 0.0 if zero is None else -zero
                    assert (g_val, h_val) == ((want, other) if p % 2 == 0 else (other, want)), (v, p, h, code)


FRAG_GEMV_COMPILE = '''
import json, os, re, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from quantc.runtime.kernels import wo_frag_gemv as fg
SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "out_ptr": "*bf16", "ws_ptr": "*fp32",
       "cnt_ptr": "*i32", "N": "i32", "K": "i32", "stride_sn": "i32"}
out = []
for zero, rt, rs, wt, ws, split in json.loads(sys.argv[1]):
    ce = dict(GROUP=128, HAS_ZERO=zero, RT=rt, RS=rs, WARPS_T=wt, WARPS_S=ws, SPLIT_K=split)
    sig = dict(SIG, **{k: "constexpr" for k in ce})
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(SIG) if a != "N"}
    c = triton.compile(GluonASTSource(fg._frag_gemv_kernel, sig, ce, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": wt * ws})
    ptx = c.asm["ptx"]
    out.append({"lop3": len(re.findall(r"lop3\\.b32", ptx)), "f16x2": len(re.findall(r"f16x2", ptx)),
                "local": len(re.findall(r"\\.local", ptx)), "shared": c.metadata.shared,
                "ld_v4": len(re.findall(r"ld\\.global[.a-zA-Z0-9_:]*\\.v4\\.b32", ptx)),
                "atom": len(re.findall(r"atom\\.", ptx))})
print(json.dumps(out))
'''


@pytest.mark.timeout(300)
def test_gluon_kernel_compiles_for_hopper_with_chunks_in_registers():
    """Compiled for sm_90: a thread's chunks one 16-byte load each (and the prefetch's), each word decoded once
    (4 lop3), nothing spilled, shared memory only for the sums across the warps along K; split-K's atomics."""
    cases = [(False, 4, 1, 1, 4, 1), (True, 4, 1, 1, 4, 2), (False, 1, 4, 1, 4, 1), (False, 2, 2, 1, 4, 1)]
    proc = subprocess.run([sys.executable, "-c", FRAG_GEMV_COMPILE, json.dumps(cases)], capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0 and "error" not in proc.stderr.lower(), proc.stderr[-3000:]
    for (zero, rt, rs, wt, ws, split), r in zip(cases, json.loads(proc.stdout.strip().splitlines()[-1])):
        chunks = rt * rs
        assert r["lop3"] == 16 * chunks and r["ld_v4"] == 2 * chunks and r["local"] == 0, r
        assert r["shared"] <= 4 * 16 * rt * ws * 4 and (r["atom"] > 0) == (split > 1), r


def test_a_layer_in_fragment_order_runs_one_row_on_it(monkeypatch):
    """QUANTC_WO_FRAG=1: one row on this GEMV where ``uses_frag_gemv`` says so (forced here: off a GPU it is off),
    two rows on wo_frag; QUANTC_WO_FRAG_GEMV=0 keeps one row on wo_frag."""
    from quantc.runtime import quantize as Q
    from quantc.runtime.kernels import wo_launch
    from quantc.runtime.registry import LAUNCHERS

    torch.manual_seed(8)
    n, k = 48, 512
    tensors = Q.quantize_weight((torch.randn(n, k) * 0.05).to(torch.bfloat16), "int4_group_128")
    ref_w = wo_launch.rebuild(list(LAUNCHERS["int4_weight_only_gemm"].prepare(tensors, "int4_group_128", n, k)
                                   .values()), "int4_group_128")[0]
    monkeypatch.setenv("QUANTC_WO_FRAG", "1")
    buffers = list(LAUNCHERS["int4_weight_only_gemm"].prepare(tensors, "int4_group_128", n, k).values())
    calls = []
    real_gemv, real_frag = fg.launch_frag_gemv, fr.launch_frag
    monkeypatch.setattr(fg, "launch_frag_gemv", lambda *a: calls.append("gemv") or real_gemv(*a))
    monkeypatch.setattr(fr, "launch_frag", lambda *a, **kw: calls.append("frag") or real_frag(*a, **kw))
    x1, x2 = torch.randn(1, k).bfloat16(), torch.randn(2, k).bfloat16()
    assert not wo_launch.uses_frag_gemv(x1, wo_launch.frag_only(buffers, "int4_group_128"))  # off a GPU
    wo_launch.run(x1, buffers, None, "int4_group_128", "none", None)
    monkeypatch.setenv("QUANTC_WO_FRAG_GEMV", "1")
    for x in (x1, x2):
        out = wo_launch.run(x, buffers, None, "int4_group_128", "none", None)
        assert _rel_err(out, wg.reference(x, ref_w)) < 1e-2
    monkeypatch.setenv("QUANTC_WO_FRAG_GEMV", "0")
    wo_launch.run(x1, buffers, None, "int4_group_128", "none", None)
    assert calls == ["frag", "gemv", "frag", "frag"]
