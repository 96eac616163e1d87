"""The 4-bit CUDA-core GEMV (wo_gemv) at M = 1: its Triton twin under the interpreter against the plain-torch
reference (int4 symmetric codes and zero points, groups of 32 / 64 / 128, mxfp4, nvfp4, split-K, warps along K,
rows that do not fill a tile, activations whose scale needs the per-chunk power of two in both directions), the
tile arithmetic, the routing policy and its configs, what it refuses; the PTX half2 bit tricks emulated
instruction by instruction in numpy (the interpreter never runs the PTX); and the Gluon GPU kernel compiled for
sm_90 (its loads and shared memory counted in the PTX)."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from quantc.runtime.kernels import half2_ptx as hp
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_gemm as wg
from quantc.runtime.kernels import wo_gemv as gv


def _rel_err(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize("key", ["int4_group_32", "int4_group_64_asym", "int4_group_128", "int4_group_128_asym",
                                 "mxfp4", "nvfp4"])
@pytest.mark.parametrize("cfg,warps_k", [(wg.WoConfig(1, 8, 256, num_warps=2), 1),
                                         (wg.WoConfig(1, 16, 128, num_warps=4, split_k=3), 1),
                                         (wg.WoConfig(1, 16, 512, num_warps=4, split_k=2), 2)])
def test_gemv_matches_reference(key, cfg, warps_k):
    torch.manual_seed(11)
    n, k = 40, 768  # 40 rows: the last tile is partly masked
    w = wf.quantize(torch.randn(n, k), key)
    x = torch.randn(1, k).bfloat16()
    x[0, :32] *= 3000.0  # a chunk past fp16's range unless scaled down, one near zero: scaled up
    x[0, 32:64] *= 1e-3
    out = gv.launch_gemv(x, w, cfg, warps_k)
    assert out.shape == (1, n) and out.dtype == torch.bfloat16
    assert _rel_err(out, wg.reference(x, w)) < 1e-2, key


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_32_asym", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("a_div,split,warps_k", [(2, 1, 1), (1, 3, 4)])
def test_moe_gemv_matches_each_pairs_expert(key, a_div, split, warps_k):
    """The grouped GEMV (MoE decode): pair p is x row p // a_div through expert ids[p]'s weight, in any order of
    ids (repeats and unused experts included), with split-K and warps along K."""
    torch.manual_seed(5)
    e, n, k = 4, 40, 512
    w = wf.quantize(torch.randn(e, n, k), key)
    ids = torch.tensor([2, 0, 2, 3, 2, 0])  # expert 1 unused, expert 2 thrice
    x = torch.randn(ids.numel() // a_div, k).bfloat16()
    out = gv.launch_moe_gemv(x, w, ids, a_div, wg.WoConfig(1, 16, 256, num_warps=4, split_k=split), warps_k)
    d = wf.dequantize(w)
    ref = torch.stack([x[p // a_div].float() @ d[ids[p]].T for p in range(ids.numel())])
    assert out.shape == (ids.numel(), n) and out.dtype == torch.bfloat16
    assert _rel_err(out, ref) < 1e-2, key


@pytest.mark.parametrize("key", ["int4_group_128_asym", "mxfp4", "nvfp4"])
def test_gemv_takes_a_few_rows_when_allowed(key, monkeypatch):
    """QUANTC_WO_GEMV_MAX_M=M: up to M activation rows on the GEMV (up to GEMV_ROWS_MAX in one program an N tile,
    sized by the weight's rows alone); more rows, or the switch unset, stay on the other kernels."""
    torch.manual_seed(9)
    w = wf.quantize(torch.randn(40, 512), key)
    x = torch.randn(3, 512).bfloat16()
    monkeypatch.setenv("QUANTC_WO_GEMV_MIN_N", "0")
    assert not gv.uses_gemv(x, w)
    monkeypatch.setenv("QUANTC_WO_GEMV_MAX_M", "4")
    assert gv.uses_gemv(x, w) and not gv.uses_gemv(torch.randn(5, 512).bfloat16(), w)
    calls = []
    real = wg.launch_gemv
    monkeypatch.setattr(wg, "launch_gemv", lambda *a: calls.append(a[2]) or real(*a))
    out = wg.launch(x, w, wg.WoConfig(16, 32, 128, num_warps=2))
    assert calls == [gv.gemv_config(40, 512, 132)[0]]  # one program an N tile for the 3 rows
    assert out.shape == (3, 40) and _rel_err(out, wg.reference(x, w)) < 1e-2, key
    split = gv.launch_gemv(x, w, wg.WoConfig(1, 16, 256, num_warps=4, split_k=2), 2)  # split-K and warps along K
    assert _rel_err(split, wg.reference(x, w)) < 1e-2
    monkeypatch.setenv("QUANTC_WO_GEMV_MAX_M", "6")  # more rows than a program takes: a program a row
    x6 = torch.randn(6, 512).bfloat16()
    wg.launch(x6, w, wg.WoConfig(16, 32, 128, num_warps=2))
    assert calls[-1] == gv.gemv_config(6 * 40, 512, 132)[0]


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_32_asym", "mxfp4", "nvfp4"])
def test_several_row_gemv_matches_reference(key, monkeypatch):
    """The several-row launch (the twin of ``_wo_gemv_rows_gluon_kernel``) against the reference: two rows as
    launch_gemv routes them, split-K over 2048-deep K; three rows in a 4-row program (the kernel takes any power
    of two; the last row masked); and rows whose stride breaks the 8-element alignment going a program a row
    instead, with the same answer."""
    torch.manual_seed(3)
    w = wf.quantize(torch.randn(48, 2048) * 0.1, key)
    x = torch.randn(3, 2048).bfloat16()
    launches = []
    real = gv._launch
    monkeypatch.setattr(gv, "_launch", lambda *a, **k: launches.append((a[4] is None, k.get("xr", 1))) or real(*a, **k))
    ref = wg.reference(x, w)
    for cfg, warps_k in ((wg.WoConfig(1, 16, 1024, num_warps=4), 4), (wg.WoConfig(1, 16, 256, num_warps=4, split_k=4), 1)):
        out = gv.launch_gemv(x[:2], w, cfg, warps_k)
        assert out.shape == (2, 48) and _rel_err(out, ref[:2]) < 1e-2, (key, cfg)
        out = real(x, w, cfg, warps_k, None, 1, xr=4)
        assert out.shape == (3, 48) and _rel_err(out, ref) < 1e-2, (key, cfg)
    assert launches == [(True, 2)] * 2
    odd = torch.zeros(2, 2051).bfloat16()[:, 1:2049]  # row stride 2051: not a multiple of 8
    odd.copy_(x[:2])
    assert not gv.rows_aligned(odd) and gv.rows_aligned(x[:2])
    assert _rel_err(gv.launch_gemv(odd, w, wg.WoConfig(1, 16, 1024, num_warps=4), 4), ref[:2]) < 1e-2
    assert launches[-1] == (False, 1)  # the grouped launch (ids given)


def test_decode_and_dot_asm_are_the_word_dot_split_in_two():
    """The several-row kernel's two asm blocks (DECODE_*, DOT_HALF2) hold the one-row word dot's instructions, only
    renamed operands between them: the emulation tests of WORD_DOT_* cover their arithmetic."""
    def body(asm):
        return [ln for ln in asm.strip("{}\n").splitlines() if ln and not ln.startswith(".reg")]

    dot = [ln for ln in body(hp.DOT_HALF2.value) if not ln.startswith("mov.b32 t")]
    for fused, decode, renames in ((hp.WORD_DOT_SYM, hp.DECODE_SYM, {}), (hp.WORD_DOT_E2M1, hp.DECODE_E2M1, {}),
                                   (hp.WORD_DOT_E2M1_PRMT, hp.DECODE_E2M1_PRMT, {}),
                                   (hp.WORD_DOT_ZERO, hp.DECODE_ZERO, {"$6": "$5", "$7": "$6"})):
        dec = [ln for ln in body(decode.value) if not ln.startswith("mov.b32 $")]
        want = []
        for ln in body(fused.value):
            for a, b in renames.items():
                ln = ln.replace(a, b)
            want.append(ln)
        n = len(dec)
        assert [ln.replace("$4", "$1") if "$4" in ln and "acc" not in ln else ln for ln in dec] == \
            [ln for ln in want[:n]], fused
        renamed = [ln.replace("$5", "$2").replace("$6", "$3").replace("$7", "$4").replace("$8", "$5") for ln in dot]
        assert renamed == want[n:], fused


def test_moe_gemv_refuses_what_it_cannot_run():
    w = wf.quantize(torch.randn(2, 16, 256), "int4_group_128")
    x = torch.randn(3, 256).bfloat16()
    cfg = wg.WoConfig(1, 16, 256)
    with pytest.raises(ValueError, match="P expert ids"):
        gv.launch_moe_gemv(x, w, torch.tensor([0, 1]), 1, cfg)  # 3 rows, 2 ids
    with pytest.raises(ValueError, match="P expert ids"):
        gv.launch_moe_gemv(x, wf.quantize(torch.randn(16, 256), "int4_group_128"), torch.tensor([0, 1, 0]), 1, cfg)
    with pytest.raises(ValueError, match=r"K a multiple of 64.* got K = 96"):
        gv.launch_moe_gemv(torch.randn(3, 96).bfloat16(), wf.quantize(torch.randn(2, 16, 96), "int4_group_32"),
                           torch.tensor([0, 1, 0]), 1, cfg)


def test_gemv_zero_activation_chunks_give_zero_not_nan():
    w = wf.quantize(torch.randn(16, 256), "int4_group_128")
    x = torch.zeros(1, 256).bfloat16()
    out = gv.launch_gemv(x, w, wg.WoConfig(1, 8, 256, num_warps=2))
    assert torch.equal(out.float(), torch.zeros(1, 16))


def test_gemv_tile_and_refusals():
    # block_k halved until it divides K, block_n a whole number of rows a thread over warps and lanes
    assert gv.gemv_tile(wg.WoConfig(1, 32, 1024, num_warps=4), 4096) == (8, 1, 32, 1024, 1)
    assert gv.gemv_tile(wg.WoConfig(1, 32, 1024, num_warps=4), 2048 + 512) == (4, 2, 32, 512, 1)
    assert gv.gemv_tile(wg.WoConfig(1, 4, 256, num_warps=4), 4096) == (1, 4, 16, 256, 1)
    # warps along K: four warps of 256 a 1024-deep step over 16 rows; a step too shallow for them keeps fewer
    assert gv.gemv_tile(wg.WoConfig(1, 16, 1024, num_warps=4), 4096, warps_k=4) == (4, 4, 16, 1024, 4)
    assert gv.gemv_tile(wg.WoConfig(1, 32, 2048, num_warps=4), 4096, warps_k=2) == (16, 1, 32, 2048, 2)
    assert gv.gemv_tile(wg.WoConfig(1, 16, 1024, num_warps=4), 256, warps_k=4) == (1, 8, 16, 256, 2)
    w = wf.quantize(torch.randn(16, 256), "int4_group_128")
    with pytest.raises(ValueError, match="unit stride"):
        gv.launch_gemv(torch.randn(256, 2).bfloat16().T, w, wg.WoConfig(1, 8, 256))
    one = torch.randn(1, 256).bfloat16()
    assert gv.gemv_ok(one, w) and gv.gemv_ok(one, wf.quantize(torch.randn(16, 256), "mxfp4"))
    assert gv.gemv_ok(one, wf.quantize(torch.randn(16, 256), "nvfp4"))  # 16-element groups: a scale a word pair
    g64 = wf.quantize(torch.randn(16, 256), "int4_group_128")
    g64 = wf.WoWeight(g64.fmt, g64.n, g64.k, g64.data, g64.scale, g64.sfmt, 16, 1)  # int4 groups under a chunk
    assert not gv.gemv_ok(one, g64)
    with pytest.raises(ValueError, match="format 1, group 16"):
        gv.launch_gemv(one, g64, wg.WoConfig(1, 8, 256))
    # nvfp4's scales are read two at a time (one 2-byte load a row and chunk): an odd start or row stride
    # leaves the GEMV (the plane kernel takes the call)
    nv = wf.quantize(torch.randn(16, 256), "nvfp4")
    odd = torch.empty(nv.scale.numel() + 1, dtype=nv.scale.dtype)[1:].view(nv.scale.shape)
    odd.copy_(nv.scale)
    assert not gv.gemv_ok(one, dataclasses.replace(nv, scale=odd))
    wide = torch.empty(16, nv.scale.shape[1] + 1, dtype=nv.scale.dtype)[:, :nv.scale.shape[1]]
    wide.copy_(nv.scale)
    assert wide.stride(0) % 2 and not gv.gemv_ok(one, dataclasses.replace(nv, scale=wide))
    assert gv.gemv_ok(one, dataclasses.replace(nv, scale=nv.scale.clone()))


# ---- the PTX, emulated: lop3 / shr on uint32, half2 arithmetic as numpy float16 with one rounding an op ----

def _consts(asm: str) -> dict:
    return {"magic_lo": int(re.search(r"lop3\.b32 t0, \$1, 0x000F000F, (0x[0-9A-F]+)", asm).group(1), 16),
            "magic_hi": int(re.search(r"lop3\.b32 t1, \$1, 0x00F000F0, (0x[0-9A-F]+)", asm).group(1), 16)}


def _h2(bits: int) -> np.ndarray:
    return np.array([bits & 0xFFFF, bits >> 16], dtype=np.uint16).view(np.float16)


def _bits(h: np.ndarray) -> int:
    u = h.astype(np.float16).view(np.uint16)
    return int(u[0]) | (int(u[1]) << 16)


def _fma(a, b, c):  # fma.rn.f16x2: exact product and sum (float64 holds them), one rounding
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float16)


def _word_dot(word: int, packs: list[int], c0: int, c1: int, asm: str) -> float:
    k = _consts(asm)
    w8 = word >> 8
    t = [(word & 0x000F000F) ^ k["magic_lo"], (word & 0x00F000F0) ^ k["magic_hi"],
         (w8 & 0x000F000F) ^ k["magic_lo"], (w8 & 0x00F000F0) ^ k["magic_hi"]]
    s16 = _h2(0x2C002C00)
    v = [(_h2(t[0]).astype(np.float64) - _h2(c0)).astype(np.float16), _fma(_h2(t[1]), s16, _h2(c1)),
         (_h2(t[2]).astype(np.float64) - _h2(c0)).astype(np.float16), _fma(_h2(t[3]), s16, _h2(c1))]
    acc = (v[0].astype(np.float64) * _h2(packs[0])).astype(np.float16)
    for j in range(1, 4):
        acc = _fma(v[j], _h2(packs[j]), acc)
    return float(acc[0]) + float(acc[1])


@pytest.mark.parametrize("zero", [None, 0, 5, 15])
def test_word_dot_ptx_decodes_every_code_exactly(zero):
    """Each nibble position j (and j + 4) of a word, every code 0..15: the PTX's half2 value is q (two's
    complement) or code - zero, so one x = 1 at one position reads the value back exactly."""
    asm = hp.WORD_DOT_SYM.value if zero is None else hp.WORD_DOT_ZERO.value
    c0 = 0x64086408 if zero is None else (0x6400 + zero) * 0x10001
    c1 = 0xD480D480 if zero is None else (0xD400 + 16 * zero) * 0x10001
    one = 0x3C00  # fp16 1.0
    for pos in range(8):
        j, hi = pos % 4, pos // 4
        packs = [0, 0, 0, 0]
        packs[j] = one << (16 * hi)
        for code in range(16):
            word = code << (4 * pos)
            want = (code - 16 if code >= 8 else code) if zero is None else code - zero
            assert _word_dot(word, packs, c0, c1, asm) == want, (pos, code)
    # a full word: eight codes against eight activations, within fp16's rounding of the products
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, 8)
    x = rng.uniform(-200, 200, 8).astype(np.float16)
    word = sum(int(c) << (4 * i) for i, c in enumerate(codes))
    packs = [_bits(np.array([x[j], x[j + 4]])) for j in range(4)]
    vals = [(c - 16 if c >= 8 else c) if zero is None else c - zero for c in codes]
    want = float(np.dot(np.array(vals, np.float64), x.astype(np.float64)))
    assert abs(_word_dot(word, packs, c0, c1, asm) - want) <= 2e-3 * np.abs(np.array(vals) * x.astype(np.float64)).sum()


def _run_ptx(asm: str, regs: dict[str, int]) -> dict[str, int]:
    """The integer instructions of a decode block (mov, and, shl, shr, lop3, prmt on 32-bit registers), run in
    order as the PTX ISA defines them; the half2 lines are left to the callers."""
    regs = dict(regs)

    def val(tok: str) -> int:
        return int(tok, 16) if tok.startswith("0x") else (int(tok) if tok.isdigit() else regs[tok])

    for line in asm.splitlines():
        m = re.match(r"(mov|and|shl|shr|lop3|prmt)\.b32 ([^{]+);$", line.strip())
        if not m:
            continue
        op, (dst, *args) = m.group(1), [a.strip() for a in m.group(2).split(",")]
        x = [val(a) for a in args]
        if op == "mov":
            r = x[0]
        elif op == "and":
            r = x[0] & x[1]
        elif op == "shl":
            r = (x[0] << x[1]) & 0xFFFFFFFF
        elif op == "shr":
            r = x[0] >> x[1]
        elif op == "lop3":  # bit i of the result: bit (a_i b_i c_i) of the immediate table
            r = sum(((x[3] >> ((x[0] >> i & 1) << 2 | (x[1] >> i & 1) << 1 | (x[2] >> i & 1))) & 1) << i
                    for i in range(32))
        else:  # prmt: byte i of the result is byte c[4i .. 4i + 2] of (b:a), its sign replicated where c's bit 4i + 3
            src, r = x[0] | (x[1] << 32), 0
            for i in range(4):
                sel = (x[2] >> (4 * i)) & 0xF
                byte = (src >> (8 * (sel & 7))) & 0xFF
                r |= ((0xFF if byte & 0x80 else 0) if sel & 8 else byte) << (8 * i)
        regs[dst] = r
    return regs


def _e2m1_spec(word: int) -> list[int]:
    """e2m1's half2 values for the nibble pairs (j, j + 4): value bits to 9-11, the sign to 15 of each half."""
    out = []
    for j in range(4):
        value = (word << (9 - 4 * j)) & 0xFFFFFFFF if j < 3 else word >> 3
        out.append((value & 0x0E000E00) | (((word << (12 - 4 * j)) & 0xFFFFFFFF) & 0x80008000))
    return out


def _e2m1_word_dot(word: int, packs: list[int], asm: str) -> float:
    """WORD_DOT_E2M1 run instruction by instruction (``_run_ptx``), then the half2 products."""
    regs = _run_ptx(asm, {"$1": word})
    t = [regs[f"t{j}"] for j in range(4)]
    assert t == _e2m1_spec(word)
    acc = (_h2(t[0]).astype(np.float64) * _h2(packs[0])).astype(np.float16)
    for j in range(1, 4):
        acc = _fma(_h2(t[j]), _h2(packs[j]), acc)
    return float(acc[0]) + float(acc[1])


def test_e2m1_decode_places_every_nibble_as_the_shifts_did():
    """The prmt decode (11 instructions a word) against the spec and the shift decode (15), on random words and on
    each nibble alone, in both the fused asm (WORD_DOT_E2M1[_PRMT]) and the split one (DECODE_E2M1[_PRMT])."""
    rng = np.random.default_rng(1)
    words = [int(w) for w in rng.integers(0, 2**32, 2000, dtype=np.uint64)]
    words += [c << (4 * pos) for pos in range(8) for c in range(16)] + [0xFFFFFFFF]
    shifts = hp.subst(hp.E2M1_SHIFTS_BODY, W="$1")
    prmt = hp.subst(hp.E2M1_PRMT_BODY, W="$1")
    for w in words:
        want = _e2m1_spec(w)
        assert [_run_ptx(prmt, {"$1": w})[f"t{j}"] for j in range(4)] == want, hex(w)
        assert [_run_ptx(shifts, {"$1": w})[f"t{j}"] for j in range(4)] == want, hex(w)
        for fused, split in ((hp.WORD_DOT_E2M1, hp.DECODE_E2M1), (hp.WORD_DOT_E2M1_PRMT, hp.DECODE_E2M1_PRMT)):
            assert [_run_ptx(fused.value, {"$1": w})[f"t{j}"] for j in range(4)] == want, hex(w)
            assert [_run_ptx(split.value, {"$4": w})[f"${j}"] for j in range(4)] == want, hex(w)
    body = [ln for ln in hp.E2M1_PRMT_BODY.splitlines() if ln and not ln.startswith("mov")]
    assert len(body) == 11


def test_e2m1_ptx_places_every_code_under_the_fp16_exponent():
    """Every e2m1 code at every nibble position reads back as its value x 2**-14 (x = 2**14 at that
    position: the same scaling the kernel undoes in the chunk's scale), sign included."""
    e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    scale = 0x7400  # fp16 2**14
    for pos in range(8):
        j, hi = pos % 4, pos // 4
        packs = [0, 0, 0, 0]
        packs[j] = scale << (16 * hi)
        for code in range(16):
            want = (-1.0 if code & 8 else 1.0) * e2m1[code & 7]
            assert _e2m1_word_dot(code << (4 * pos), packs, hp.WORD_DOT_E2M1.value) == want, (pos, code)


def _exec_ptx(asm: str, regs: dict) -> dict:
    """Every instruction of a chained dot block (CHUNK_DOT_*, PAIR_DOT_*) in order: the integer ones as
    ``_run_ptx`` runs them, the half2 ones in numpy float16 with one rounding an op, cvt / add.f32 in float32."""
    regs = dict(regs)
    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        m = re.match(r"(\S+) (.+)$", line)
        if not m or line.startswith(".reg") or line in ("{", "}"):
            continue
        op, args = m.group(1), [a.strip() for a in re.split(r",(?![^{]*})", m.group(2))]
        h = lambda a: _h2(regs[a] if not a.startswith("0x") else int(a, 16))  # noqa: E731
        if op == "mov.b32" and args[0].startswith("{"):
            lo, hi = (t.strip() for t in args[0].strip("{}").split(","))
            regs[lo], regs[hi] = regs[args[1]] & 0xFFFF, regs[args[1]] >> 16
        elif op == "sub.f16x2":
            regs[args[0]] = _bits((h(args[1]).astype(np.float64) - h(args[2])).astype(np.float16))
        elif op == "mul.rn.f16x2":
            regs[args[0]] = _bits((h(args[1]).astype(np.float64) * h(args[2])).astype(np.float16))
        elif op == "fma.rn.f16x2":
            regs[args[0]] = _bits(_fma(h(args[1]), h(args[2]), h(args[3])))
        elif op == "cvt.f32.f16":
            regs[args[0]] = float(np.array([regs[args[1]]], np.uint16).view(np.float16)[0])
        elif op == "add.f32":
            regs[args[0]] = float(np.float32(regs[args[1]]) + np.float32(regs[args[2]]))
        else:
            regs.update(_run_ptx(line + ";", regs))
    return regs


def _int4_values(word: int, zero):
    codes = [(word >> (4 * i)) & 0xF for i in range(8)]
    return [(c - 16 if c >= 8 else c) if zero is None else c - zero for c in codes]


@pytest.mark.parametrize("zero", [None, 0, 7, 15])
def test_chunk_dot_ptx_chains_four_words_exactly_where_it_can(zero):
    """CHUNK_DOT_SYM / _ZERO (a chunk's four words, one half2 chain, one fp32 conversion), run instruction by
    instruction: every code at every position of every word reads back exactly; a full chunk is the float64 dot
    within fp16's rounding of the chain; the largest sums the kernel's activation scaling allows stay finite."""
    asm = (hp.CHUNK_DOT_SYM if zero is None else hp.CHUNK_DOT_ZERO).value
    consts = {} if zero is None else {"$21": (0x6400 + zero) * 0x10001, "$22": (0xD400 + 16 * zero) * 0x10001}

    def run(words, packs):  # packs[i][j]: word i's pack j
        regs = {f"${1 + i}": w for i, w in enumerate(words)}
        regs.update({f"${5 + 4 * i + j}": packs[i][j] for i in range(4) for j in range(4)})
        return _exec_ptx(asm, {**regs, **consts})["$0"]

    one = 0x3C00
    for wi in range(4):
        for pos in range(8):
            packs = [[0] * 4 for _ in range(4)]
            packs[wi][pos % 4] = one << (16 * (pos // 4))
            for code in range(16):
                words = [0x88888888 if zero is None else zero * 0x11111111] * 4  # every other value 0
                words[wi] = (words[wi] & ~(0xF << (4 * pos))) | (code << (4 * pos))
                assert run(words, packs) == _int4_values(words[wi], zero)[pos], (wi, pos, code)
    rng = np.random.default_rng(0)
    for _ in range(20):
        words = [int(w) for w in rng.integers(0, 2**32, 4, dtype=np.uint64)]
        x = rng.uniform(-255, 255, (4, 8)).astype(np.float16)
        packs = [[_bits(np.array([x[i, j], x[i, j + 4]])) for j in range(4)] for i in range(4)]
        terms = np.array([v * float(x[i, p]) for i in range(4) for p, v in enumerate(_int4_values(words[i], zero))])
        assert abs(run(words, packs) - terms.sum()) <= 4e-3 * np.abs(terms).sum()
    # the bound: 16 products a half of the largest value and |x r| just under 256, all one sign
    big = _bits(np.array([255.875, 255.875], np.float16))
    words = [0x88888888 if zero is None else (15 if zero == 0 else 0) * 0x11111111] * 4
    got = run(words, [[big] * 4] * 4)
    want = 2 * 16 * 255.875 * _int4_values(words[0], zero)[0]
    assert np.isfinite(got) and abs(got - want) <= 1e-3 * abs(want)


@pytest.mark.parametrize("prmt", [False, True])
def test_chained_e2m1_dots_read_every_code_back(prmt):
    """CHUNK_DOT_E2M1* (four words) and PAIR_DOT_E2M1* (nvfp4: two), instruction by instruction: each e2m1 code
    at each position of each word times x = 2**14 reads back its value; random words match the float64 dot."""
    e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    val = lambda c: (-1.0 if c & 8 else 1.0) * e2m1[c & 7]  # noqa: E731
    rng = np.random.default_rng(2)
    for n, asm in ((4, hp.CHUNK_DOT_E2M1_PRMT if prmt else hp.CHUNK_DOT_E2M1),
                   (2, hp.PAIR_DOT_E2M1_PRMT if prmt else hp.PAIR_DOT_E2M1)):
        def run(words, packs):
            regs = {f"${1 + i}": w for i, w in enumerate(words)}
            regs.update({f"${1 + n + 4 * i + j}": packs[i][j] for i in range(n) for j in range(4)})
            return _exec_ptx(asm.value, regs)["$0"]

        for wi in range(n):
            for pos in range(8):
                packs = [[0] * 4 for _ in range(n)]
                packs[wi][pos % 4] = 0x7400 << (16 * (pos // 4))
                for code in range(16):
                    words = [0] * n
                    words[wi] = code << (4 * pos)
                    assert run(words, packs) == val(code), (n, wi, pos, code)
        for _ in range(20):
            words = [int(w) for w in rng.integers(0, 2**32, n, dtype=np.uint64)]
            x = rng.uniform(-2**14, 2**14, (n, 8)).astype(np.float16)
            packs = [[_bits(np.array([x[i, j], x[i, j + 4]])) for j in range(4)] for i in range(n)]
            terms = np.array([val((words[i] >> (4 * p)) & 0xF) * 2.0**-14 * float(x[i, p])
                              for i in range(n) for p in range(8)])
            assert abs(run(words, packs) - terms.sum()) <= 4e-3 * np.abs(terms).sum() + 1e-6


def test_unmasked_loads_take_whole_tiles_of_int4_and_mxfp4_only():
    """EVEN_N (no zero-filled registers) where N is a multiple of the tile; nvfp4 keeps the masked loads (0.91x on
    the H200)."""
    assert gv.gemv_even_n(28672, 32, wf.INT4) and gv.gemv_even_n(4096, 16, wf.MXFP4)
    assert not gv.gemv_even_n(4100, 16, wf.INT4) and not gv.gemv_even_n(4096, 16, wf.NVFP4)


def test_zero_point_half2_constants_are_what_the_kernel_builds():
    for z in range(16):
        assert _h2((0x6400 + z) * 0x10001)[0] == 1024 + z
        assert _h2((0xD400 + 16 * z) * 0x10001)[1] == -(64 + z)


def test_policy_routes_int4_decode_to_the_gemv_only_where_it_should(monkeypatch):
    torch.manual_seed(3)
    w = wf.quantize(torch.randn(48, 256), "int4_group_128")
    x1, x2, x3 = torch.randn(1, 256).bfloat16(), torch.randn(2, 256).bfloat16(), torch.randn(3, 256).bfloat16()
    monkeypatch.delenv("QUANTC_WO_GEMV_MIN_N", raising=False)
    assert not gv.uses_gemv(x1, w)  # unset: a GPU's policy; the interpreter keeps the plane kernel
    monkeypatch.setenv("QUANTC_WO_GEMV_MIN_N", "0")
    assert gv.uses_gemv(x1, w) and gv.uses_gemv(x2, w) and not gv.uses_gemv(x3, w)  # up to GEMV_ROWS_MAX rows
    odd = torch.zeros(2, 259).bfloat16()[:, :256]
    assert not gv.uses_gemv(odd, w)  # unaligned rows: the plane kernel
    monkeypatch.setenv("QUANTC_WO_GEMV_MAX_M", "1")
    assert gv.uses_gemv(x1, w) and not gv.uses_gemv(x2, w)  # decode only
    monkeypatch.delenv("QUANTC_WO_GEMV_MAX_M")
    assert not gv.uses_gemv(torch.randn(1, 96).bfloat16(), wf.quantize(torch.randn(48, 96), "int4_group_32"))  # K
    mx = wf.quantize(torch.randn(48, 256), "mxfp4")
    assert gv.uses_gemv(x1, mx)  # forced: mxfp4 too
    monkeypatch.delenv("QUANTC_WO_GEMV_MIN_N")
    assert not gv.uses_gemv(x1, mx)
    monkeypatch.setenv("QUANTC_WO_GEMV_MIN_N", "0")
    monkeypatch.setenv("QUANTC_WO_GEMV_MIN_N", "64")
    assert not gv.uses_gemv(x1, w)  # 48 rows: under the threshold
    monkeypatch.setenv("QUANTC_WO_GEMV_MIN_N", "0")
    calls = []
    real = wg.launch_gemv
    monkeypatch.setattr(wg, "launch_gemv", lambda x, ww, cfg, wk=1: calls.append((cfg, wk)) or real(x, ww, cfg, wk))
    out = wg.launch(x1, w, wg.WoConfig(16, 32, 128, num_warps=2))  # the table's planes config is not used
    assert calls == [gv.gemv_config(48, 256, 132)]  # the GEMV's own config (no GPU here: 132 SMs assumed)
    assert _rel_err(out, wg.reference(x1, w)) < 1e-2
    wg.launch(x3, w, wg.WoConfig(16, 32, 128, num_warps=2))
    assert len(calls) == 1
    wg.launch(x2, w, wg.WoConfig(16, 32, 128, num_warps=2))
    assert calls[1] == gv.gemv_config(48, 256, 132)  # two rows, one program an N tile: sized by the weight


@pytest.mark.parametrize("n,k,block_n,block_k,split,warps_k", [
    (28672, 4096, 32, 1024, 1, 4),   # 16384+ rows: 1024-deep steps, 8 rows a thread; no split
    (24576, 7168, 32, 1024, 1, 4),
    (16384, 6400, 32, 1024, 1, 4),   # K not a multiple of 1024: the launch halves the depth (gemv_tile)
    (4096, 14336, 16, 2048, 1, 8),   # K >= 8192, 2048 divides it: 8 warps, all along K
    (4096, 16384, 16, 2048, 1, 8),
    (4096, 4096, 16, 2048, 1, 4),    # under 16384 rows: 2048-deep from K = 4096
    (6144, 4096, 16, 2048, 1, 4),
    (7168, 2048, 16, 1024, 1, 4),    # K < 4096: 1024-deep
    (2048, 7168, 16, 1024, 4, 4),    # 128 programs for 132 SMs: split to about three a SM; 2048 does not divide K
    (1024, 16384, 16, 2048, 7, 8),   # 64 programs: split, 8 warps along K
    (64, 256, 16, 1024, 1, 4),       # a single K step cannot be split (the launch takes it 256-deep)
])
def test_gemv_config_picks_tile_depth_and_split(n, k, block_n, block_k, split, warps_k):
    """The dense launch's tile (``gemv_config``) and what ``gemv_tile`` makes of it: rows, lanes and depth fit."""
    cfg, wk = gv.gemv_config(n, k, 132)
    assert (cfg.block_m, cfg.num_warps, cfg.num_stages) == (1, max(4, warps_k), 2)
    assert (cfg.block_n, cfg.block_k, cfg.split_k, wk) == (block_n, block_k, split, warps_k)
    rows, lanes_n, bn, bk, wk2 = gv.gemv_tile(cfg, k, wk)
    want_bk = min(block_k, k)
    while k % want_bk:  # halved until it divides K (6400: 256)
        want_bk //= 2
    assert bn == block_n and bk == want_bk and wk2 == min(warps_k, bk // 128)  # a warp spans 128+
    assert rows * lanes_n * (cfg.num_warps // wk2) == bn and (bk // wk2) * lanes_n == 1024


@pytest.mark.parametrize("n,k,block_n,block_k,split,warps_k", [
    (32768, 7168, 64, 512, 1, 1),    # 16384+ pair rows: 64 rows a program, warps along N
    (16384, 768, 64, 256, 2, 1),     # K = 768 (Qwen3-30B-A3B's experts): 256-deep, 2 slices
    (12288, 2048, 16, 1024, 1, 4),   # fewer pair rows: the dense tile
    (23040, 2880, 256, 64, 5, 1),    # K % 128 (gpt-oss): 64-deep steps, 256 rows a program; 90 programs: split 5
])
def test_moe_gemv_config_keeps_the_64_row_tile_from_16384_rows(n, k, block_n, block_k, split, warps_k):
    cfg, wk = gv.gemv_config(n, k, 132, grouped=True)
    assert (cfg.block_n, cfg.block_k, cfg.split_k, wk) == (block_n, block_k, split, warps_k)
    if k % 128:  # a warp: 16 rows x 2 chunks, 4 rows a thread
        assert gv.gemv_tile(cfg, k, wk) == (4, 16, 256, 64, 1)


@pytest.mark.parametrize("k", [768, 1280, 1536, 2880 - 64, 6400, 14336])
@pytest.mark.parametrize("block_k,warps_k", [(1024, 4), (2048, 8), (512, 1), (256, 1)])
def test_gemv_tile_depth_is_a_power_of_two_dividing_k(k, block_k, warps_k):
    """K = 768 once gave a 768-deep tile and 5 lanes along N (no power of two: the Gluon layout refused to
    compile on the GPU): the depth is the largest power of two under the asked one that divides K."""
    rows, lanes_n, bn, bk, wk = gv.gemv_tile(gv.KernelConfig(1, 16, block_k, num_warps=max(4, warps_k)), k, warps_k)
    assert bk & (bk - 1) == 0 and k % bk == 0 and bk >= 128 and (bk * 2 > min(block_k * 1, 1024 * warps_k, k)
                                                                   or k % (bk * 2))
    assert lanes_n & (lanes_n - 1) == 0 and (bk // wk) * lanes_n == 1024 and rows >= 1


GLUON_COMPILE = '''
import json, os, re, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from quantc.runtime.kernels import wo_gemv
SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16",
       "ws_ptr": "*fp32", "cnt_ptr": "*i32", "e_ptr": "*i64", "N": "i32", "K": "i32", "stride_wn": "i32",
       "stride_sn": "i32", "P": "i32", "A_DIV": "i32", "stride_xm": "i32", "stride_we": "i32", "stride_se": "i32",
       "M": "i32"}
out = []
for zero, rows, lanes_n, split, prefetch, fmt, x_vec, warps_k, *grouped in json.loads(sys.argv[1]):
    ce = dict(GROUP={1: 128, 2: 32, 3: 16}[fmt], HAS_ZERO=zero, ROWS=rows, LANES_N=lanes_n, SPLIT_K=split,
              WARPS=max(4, warps_k), WARPS_K=warps_k, PREFETCH=prefetch, FMT=fmt, HAS_GLOBAL=fmt == 3, X_VEC=x_vec,
              GROUPED=bool(grouped), PRMT=fmt >= 2 and os.environ.get("QUANTC_E2M1_DECODE") != "shifts",
              CHAIN=wo_gemv.gemv_chain(), EVEN_N=not zero, SPLIT_X=wo_gemv.gemv_split_x())  # (zero points: masked)
    sig = dict(SIG, s_ptr={1: "*bf16", 2: "*u8", 3: "*fp8e4nv"}[fmt], **{k: "constexpr" for k in ce})
    c = triton.compile(GluonASTSource(wo_gemv._wo_gemv_gluon_kernel, sig, ce), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": max(4, warps_k)})
    ptx = c.asm["ptx"]
    out.append({"lop3": len(re.findall(r"lop3\\.b32", ptx)), "f16x2": len(re.findall(r"f16x2", ptx)),
                "local": len(re.findall(r"\\.local", ptx)), "shared": c.metadata.shared,
                "atom": len(re.findall(r"atom\\.", ptx)), "ld_x2": len(re.findall(r"ld\\.global[.a-z_0-9]*\\.b16", ptx)),
                "ld_x8": len(re.findall(r"ld\\.global[.a-z_0-9]*\\.b64", ptx)),
                "fma16": len(re.findall(r"fma\\.rn\\.f16x2", ptx)), "cvt16": len(re.findall(r"cvt\\.f32\\.f16 flo", ptx))})
print(json.dumps(out))
'''


@pytest.mark.timeout(300)
def test_gemv_with_split_activation_words_compiles_for_hopper(monkeypatch):
    """QUANTC_GEMV_SPLIT_X=1: the lanes sharing a chunk load one word each (two 8-byte loads a lane, not eight), the
    packs gathered through shared memory; the same decode and products, no spills."""
    import json
    import subprocess
    import sys

    monkeypatch.setenv("QUANTC_GEMV_SPLIT_X", "1")
    cases = [(False, 8, 4, 1, True, 1, True, 4), (True, 4, 4, 1, True, 2, True, 4), (False, 4, 4, 2, True, 3, True, 4),
             (False, 8, 2, 1, True, 2, True, 1, 1)]  # the MoE GEMV's tile: two lanes a chunk, two words each
    proc = subprocess.run([sys.executable, "-c", GLUON_COMPILE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case, r in zip(cases, json.loads(proc.stdout.strip().splitlines()[-1])):
        assert r["local"] == 0 and r["lop3"] >= 4 and r["shared"] > 0, (case, r)
        # at most a lane's words' two 8-byte loads each (4 / lanes a chunk words), in the loop and before it (+ the
        # pair's id), where the whole chunk took eight
        assert 0 < r["ld_x8"] <= 2 * (4 // case[2]) * (1 + case[4]) + (len(case) > 8), (case, r)


@pytest.mark.timeout(300)
def test_gluon_gemv_compiles_for_hopper_in_registers():
    """The GPU kernel (Gluon: not runnable under the interpreter) compiled for sm_90 by Triton's ptxas: the
    PTX word dot is in it, nothing spills, and the tile never goes through shared memory (at most the final
    cross-warp sum's few bytes), which is what its explicit layout is for."""
    import json
    import subprocess
    import sys

    # the policy's tile first; mxfp4's e2m1 decode
    cases = [(False, 4, 4, 1, True, 1, True, 1), (True, 4, 4, 1, True, 1, True, 1), (False, 8, 2, 3, False, 1, True, 1),
             (False, 4, 4, 1, True, 2, True, 1), (False, 4, 4, 2, True, 3, True, 1), (False, 4, 4, 1, True, 1, False, 1),
             (False, 4, 4, 1, True, 1, True, 4), (False, 4, 4, 2, True, 2, True, 2),  # warps along K:
             (False, 8, 2, 1, True, 1, True, 4), (True, 8, 2, 1, True, 1, True, 4),  # the policy's 2048-deep tile
             (False, 8, 2, 1, True, 2, True, 4), (False, 8, 2, 4, True, 3, True, 4),
             (True, 4, 4, 1, True, 1, True, 8), (False, 4, 4, 1, True, 3, True, 8),  # long K: 8 warps along K
             (False, 4, 16, 2, True, 2, True, 1, 1), (True, 4, 16, 1, True, 1, True, 1, 1),  # 64-deep, grouped
             (True, 4, 4, 1, True, 1, True, 4, 1), (False, 4, 4, 2, True, 3, True, 4, 1),  # grouped (MoE)
             (False, 8, 2, 1, 2, 1, True, 4), (True, 8, 2, 2, 2, 2, True, 4), (False, 8, 2, 1, 2, 3, True, 4)]  # 2 ahead
    proc = subprocess.run([sys.executable, "-c", GLUON_COMPILE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case, r in zip(cases, json.loads(proc.stdout.strip().splitlines()[-1])):
        assert r["lop3"] >= 4 and r["f16x2"] >= (4 if case[5] >= 2 else 8), (case, r)
        # the words' dots chained (gemv_chain): one asm fp32 conversion pair a chunk (nvfp4: two), not a word: at least
        # 15 product FMAs and 8 bias ones (int4; e2m1 none) a pair, where one word's dot had 3 (+ 2)
        chained = r["fma16"] >= {1: 23, 2: 15, 3: 7}[case[5]] * r["cvt16"]
        assert chained == gv.gemv_chain(), (case, r)
        # no shared memory but the final sums' few bytes: across warps (WARPS_K > 1) a float per row and warp
        assert r["local"] == 0 and r["shared"] <= max(64, 4 * 64 * case[7]), (case, r)
        assert (r["atom"] > 0) == (case[3] > 1), (case, r)  # split-K's same-launch reduction only
        # the activations: two 8-byte loads a word (8 a chunk; in the loop and before it with the prefetch), no
        # 2-byte ones (the bf16 group scales are the rows' only ones); without X_VEC eight 2-byte loads a word
        if case[6]:
            grouped = len(case) > 8  # the pair's 8-byte expert id
            assert r["ld_x8"] == 8 * (1 + case[4]) + grouped and r["ld_x2"] <= case[1] * max(1, case[4]), (case, r)
        else:
            assert r["ld_x8"] == 0 and r["ld_x2"] >= 32 * (1 + case[4]), (case, r)
    assert (gv.GEMV_CONFIG.block_n, gv.GEMV_CONFIG.block_k, gv.GEMV_CONFIG.num_warps) == (16, 1024, 4)
    assert gv.gemv_tile(gv.GEMV_CONFIG, 4096, 4) == (4, 4, 16, 1024, 4)
    assert gv.gemv_tile(gv.KernelConfig(1, 16, 2048, num_warps=8), 14336, 8) == (4, 4, 16, 2048, 8)


ROWS_COMPILE = '''
import json, os, re, sys
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from quantc.runtime.kernels import wo_gemv
SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16",
       "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_wn": "i32",
       "stride_sn": "i32", "stride_xm": "i32"}
out = []
for zero, fmt, xr, warps_k, split, prmt in json.loads(sys.argv[1]):
    warps = max(4, warps_k)
    ce = dict(GROUP={1: 128, 2: 32, 3: 16}[fmt], HAS_ZERO=zero, ROWS=4, LANES_N=4, SPLIT_K=split, WARPS=warps,
              WARPS_K=warps_k, FMT=fmt, HAS_GLOBAL=fmt == 3, XR=xr, PRMT=prmt)
    sig = dict(SIG, s_ptr={1: "*bf16", 2: "*u8", 3: "*fp8e4nv"}[fmt], **{k: "constexpr" for k in ce})
    c = triton.compile(GluonASTSource(wo_gemv._wo_gemv_rows_gluon_kernel, sig, ce), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": warps})
    ptx = c.asm["ptx"]
    out.append({"lop3": len(re.findall(r"lop3\\.b32", ptx)), "f16x2": len(re.findall(r"f16x2", ptx)),
                "local": len(re.findall(r"\\.local", ptx)), "ld_x8": len(re.findall(r"ld\\.global[.a-z_0-9]*\\.b64", ptx)),
                "atom": len(re.findall(r"atom\\.", ptx)), "prmt": len(re.findall(r"prmt\\.b32", ptx))})
print(json.dumps(out))
'''


@pytest.mark.timeout(300)
@pytest.mark.parametrize("e2m1", ["shifts", "prmt"])
def test_several_row_gemv_compiles_for_hopper_decoding_each_word_once(e2m1):
    """The several-row Gluon kernel compiled for sm_90: its decode (the lop3s) is the same count at 2 and 4 rows
    (each word decoded once, whatever the rows), the half2 products grow with the rows, the activations come
    as 8-byte loads (two a word a row, in the loop and the prefetch), and nothing spills."""
    import json
    import subprocess
    import sys

    cases = [(False, 1, 2, 4, 1), (False, 1, 4, 4, 1), (True, 1, 4, 4, 2), (False, 2, 2, 4, 1), (False, 2, 4, 4, 1),
             (False, 3, 4, 8, 1)]
    cases = [(*case, e2m1 == "prmt") for case in cases]
    proc = subprocess.run([sys.executable, "-c", ROWS_COMPILE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for (zero, fmt, xr, warps_k, split, _), r in zip(cases, res):
        # a thread's 4 rows x 4 words a step: 16 words, once each: 4 lop3 (int4, e2m1 by shifts) or 2 lop3 and 4
        # prmt (e2m1 by prmt)
        by_prmt = fmt >= 2 and e2m1 == "prmt"
        assert r["lop3"] == (32 if by_prmt else 64) and r["prmt"] == (64 if by_prmt else 0) and r["local"] == 0, r
        products = xr * 16 * 4  # each row: 4 half2 FMAs a word
        packs = xr * 4 * 4  # each row: 4 packs a word of its chunk
        decode = 64 if fmt == 1 else 0  # int4's half2 sub / fma a word
        scales = 8 if fmt == 3 else 0  # nvfp4: a row's two e4m3 scales a chunk as one e4m3x2 -> f16x2 convert
        assert r["f16x2"] == products + packs + decode + scales, (zero, fmt, xr, r)
        assert r["ld_x8"] == 2 * 2 * 4 * xr and (r["atom"] > 0) == (split > 1), r
    assert res[0]["lop3"] == res[1]["lop3"] and res[3]["lop3"] == res[4]["lop3"]


def test_prmt_decode_is_chosen_at_each_launch(monkeypatch):
    """The 11-instruction e2m1 decode by default (4% faster at M = 1 on the H100); QUANTC_E2M1_DECODE=shifts takes the
    older 15-instruction one. Read at each launch and passed to the kernels as a constexpr (its own binary: no
    cached kernel of the other decode is reused)."""
    monkeypatch.delenv("QUANTC_E2M1_DECODE", raising=False)
    assert hp.e2m1_prmt()
    monkeypatch.setenv("QUANTC_E2M1_DECODE", "prmt")
    assert hp.e2m1_prmt()
    monkeypatch.setenv("QUANTC_E2M1_DECODE", "shifts")
    assert not hp.e2m1_prmt()
    assert hp.WORD_DOT_E2M1.value.count("prmt") == 0 and hp.WORD_DOT_E2M1_PRMT.value.count("prmt") == 4
