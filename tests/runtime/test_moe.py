"""MoE: routers against per-token loops written from the model definitions, token sorting invariants,
and QuantMoE (every MoE kernel id) against a per-expert loop in plain torch."""

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantc.runtime import quantize as qz
from quantc.runtime.kernels import moe_gemm as mg
from quantc.runtime.kernels import moe_routing as mr
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.moe import QuantMoE

E, TOPK, H, I, T = 4, 2, 128, 128, 5


def test_softmax_topk_mixtral_and_qwen3():
    torch.manual_seed(0)
    logits = torch.randn(6, 8)
    w, ids = mr.softmax_topk(logits, 2, renormalize=True)
    for t in range(6):
        p = torch.softmax(logits[t], 0)
        top = sorted(range(8), key=lambda e: -p[e].item())[:2]
        assert ids[t].tolist() == top
        assert torch.allclose(w[t], p[top] / p[top].sum())
    w2, _ = mr.softmax_topk(logits, 2, renormalize=False)  # Qwen3-MoE with norm_topk_prob = False
    assert torch.allclose(w2, torch.softmax(logits, 1).gather(1, ids.long()))


def test_deepseek_v3_group_limited_routing():
    torch.manual_seed(1)
    t, e, n_group, topk_group, k = 7, 16, 4, 2, 3
    logits, bias = torch.randn(t, e), torch.randn(e) * 0.5
    w, ids = mr.deepseek_v3(logits, k, bias, n_group, topk_group, routed_scaling_factor=2.5)
    for i in range(t):
        s = torch.sigmoid(logits[i])
        c = s + bias
        gs = [sorted(c[g * 4:(g + 1) * 4].tolist())[-2:] for g in range(n_group)]
        keep = sorted(range(n_group), key=lambda g: -sum(gs[g]))[:topk_group]
        allowed = [x for g in keep for x in range(g * 4, (g + 1) * 4)]
        top = sorted(allowed, key=lambda x: -c[x].item())[:k]
        assert sorted(ids[i].tolist()) == sorted(top)
        got = dict(zip(ids[i].tolist(), w[i].tolist()))
        for x in top:  # weights: plain sigmoid scores (no bias), normalised, scaled
            assert got[x] == pytest.approx(s[x].item() / s[top].sum().item() * 2.5, rel=1e-5)


def test_gpt_oss_routing_softmax_over_topk_logits():
    torch.manual_seed(2)
    logits = torch.randn(3, 8)
    w, ids = mr.gpt_oss(logits, 4)
    for t in range(3):
        top = sorted(range(8), key=lambda e: -logits[t, e].item())[:4]
        assert ids[t].tolist() == top
        assert torch.allclose(w[t], torch.softmax(logits[t, top], 0))


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_align_by_expert(block_m):
    torch.manual_seed(3)
    ids = torch.randint(0, 6, (9, 3), dtype=torch.int32)
    sorted_ids, block_expert, total = mr.align_by_expert(ids, 6, block_m)
    n = ids.numel()
    assert sorted_ids.numel() % block_m == 0 and block_expert.numel() == sorted_ids.numel() // block_m
    used = sorted_ids[: total.item()]
    real = used[used < n]
    assert sorted(real.tolist()) == list(range(n))  # every pair exactly once
    assert (sorted_ids[total.item():] == n).all()
    flat = ids.reshape(-1)
    for b in range(total.item() // block_m):
        blk = sorted_ids[b * block_m:(b + 1) * block_m]
        blk = blk[blk < n]
        assert blk.numel() > 0 and (flat[blk.long()] == block_expert[b]).all()
    assert (block_expert[total.item() // block_m:] == 6).all()


@pytest.mark.parametrize("t, k, e, block_m", [(9, 3, 6, 1), (1, 8, 128, 16), (32, 8, 128, 64), (5, 2, 8, 128),
                                               (128, 8, 257, 16), (64, 2, 8, 4)])
def test_align_kernel_gives_the_torch_ops_bits(t, k, e, block_m, monkeypatch):
    """Up to ALIGN_KERNEL_MAX_PAIRS pairs one Triton program sorts them (the interpreter here): the same
    sorted ids, block experts and total as the torch ops, bit for bit, at decode sizes (one pair an
    expert or fewer), many pairs an expert, 257 experts (expert parallelism's sentinel) and every
    BLOCK_M the tables use; the sentinel expert's pairs (id e - 1 of e) sort last."""
    torch.manual_seed(t * k + e)
    ids = torch.randint(0, e, (t, k), dtype=torch.int32)
    ids[0, 0] = e - 1
    assert mr.align_kernel_on(ids.numel(), ids.device)
    got = mr.align_by_expert(ids, e, block_m)
    monkeypatch.setenv("QUANTC_MOE_ALIGN_KERNEL", "0")
    want = mr.align_by_expert(ids, e, block_m)
    assert all(g.dtype == w.dtype and torch.equal(g, w) for g, w in zip(got, want))


def test_align_kernel_reads_int64_ids_and_strided_views_as_they_are():
    """transformers' routers give int64 ids: the kernel reads them without a conversion kernel, with the
    same outputs as int32 ids; a non-contiguous view (one slot of every token) is read correctly too."""
    torch.manual_seed(11)
    ids = torch.randint(0, 16, (12, 4), dtype=torch.int64)
    want = mr.align_by_expert(ids.to(torch.int32), 16, 16)
    got = mr.align_by_expert(ids, 16, 16)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    col = ids[:, 1:2]  # (12, 1), row stride 4: reshape(-1) alone would be a strided view
    assert not col.is_contiguous()
    want = mr.align_by_expert(col.contiguous().to(torch.int32), 16, 4)
    got = mr.align_by_expert(col, 16, 4)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("kernel,wkey,akey", [("moe_bf16", "none", "none"),
                                              ("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token")])
def test_experts_take_int64_ids_and_bf16_weights_with_the_same_bits(kernel, wkey, akey):
    """QuantMoE.experts as transformers calls it (``QuantExperts``: int64 ids, router weights in bf16)
    gives exactly what int32 ids and the weights' fp32 copy give: the epilogue widens bf16 exactly."""
    torch.manual_seed(12)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, wkey)
    moe = QuantMoE(kernel, w13, w2, torch.randn(E, H).bfloat16(), top_k=TOPK, act_key=akey)
    x = torch.randn(T, H).bfloat16()
    tw, ids = moe.route(x)
    tw16 = tw.bfloat16()
    want = moe.experts(x, tw16.float(), ids.to(torch.int32))
    got = moe.experts(x, tw16, ids.to(torch.int64))
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    ref = mg.reference_expert_loop(x, w13, w2, tw16.float(), ids, "silu", act_dq=_act_dq(akey))
    assert ((got.float() - ref).abs().max() / ref.abs().max()).item() < 2e-2


@pytest.mark.parametrize("n, switch, kernel", [(1024, None, True), (1025, None, False), (8, "0", False), (0, None, False)])
def test_align_kernel_by_size_and_switch(n, switch, kernel, monkeypatch):
    """The kernel up to ALIGN_KERNEL_MAX_PAIRS pairs (past it one program would walk them serially), never
    with QUANTC_MOE_ALIGN_KERNEL=0 or without pairs; the torch ops otherwise, with the same outputs."""
    if switch is None:
        monkeypatch.delenv("QUANTC_MOE_ALIGN_KERNEL", raising=False)
    else:
        monkeypatch.setenv("QUANTC_MOE_ALIGN_KERNEL", switch)
    launched = []
    real = mr.launch
    monkeypatch.setattr(mr, "launch", lambda *a, **kw: launched.append(1) or real(*a, **kw))
    ids = torch.randint(0, 4, (n,), dtype=torch.int32)
    sorted_ids, block_expert, total = mr.align_by_expert(ids, 4, 16)
    assert bool(launched) == kernel
    assert total.item() == sum((int((ids == x).sum()) + 15) // 16 * 16 for x in range(4))
    assert sorted(sorted_ids[sorted_ids < n].tolist()) == list(range(n))


def _act_dq(key):
    if key == "none":
        return None
    if key == "mxfp8":
        def dq(t):
            q, e = qz.quant_mx(t.float(), 32)
            return q.float() * qz.e8m0_to_float(e).repeat_interleave(32, 1)
        return dq
    quant = qz.ACTIVATION_QUANTIZERS[key]

    def dq(t):
        q, s = quant(t.float())
        return q.float() * (s.repeat_interleave(128, 1) if key == "fp8_dynamic_group_128" else s)
    return dq


CASES = [  # kernel, weight key, activation key, MoE activation, biases
    ("moe_bf16", "none", "none", "silu", False),
    ("moe_weight_only", "int4_group_32_asym", "none", "gpt_oss", True),
    ("moe_weight_only", "int4_group_128", "none", "silu", False),
    ("moe_weight_only", "mxfp4", "none", "gpt_oss", True),
    ("moe_weight_only", "nvfp4", "none", "silu", False),
    ("moe_weight_only", "fp8_block_128x128", "none", "silu", False),
    ("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token", "silu", False),
    ("moe_fp8", "fp8_per_tensor", "fp8_dynamic_per_tensor", "silu", False),
    ("moe_fp8_block", "fp8_block_128x128", "fp8_dynamic_group_128", "silu", False),
    ("moe_int8", "int8_per_channel", "int8_dynamic_per_token", "silu", False),
    ("moe_mxfp4_mxfp8_emulated", "mxfp4", "mxfp8", "gpt_oss", True),
    ("moe_mxfp8_emulated", "mxfp8", "mxfp8", "silu", False),
]


@pytest.mark.parametrize("kernel,wkey,akey,act,bias", CASES)
def test_quant_moe_matches_expert_loop(kernel, wkey, akey, act, bias):
    torch.manual_seed(4)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, wkey)
    router = torch.randn(E, H).bfloat16()
    b13 = torch.randn(E, 2 * I).bfloat16() * 0.1 if bias else None
    b2 = torch.randn(E, H).bfloat16() * 0.1 if bias else None
    moe = QuantMoE(kernel, w13, w2, router, top_k=TOPK, router="gpt_oss" if act == "gpt_oss" else "softmax_topk",
                   activation=act, act_key=akey, gate_up_bias=b13, down_bias=b2)
    x = torch.randn(T, H).bfloat16()
    out = moe(x)
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, act, b13, b2, act_dq=_act_dq(akey))
    assert out.shape == (T, H) and out.dtype == torch.bfloat16
    # bf16 intermediate; with mxfp8 inputs a one-ulp difference in the bf16 intermediate (the interpreter
    # truncates where torch rounds) can move an element by one e4m3 step (2**-3 relative) after re-rounding
    tol = 4e-2 if akey == "mxfp8" else 2e-2
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < tol


@pytest.mark.parametrize("group_m", [1, 3, 8])
def test_grouped_program_order_covers_every_tile_once(group_m):
    """Row blocks are taken GROUP_M at a time per N tile (L2 reuse of an expert's weight tile): with 7
    experts' blocks (not a multiple of 3 or 8) and 4 N tiles every output tile is still written once."""
    from quantc.plan import KernelConfig

    torch.manual_seed(6)
    e, k, n, tokens, top_k = 7, 64, 4 * 16, 23, 2
    w = wf.quantize(torch.randn(e, n, k) * 0.1, "none")
    x = torch.randn(tokens, k).bfloat16()
    ids = torch.randint(0, e, (tokens, top_k), dtype=torch.int32)
    cfg = KernelConfig(16, 16, 32, group_m, 4, 2)
    sorted_ids, block_expert, total = mr.align_by_expert(ids, e, cfg.block_m)
    out = mg.grouped_gemm(x, None, w, (sorted_ids, block_expert, total, ids.numel()), a_div=top_k, act="none",
                          a_quant=0, a_group=0, cfg=cfg)
    dense = wf.dequantize(w).float()
    want = torch.stack([x[p // top_k].float() @ dense[ids.reshape(-1)[p]].T for p in range(ids.numel())])
    assert ((out.float() - want).abs().max() / want.abs().max()).item() < 1e-2


@pytest.mark.parametrize("wkey,act", [("int4_group_128", "silu"), ("int4_group_32_asym", "gpt_oss"),
                                      ("mxfp4", "gpt_oss"), ("nvfp4", "silu")])
def test_moe_4bit_through_the_nibble_planes_matches_expert_loop(wkey, act, monkeypatch):
    """QUANTC_MOE_PLANES=1: 4-bit experts run the dense decode's plane step (int32 words, strided x
    slices) inside the grouped GEMM, gate and up rows alike; the same answer as the byte path's loop."""
    monkeypatch.setenv("QUANTC_MOE_PLANES", "1")
    assert mg.uses_moe_planes(8, 0, H, 1) and not mg.uses_moe_planes(8, 0, 2880, 1)
    assert not mg.uses_moe_planes(8, 1, H, 1) and not mg.uses_moe_planes(1, 0, H, 1)
    seen = []
    real = mg._moe_gemm_kernel
    monkeypatch.setattr(mg, "_moe_gemm_kernel", type("K", (), {"__getitem__": lambda self, g: (
        lambda *a, **k: seen.append(k["PLANES"]) or real[g](*a, **k))})())
    torch.manual_seed(15)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, wkey)
    moe = QuantMoE("moe_weight_only", w13, w2, torch.randn(E, H).bfloat16(), top_k=TOPK,
                   router="gpt_oss" if act == "gpt_oss" else "softmax_topk", activation=act, act_key="none")
    x = torch.randn(T, H).bfloat16()
    out = moe(x)
    assert seen == [True, True]
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, act, None, None)
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 2e-2
    monkeypatch.delenv("QUANTC_MOE_PLANES")
    assert not mg.uses_moe_planes(8, 0, H, 1)  # off by default until timed


@pytest.mark.parametrize("act", ["none", "silu", "gpt_oss"])
def test_pair_rows_applies_the_grouped_gemms_epilogue(act):
    """The elementwise epilogue after the MoE GEMV: each pair's expert bias, the activation (gate columns, then up),
    the routing weight, bf16 out; 1100 columns: two column blocks, the second masked."""
    torch.manual_seed(17)
    pairs, n, e = 5, 1100, 3
    width = 2 * n if act != "none" else n
    h = (torch.randn(pairs, width) * 4).bfloat16()
    ids = torch.tensor([2, 0, 2, 1, 0], dtype=torch.int32)
    bias = torch.randn(e, width).bfloat16()
    topw = torch.rand(pairs)
    out = mg.pair_rows(h, ids, act, bias=bias, topk_weights=topw)
    pre = h.float() + bias[ids.long()].float()
    want = (pre if act == "none" else mg.reference_activation(pre, act)) * topw[:, None]
    assert out.shape == (pairs, n) and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), want, rtol=1e-2, atol=1e-2)
    plain = mg.pair_rows(h, ids, act)  # no bias, no routing weight
    want = h.float() if act == "none" else mg.reference_activation(h.float(), act)
    assert torch.allclose(plain.float(), want, rtol=1e-2, atol=1e-2)


def _moe_4bit(wkey: str, act: str, bias: bool, seed: int):
    """A moe_weight_only layer of E experts in ``wkey`` (gpt-oss's router for its activation), with biases or not:
    (module, w13, w2, b13, b2)."""
    torch.manual_seed(seed)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, wkey)
    b13 = torch.randn(E, 2 * I).bfloat16() * 0.1 if bias else None
    b2 = torch.randn(E, H).bfloat16() * 0.1 if bias else None
    moe = QuantMoE("moe_weight_only", w13, w2, torch.randn(E, H).bfloat16(), top_k=TOPK,
                   router="gpt_oss" if act == "gpt_oss" else "softmax_topk", activation=act, act_key="none",
                   gate_up_bias=b13, down_bias=b2)
    return moe, w13, w2, b13, b2


@pytest.mark.parametrize("wkey,act,bias", [("int4_group_128", "silu", False), ("int4_group_32_asym", "gpt_oss", True),
                                           ("mxfp4", "gpt_oss", True), ("nvfp4", "silu", False)])
def test_moe_4bit_decode_on_the_gemv_matches_expert_loop(wkey, act, bias, monkeypatch):
    """QUANTC_MOE_GEMV=1: 4-bit experts at decode run the grouped GEMV (every (token, slot) pair a row through
    its expert, no sort or padding), biases, activation and routing weights between the two GEMMs; the same
    answer as the expert loop. Off a GPU by default (an sm_90 one only), above QUANTC_MOE_GEMV_MAX_PAIRS pairs
    and under QUANTC_MOE_GEMV=0."""
    from quantc.runtime import moe as moe_mod
    from quantc.runtime.kernels import wo_gemv

    calls = []
    real = wo_gemv.launch_moe_gemv
    monkeypatch.setattr(wo_gemv, "launch_moe_gemv", lambda *a: calls.append(a[3]) or real(*a))
    moe, w13, w2, b13, b2 = _moe_4bit(wkey, act, bias, seed=16)
    x = torch.randn(T, H).bfloat16()
    monkeypatch.setenv("QUANTC_MOE_GEMV", "1")
    out = moe(x)
    assert calls == [TOPK, 1]  # gate_up over x's rows (a_div = top_k), down over the pairs
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, act, b13, b2)
    assert out.shape == (T, H) and out.dtype == torch.bfloat16
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 2e-2
    monkeypatch.setenv("QUANTC_MOE_GEMV_MAX_PAIRS", str(T * TOPK - 1))  # one pair too many: the grouped GEMM
    moe(x)
    assert len(calls) == 2
    monkeypatch.delenv("QUANTC_MOE_GEMV_MAX_PAIRS")
    monkeypatch.delenv("QUANTC_MOE_GEMV")
    assert not moe_mod.uses_moe_gemv(w13, w2, T * TOPK)  # off a GPU by default
    monkeypatch.setenv("QUANTC_MOE_GEMV", "1")
    assert moe_mod.uses_moe_gemv(w13, w2, T * TOPK)
    assert not moe_mod.uses_moe_gemv(wf.quantize(torch.randn(E, 2 * I, H) * 0.1, "none"), w2, T * TOPK)
    monkeypatch.setenv("QUANTC_MOE_GEMV", "0")
    assert not moe_mod.uses_moe_gemv(w13, w2, T * TOPK)


@pytest.mark.parametrize("wkey,act,bias", [("int4_group_128", "silu", False), ("int4_group_128_asym", "silu", True),
                                           ("mxfp4", "gpt_oss", True), ("nvfp4", "silu", False)])
def test_moe_4bit_on_the_grouped_plane_mma_matches_expert_loop(wkey, act, bias, monkeypatch):
    """QUANTC_MOE_PLANE_MMA=1: 4-bit experts run both GEMMs on wo_plane_mma's grouped launch (routing blocks of one
    expert), biases, activation and routing weights between them; the same answer as the expert loop, at 5 tokens
    and at 40 (blocks of 16 pairs). By default on sm_90 only, from max(32, experts) pairs to 16 an expert; int4 in
    groups of 64 keeps the other paths."""
    from quantc.runtime import moe as moe_mod
    from quantc.runtime.kernels import wo_plane_mma

    calls = []
    real = wo_plane_mma.launch_plane_mma_grouped
    monkeypatch.setattr(wo_plane_mma, "launch_plane_mma_grouped",
                        lambda *a, **k: calls.append((a[5], a[6])) or real(*a, **k))
    moe, w13, w2, b13, b2 = _moe_4bit(wkey, act, bias, seed=18)
    monkeypatch.delenv("QUANTC_MOE_PLANE_MMA", raising=False)
    assert not moe_mod.uses_moe_plane_mma(w13, w2, 64)  # the default takes sm_90 GPUs only
    monkeypatch.setattr(moe_mod, "on_sm90", lambda device: True)
    # from max(32, experts) pairs up to 16 an expert
    assert [moe_mod.uses_moe_plane_mma(w13, w2, p) for p in (E, 31, 32, 16 * E, 16 * E + 1)] == \
        [False, False, True, True, False]
    monkeypatch.setenv("QUANTC_MOE_PLANE_MMA", "0")
    assert not moe_mod.uses_moe_plane_mma(w13, w2, 64)
    monkeypatch.setenv("QUANTC_MOE_PLANE_MMA", "1")
    for tokens, block in ((T, 8), (40, 32)):
        x = torch.randn(tokens, H).bfloat16()
        out = moe(x)
        tw, ids = moe.route(x)
        ref = mg.reference_expert_loop(x, w13, w2, tw, ids, act, b13, b2)
        assert out.shape == (tokens, H) and out.dtype == torch.bfloat16
        # the gate_up rows round to bf16 before the activation, as on the MoE GEMV's path (the same 2.3% at this seed)
        assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 3e-2
        assert calls[-2:] == [(TOPK, block), (1, block)]  # gate_up over x's rows (a_div = top_k), down over pairs
    g64 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, "int4_group_64")
    assert not moe_mod.uses_moe_plane_mma(g64, w2, 64)


def test_moe_on_plane_mma_with_gpt_oss_widths_forced_only(monkeypatch):
    """Expert widths that are multiples of 64 but not 128 (gpt-oss's 2880; here 192 and 320), mxfp4 with gpt-oss's
    activation and biases: both GEMMs on wo_plane_mma's grouped launch when forced, its last K step half masked, the
    expert loop's answer; the default rule leaves such widths to the other paths."""
    from quantc.runtime import moe as moe_mod

    torch.manual_seed(21)
    e, h, inter, k = 4, 192, 320, 2
    w13 = wf.quantize(torch.randn(e, 2 * inter, h) * 0.1, "mxfp4")
    w2 = wf.quantize(torch.randn(e, h, inter) * 0.1, "mxfp4")
    b13, b2 = torch.randn(e, 2 * inter).bfloat16() * 0.1, torch.randn(e, h).bfloat16() * 0.1
    moe = QuantMoE("moe_weight_only", w13, w2, torch.randn(e, h).bfloat16(), top_k=k, router="gpt_oss",
                   activation="gpt_oss", act_key="none", gate_up_bias=b13, down_bias=b2)
    monkeypatch.setattr(moe_mod, "on_sm90", lambda device: True)
    monkeypatch.delenv("QUANTC_MOE_PLANE_MMA", raising=False)
    assert not moe_mod.uses_moe_plane_mma(w13, w2, 64)
    monkeypatch.setenv("QUANTC_MOE_PLANE_MMA", "1")
    assert moe_mod.uses_moe_plane_mma(w13, w2, 64)
    x = torch.randn(9, h).bfloat16()
    out = moe(x)
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, "gpt_oss", b13, b2)
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 3e-2


@pytest.mark.parametrize("wkey", ["mxfp4", "int4_group_64"])
def test_moe_gemv_takes_widths_of_64(wkey, monkeypatch):
    """Expert widths that are multiples of 64 but not 128 (gpt-oss's 2880; 192 here) run the GEMV at 64-deep steps,
    by default on sm_90 (gpt-oss-120b at 1 token: 83.7 -> 50.2 us on the H100) and under QUANTC_MOE_GEMV=1, with the
    expert loop's answer; widths of 32 (not 64) keep the grouped GEMM."""
    from quantc.runtime import moe as moe_mod
    from quantc.runtime.kernels import common as kcommon
    from quantc.runtime.kernels import wo_gemv

    h, inter = 192, 192
    torch.manual_seed(17)
    w13 = wf.quantize(torch.randn(E, 2 * inter, h) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(E, h, inter) * 0.1, wkey)
    assert wo_gemv.gemv_config(TOPK * 2 * inter, h, 132, grouped=True)[0].block_k == 64
    monkeypatch.delenv("QUANTC_MOE_GEMV", raising=False)
    fake = SimpleNamespace(pack=8, k=h, row_block=1, fmt=w13.fmt, sfmt=w13.sfmt, group=w13.group, scale=w13.scale,
                           data=SimpleNamespace(device=SimpleNamespace(type="cuda"), shape=w13.data.shape))
    with monkeypatch.context() as gpu:  # a faked sm_90 GPU for the policy alone (the layer below launches kernels)
        gpu.setattr(kcommon, "interpreted", lambda: False)
        gpu.setattr(kcommon, "cc_major", lambda device: 9)
        assert moe_mod.uses_moe_gemv(fake, w2, 2)  # K % 128 != 0, K % 64 == 0: by default too
        assert not moe_mod.uses_moe_gemv(SimpleNamespace(**{**vars(fake), "k": h + 32}), w2, 2)  # K % 64 != 0
    monkeypatch.setenv("QUANTC_MOE_GEMV", "1")
    assert moe_mod.uses_moe_gemv(w13, w2, 2)
    calls = []
    real = wo_gemv.launch_moe_gemv
    monkeypatch.setattr(wo_gemv, "launch_moe_gemv", lambda *a: calls.append(a[4].block_k) or real(*a))
    moe = QuantMoE("moe_weight_only", w13, w2, torch.randn(E, h).bfloat16(), top_k=TOPK, router="softmax_topk",
                   activation="silu", act_key="none")
    x = torch.randn(T, h).bfloat16()
    out = moe(x)
    assert calls == [64, 64]
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, "silu")
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 2e-2


def test_moe_gemv_default_takes_decode_on_hopper_only(monkeypatch):
    """Unforced, the grouped GEMV takes 4-bit experts on an sm_90 GPU while the pairs are no more than the experts
    (and under the pair cap), not elsewhere: the GPU checks are faked on CPU tensors."""
    from quantc.runtime import moe as moe_mod
    from quantc.runtime.kernels import common as kcommon

    monkeypatch.delenv("QUANTC_MOE_GEMV", raising=False)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, "int4_group_128")
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, "int4_group_128")
    assert not moe_mod.uses_moe_gemv(w13, w2, 1)  # a CPU tensor
    fake = SimpleNamespace(type="cuda")
    monkeypatch.setattr(kcommon, "interpreted", lambda: False)
    for major, pairs, want in ((9, E, True), (9, E + 1, False), (8, 1, False), (10, 1, False)):
        monkeypatch.setattr(kcommon, "cc_major", lambda device, m=major: m)
        stack = SimpleNamespace(pack=8, data=SimpleNamespace(device=fake, shape=w13.data.shape))  # E experts
        monkeypatch.setattr(moe_mod, "gemv_weight_ok", lambda w, k_multiple=128: True)
        assert moe_mod.uses_moe_gemv(stack, w2, pairs) is want, (major, pairs)
    monkeypatch.setenv("QUANTC_MOE_GEMV_MAX_PAIRS", "0")
    monkeypatch.setattr(kcommon, "cc_major", lambda device: 9)
    assert not moe_mod.uses_moe_gemv(stack, w2, 1)


@pytest.mark.parametrize("kernel,wkey,akey", [("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token"),
                                              ("moe_int8", "int8_per_channel", "int8_dynamic_per_token")])
def test_even_k_loads_give_the_same_bits(kernel, wkey, akey, monkeypatch):
    """Where BLOCK_K divides K the raw-sum loop's loads keep only their row masks (the default;
    QUANTC_MOE_EVEN_K=0 keeps the K term); the output is the masked loop's bit for bit (K = 256 in 128-wide tiles, padding rows in every
    expert's last block), and a ragged K (320) keeps the K mask."""
    from quantc.plan import KernelConfig

    seen = []
    real = mg._moe_gemm_kernel
    monkeypatch.setattr(mg, "_moe_gemm_kernel", type("K", (), {"__getitem__": lambda self, g: (
        lambda *a, **k: seen.append((a[0].shape[1], k["EVEN_K"])) or real[g](*a, **k))})())
    torch.manual_seed(17)
    cfg = KernelConfig(16, 64, 128, 8, 4, 2)
    for h in (256, 320):
        w13 = wf.quantize(torch.randn(E, 2 * 128, h) * 0.1, wkey)
        w2 = wf.quantize(torch.randn(E, h, 128) * 0.1, wkey)
        moe = QuantMoE(kernel, w13, w2, torch.randn(E, h).bfloat16(), top_k=TOPK, activation="silu", act_key=akey,
                       configs=lambda tokens: (cfg, cfg))
        x = torch.randn(T, h).bfloat16()
        monkeypatch.setenv("QUANTC_MOE_EVEN_K", "0")
        masked = moe(x)
        monkeypatch.delenv("QUANTC_MOE_EVEN_K")
        assert torch.equal(moe(x).view(torch.int16), masked.view(torch.int16)), h
    # (K of each GEMM, EVEN_K): gate_up reads K = h, down K = 128; off under =0, else on where 128 divides K
    assert seen == [(256, False), (128, False), (256, True), (128, True),
                    (320, False), (128, False), (320, False), (128, True)], seen


@pytest.mark.parametrize("kernel,wkey,akey", [("moe_bf16", "none", "none"),
                                              ("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token"),
                                              ("moe_fp8", "fp8_per_tensor", "fp8_dynamic_per_tensor"),
                                              ("moe_int8", "int8_per_channel", "int8_dynamic_per_token"),
                                              ("moe_weight_only", "fp8_per_channel", "none")])
def test_scales_constant_over_k_are_applied_once_after_many_k_tiles(kernel, wkey, akey, monkeypatch):
    """bf16, per-channel and per-tensor weights with per-token / per-tensor activations: the grouped GEMM
    accumulates raw MMA sums over the K tiles (int32 for int8) and scales once (RAW); K = 320 and 192 in
    128-wide tiles with a ragged last one. Against the per-K-tile scaling it replaces (same answer up to
    fp32 summation order) and against the expert loop (fp8 activations re-quantize the bf16 intermediate:
    a one-ulp difference there moves a code by one e4m3 step, hence the wider tolerance)."""
    from quantc.plan import KernelConfig

    seen = []
    real = mg._moe_gemm_kernel
    monkeypatch.setattr(mg, "_moe_gemm_kernel", type("K", (), {"__getitem__": lambda self, g: (
        lambda *a, **k: seen.append(k["RAW"]) or real[g](*a, **k))})())
    torch.manual_seed(16)
    h, inter = 320, 192
    w13 = wf.quantize(torch.randn(E, 2 * inter, h) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(E, h, inter) * 0.1, wkey)
    cfg = KernelConfig(16, 64, 128, 8, 4, 2)
    moe = QuantMoE(kernel, w13, w2, torch.randn(E, h).bfloat16(), top_k=TOPK, activation="silu", act_key=akey,
                   configs=lambda tokens: (cfg, cfg))
    x = torch.randn(T, h).bfloat16()
    out = moe(x).float()
    assert seen == [True, True], seen
    monkeypatch.setattr(mg, "RAW_SUMS", False)
    per_tile = moe(x).float()
    assert seen[2:] == [False, False]
    assert ((out - per_tile).abs().max() / per_tile.abs().max()).item() < 1e-2
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, "silu", None, None, act_dq=_act_dq(akey))
    tol = 5e-2 if akey.startswith("fp8") else 2e-2
    assert ((out - ref).abs().max() / ref.abs().max()).item() < tol


def test_quant_moe_shared_experts_and_leading_dims():
    torch.manual_seed(5)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, "mxfp4")
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, "mxfp4")
    shared = torch.nn.Linear(H, H, bias=False).bfloat16()
    moe = QuantMoE("moe_weight_only", w13, w2, torch.randn(E, H).bfloat16(), top_k=TOPK, shared_experts=shared)
    x = torch.randn(2, 3, H).bfloat16()
    out = moe(x)
    tw, ids = moe.route(x.reshape(-1, H))
    ref = mg.reference_expert_loop(x.reshape(-1, H), w13, w2, tw, ids, "silu") + shared(x.reshape(-1, H)).float()
    assert out.shape == (2, 3, H)
    assert ((out.reshape(-1, H).float() - ref).abs().max() / ref.abs().max()).item() < 2e-2


def test_quant_moe_errors():
    w13 = wf.quantize(torch.randn(E, 2 * I, H), "none")
    w2 = wf.quantize(torch.randn(E, H, I), "none")
    r = torch.randn(E, H)
    with pytest.raises(ValueError, match="unknown MoE kernel 'moe_fp4'"):
        QuantMoE("moe_fp4", w13, w2, r, top_k=2)
    with pytest.raises(ValueError, match="unknown router 'top1'"):
        QuantMoE("moe_bf16", w13, w2, r, top_k=2, router="top1")
    with pytest.raises(ValueError, match="expert shapes do not chain"):
        QuantMoE("moe_bf16", w13, wf.quantize(torch.randn(E, H, 64), "none"), r, top_k=2)
    with pytest.raises(ValueError, match="unknown MoE activation 'gelu'"):
        QuantMoE("moe_bf16", w13, w2, r, top_k=2, activation="gelu")


def test_w8a8_moe_with_k_not_a_multiple_of_128(monkeypatch):
    """gpt-oss-like K (2880 = 22.5 x 128): per-channel / per-token scales cover the whole row, so the
    grouped GEMM keeps 128-wide K steps and masks the last one; groups narrower than K must divide it."""
    torch.manual_seed(6)
    h, inter = 192, 64
    w13 = wf.quantize(torch.randn(E, 2 * inter, h) * 0.1, "fp8_per_channel")
    w2 = wf.quantize(torch.randn(E, h, inter) * 0.1, "fp8_per_channel")
    moe = QuantMoE("moe_fp8", w13, w2, torch.randn(E, h).bfloat16(), top_k=TOPK, act_key="fp8_dynamic_per_token",
                   configs=lambda _t: (wf_cfg(), wf_cfg()))
    x = torch.randn(T, h).bfloat16()
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, "silu", act_dq=_act_dq("fp8_dynamic_per_token"))
    block_ks = []
    real = mg._moe_gemm
    monkeypatch.setattr(mg, "_moe_gemm", lambda *a: block_ks.append(a[-4]) or real(*a))
    # e4m3 re-rounding of the bf16 intermediate amplifies the interpreter's truncation (see above)
    assert ((moe(x).float() - ref).abs().max() / ref.abs().max()).item() < 3e-2
    assert block_ks == [128, 128]  # K = 192 and K = 64: one masked tile each, no halving
    # 48-wide groups on K = 96: no BLOCK_K >= 32 divides them
    narrow = wf.WoWeight(wf.FP8, 2 * inter, 96, torch.zeros(E, 2 * inter, 96).to(torch.float8_e4m3fn),
                         torch.ones(E, 2 * inter, 2), wf.S_FLOAT, 48, 1)
    with pytest.raises(ValueError, match=r"scale groups \(weight 48, activation 96\) that are multiples of 32"):
        mg.grouped_gemm(torch.zeros(T, 96).to(torch.float8_e4m3fn), torch.ones(T, 1), narrow, (None, None, None, 0),
                        a_div=TOPK, act="silu", a_quant=1, a_group=0, cfg=wf_cfg())
    bf16 = wf.quantize(torch.randn(E, 2 * inter, 64), "none")
    with pytest.raises(ValueError, match=r"needs raw fp8/int8 weights"):
        mg.grouped_gemm(torch.zeros(T, 64).to(torch.float8_e4m3fn), torch.ones(T, 1), bf16, (None, None, None, 0),
                        a_div=TOPK, act="silu", a_quant=1, a_group=0, cfg=wf_cfg())


def wf_cfg():
    from quantc.runtime.kernels.wo_gemm import WoConfig

    return WoConfig(16, 64, 128)


def _hf_blocks():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    common = dict(hidden_size=64, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=32)
    return {
        "mixtral": (MixtralSparseMoeBlock, transformers.MixtralConfig(num_local_experts=4, num_experts_per_tok=2,
                                                                       **common)),
        "qwen3_moe": (Qwen3MoeSparseMoeBlock, transformers.Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2,
                                                                          moe_intermediate_size=32,
                                                                          norm_topk_prob=False, **common)),
        "deepseek_v3": (DeepseekV3MoE, transformers.DeepseekV3Config(
            n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=32,
            n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True, **common)),
        "gpt_oss": (GptOssMLP, transformers.GptOssConfig(num_local_experts=4, num_experts_per_tok=2, **common)),
    }


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_from_hf_block_matches_transformers(arch):
    """The Hugging Face block itself is the reference: routing, gate/up layout, activation, shared experts."""
    from quantc.runtime.moe import from_hf_block

    cls, cfg = _hf_blocks()[arch]
    torch.manual_seed(7)
    block = cls(cfg)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        if arch == "deepseek_v3":
            block.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.1)
    block = block.to(torch.bfloat16)
    if arch == "deepseek_v3":
        block.gate.float()  # the router stays fp32, as in the checkpoint
    x = torch.randn(1, 6, 64).bfloat16()
    with torch.no_grad():
        want = block(x)
    want = (want[0] if isinstance(want, tuple) else want).float()
    got = from_hf_block(block, "moe_bf16")(x).float()
    assert got.shape == want.shape
    assert ((got - want).abs().max() / want.abs().max()).item() < 2e-2


# --- apply() on MoE models with per-expert ModuleList experts (older transformers, custom models) -----

class _ExpertMLP(torch.nn.Module):
    def __init__(self, names, h=H, inter=I):
        super().__init__()
        self.names = names
        g, u, d = names
        setattr(self, g, torch.nn.Linear(h, inter, bias=False))
        setattr(self, u, torch.nn.Linear(h, inter, bias=False))
        setattr(self, d, torch.nn.Linear(inter, h, bias=False))
        self.act_fn = torch.nn.SiLU()

    def forward(self, x):
        g, u, d = (getattr(self, n) for n in self.names)
        return d(self.act_fn(g(x)) * u(x))


class _SparseBlock(torch.nn.Module):
    """The pre-v5 transformers routing loop (Mixtral, Qwen3-MoE): experts called one by one."""

    def __init__(self, names):
        super().__init__()
        self.gate = torch.nn.Linear(H, E, bias=False)
        self.experts = torch.nn.ModuleList(_ExpertMLP(names) for _ in range(E))

    def forward(self, x):
        t = x.reshape(-1, H)
        w, ids = torch.softmax(self.gate(t).float(), -1).topk(TOPK)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros(t.shape)
        for e in range(len(self.experts)):
            tok, slot = torch.where(ids == e)
            if tok.numel():
                out[tok] += self.experts[e](t[tok]).float() * w[tok, slot, None]
        return out.to(x.dtype).reshape(x.shape)


class _TinyMoE(torch.nn.Module):
    def __init__(self, names=("gate_proj", "up_proj", "down_proj")):
        super().__init__()
        layer = torch.nn.Module()
        layer.proj, layer.mlp = torch.nn.Linear(H, H, bias=False), _SparseBlock(names)
        self.layers = torch.nn.ModuleList([layer])

    def forward(self, x):
        return self.layers[0].mlp(self.layers[0].proj(x))


def _tiny_moe(names=("gate_proj", "up_proj", "down_proj"), seed=8):
    torch.manual_seed(seed)
    return _TinyMoE(names).bfloat16()


def _moe_plan(model, tmp_path, scheme="w4a16"):
    import quantc

    cfg = tmp_path / "moe.yaml"
    cfg.write_text(f"quantc: 1\nlinear: {scheme}\nmoe: {scheme}\n")
    return quantc.compile(str(cfg), model, gpu="h100", tp=1)


def _cos_min(a, b):
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min().item()


@pytest.mark.parametrize("names", [("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")])
def test_apply_groups_per_expert_linears(names, tmp_path):
    """One grouped module per moe_block from the per-expert Linears; the block's own loop still runs."""
    import copy

    import quantc.runtime as rt
    from quantc.runtime.moe_apply import QuantExpertList

    model = _tiny_moe(names)
    ref = copy.deepcopy(model)
    plan = _moe_plan(model, tmp_path)
    report = rt.apply(model, plan, progress=False)
    experts = model.layers[0].mlp.experts
    assert report.swapped == ("layers.0.proj", "layers.0.mlp.experts")
    assert report.kept == ("layers.0.mlp.gate",)  # the router, planned none
    assert isinstance(experts, QuantExpertList) and len(experts) == E and experts.moe.kernel == "moe_weight_only"
    assert report.bytes_after < report.bytes_before / 3
    x = torch.randn(T, H).bfloat16()
    with torch.no_grad():
        got, want = model(x), ref(x)
        for lin in [m for m in ref.modules() if isinstance(m, torch.nn.Linear) and m is not ref.layers[0].mlp.gate]:
            lin.weight.data = wf.dequantize(wf.quantize(lin.weight.data, "int4_group_128")).bfloat16()
        fake = ref(x)
    assert _cos_min(got, want) > 0.95  # int4 weights against bf16
    assert _cos_min(got, fake) > 0.999  # the kernels against the same weights dequantized
    assert not torch.equal(got, want)


def test_per_expert_bf16_weights_are_taken_from_the_state_and_prequantized_ones_refused(tmp_path):
    import quantc.runtime as rt
    from quantc.diagnostics import QuantcError

    model = _tiny_moe()
    plan = _moe_plan(model, tmp_path)
    zeros = {f"layers.0.mlp.experts.{e}.down_proj.weight": torch.zeros(H, I, dtype=torch.bfloat16) for e in range(E)}
    bad = {"layers.0.mlp.experts.1.gate_proj.weight_scale": torch.ones(I, 1)}
    snap = [type(m) for m in model.modules()]
    with pytest.raises(QuantcError) as err:
        rt.apply(model, plan, weights={**zeros, **bad}, progress=False)
    (d,) = err.value.diagnostics
    assert d.code == "QC705" and d.path == "layers.0.mlp.experts"
    assert "the weights hold layers.0.mlp.experts.1.gate_proj.weight_scale (float32): pre-quantized expert tensors " \
           "are not loaded by this runtime" in d.message
    assert [type(m) for m in model.modules()] == snap
    rt.apply(model, plan, weights=zeros, progress=False)  # bf16 expert weights from the state are used
    assert torch.equal(model.layers[0].mlp(torch.randn(T, H).bfloat16()), torch.zeros(T, H, dtype=torch.bfloat16))


def test_unsupported_expert_layout_is_qc704_naming_the_block(tmp_path):
    import quantc.runtime as rt
    from quantc.diagnostics import QuantcError

    model = _tiny_moe(("fc1", "fc3", "fc2"))  # experts whose Linears have no known gate/up/down names
    plan = _moe_plan(model, tmp_path)
    snap = [type(m) for m in model.modules()]
    with pytest.raises(QuantcError) as err:
        rt.apply(model, plan, progress=False)
    (d,) = err.value.diagnostics
    assert d.code == "QC704" and d.path == "layers.0.mlp.experts" and "moe: none" in d.hint
    assert d.message.startswith("MoE block 'layers.0.mlp.experts' is a ModuleList; its planned experts "
                                "(layers.0.mlp.experts.0.fc1, layers.0.mlp.experts.0.fc2, layers.0.mlp.experts.0.fc3 "
                                "and 9 more) match no layout this runtime runs. Supported: fused experts")
    assert "gate_proj/up_proj/down_proj (or w1/w3/w2)" in d.message
    assert [type(m) for m in model.modules()] == snap


def _with_kernels(plan, kernels):
    from quantc.plan import Plan

    return Plan(modules=plan.modules, kernels=kernels, target=plan.target, model=plan.model, sources=plan.sources,
                summary=plan.summary, warnings=plan.warnings, tuned_on=plan.tuned_on)


def _record_configs(monkeypatch):
    seen = []
    real = mg.grouped_gemm

    def rec(*args, cfg, **kwargs):
        seen.append(cfg)
        return real(*args, cfg=cfg, **kwargs)

    monkeypatch.setattr(mg, "grouped_gemm", rec)
    return seen


def test_grouped_gemm_configs_come_from_the_plan_table(tmp_path, monkeypatch):
    """The plan's entries for gate_proj (gate_up GEMM) and down_proj reach the kernel, per live token count."""
    import quantc.runtime as rt
    from quantc.plan import M_MAX_LAST, KernelConfig, KernelTableEntry

    model = _tiny_moe()
    plan = _moe_plan(model, tmp_path, "int8")
    gu, dn = plan.module("layers.0.mlp.experts.0.gate_proj"), plan.module("layers.0.mlp.experts.0.down_proj")
    small, large, down = KernelConfig(16, 32, 64, 8, 2, 1), KernelConfig(32, 64, 32, 8, 8, 2), KernelConfig(64, 16, 64)
    kernels = dict(plan.kernels)
    kernels[gu.kernel_entry] = KernelTableEntry(gu.kernel_entry, gu.kernel, gu.n, gu.k, ((4, small), (M_MAX_LAST, large)))
    if dn.kernel_entry != gu.kernel_entry:
        kernels[dn.kernel_entry] = KernelTableEntry(dn.kernel_entry, dn.kernel, dn.n, dn.k, ((M_MAX_LAST, down),))
    rt.apply(model, _with_kernels(plan, kernels), progress=False)
    experts = model.layers[0].mlp.experts
    seen = _record_configs(monkeypatch)
    g = torch.Generator().manual_seed(9)
    for t, want in ((3, small), (9, large)):
        ids = torch.stack([torch.randperm(E, generator=g)[:TOPK] for _ in range(t)]).int()
        experts(torch.randn(t, H, generator=g).bfloat16(), ids, torch.rand(t, TOPK, generator=g))
        c13, c2 = seen[-2:]
        assert c13 == want
        if dn.kernel_entry != gu.kernel_entry:  # down: its own entry, with gate_up's BLOCK_M (shared routing)
            assert (c2.block_m, c2.block_n, c2.block_k, c2.num_warps) == (want.block_m, 16, 64, down.num_warps)


def test_grouped_gemm_configs_fall_back_to_the_defaults(tmp_path, monkeypatch):
    import quantc.runtime as rt
    from quantc.runtime.moe import default_config
    from quantc.runtime.tables import default_buckets

    model = _tiny_moe()
    plan = _moe_plan(model, tmp_path, "int8")
    kernels = {k: v for k, v in plan.kernels.items() if not k.startswith("moe_")}  # no MoE entries
    rt.apply(model, _with_kernels(plan, kernels), progress=False)
    seen = _record_configs(monkeypatch)
    for t in (3, 40):
        ids = torch.stack([torch.randperm(E)[:TOPK] for _ in range(t)]).int()
        model.layers[0].mlp.experts(torch.randn(t, H).bfloat16(), ids, torch.rand(t, TOPK))
        assert seen[-2] == default_config(t, TOPK, "moe_int8")
    # the defaults are pair buckets: 40 tokens x 2 = 80 pairs is past the first bucket (64 pairs)
    assert seen[-2] == default_buckets("moe_int8", top_k=TOPK)[1][1] != default_buckets("moe_int8")[0][1]


def test_moe_under_tensor_parallelism_needs_torch_distributed(tmp_path):
    # MoE under tensor/expert parallelism runs (tests/runtime/test_tensor_parallel_moe.py); without an
    # initialised process group apply refuses before touching the model
    import quantc.runtime as rt
    from quantc.diagnostics import QuantcError
    from quantc.plan import Plan

    model = _tiny_moe()
    plan = _moe_plan(model, tmp_path)
    tp2 = Plan(modules=plan.modules, kernels=plan.kernels, target={**plan.target, "tensor_parallel": 2},
               model=plan.model, sources=plan.sources, summary={}, warnings=[], tuned_on={})
    with pytest.raises(QuantcError) as err:
        rt.apply(model, tp2, rank=0, world=2, progress=False)
    tp = [d for d in err.value.diagnostics if d.code == "QC707"]
    assert len(tp) == 1 and "tensor_parallel=2 needs torch.distributed initialised with 2 processes" in tp[0].message
    assert "init_process_group" in tp[0].hint
    assert not any(type(m).__module__.startswith("quantc") for m in model.modules())


@pytest.mark.parametrize("kernel,wkey,act", [("moe_weight_only", "int4_group_128_asym", "silu"),
                                             ("moe_weight_only", "mxfp4", "gpt_oss"),
                                             ("moe_weight_only", "nvfp4", "silu")])
def test_4bit_experts_dequantized_first(kernel, wkey, act, monkeypatch):
    """QUANTC_MOE_DEQUANT_MIN_PAIRS=N: from N pairs an expert the 4-bit stacks are dequantized to bf16 and
    both GEMMs run the bf16 path on moe_bf16's default tiles; the layer matches the per-expert loop (and
    the byte path's output); below N, and unset, the byte path runs."""
    from quantc.runtime.moe import default_config

    seen = []
    real = mg.grouped_gemm
    monkeypatch.setattr(mg, "grouped_gemm", lambda *a, **k: seen.append((k["dequant"], k["cfg"])) or real(*a, **k))
    torch.manual_seed(18)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, wkey)
    moe = QuantMoE(kernel, w13, w2, torch.randn(E, H).bfloat16(), top_k=TOPK, activation=act)
    x = torch.randn(T, H).bfloat16()
    monkeypatch.delenv("QUANTC_MOE_DEQUANT_MIN_PAIRS", raising=False)
    byte_path = moe(x).float()
    monkeypatch.setenv("QUANTC_MOE_DEQUANT_MIN_PAIRS", str(T * TOPK // E + 1))  # above this call's average
    assert torch.equal(moe(x).float(), byte_path)
    monkeypatch.setenv("QUANTC_MOE_DEQUANT_MIN_PAIRS", "0")
    out = moe(x).float()
    bf16_cfg = default_config(T, TOPK, "moe_bf16")
    assert seen == [(False, seen[0][1])] * 4 + [(True, bf16_cfg)] * 2, seen
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, act)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 2e-2
    assert ((out - byte_path).abs().max() / byte_path.abs().max()).item() < 2e-2


def test_dequant_rule_bounds_the_bf16_copy(monkeypatch):
    w = wf.WoWeight(wf.MXFP4, 4096, 4096, torch.zeros(64, 1, 1, dtype=torch.int32), None, wf.S_E8M0, 32)
    monkeypatch.delenv("QUANTC_MOE_DEQUANT_MIN_PAIRS", raising=False)
    assert not mg.dequant_experts([w], 0, 64, 1 << 20)  # unset: never under the interpreter (a CPU tensor)
    # a stack on a GPU (a stand-in with what the rule reads): unset, from DEQUANT_MIN_PAIRS pairs an expert
    on_gpu = SimpleNamespace(pack=8, num_experts=64, n=4096, k=4096, data=SimpleNamespace(device=torch.device("cuda")))
    assert mg.DEQUANT_MIN_PAIRS == 1024
    assert mg.dequant_experts([on_gpu], 0, 64, 1024 * 64) and not mg.dequant_experts([on_gpu], 0, 64, 1024 * 64 - 1)
    monkeypatch.setenv("QUANTC_MOE_DEQUANT_MIN_PAIRS", "256")
    assert mg.dequant_experts([w], 0, 64, 256 * 64)  # 64 x 4096 x 4096 x 2 bytes = 2 GiB, the cap
    assert not mg.dequant_experts([w], 0, 64, 256 * 64 - 1)  # under 256 pairs an expert
    big = wf.WoWeight(wf.MXFP4, 4096, 4096, torch.zeros(65, 1, 1, dtype=torch.int32), None, wf.S_E8M0, 32)
    assert not mg.dequant_experts([w, big], 0, 65, 1 << 30)  # a stack past the cap
    assert not mg.dequant_experts([w], 1, 64, 1 << 30)  # quantized activations
    fp8 = wf.WoWeight(wf.FP8, 4096, 4096, torch.zeros(8, 1, 1), None, wf.S_FLOAT, 4096)
    assert not mg.dequant_experts([fp8], 0, 8, 1 << 30)  # not 4-bit


def test_a_plan_config_that_fails_hands_the_layer_to_the_defaults(monkeypatch):
    """A table config that does not run here (e.g. out of shared memory on another GPU) falls back to the
    kernel's default configs, with one warning; the layer's output is the default configs' output."""
    import warnings

    from quantc.runtime.moe import default_config

    torch.manual_seed(19)
    w13 = wf.quantize(torch.randn(E, 2 * I, H) * 0.1, "fp8_per_channel")
    w2 = wf.quantize(torch.randn(E, H, I) * 0.1, "fp8_per_channel")
    from quantc.runtime.kernels.wo_gemm import WoConfig

    bad = WoConfig(32, 64, 64, num_warps=4, num_stages=7)
    x = torch.randn(T, H).bfloat16()
    want = QuantMoE("moe_fp8", w13, w2, torch.randn(E, H).bfloat16(), top_k=TOPK,
                    act_key="fp8_dynamic_per_token")
    torch.manual_seed(19)
    moe = QuantMoE("moe_fp8", w13, w2, want.router_weight.clone(), top_k=TOPK, act_key="fp8_dynamic_per_token",
                   configs=lambda tokens: (bad, bad))
    real, seen = mg.grouped_gemm, []

    def flaky(*a, **k):
        seen.append(k["cfg"].num_stages)
        if k["cfg"].num_stages == 7:
            raise RuntimeError("out of resource: shared memory, Required: 327680, Hardware limit: 232448")
        return real(*a, **k)

    monkeypatch.setattr(mg, "grouped_gemm", flaky)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [moe(x), moe(x)]
    msgs = [str(w.message) for w in caught if "quantc: MoE kernel moe_fp8 failed" in str(w.message)]
    assert len(msgs) == 1 and "out of resource" in msgs[0]
    assert seen[0] == 7 and 7 not in seen[1:]  # tried once, then the defaults on every call
    assert moe.kernel_configs(T, TOPK) == (default_config(T, TOPK, "moe_fp8"),) * 2
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], want(x))
    # a layer without plan configs re-raises (nothing to fall back to)
    plain = QuantMoE("moe_fp8", w13, w2, want.router_weight.clone(), top_k=TOPK, act_key="fp8_dynamic_per_token")
    monkeypatch.setattr(mg, "grouped_gemm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("broken")))
    with pytest.raises(RuntimeError, match="broken"):
        plain(x)


def test_align_kernel_is_the_gpu_default_up_to_its_pair_limit(monkeypatch):
    """On a GPU the one-launch sort is on by default up to ALIGN_KERNEL_MAX_PAIRS (checked there in the
    sixteenth session); QUANTC_MOE_ALIGN_KERNEL=0 turns it off; never for CPU tensors outside the interpreter."""
    monkeypatch.setattr(mr, "interpreted", lambda: False)
    monkeypatch.delenv("QUANTC_MOE_ALIGN_KERNEL", raising=False)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert mr.align_kernel_on(8, cuda) and mr.align_kernel_on(mr.ALIGN_KERNEL_MAX_PAIRS, cuda)
    assert not mr.align_kernel_on(8, cpu)
    assert not mr.align_kernel_on(mr.ALIGN_KERNEL_MAX_PAIRS + 1, cuda)
    monkeypatch.setenv("QUANTC_MOE_ALIGN_KERNEL", "0")
    assert not mr.align_kernel_on(8, cuda)


@settings(max_examples=25, deadline=None)
@given(t=st.integers(1, 40), k=st.integers(1, 8), e=st.integers(1, 70), block_m=st.sampled_from([1, 2, 16, 64, 128]),
       seed=st.integers(0, 2**16))
def test_align_kernel_matches_the_torch_ops_on_any_routing(t, k, e, block_m, seed):
    """Property: for any token count, top-k, expert count and BLOCK_M (skewed routings included: ids drawn
    from a few experts half the time), the one-program sort gives the torch ops' outputs bit for bit."""
    import os

    g = torch.Generator().manual_seed(seed)
    hi = e if seed % 2 else max(1, min(e, 3))
    ids = torch.randint(0, hi, (t, k), generator=g, dtype=torch.int32)
    saved = os.environ.pop("QUANTC_MOE_ALIGN_KERNEL", None)
    try:
        assert mr.align_kernel_on(ids.numel(), ids.device)
        got = mr.align_by_expert(ids, e, block_m)
        os.environ["QUANTC_MOE_ALIGN_KERNEL"] = "0"
        want = mr.align_by_expert(ids, e, block_m)
    finally:
        os.environ.pop("QUANTC_MOE_ALIGN_KERNEL", None)
        if saved is not None:
            os.environ["QUANTC_MOE_ALIGN_KERNEL"] = saved
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(got, want))


def _torch_route(router, logits, k, **kw):
    import os

    old = os.environ.get("QUANTC_MOE_ROUTER_KERNEL")
    os.environ["QUANTC_MOE_ROUTER_KERNEL"] = "0"
    try:
        return mr.ROUTERS[router](logits, k, **kw)
    finally:
        if old is None:
            del os.environ["QUANTC_MOE_ROUTER_KERNEL"]
        else:
            os.environ["QUANTC_MOE_ROUTER_KERNEL"] = old


@pytest.mark.parametrize("router, kw", [("softmax_topk", {"renormalize": True}),
                                        ("softmax_topk", {"renormalize": False}), ("gpt_oss", {})])
@pytest.mark.parametrize("t, e, k, dtype", [(1, 8, 2, torch.float32), (5, 60, 4, torch.bfloat16),
                                            (3, 128, 8, torch.bfloat16), (2, 257, 6, torch.float32)])
def test_router_kernel_matches_the_torch_routers(router, kw, t, e, k, dtype):
    """softmax_topk (renormalised or not) and gpt_oss in one launch (the interpreter here): the torch
    routers' ids exactly (distinct logits), their weights to fp32 rounding, int32 ids and fp32 weights."""
    torch.manual_seed(t * e + k)
    logits = (torch.randperm(e * t).reshape(t, e).float() / (e * t) * 8 - 4).to(dtype)  # distinct values
    assert mr.router_kernel_on(logits, k)
    w, ids = mr.ROUTERS[router](logits, k, **kw)
    w_ref, ids_ref = _torch_route(router, logits, k, **kw)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32 and w.shape == (t, k)
    assert torch.equal(ids, ids_ref)
    assert torch.allclose(w, w_ref, rtol=2e-6, atol=1e-7)


def test_router_kernel_ties_nan_and_the_switch(monkeypatch):
    """Ties go to the lower expert; a row of NaNs still names experts in range (torch gives NaN weights,
    so do we); QUANTC_MOE_ROUTER_KERNEL=0, 3-D logits, too many experts or k > E take the torch ops."""
    logits = torch.tensor([[0.5, 2.0, 2.0, 1.0, 2.0, -1.0]])
    w, ids = mr.topk_route(logits, 3, full_softmax=False)
    assert ids.tolist() == [[1, 2, 4]] and torch.allclose(w, torch.full((1, 3), 1 / 3))
    w, ids = mr.topk_route(torch.full((2, 8), float("nan")), 2, full_softmax=True)
    assert ((ids >= 0) & (ids < 8)).all() and torch.isnan(w).all()
    inf = torch.tensor([[float("-inf"), 1.0, float("-inf"), float("-inf")]])
    w, ids = mr.topk_route(inf, 2, full_softmax=False)  # fewer finite logits than k: the rest by index
    assert ids.tolist() == [[1, 0]] and w.tolist() == [[1.0, 0.0]]
    x = torch.randn(4, 16)
    assert not mr.router_kernel_on(x.unsqueeze(0), 2) and not mr.router_kernel_on(x, 17)
    assert not mr.router_kernel_on(torch.randn(2, mr.ROUTER_KERNEL_MAX_EXPERTS + 1), 2)
    assert not mr.router_kernel_on(x[:0], 2) and mr.router_kernel_on(x, 2)
    monkeypatch.setenv("QUANTC_MOE_ROUTER_KERNEL", "0")
    assert not mr.router_kernel_on(x, 2)
    monkeypatch.setattr(mr, "interpreted", lambda: False)
    monkeypatch.delenv("QUANTC_MOE_ROUTER_KERNEL")
    assert not mr.router_kernel_on(x, 2)  # CPU tensors outside the interpreter: torch


def test_router_kernel_writes_the_dtypes_asked():
    """bf16 weights and int64 ids (what transformers' routers return), rounded once from fp32."""
    torch.manual_seed(13)
    logits = torch.randn(4, 32)
    w32, ids32 = mr.topk_route(logits, 4, full_softmax=False)
    w16, ids64 = mr.topk_route(logits, 4, full_softmax=False, weight_dtype=torch.bfloat16, ids_dtype=torch.int64)
    assert w16.dtype == torch.bfloat16 and ids64.dtype == torch.int64
    assert torch.equal(w16, w32.bfloat16()) and torch.equal(ids64, ids32.long())


def _by_expert(w, ids):
    """Each row's {expert: weight}: routers may order their k picks differently (transformers' DeepSeek-V3
    router does not sort them)."""
    return [dict(zip(i, x)) for i, x in zip(ids.tolist(), w.float().tolist())]


@pytest.mark.parametrize("t, e, n_group, topk_group, k, renorm", [(1, 256, 8, 4, 8, True), (9, 16, 4, 2, 3, True),
                                                                 (4, 64, 8, 3, 6, False), (3, 8, 4, 4, 8, True)])
def test_group_router_kernel_matches_the_torch_rule(t, e, n_group, topk_group, k, renorm):
    """deepseek_v3 in one launch (the interpreter): the torch rule's experts and their weights (sigmoid
    scores, renormalised or not, scaled), fp32 weights and int32 ids; k may take every expert of the kept
    groups (the last case)."""
    torch.manual_seed(t + e + k)
    logits = (torch.randperm(t * e).reshape(t, e).float() / (t * e) * 8 - 4)
    bias = torch.randn(e) * 0.3
    assert mr.group_router_kernel_on(logits, k, n_group, topk_group)
    w, ids = mr.deepseek_v3(logits, k, bias, n_group, topk_group, 2.5, renorm)
    w_ref, ids_ref = mr.deepseek_v3_torch(logits, k, bias, n_group, topk_group, 2.5, renorm)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and w.shape == (t, k)
    for got, want in zip(_by_expert(w, ids), _by_expert(w_ref, ids_ref)):
        assert got.keys() == want.keys()
        assert all(got[x] == pytest.approx(want[x], rel=2e-6) for x in want)


def test_group_router_kernel_conditions(monkeypatch):
    """Non-power-of-two experts or groups, one expert a group, more picks than the kept groups hold, or the
    switch off: the torch rule."""
    x = torch.randn(2, 256)
    assert mr.group_router_kernel_on(x, 8, 8, 4)
    assert not mr.group_router_kernel_on(torch.randn(2, 96), 8, 8, 4)  # 96 experts
    assert not mr.group_router_kernel_on(x, 8, 6, 4)  # 6 groups
    assert not mr.group_router_kernel_on(x, 8, 256, 4)  # one expert a group
    assert not mr.group_router_kernel_on(x, 8, 64, 1)  # 4 experts kept, 8 asked
    assert not mr.group_router_kernel_on(x, 8, 8, 9)
    monkeypatch.setenv("QUANTC_MOE_ROUTER_KERNEL", "0")
    assert not mr.group_router_kernel_on(x, 8, 8, 4)


@pytest.mark.parametrize("switch", ["1", "0"])
def test_quant_router_stands_in_for_the_deepseek_v3_router(switch, monkeypatch):
    """transformers' DeepseekV3TopkRouter (fp32 logits, group-limited, unsorted picks) against QuantRouter on
    the same module: the same logits, experts and weights (by expert), int64 ids, its correction bias
    and weight under their own names; the one-launch rule and the torch one (switch 0) alike."""
    from quantc.runtime.hf_moe import QuantRouter, quant_router

    cls, cfg = _hf_blocks()["deepseek_v3"]
    torch.manual_seed(14)
    gate = cls(cfg).gate
    with torch.no_grad():
        gate.weight.normal_(0, 0.3)
        gate.e_score_correction_bias.copy_(torch.randn(8) * 0.1)
    q = quant_router("mlp.gate", gate)
    assert isinstance(q, QuantRouter) and q.rule == "deepseek_v3"
    assert set(q.state_dict()) == set(gate.state_dict()) == {"weight", "e_score_correction_bias"}
    h = torch.randn(7, 64).bfloat16()
    monkeypatch.setenv("QUANTC_MOE_ROUTER_KERNEL", switch)
    with torch.no_grad():
        want, got = gate(h), q(h)
    assert torch.equal(got[0], want[0]) and got[2].dtype == torch.int64 and got[1].dtype == want[1].dtype
    for g, w in zip(_by_expert(got[1], got[2]), _by_expert(want[1], want[2])):
        assert g.keys() == w.keys() and all(g[x] == pytest.approx(w[x], rel=2e-6) for x in w)


def test_routing_launches_are_custom_ops_with_fakes_for_torch_compile():
    """Where torch.compile traces, the sort and the routers are opaque custom ops (as the GEMMs are): their
    fakes give the real outputs' shapes and dtypes (opcheck runs both, here on the interpreter)."""
    torch.manual_seed(15)
    ids = torch.randint(0, 8, (5, 2), dtype=torch.int64).reshape(-1)
    torch.library.opcheck(torch.ops.quantc.align_by_expert, (ids, 8, 16, 144),
                          test_utils=("test_faketensor",))
    logits = torch.randn(3, 32).bfloat16()
    torch.library.opcheck(torch.ops.quantc.topk_route, (logits, 4, False, torch.bfloat16, torch.int64),
                          test_utils=("test_faketensor",))
    torch.library.opcheck(torch.ops.quantc.group_topk_route,
                          (logits.float(), 4, torch.randn(32), 4, 2, 2.5, True, torch.int64),
                          test_utils=("test_faketensor",))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        w, i = torch.ops.quantc.topk_route(mode.from_tensor(logits), 4, True, torch.float32, torch.int32)
    assert w.shape == i.shape == (3, 4) and (w.dtype, i.dtype) == (torch.float32, torch.int32)


@pytest.mark.parametrize("key", ["fp8_dynamic_per_token", "int8_dynamic_per_token", "fp8_dynamic_per_tensor",
                                 "fp8_static_per_tensor", "fp8_dynamic_group_128", "mxfp8"])
def test_activation_quantizer_op_has_a_fake_for_torch_compile(key):
    """QuantMoE's activation quantizer where torch.compile traces: a custom op whose fake gives every key's
    real shapes and dtypes, and whose static scale is a copy, never the input itself."""
    from quantc.runtime.kernels.act_quant import quantize_activation_op

    x = torch.randn(3, 256).bfloat16()
    static = torch.tensor(0.01) if key == "fp8_static_per_tensor" else None
    torch.library.opcheck(torch.ops.quantc.quantize_activation, (x, key, static), test_utils=("test_faketensor",))
    q, s = torch.ops.quantc.quantize_activation(x, key, static)
    q2, s2 = quantize_activation_op(x, key, static)  # eager: the launchers directly, the same values
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
    if static is not None:
        assert s.data_ptr() != static.data_ptr()
