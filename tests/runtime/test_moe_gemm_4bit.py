"""The MoE grouped GEMM's byte path for 4-bit experts (int4 sym/asym, mxfp4, nvfp4 x bf16 activations):
nibble decode + tensor-core dot, per-tile or per-element scales, masked tail tiles along K.

Each case runs both GEMMs at tiny shapes under several BLOCK_K: the plain GEMM (no activation) against
``x @ W[e].T`` per pair on the dequantized weights, then gate_up (silu) and down chained as QuantMoE does,
against ``moe_gemm.reference_expert_loop``. Tolerance: max abs error / max |reference| < 1e-2 for one GEMM
(bf16 output, bf16 weight tile where the scale is applied per element), 2e-2 for the chain (bf16
intermediate), as in test_moe.py."""

import pytest
import torch

from quantc.plan import KernelConfig
from quantc.runtime.kernels import moe_gemm as mg
from quantc.runtime.kernels import moe_routing as mr
from quantc.runtime.kernels import wo_format as wf

E, TOPK, T = 3, 2, 6

# weight key, hidden H (K of gate_up), intermediate I (K of down), BLOCK_K. What each exercises:
CASES = [
    ("int4_group_32", 160, 96, 128),         # g32 < tile: per-element scales; K=160, 96 ragged (tail tile)
    ("int4_group_32", 128, 64, 32),          # one group per tile: scale on the fp32 partials
    ("int4_group_128", 128, 256, 64),        # two tiles per group
    ("int4_group_128", 256, 128, 256),       # K=128 under a 256 tile: only the masked tail, per element
    ("int4_group_128_asym", 128, 256, 128),  # zero points as z * sum(x)
    ("int4_group_128_asym", 384, 128, 256),  # zero points per element; 384 = one full tile + a tail
    ("mxfp4", 160, 96, 64),                  # e8m0 scales, g32, ragged
    ("nvfp4", 160, 96, 32),                  # e4m3 g16 scales and the per-expert global scale, ragged
    ("nvfp4", 128, 64, 128),
]


def _setup(key, h, i, seed):
    torch.manual_seed(seed)
    w13 = wf.quantize(torch.randn(E, 2 * i, h) * 0.1, key)
    w2 = wf.quantize(torch.randn(E, h, i) * 0.1, key)
    x = torch.randn(T, h).bfloat16()
    ids = torch.stack([torch.randperm(E)[:TOPK] for _ in range(T)]).to(torch.int32)
    tw = torch.softmax(torch.randn(T, TOPK), -1)
    return w13, w2, x, ids, tw


def _routing(ids, block_m):
    sorted_ids, block_expert, total = mr.align_by_expert(ids, E, block_m)
    return sorted_ids, block_expert, total, ids.numel()


def _rel_err(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("key,h,i,bk", CASES)
def test_plain_grouped_gemm_matches_per_pair_product(key, h, i, bk):
    w13, _, x, ids, _ = _setup(key, h, i, 0)
    cfg = KernelConfig(16, 32, bk, num_warps=4, num_stages=2)
    out = mg.grouped_gemm(x, None, w13, _routing(ids, 16), a_div=TOPK, act="none", a_quant=0, a_group=0, cfg=cfg)
    d13 = wf.dequantize(w13)
    experts = ids.reshape(-1).long()
    ref = torch.stack([x[p // TOPK].float() @ d13[experts[p]].T for p in range(ids.numel())])
    assert out.shape == (T * TOPK, 2 * i) and out.dtype == torch.bfloat16
    assert _rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("key,h,i,bk", CASES)
def test_gate_up_silu_then_down_matches_expert_loop(key, h, i, bk):
    w13, w2, x, ids, tw = _setup(key, h, i, 1)
    cfg = KernelConfig(16, 32, bk, num_warps=4, num_stages=2)
    routing = _routing(ids, 16)
    inter = mg.grouped_gemm(x, None, w13, routing, a_div=TOPK, act="silu", a_quant=0, a_group=0, cfg=cfg)
    assert inter.shape == (T * TOPK, i)
    y = mg.grouped_gemm(inter, None, w2, routing, a_div=1, act="none", a_quant=0, a_group=0, cfg=cfg,
                        topk_weights=tw.reshape(-1).contiguous())
    out = y.view(T, TOPK, h).float().sum(1)
    ref = mg.reference_expert_loop(x, w13, w2, tw, ids, "silu")
    assert _rel_err(out, ref) < 2e-2


def test_small_block_k_is_raised_to_one_mma_step():
    """BLOCK_K below 32 (16 bytes a row) runs as 32 on the byte path and still matches."""
    w13, _, x, ids, _ = _setup("mxfp4", 64, 32, 2)
    cfg = KernelConfig(16, 32, 16, num_warps=4, num_stages=2)
    out = mg.grouped_gemm(x, None, w13, _routing(ids, 16), a_div=TOPK, act="none", a_quant=0, a_group=0, cfg=cfg)
    d13 = wf.dequantize(w13)
    experts = ids.reshape(-1).long()
    ref = torch.stack([x[p // TOPK].float() @ d13[experts[p]].T for p in range(ids.numel())])
    assert _rel_err(out, ref) < 1e-2
