"""MoE: routers against per-token loops written from the model definitions, token sorting invariants,
and QuantMoE (every MoE kernel id) against a per-expert loop in plain torch."""

import pytest
import torch

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


def test_w8a8_moe_with_k_not_a_multiple_of_128():
    """gpt-oss-like K (2880 = 45 x 64): BLOCK_K drops to a divisor so the per-channel scales stay per tile."""
    torch.manual_seed(6)
    h, inter = 192, 64
    w13 = wf.quantize(torch.randn(E, 2 * inter, h) * 0.1, "fp8_per_channel")
    w2 = wf.quantize(torch.randn(E, h, inter) * 0.1, "fp8_per_channel")
    moe = QuantMoE("moe_fp8", w13, w2, torch.randn(E, h).bfloat16(), top_k=TOPK, act_key="fp8_dynamic_per_token")
    x = torch.randn(T, h).bfloat16()
    tw, ids = moe.route(x)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, "silu", act_dq=_act_dq("fp8_dynamic_per_token"))
    # e4m3 re-rounding of the bf16 intermediate amplifies the interpreter's truncation (see above)
    assert ((moe(x).float() - ref).abs().max() / ref.abs().max()).item() < 3e-2
    with pytest.raises(ValueError, match=r"scale groups \(weight 48, activation 48\) that are multiples of 32"):
        mg.grouped_gemm(torch.zeros(T, 48).to(torch.float8_e4m3fn), torch.ones(T, 1),
                        wf.quantize(torch.randn(E, 2 * inter, 48), "fp8_per_channel"), (None, None, None, 0),
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
