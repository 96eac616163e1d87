"""int4 weights in tensor-core fragment order (wo_frag): the repack and its inverse, the fragment coordinates of a
word's nibbles, the Triton twin under the interpreter against the plain-torch reference (symmetric codes and zero
points, partial programs, 1-16 activation rows, split-K), what it refuses, and the Gluon GPU kernel compiled for
sm_90 (no shared memory for the tiles, no spills)."""

import json
import subprocess
import sys

import pytest
import torch

from quantc.runtime import quantize as qz
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_frag as fr
from quantc.runtime.kernels import wo_gemm as wg


def _rel_err(got, want):
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_64_asym"])
def test_pack_is_a_permutation_of_the_codes(key):
    torch.manual_seed(1)
    w = wf.quantize(torch.randn(48, 256), key)
    fw = fr.frag_pack(w)
    assert fw.data.shape == (3, 4, 32, 4) and fw.data.dtype == torch.int32
    codes = qz.unpack_nibbles(w.data.view(torch.uint8))
    assert torch.equal(fr.frag_codes(fw), codes)


def test_a_words_nibbles_sit_at_their_fragment_coordinates():
    """Word (T, s, l, v), nibble p + 4 h: row 16 T + l // 4 + 8 (p % 2), K 64 s + 16 (l % 4) + 4 v + 2 (p // 2) + h
    (the m16n8k16 A fragment: a0a1 rows g, a2a3 rows g + 8, a4a5 / a6a7 the second 8 fragment columns, which the
    step's permuted K order maps so that a lane's activation values of a step are 16 consecutive ones)."""
    n, k = 32, 128
    codes = torch.arange(n * k).reshape(n, k) % 16  # every element's code from its position
    w = wf.WoWeight(wf.INT4, n, k, qz.pack_nibbles(codes).view(torch.int32), torch.ones(n, 1).bfloat16(), wf.S_FLOAT,
                    k)
    words = fr.frag_pack(w).data
    for t, s, lane, v in [(0, 0, 0, 0), (1, 1, 29, 3), (0, 1, 7, 2)]:
        word = int(words[t, s, lane, v]) & 0xFFFFFFFF
        for p in range(4):
            for h in range(2):
                row = 16 * t + lane // 4 + 8 * (p % 2)
                col = 64 * s + 16 * (lane % 4) + 4 * v + 2 * (p // 2) + h
                assert (word >> (4 * (p + 4 * h))) & 15 == codes[row, col], (t, s, lane, v, p, h)


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_64_asym"])
@pytest.mark.parametrize("m,warps,split", [(1, 2, 1), (5, 4, 3), (16, 2, 2), (17, 2, 2), (40, 4, 1)])
def test_twin_matches_the_reference(key, m, warps, split):
    """1-16 tokens in one tile; 17 and 40 in token tiles of 16 (the last partial), with split-K's workspace and
    counters per (row tile, token tile)."""
    torch.manual_seed(2)
    n, k = 48, 384  # 3 row tiles: with 2 warps (32 rows a program) the second program is half masked
    w = wf.quantize(torch.randn(n, k), key)
    x = torch.randn(m, k).bfloat16()
    out = fr.launch_frag(x, fr.frag_pack(w), warps=warps, split_k=split)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    assert _rel_err(out, wg.reference(x, w)) < 1e-2


def test_sub_steps_follow_k_and_the_groups():
    """Two 64-deep sub-steps a step where 128 divides K and the groups (the scales once a step), else one."""
    assert fr.frag_sub(4096, 128) == 2 and fr.frag_sub(4096, 64) == 1 and fr.frag_sub(192, 128) == 1
    fw = fr.frag_pack(wf.quantize(torch.randn(48, 256), "int4_group_128"))
    assert fr.launch_frag(torch.randn(0, 256).bfloat16(), fw).shape == (0, 48)  # no rows: nothing to launch


def test_refusals_name_what_is_wrong():
    with pytest.raises(ValueError, match="int4 weight with N a multiple of 16"):
        fr.frag_pack(wf.quantize(torch.randn(48, 256), "mxfp4"))
    with pytest.raises(ValueError, match=r"shape \(40, 256\)"):
        fr.frag_pack(wf.quantize(torch.randn(40, 256), "int4_group_128"))
    with pytest.raises(ValueError, match="group 32"):
        fr.frag_pack(wf.quantize(torch.randn(48, 256), "int4_group_32"))
    fw = fr.frag_pack(wf.quantize(torch.randn(48, 256), "int4_group_128"))
    with pytest.raises(ValueError, match="K = 256 with unit stride"):
        fr.launch_frag(torch.randn(3, 512).bfloat16(), fw)
    with pytest.raises(ValueError, match="with strides"):
        fr.launch_frag(torch.randn(256, 3).bfloat16().t(), fw)
    assert not fr.frag_ok(wf.quantize(torch.randn(2, 48, 256), "int4_group_128"))  # stacks: not yet


FRAG_COMPILE = '''
import json, os, re, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from quantc.runtime.kernels import wo_frag
SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "out_ptr": "*bf16", "ws_ptr": "*fp32",
       "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_sn": "i32",
       "M_TILES": "i32"}
out = []
for zero, warps, split, sub, tok in json.loads(sys.argv[1]):
    ce = dict(GROUP=128, HAS_ZERO=zero, WARPS=warps, SPLIT_K=split, SUB=sub, TOK=tok)
    sig = dict(SIG, **{k: "constexpr" for k in ce})
    # 16-byte aligned pointers, K and strides, as Triton specializes them at a launch
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(SIG) if a not in ("M", "N", "M_TILES")}
    c = triton.compile(GluonASTSource(wo_frag._frag_kernel, sig, ce, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps})
    ptx = c.asm["ptx"]
    out.append({"mma": len(re.findall(r"mma\\.sync", ptx)), "lop3": len(re.findall(r"lop3\\.b32", ptx)),
                "shfl": len(re.findall(r"shfl", ptx)), "local": len(re.findall(r"\\.local", ptx)),
                "ld_shared": len(re.findall(r"ld\\.shared", ptx)), "atom": len(re.findall(r"atom\\.", ptx)),
                "ld_v4": len(re.findall(r"ld\\.global[.a-zA-Z0-9_:]*\\.v4\\.b32", ptx))})
print(json.dumps(out))
'''


def test_gluon_kernel_compiles_for_hopper_with_the_tiles_in_registers():
    """The GPU kernel (Gluon: the interpreter cannot run it) compiled for sm_90, one and two 64-deep sub-steps a step:
    8 MMAs and 16 decode lop3 a sub-step; a lane's four words one 16-byte load and its activation values four (the
    permuted K order); no shuffles, no spills, neither operand through shared memory; split-K adds only its atomics
    and the arrival count's one shared word. 32 and 64 tokens a program: the same decode, the MMAs and the
    activation loads growing with the tokens, still nothing through shared memory."""
    cases = [(False, 4, 1, 1, 16), (True, 4, 1, 2, 16), (False, 2, 2, 2, 16), (False, 4, 1, 2, 32), (True, 4, 1, 2, 64)]
    proc = subprocess.run([sys.executable, "-c", FRAG_COMPILE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case, r in zip(cases, json.loads(proc.stdout.strip().splitlines()[-1])):
        # a 64-deep sub-step: 8 MMAs, 16 decode lop3, one 16-byte load of words (and one more before the loop) and
        # four of the lane's two tokens' activations
        sub, tiles = case[3], case[4] // 16
        assert r["mma"] == 8 * sub * tiles and r["lop3"] == 16 * sub and r["ld_v4"] == (2 + 4 * tiles) * sub, (case, r)
        assert r["shfl"] == 0 and r["local"] == 0, (case, r)
        # split-K: its atomics, and the arrival count broadcast through one shared-memory word
        assert (r["atom"] > 0) == (case[2] > 1) and r["ld_shared"] == (case[2] > 1), (case, r)


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_64_asym"])
def test_a_layer_prepared_with_the_switch_runs_2_to_16_rows_in_fragment_order(key, monkeypatch):
    """QUANTC_WO_FRAG=both at load (opt-in): an int4 QuantLinear keeps its words in fragment order beside the
    checkpoint's, and 2-16 activation rows run wo_frag (one row the GEMV's path, more than 16 the other kernels);
    without the switch nothing changes; a format it cannot take keeps no second copy."""
    from quantc.runtime import quantize as Q
    from quantc.runtime.kernels import wo_launch
    from quantc.runtime.modules import QuantLinear
    from quantc.runtime.registry import LAUNCHERS

    torch.manual_seed(4)
    n, k = 48, 256
    w = (torch.randn(n, k) * 0.05).to(torch.bfloat16)
    tensors = Q.quantize_weight(w, key)
    launcher = LAUNCHERS["int4_weight_only_gemm"]
    assert "frag" not in launcher.prepare(tensors, key, n, k)
    monkeypatch.setenv("QUANTC_WO_FRAG", "both")
    buffers = launcher.prepare(tensors, key, n, k)
    assert buffers["frag"].shape == (3, 4, 32, 4)
    assert "frag" not in LAUNCHERS["fp4_weight_only_gemm"].prepare(Q.quantize_weight(w, "mxfp4"), "mxfp4", n, k)
    layer = QuantLinear("t", "int4_weight_only_gemm", key, "none", n, k, buffers, None, None)
    calls = []
    real = fr.launch_frag
    monkeypatch.setattr(fr, "launch_frag", lambda *a, **kw: calls.append(a[0].shape[0]) or real(*a, **kw))
    ref_w = wo_launch.rebuild([buffers[key_] for key_ in layer._names], key)[0]
    for m in (1, 5, 16, 17):
        x = torch.randn(m, k).bfloat16()
        assert _rel_err(layer(x), wg.reference(x, ref_w)) < 1e-2, m
    assert calls == [5, 16]


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_64_asym"])
def test_a_layer_kept_in_fragment_order_only_runs_every_m_from_one_copy(key, monkeypatch):
    """QUANTC_WO_FRAG=1 at load: the int4 words in fragment order only (the same bytes as the plane layout, no
    second copy), and every M runs from them: wo_frag in 16-token tiles, or from the dequantized weight through
    matmul where the plane layout takes that path too (forced here by QUANTC_DEQUANT_MIN_M); a format it cannot
    take keeps the plane layout."""
    from quantc.runtime import quantize as Q
    from quantc.runtime.kernels import wo_launch
    from quantc.runtime.modules import QuantLinear
    from quantc.runtime.registry import LAUNCHERS

    torch.manual_seed(5)
    n, k = 48, 256
    w = (torch.randn(n, k) * 0.05).to(torch.bfloat16)
    tensors = Q.quantize_weight(w, key)
    launcher = LAUNCHERS["int4_weight_only_gemm"]
    plane = launcher.prepare(tensors, key, n, k)
    ref_w = wo_launch.rebuild(list(plane.values()), key)[0]
    monkeypatch.setenv("QUANTC_WO_FRAG", "1")
    buffers = launcher.prepare(tensors, key, n, k)
    assert buffers["data"].shape == (3, 4, 32, 4) and "frag" not in buffers
    assert sum(t.nbytes for t in buffers.values()) == sum(t.nbytes for t in plane.values())
    assert torch.equal(fr.frag_codes(wo_launch.frag_only(list(buffers.values()), key)), fr.frag_codes(fr.frag_pack(ref_w)))
    mx = LAUNCHERS["fp4_weight_only_gemm"].prepare(Q.quantize_weight(w, "mxfp4"), "mxfp4", n, k)
    assert mx["data"].dim() == 2
    layer = QuantLinear("t", "int4_weight_only_gemm", key, "none", n, k, buffers, None, None)
    frag_calls, dequant_calls = [], []
    real_frag, real_dq = fr.launch_frag, fr.frag_dequant_bf16
    monkeypatch.setattr(fr, "launch_frag", lambda *a, **kw: frag_calls.append(a[0].shape[0]) or real_frag(*a, **kw))
    monkeypatch.setattr(fr, "frag_dequant_bf16", lambda fw: dequant_calls.append(fw.n) or real_dq(fw))
    monkeypatch.setenv("QUANTC_DEQUANT_MIN_M", "32")
    for m in (1, 5, 17, 40):
        x = torch.randn(m, k).bfloat16()
        assert _rel_err(layer(x), wg.reference(x, ref_w)) < 1e-2, m
    assert frag_calls == [1, 5, 17] and dequant_calls == [n]


def test_dequantized_fragment_order_is_the_plane_layouts_bits():
    """frag_dequant_bf16 (the prefill path from fragment order) gives wo_dequant's bf16 weight bit for bit, symmetric
    and with zero points, over several row tiles and 64-deep steps."""
    from quantc.runtime.kernels import wo_dequant as wd

    torch.manual_seed(6)
    for key, k in (("int4_group_128", 640), ("int4_group_64_asym", 448)):  # K past one 128-wide program, ragged
        w = wf.quantize(torch.randn(80, k), key)
        got = fr.frag_dequant_bf16(fr.frag_pack(w))
        assert got.shape == (80, k) and torch.equal(got, wd.dequantize_bf16(w)), key


def test_token_tiles_of_16_32_and_64_give_the_same_answer():
    """frag_tokens picks 16 / 32 / 64 tokens a program by M; any of them is the same product (the twin's token
    tiles, the last one partial, split-K per (row tile, token tile))."""
    torch.manual_seed(7)
    w = wf.quantize(torch.randn(48, 256), "int4_group_64_asym")
    fw = fr.frag_pack(w)
    assert [fr.frag_tokens(m) for m in (1, 16, 17, 32, 33, 200)] == [16, 16, 32, 32, 64, 64]
    x = torch.randn(70, 256).bfloat16()
    ref = wg.reference(x, w)
    for tokens, split in ((16, 1), (32, 2), (64, 3), (None, 1)):
        out = fr.launch_frag(x, fw, warps=2, split_k=split, tokens=tokens)
        assert out.shape == (70, 48) and _rel_err(out, ref) < 1e-2, tokens
