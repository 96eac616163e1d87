"""int4 weights in their natural order on the tensor cores (wo_plane_mma): the decode PTX executed instruction by
instruction against the codes, the Triton twin under the interpreter against the plain-torch reference (symmetric
codes and zero points, partial row tiles, token tiles of 8-64, split-K), what it refuses, and the Gluon GPU kernel
compiled for sm_90 (no shuffles, nothing through shared memory, 16-byte loads)."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_gemm as wg
from quantc.runtime.kernels import wo_plane_mma as pm
from tests.runtime.test_nibble_ptx import _bf16, _words, run_ptx


def _rel_err(got, want):
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


@pytest.mark.parametrize("zero", [None, 0, 7, 15])
def test_decode_ptx_gives_consecutive_element_pairs(zero):
    """Register i holds elements (2i, 2i + 1) of the word (low, high half) as exact bf16 integers: q for symmetric
    two's-complement codes, c - z with the zero point's -(128 + z) as the FMA's addend."""
    asm = (pm.PLANE_DECODE_SYM if zero is None else pm.PLANE_DECODE_ZERO).value
    addend = 0xC308C308 if zero is None else (0xC300 + zero) * 0x10001  # bf16 -(128 + z): 128 + z < 256 is exact
    for w in _words():
        out = run_ptx(asm, {4: w, 5: addend})
        got = [_bf16((out[i] >> (16 * h)) & 0xFFFF) for i in range(4) for h in range(2)]
        codes = [(w >> (4 * j)) & 15 for j in range(8)]
        want = [float(c - 16 if c >= 8 else c) if zero is None else float(c - zero) for c in codes]
        assert got == want, (hex(w), zero, got, want)


@pytest.mark.parametrize("scale", [0x3F80, 0x3E80, 0x4300, 0x0040])  # 1, 0.25, 128, 2**-127 (e8m0 code 0)
def test_e2m1_decode_ptx_gives_scaled_consecutive_pairs(scale):
    """mxfp4 / nvfp4: register i holds elements (2i, 2i + 1) as bf16 e2m1 values (sign included) times the group
    scale passed as bf16x2, exactly: the magnitude tables, the sign moves and the byte interleave together."""
    from quantc.runtime import quantize as qz

    values = qz.e2m1_to_float(torch.arange(16)).tolist()
    for w in _words():
        tables = {6: pm.E2M1_LO_A.value % 2**32, 7: pm.E2M1_LO_B.value % 2**32, 8: pm.E2M1_HI_A.value,
                  9: pm.E2M1_HI_B.value}  # the kernel's table registers (operands, not movs in the block)
        out = run_ptx(pm.PLANE_DECODE_E2M1.value, {4: w, 5: scale * 0x10001, **tables})
        got = [_bf16((out[i] >> (16 * h)) & 0xFFFF) for i in range(4) for h in range(2)]
        want = [values[(w >> (4 * j)) & 15] * _bf16(scale) for j in range(8)]
        assert got == want, (hex(w), hex(scale), got, want)


def test_the_emulator_catches_a_swapped_byte_selector():
    bad = pm.PLANE_DECODE_SYM.value.replace("0x0501", "0x0105")  # element 3 in the low half, 2 in the high
    out = run_ptx(bad, {4: 0x00003210, 5: 0xC308C308})
    assert [_bf16(out[1] & 0xFFFF), _bf16(out[1] >> 16)] != [2.0, 3.0]


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_128_asym", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("m,warps,split,tokens", [(1, 2, 1, None), (5, 4, 3, None), (8, 2, 2, 8), (16, 2, 2, None),
                                                  (17, 2, 2, 16), (40, 4, 1, None), (70, 1, 2, None)])
def test_twin_matches_the_reference(key, m, warps, split, tokens):
    """One token tile (8 / 16 / 32 / 64 tokens, the fewest that hold M) or several (17 rows in tiles of 16; 70 in
    tiles of 64, the last partial), with split-K's workspace and counters per (row tile, token tile); 40 weight
    rows leave the last row tile part masked at every warp count."""
    torch.manual_seed(2)
    n, k = 40, 512
    w = wf.quantize(torch.randn(n, k), key)
    x = torch.randn(m, k).bfloat16()
    out = pm.launch_plane_mma(x, w, warps=warps, split_k=split, tokens=tokens)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    assert _rel_err(out, wg.reference(x, w)) < 1e-2


@pytest.mark.parametrize("key", ["mxfp4", "nvfp4"])
@pytest.mark.parametrize("k,m,split", [(192, 3, 1), (320, 9, 2), (320, 5, 3), (448, 17, 4)])
def test_k_ending_in_a_half_step_matches_the_reference(key, k, m, split):
    """fp4 with K a multiple of 64 but not of 128 (gpt-oss's 2880): the last step's second half is masked (words,
    activations, scales), taken by the last K slice; split-K slices whose range holds no whole step still add up."""
    torch.manual_seed(5)
    w = wf.quantize(torch.randn(40, k), key)
    assert pm.plane_mma_ok(w)
    x = torch.randn(m, k).bfloat16()
    out = pm.launch_plane_mma(x, w, warps=2, split_k=split)
    assert _rel_err(out, wg.reference(x, w)) < 1e-2


def test_a_half_step_k_is_fp4_only_and_forced_only(monkeypatch):
    """int4 needs whole steps (its groups are); K = 64 is refused (no whole step to prefetch); the policy takes a
    half-step K only when forced (untimed)."""
    assert not pm.plane_mma_ok(wf.quantize(torch.randn(32, 192), "int4_group_64"))
    assert not pm.plane_mma_ok(wf.quantize(torch.randn(32, 64), "mxfp4"))
    w = wf.quantize(torch.randn(32, 192), "mxfp4")
    with pytest.raises(ValueError, match="2 where 256 divides K"):
        pm.launch_plane_mma(torch.randn(2, 192).bfloat16(), w, sub=2)
    monkeypatch.setattr(pm.common, "on_sm90", lambda device: True)
    monkeypatch.delenv("QUANTC_PLANE_MMA", raising=False)
    assert not pm.uses_plane_mma(_fake_x(4, 192), w)
    assert pm.uses_plane_mma(_fake_x(4, 256), wf.quantize(torch.randn(32, 256), "mxfp4"))
    monkeypatch.setenv("QUANTC_PLANE_MMA", "1")
    assert pm.uses_plane_mma(_fake_x(4, 192), w)


@pytest.mark.parametrize("row_tiles", [2, 4])
def test_row_tiles_a_warp_give_the_same_answer(row_tiles):
    """2 or 4 16-row tiles a warp (sharing its activation fragments on the GPU): the programs cover that many more rows,
    the last one part masked (72 rows), with split-K; 3 is refused."""
    torch.manual_seed(4)
    w = wf.quantize(torch.randn(72, 512), "mxfp4")
    x = torch.randn(9, 512).bfloat16()
    out = pm.launch_plane_mma(x, w, 2, 2, row_tiles=row_tiles)
    assert torch.equal(out, pm.launch_plane_mma(x, w, 2, 2))
    assert _rel_err(out, wg.reference(x, w)) < 1e-2
    with pytest.raises(ValueError, match="16-row tiles a warp: 1, 2 or 4, got 3"):
        pm.launch_plane_mma(x, w, 2, 2, row_tiles=3)


def test_tokens_a_program_are_the_fewest_that_hold_m():
    assert [pm.plane_mma_tokens(m) for m in (1, 8, 9, 16, 17, 32, 33, 64, 65, 500)] == [8, 8, 16, 16, 32, 32, 64,
                                                                                          64, 64, 64]
    w = wf.quantize(torch.randn(32, 256), "int4_group_128")
    assert pm.launch_plane_mma(torch.randn(0, 256).bfloat16(), w).shape == (0, 32)


def test_refusals_name_what_is_wrong():
    w = wf.quantize(torch.randn(32, 256), "int4_group_128")
    with pytest.raises(ValueError, match=r"activation rows of K = 256 with unit stride; .* x \(3, 512\)"):
        pm.launch_plane_mma(torch.randn(3, 512).bfloat16(), w)
    with pytest.raises(ValueError, match="with strides"):
        pm.launch_plane_mma(torch.randn(256, 3).bfloat16().t(), w)
    with pytest.raises(ValueError, match=r"x \(3, 256\) torch.float32"):
        pm.launch_plane_mma(torch.randn(3, 256), w)
    wide = wf.quantize(torch.randn(32, 512), "int4_group_128")
    sliced = dataclasses.replace(wide, data=wide.data[:, ::2], k=256)  # words two apart along K
    assert not pm.plane_mma_ok(sliced)
    with pytest.raises(ValueError, match="unit stride along K"):
        pm.launch_plane_mma(torch.randn(3, 256).bfloat16(), sliced)
    with pytest.raises(ValueError, match="128-deep steps an iteration: 1, or 2 where 256 divides K; got 2 for K = 384"):
        pm.launch_plane_mma(torch.randn(3, 384).bfloat16(), wf.quantize(torch.randn(32, 384), "int4_group_128"), sub=2)
    with pytest.raises(ValueError, match="tokens a program: one of"):
        pm.launch_plane_mma(torch.randn(3, 256).bfloat16(), w, tokens=12)
    for bad, what in [(wf.quantize(torch.randn(32, 256), "int4_group_64"), "group 64"),
                      (wf.quantize(torch.randn(32, 64), "mxfp4"), "K = 64"),
                      (wf.quantize(torch.randn(32, 160), "mxfp4"), "K = 160"),
                      (wf.quantize(torch.randn(32, 192), "int4_group_64"), "group 64")]:
        assert not pm.plane_mma_ok(bad)
        with pytest.raises(ValueError, match=what):
            pm.launch_plane_mma(torch.randn(2, bad.k).bfloat16(), bad)
    assert not pm.plane_mma_ok(wf.quantize(torch.randn(2, 32, 256), "int4_group_128"))  # stacks: not this kernel
    ok = wf.quantize(torch.randn(32, 256), "mxfp4")
    assert pm.plane_mma_ok(ok) and not pm.plane_mma_ok(dataclasses.replace(ok, n=2**30))  # the e2m1 tables' bound


COMPILE = '''
import json, os, re, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from quantc.runtime.kernels import wo_plane_mma as pm
SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16",
       "ws_ptr": "*fp32",
       "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_wn": "i32",
       "stride_sn": "i32", "M_TILES": "i32", "ids_ptr": "*i32", "bexp_ptr": "*i32", "E": "i32", "A_DIV": "i32",
       "stride_we": "i32", "stride_se": "i32"}
out = []
for zero, warps, split, tok, sub, fmt, rt, *extra in json.loads(sys.argv[1]):
    ahead, grouped, tail = (extra + [False, False, False])[:3]
    ce = dict(GROUP={1: 128, 2: 32, 3: 16}[fmt], HAS_ZERO=zero, WARPS=warps, SPLIT_K=split, TOK=tok, SUB=sub, FMT=fmt,
              HAS_GLOBAL=fmt == 3, RT=rt, X_AHEAD=bool(ahead), GROUPED=bool(grouped), TAIL=bool(tail))
    sig = dict(SIG, s_ptr={1: "*bf16", 2: "*u8", 3: "*fp8e4nv"}[fmt], **{k: "constexpr" for k in ce})
    # 16-byte aligned pointers, K and strides, as Triton specializes them at a launch
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(SIG) if a not in ("M", "N", "M_TILES", "E", "A_DIV")}
    c = triton.compile(GluonASTSource(pm._plane_mma_kernel, sig, ce, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps})
    ptx = c.asm["ptx"]
    out.append({k: len(re.findall(p, ptx)) for k, p in {
        "mma": r"mma\\.sync", "lop3": r"lop3\\.b32", "prmt": r"prmt\\.b32", "mul": r"mul\\.rn\\.bf16x2", "shfl": r"shfl", "local": r"\\.local",
        "ld_shared": r"ld\\.shared", "atom": r"atom\\.", "ld_v4": r"ld\\.global[.a-zA-Z0-9_:]*\\.v4\\.b32"}.items()})
print(json.dumps(out))
'''


def test_gluon_kernel_compiles_for_hopper_with_the_tiles_in_registers():
    """The GPU kernel (Gluon: the interpreter cannot run it) compiled for sm_90: a 128-deep step is 8 MMAs an n8
    half of the token tile, 8 words decoded a lane (32 prmt, 32 lop3), the words two 16-byte loads a lane (and as
    many before the loop) and the activation four a token a lane, an iteration one or two steps; no shuffles, no
    spills, nothing through shared memory but split-K's one arrival word. fp4: 10 prmt, 2 lop3 and 4 bf16x2
    multiplies (the group scale) a word. 2 or 4 row tiles a warp: that many times the MMAs, decode and word loads,
    the same activation loads; the activations a step ahead: their loads once more before the loop; the grouped (MoE)
    launch: the same loop; a K ending in a half step (fp4): one more step's decode and MMAs after the loop."""
    cases = [(False, 4, 1, 8, 1, 1, 1), (True, 4, 1, 16, 2, 1, 1), (False, 2, 2, 16, 1, 1, 1), (True, 4, 1, 32, 1, 1, 1),
             (False, 4, 1, 64, 1, 1, 1), (False, 4, 3, 8, 2, 1, 1), (False, 4, 1, 8, 2, 2, 1), (False, 4, 2, 16, 1, 3, 1),
             (False, 4, 1, 16, 1, 1, 2), (True, 2, 1, 16, 1, 2, 4), (False, 4, 1, 16, 2, 1, 1, 1),
             (True, 4, 2, 8, 2, 1, 1, 0, 1), (False, 4, 1, 16, 2, 3, 1, 0, 1),
             (False, 4, 2, 8, 1, 2, 1, 0, 0, 1), (False, 4, 1, 16, 1, 3, 1, 0, 1, 1)]  # K ending in a half step
    proc = subprocess.run([sys.executable, "-c", COMPILE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case, r in zip(cases, json.loads(proc.stdout.strip().splitlines()[-1])):
        halves, sub, fp4, rt = case[3] // 8, case[4], case[5] >= 2, case[6]
        tail = len(case) > 9 and case[9]  # one more step after the loop, its loads masked
        steps = sub + tail
        assert r["mma"] == 8 * halves * steps * rt, (case, r)
        assert (r["lop3"], r["prmt"], r["mul"]) == \
            tuple(rt * v for v in ((16 * steps, 80 * steps, 32 * steps) if fp4 else (32 * sub, 32 * sub, 0))), (case, r)
        ahead = len(case) > 7 and case[7]  # the next iteration's activations with its words: once more before the loop
        if not tail:
            assert r["ld_v4"] == (4 * rt + 4 * halves * (2 if ahead else 1)) * sub, (case, r)
        assert r["shfl"] == 0 and r["local"] == 0, (case, r)
        assert (r["atom"] > 0) == (case[2] > 1) and r["ld_shared"] == (case[2] > 1), (case, r)


def _fake_x(m: int, k: int = 256):
    """An activation the policy sees as a CUDA tensor (the GPU checks are faked on CPU)."""
    from types import SimpleNamespace

    return SimpleNamespace(shape=(m, k), device=SimpleNamespace(type="cuda"), stride=lambda d: 1 if d == 1 else k)


def test_policy_takes_2_to_8_rows_on_sm90(monkeypatch):
    """On sm_90: int4 in groups of 128, mxfp4 and nvfp4 from 2 to 8 rows (int4 with zero points to 16); not one row
    (the GEMV's), not int4 in groups of 64, not other GPUs or the CPU; QUANTC_PLANE_MMA=0 never,
    QUANTC_PLANE_MMA_MAX_M moves the bound."""
    from quantc.runtime.kernels import common as kc

    monkeypatch.delenv("QUANTC_PLANE_MMA", raising=False)
    monkeypatch.delenv("QUANTC_PLANE_MMA_MAX_M", raising=False)
    w = wf.quantize(torch.randn(64, 256), "int4_group_128")
    wz = wf.quantize(torch.randn(64, 256), "int4_group_128_asym")
    assert not pm.uses_plane_mma(torch.randn(2, 256).bfloat16(), w)  # a CPU tensor
    monkeypatch.setattr(kc, "interpreted", lambda: False)
    monkeypatch.setattr(kc, "cc_major", lambda device: 9)
    assert [pm.uses_plane_mma(_fake_x(m), w) for m in (1, 2, 8, 9, 16)] == [False, True, True, False, False]
    assert [pm.uses_plane_mma(_fake_x(m), wz) for m in (1, 2, 16, 17)] == [False, True, True, False]
    for fp4 in ("mxfp4", "nvfp4"):
        assert [pm.uses_plane_mma(_fake_x(m), wf.quantize(torch.randn(64, 256), fp4)) for m in (1, 2, 8, 9)] == \
            [False, True, True, False], fp4
    assert not pm.uses_plane_mma(_fake_x(4), wf.quantize(torch.randn(64, 256), "int4_group_64"))
    monkeypatch.setenv("QUANTC_PLANE_MMA_MAX_M", "4")
    assert pm.uses_plane_mma(_fake_x(4), w) and not pm.uses_plane_mma(_fake_x(5), w)
    monkeypatch.setenv("QUANTC_PLANE_MMA", "0")
    assert not pm.uses_plane_mma(_fake_x(4), w)
    monkeypatch.delenv("QUANTC_PLANE_MMA")
    monkeypatch.delenv("QUANTC_PLANE_MMA_MAX_M")
    monkeypatch.setattr(kc, "cc_major", lambda device: 8)
    assert not pm.uses_plane_mma(_fake_x(4), w)


def test_split_is_twice_the_two_waves_of_64_row_programs():
    """split-K = SPLIT_WAVES x wo_gemm._split(N, K, 64, 128) shared among the token tiles, at most one slice an
    iteration (two steps where 256 divides K) and 32: the probe's best within 5% at 2-8 rows."""
    assert [pm.plane_mma_split(n, k, 2, 132) for n, k in [(4096, 4096), (28672, 4096), (2048, 7168), (24576, 7168)]] \
        == [10, 2, 18, 2]
    assert pm.plane_mma_split(4096, 512, 2, 132) == 2  # K = 512: two iterations of 256
    assert pm.plane_mma_split(4096, 384, 2, 132) == 3  # K % 256 != 0: one step an iteration, three of them
    assert pm.plane_mma_split(512, 8192, 2, 132) == 32


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_128_asym"])
def test_wo_gemm_runs_the_kernel_where_the_policy_says(key, monkeypatch):
    """Forced (QUANTC_PLANE_MMA=1: any device, 1-64 rows), wo_gemm's launch goes through this kernel for an int4 g128
    weight, with the reference's answer; groups of 64 take the other kernels."""
    from quantc.runtime.kernels import wo_gemm

    calls = []
    real = wo_gemm.launch_plane_mma
    monkeypatch.setattr(wo_gemm, "launch_plane_mma", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    monkeypatch.setenv("QUANTC_PLANE_MMA", "1")
    torch.manual_seed(5)
    w = wf.quantize(torch.randn(48, 384), key)
    for m in (3, 8):
        x = torch.randn(m, 384).bfloat16()
        out = wo_gemm.launch(x, w, wo_gemm.default_config(m, 48, 384, int4=True))
        assert _rel_err(out, wg.reference(x, w)) < 1e-2
    assert calls == [3, 8]
    g64 = wf.quantize(torch.randn(48, 384), "int4_group_64")
    wo_gemm.launch(torch.randn(3, 384).bfloat16(), g64, wo_gemm.default_config(3, 48, 384, int4=True))
    assert calls == [3, 8]


@pytest.mark.parametrize("key,kk", [("int4_group_128", 256), ("int4_group_128_asym", 256), ("mxfp4", 256),
                                    ("nvfp4", 256), ("mxfp4", 320), ("nvfp4", 192)])
@pytest.mark.parametrize("pairs_per_token,tokens,split", [(2, 8, 1), (4, 16, 3)])
def test_grouped_launch_matches_the_expert_loop(key, kk, pairs_per_token, tokens, split):
    """MoE: every (token, slot) pair through the expert routing gave it, in routing blocks of 8 / 16 pairs from
    align_by_expert (padding and the blocks past the routing's total skipped), split-K; row p of the output is
    x[p // k] times its expert's weight. fp4 also with K ending in a half step (gpt-oss's widths)."""
    from quantc.runtime.kernels.moe_routing import align_by_expert

    torch.manual_seed(7)
    num_e, n, t = 5, 40, 6
    w = wf.quantize(torch.randn(num_e, n, kk), key)
    x = torch.randn(t, kk).bfloat16()
    ids = torch.stack([torch.randperm(num_e)[:pairs_per_token] for _ in range(t)])
    sorted_ids, block_expert, _ = align_by_expert(ids, num_e, tokens)
    out = pm.launch_plane_mma_grouped(x, w, sorted_ids, block_expert, t * pairs_per_token, pairs_per_token, tokens,
                                      warps=2, split_k=split)
    deq = wf.dequantize(w).float()  # (E, N, K)
    flat = ids.reshape(-1)
    want = torch.stack([x[p // pairs_per_token].float() @ deq[flat[p]].T for p in range(flat.numel())])
    assert out.shape == (t * pairs_per_token, n)
    assert ((out.float() - want).abs().max() / want.abs().max()).item() < 1e-2


def test_grouped_launch_refusals():
    from quantc.runtime.kernels.moe_routing import align_by_expert

    w = wf.quantize(torch.randn(3, 32, 256), "int4_group_128")
    ids = torch.tensor([[0, 1], [2, 0]])
    sorted_ids, block_expert, _ = align_by_expert(ids, 3, 8)
    with pytest.raises(ValueError, match="routing blocks of 16 pairs"):
        pm.launch_plane_mma_grouped(torch.randn(2, 256).bfloat16(), w, sorted_ids, block_expert, 4, 2, 16)
    with pytest.raises(ValueError, match=r"x \(2, 128\)"):
        pm.launch_plane_mma_grouped(torch.randn(2, 128).bfloat16(), w, sorted_ids, block_expert, 4, 2, 8)
    g64 = wf.quantize(torch.randn(3, 32, 256), "int4_group_64")
    assert not pm.plane_mma_stack_ok(g64) and pm.plane_mma_stack_ok(w)
    assert [pm.moe_tokens(p, 128) for p in (1, 128, 1024, 4096, 32768)] == [8, 8, 8, 32, 64]
