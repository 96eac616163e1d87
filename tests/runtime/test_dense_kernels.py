"""Dense GEMMs (Triton interpreter) against the reference on dequantized operands, the launcher
registry against KERNEL_SPECS, and the custom op under torch.compile's fake tensors."""

import pytest
import torch

from quantc.kernel_specs import KERNEL_SPECS
from quantc.plan import KernelConfig
from quantc.runtime import quantize as Q
from quantc.runtime.kernels.act_quant import quantize_activation
from quantc.runtime.kernels.scaled_mm import reference, scaled_mm
from quantc.runtime.registry import LAUNCHERS

# bf16 output rounding (2**-9 relative per element) dominates: the fp32 accumulation is exact enough
TOL = 6e-3
CFG = KernelConfig(16, 32, 64, 8, 4, 2)

CASES = [
    ("fp8_per_channel", "fp8_dynamic_per_token"),
    ("fp8_per_tensor", "fp8_dynamic_per_tensor"),
    ("fp8_per_tensor", "fp8_static_per_tensor"),
    ("fp8_per_channel", "fp8_dynamic_per_tensor"),
    ("fp8_per_tensor", "fp8_dynamic_per_token"),
    ("fp8_block_128x128", "fp8_dynamic_group_128"),
    ("int8_per_channel", "int8_dynamic_per_token"),
    ("mxfp8", "mxfp8"),
    ("fp8_per_channel", "none"),
    ("fp8_per_tensor", "none"),
    ("fp8_block_128x128", "none"),
    ("int8_per_channel", "none"),
]


def _rel(out, ref):
    assert not torch.isnan(out).any()
    return float((out.float() - ref).norm() / ref.norm())


def _scale(t):
    return t.get("weight_scale", t.get("weight_scale_inv"))


# the fused path exists only where there is an activation quantizer to fuse (not weight-only)
@pytest.mark.parametrize("wk,ak,fuse", [(wk, ak, fuse) for fuse in (False, True) for wk, ak in CASES
                                        if not (fuse and ak == "none")])
def test_gemm_matches_reference(wk, ak, fuse):
    torch.manual_seed(hash((wk, ak)) % 1000)
    m, n, k = (3, 160, 256) if fuse else (20, 96, 384)  # ragged M and N tiles
    x = torch.randn(m, k).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(n, k) * 0.05, wk)
    bias = torch.randn(n).to(torch.bfloat16)
    iscale = torch.tensor(0.02)
    out = scaled_mm(x, t["weight"], _scale(t), wk, ak, CFG, input_scale=iscale, bias=bias, fuse=fuse)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    assert _rel(out, reference(x, t, wk, ak, input_scale=iscale, bias=bias)) < TOL


@pytest.mark.parametrize("wk,ak,fuse", [("fp8_per_channel", "fp8_dynamic_per_token", False),
                                        ("int8_per_channel", "int8_dynamic_per_token", True),
                                        ("fp8_block_128x128", "fp8_dynamic_group_128", False),
                                        ("fp8_per_channel", "none", False)])
def test_unmasked_loads_where_tiles_divide_the_problem(wk, ak, fuse, monkeypatch):
    """M, N, K multiples of the tile: the main loop loads without masks (EVEN), the same bits as the masked
    loads; a ragged M keeps the masks."""
    from quantc.runtime.kernels import scaled_mm as S

    seen = []
    real = S.launch
    monkeypatch.setattr(S, "launch", lambda kern, grid, args, consts, *a: (seen.append(consts["EVEN"]),
                                                                          real(kern, grid, args, consts, *a)))
    torch.manual_seed(3)
    x = torch.randn(32, 256).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(64, 256) * 0.05, wk)
    even = scaled_mm(x, t["weight"], _scale(t), wk, ak, CFG, fuse=fuse)
    monkeypatch.setattr(S, "EVEN_TILES", False)
    masked = scaled_mm(x, t["weight"], _scale(t), wk, ak, CFG, fuse=fuse)
    assert seen[-2:] == [True, False]
    assert torch.equal(even, masked)
    monkeypatch.setattr(S, "EVEN_TILES", True)
    scaled_mm(x[:31], t["weight"], _scale(t), wk, ak, CFG, fuse=fuse)
    assert seen[-1] is False


def test_fused_quantizer_matches_separate_one():
    torch.manual_seed(7)
    x = (torch.randn(5, 256) * 4).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(64, 256), "fp8_per_channel")
    a = scaled_mm(x, t["weight"], t["weight_scale"], "fp8_per_channel", "fp8_dynamic_per_token", CFG, fuse=True)
    b = scaled_mm(x, t["weight"], t["weight_scale"], "fp8_per_channel", "fp8_dynamic_per_token", CFG, fuse=False)
    assert torch.equal(a, b)  # same quantized values, same accumulation order


def test_block_gemm_ragged_last_block_n576():
    torch.manual_seed(8)
    x = torch.randn(4, 256).to(torch.bfloat16)
    w = torch.randn(576, 256) * 0.05
    w[512:] *= 30  # the 64-row last block has its own, much larger, scale
    t = Q.quantize_weight(w, "fp8_block_128x128")
    cfg = KernelConfig(16, 64, 128, 8, 4, 2)
    out = scaled_mm(x, t["weight"], t["weight_scale_inv"], "fp8_block_128x128", "fp8_dynamic_group_128", cfg)
    ref = reference(x, t, "fp8_block_128x128", "fp8_dynamic_group_128")
    assert _rel(out[:, 512:], ref[:, 512:]) < TOL and _rel(out[:, :512], ref[:, :512]) < TOL


@pytest.mark.parametrize("block_n", [32, 128, 256])
@pytest.mark.parametrize("ak", ["fp8_dynamic_group_128", "none"])
def test_block_gemm_scale_per_tile_and_per_column(block_n, ak):
    """Tiles inside one 128-row weight block read one scale per K step; 256-wide tiles span two blocks
    and read a scale per column. Every block row has its own scale, so a tile that took its neighbour's
    would be off by a factor; both paths agree with the reference and with each other."""
    torch.manual_seed(18)
    x = torch.randn(20, 384).to(torch.bfloat16)
    w = torch.randn(576, 384) * 0.05
    w *= torch.tensor([1.0, 9.0, 0.2, 3.0, 40.0]).repeat_interleave(128)[:576, None]
    w[:, 128:256] *= 7  # and every K block its own
    t = Q.quantize_weight(w, "fp8_block_128x128")
    cfg = KernelConfig(16, block_n, 128, 8, 4, 2)
    out = scaled_mm(x, t["weight"], t["weight_scale_inv"], "fp8_block_128x128", ak, cfg)
    ref = reference(x, t, "fp8_block_128x128", ak)
    for blk in range(5):
        cols = slice(blk * 128, min(576, blk * 128 + 128))
        assert _rel(out[:, cols], ref[:, cols]) < TOL, blk
    narrow = scaled_mm(x, t["weight"], t["weight_scale_inv"], "fp8_block_128x128", ak, KernelConfig(16, 64, 128, 8, 4, 2))
    assert _rel(out, narrow.float()) < 1e-2


def test_prequantized_activation_path():
    torch.manual_seed(9)
    x = torch.randn(6, 128).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(32, 128), "int8_per_channel")
    xq, sx = quantize_activation(x, "int8_dynamic_per_token")
    a = scaled_mm(xq, t["weight"], t["weight_scale"], "int8_per_channel", "int8_dynamic_per_token", CFG, x_scale=sx)
    b = scaled_mm(x, t["weight"], t["weight_scale"], "int8_per_channel", "int8_dynamic_per_token", CFG, fuse=False)
    assert torch.equal(a, b)


def test_quantized_gemm_is_close_to_bf16():
    """SQNR floors of the whole quantized path against the unquantized product."""
    torch.manual_seed(10)
    x = torch.randn(8, 256)
    w = torch.randn(64, 256) * 0.05
    exact = x @ w.T
    floors = {("fp8_per_channel", "fp8_dynamic_per_token"): 25, ("int8_per_channel", "int8_dynamic_per_token"): 30,
              ("fp8_block_128x128", "fp8_dynamic_group_128"): 25, ("mxfp8", "mxfp8"): 22}
    for (wk, ak), floor in floors.items():
        t = Q.quantize_weight(w, wk)
        out = scaled_mm(x.to(torch.bfloat16), t["weight"], _scale(t), wk, ak, CFG).float()
        sqnr = 10 * torch.log10(exact.pow(2).sum() / (exact - out).pow(2).sum())
        assert sqnr > floor, (wk, ak, float(sqnr))


def test_every_kernel_spec_has_a_launcher():
    """Expected to fail until the MoE / 4-bit launchers (Runtime II) are registered."""
    want = {s.id for s in KERNEL_SPECS if "kv_cache" not in s.layer_kinds}
    missing = sorted(want - set(LAUNCHERS))
    assert not missing, f"kernel ids without a runtime launcher: {missing}"
    assert not set(LAUNCHERS) - {s.id for s in KERNEL_SPECS}


def test_dense_launchers_through_the_registry():
    torch.manual_seed(11)
    x = torch.randn(3, 128).to(torch.bfloat16)
    w = torch.randn(48, 128) * 0.05
    for kernel, wk, ak in [("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"),
                           ("int8_weight_only_gemm", "int8_per_channel", "none"),
                           ("bf16_matmul", "none", "none")]:
        launcher = LAUNCHERS[kernel]
        tensors = {"weight": w.to(torch.bfloat16)} if wk == "none" else Q.quantize_weight(w, wk)
        buffers = launcher.prepare(tensors, wk, 48, 128)
        out = launcher.run(x, list(buffers.values()), CFG, wk, ak, None)
        ref = x.float() @ w.to(torch.bfloat16).float().T if wk == "none" else reference(x, tensors, wk, ak)
        assert _rel(out, ref) < TOL, kernel


def test_custom_op_has_a_fake_for_torch_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from quantc.runtime.modules import dense, flatten_buckets

    t = Q.quantize_weight(torch.randn(48, 128), "fp8_per_channel")
    table = flatten_buckets(((16, CFG), (2**31 - 1, CFG)))
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(5, 128).to(torch.bfloat16))
        bufs = [mode.from_tensor(t["weight"]), mode.from_tensor(t["weight_scale"])]
        out = dense(x, bufs, None, "fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token", table, 48)
    assert out.shape == (5, 48) and out.dtype == torch.bfloat16
    torch.library.opcheck(dense, (torch.randn(5, 128).to(torch.bfloat16), [t["weight"], t["weight_scale"]], None,
                                  "fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token", table, 48),
                          test_utils=("test_faketensor",))


def test_nvfp4_w4a4_emulation_matches_the_block_scaled_reference():
    """nvfp4 x nvfp4: the emulated launcher equals (e2m1 x e4m3 x global) products on both sides."""
    from quantc.runtime import quantize as Q
    from quantc.runtime.registry import LAUNCHERS

    torch.manual_seed(3)
    w = torch.randn(48, 64) * 0.1
    x = (torch.randn(5, 64) * 2).to(torch.bfloat16)
    wq = Q.quantize_weight(w.to(torch.bfloat16), "nvfp4")
    launcher = LAUNCHERS["nvfp4_gemm"]
    buffers = list(launcher.prepare(wq, "nvfp4", 48, 64).values())
    got = launcher.run(x, buffers, None, "nvfp4", "nvfp4", None).float()
    xq = Q.quantize_weight(x, "nvfp4")  # activations use the same 1x16 layout along K
    want = Q.dequantize_weight(xq, "nvfp4") @ Q.dequantize_weight(wq, "nvfp4").T
    assert float((got - want).norm() / want.norm()) < 1e-2
    exact = x.float() @ w.T
    assert float((got - exact).norm() / exact.norm()) < 0.25  # 4-bit on both sides: coarse, but the right answer


def test_nvfp4_w4a4_uses_the_checkpoints_calibrated_input_scale():
    """nvfp4 activations have a static fp32 global scale: a ModelOpt checkpoint's ``input_scale``
    (amax / (448 * 6)) is used as it is; without one the activation's own amax gives it. A scale
    below the activation's amax saturates the largest values (codes at 6, block scales at 448)."""
    torch.manual_seed(5)
    w = torch.randn(48, 64) * 0.1
    x = (torch.randn(5, 64) * 2).to(torch.bfloat16)
    wq = Q.quantize_weight(w.to(torch.bfloat16), "nvfp4")
    launcher = LAUNCHERS["nvfp4_gemm"]
    dynamic = launcher.run(x, list(launcher.prepare(wq, "nvfp4", 48, 64).values()), None, "nvfp4", "nvfp4", None)
    calibrated = x.float().abs().amax() / (448 * 6)
    for scale in (calibrated * 3, calibrated / 8):  # x 3: other e4m3 roundings (a power of two would not)
        buffers = list(launcher.prepare({**wq, "input_scale": scale}, "nvfp4", 48, 64).values())
        assert len(buffers) == 4 and buffers[3].shape == ()
        got = launcher.run(x, buffers, None, "nvfp4", "nvfp4", None).float()
        xq = Q.quant_nvfp4(x.float(), scale)
        assert xq["weight_scale_2"] == scale and xq["weight_scale"].float().max() <= 448
        want = Q.dequantize_weight(xq, "nvfp4") @ Q.dequantize_weight(wq, "nvfp4").T
        assert float((got - want).norm() / want.norm()) < 1e-2
        assert not torch.allclose(got, dynamic.float(), rtol=1e-3, atol=1e-3)  # the scale was really used
    xq = Q.quant_nvfp4(x.float(), calibrated / 8)
    assert Q.unpack_nibbles(xq["weight_packed"]).max() == 15  # -6: the saturated code, largest magnitudes clipped


# --- split-K: K slices of whole tiles, partials summed in slice order by the last slice to arrive -----

SPLIT_CASES = [(wk, ak, fuse) for fuse in (False, True) for wk, ak in CASES if not (fuse and ak == "none")]


@pytest.mark.parametrize("split", [2, 4])
@pytest.mark.parametrize("wk,ak,fuse", SPLIT_CASES)
def test_split_k_matches_reference_and_unsplit(wk, ak, fuse, split):
    """K = 640 in 64-wide tiles is 10 tiles: split 2 gives 5 + 5, split 4 gives 3 + 3 + 3 + 1 (a short
    last slice, and slices starting mid scale group: 192 is not a multiple of 128)."""
    torch.manual_seed(100 * split + SPLIT_CASES.index((wk, ak, fuse)))  # hash() of str varies per run
    m, n, k = (3, 160, 640) if split == 4 else (5, 96, 640)
    x = torch.randn(m, k).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(n, k) * 0.05, wk)
    bias = torch.randn(n).to(torch.bfloat16)
    iscale = torch.tensor(0.02)
    cfg = KernelConfig(16, 32, 64, 8, 4, 2, split)
    out = scaled_mm(x, t["weight"], _scale(t), wk, ak, cfg, input_scale=iscale, bias=bias, fuse=fuse)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    assert _rel(out, reference(x, t, wk, ak, input_scale=iscale, bias=bias)) < TOL
    # against the unsplit kernel: only the fp32 summation order differs (int8: nothing does)
    one = scaled_mm(x, t["weight"], _scale(t), wk, ak, KernelConfig(16, 32, 64, 8, 4, 2, 1), input_scale=iscale,
                    bias=bias, fuse=fuse)
    if wk.startswith("int8") and ak != "none":
        assert torch.equal(out, one)
    else:
        assert _rel(out, one.float()) < 2e-3
    from quantc.runtime.kernels.common import tile_counters

    assert tile_counters(x.device, 0).abs().max().item() == 0  # the arrival counters are zero at rest again


def test_split_slices_clamps_and_never_leaves_a_slice_empty():
    from quantc.runtime.kernels.scaled_mm import split_slices

    assert split_slices(640, 64, 4) == 4  # 3 + 3 + 3 + 1
    assert split_slices(384, 64, 4) == 3  # 6 tiles: 2 + 2 + 2, a fourth slice would be empty
    assert split_slices(128, 64, 8) == 2  # more slices than tiles: one tile each
    assert split_slices(100, 64, 3) == 2  # ragged K: the last tile is partial
    assert split_slices(4096, 256, 1) == 1 and split_slices(64, 64, 4) == 1


@pytest.mark.parametrize("wk,ak", [("fp8_block_128x128", "fp8_dynamic_group_128"), ("mxfp8", "mxfp8"),
                                   ("int8_per_channel", "int8_dynamic_per_token"), ("fp8_per_tensor", "none")])
def test_split_k_larger_than_the_k_tiles(wk, ak):
    torch.manual_seed(12)
    x = torch.randn(3, 128).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(40, 128) * 0.05, wk)
    cfg = KernelConfig(16, 32, 128, 8, 4, 2, 8)  # one or four K tiles, eight slices asked for
    out = scaled_mm(x, t["weight"], _scale(t), wk, ak, cfg)
    assert _rel(out, reference(x, t, wk, ak)) < TOL


def test_split_k_is_deterministic_with_a_fused_per_token_quantizer():
    """Every slice computes the fused quantizer's per-row scales, so the slice that reduces has them:
    the result is bit-identical to the separate quantizer's and the same on every call."""
    torch.manual_seed(13)
    x = (torch.randn(7, 512) * 3).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(80, 512) * 0.05, "fp8_per_channel")
    cfg = KernelConfig(16, 32, 64, 8, 4, 2, 4)
    args = (x, t["weight"], t["weight_scale"], "fp8_per_channel", "fp8_dynamic_per_token", cfg)
    fused = scaled_mm(*args, fuse=True)
    assert torch.equal(fused, scaled_mm(*args, fuse=True))
    assert torch.equal(fused, scaled_mm(*args, fuse=False))


def test_quant_linear_with_a_split_k_decode_bucket():
    """The custom-op path: a plan table whose decode bucket says split_k = 4 gives the split_k = 1 output."""
    from quantc.runtime.modules import QuantLinear

    torch.manual_seed(14)
    n, k = 96, 512
    w = torch.randn(n, k) * 0.05
    bias = torch.randn(n)
    x = torch.randn(2, 3, k).to(torch.bfloat16)  # M = 6 rows: the decode bucket
    for kernel, wk, ak in [("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"),
                           ("int8_gemm", "int8_per_channel", "int8_dynamic_per_token"),
                           ("fp8_weight_only_gemm", "fp8_per_channel", "none")]:
        buffers = LAUNCHERS[kernel].prepare(Q.quantize_weight(w, wk), wk, n, k)
        outs = []
        for split in (4, 1):
            buckets = ((16, KernelConfig(16, 32, 64, 8, 4, 2, split)), (2**31 - 1, KernelConfig(32, 32, 64, 8, 4, 2)))
            mod = QuantLinear("l", kernel, wk, ak, n, k, dict(buffers), bias, buckets)
            outs.append(mod(x))
        assert outs[0].shape == (2, 3, n)
        assert _rel(outs[0], outs[1].float()) < 2e-3, kernel


def test_tune_measures_split_k_candidates():
    from quantc.runtime import tune as rt
    from quantc.tune import TuneJob

    job = TuneJob("fp8_scaled_gemm", 64, 512, "fp8_per_channel", "fp8_dynamic_per_token", 16, 16)
    ops = rt.make_operands(job, "cpu")
    for split in (2, 4, 8):
        us = rt.measure(job, KernelConfig(16, 32, 64, 8, 4, 2, split), ops, "cpu")
        assert us is not None and us > 0, split
    ops.reference = ops.reference * 1.5  # a split-K candidate that disagrees is still dropped
    assert rt.measure(job, KernelConfig(16, 32, 64, 8, 4, 2, 4), ops, "cpu") is None


def _fp8_module():
    from quantc.runtime.modules import QuantLinear

    torch.manual_seed(8)
    wk, ak = "fp8_per_channel", "fp8_dynamic_per_token"
    t = Q.quantize_weight(torch.randn(48, 128) * 0.1, wk)
    bufs = LAUNCHERS["fp8_scaled_gemm"].prepare(t, wk, 48, 128)
    return QuantLinear("m", "fp8_scaled_gemm", wk, ak, 48, 128, dict(bufs), None, ((2**31 - 1, CFG),))


def test_eager_forward_skips_the_custom_op(monkeypatch):
    """The op's dispatch costs ~30 us of host time a call: eager forwards call its body directly."""
    from quantc.runtime import modules

    mod = _fp8_module()
    x = torch.randn(3, 128).to(torch.bfloat16)
    want = mod(x)

    def refuse(*a, **k):
        raise AssertionError("eager forward went through the custom op")

    monkeypatch.setattr(modules, "dense", refuse)
    assert torch.equal(mod(x), want)


def test_torch_compile_traces_the_custom_op_in_one_graph():
    """Under torch.compile the forward is the opaque custom op (fullgraph: no break at the Triton launch)."""
    torch._dynamo.reset()
    mod = _fp8_module()
    x = torch.randn(3, 128).to(torch.bfloat16)
    want = mod(x)
    seen = []

    def backend(gm, inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    got = torch.compile(mod, backend=backend, fullgraph=True)(x)
    assert torch.equal(got, want)
    assert any("quantc.dense" in t for t in seen), seen


TMA_CASES = [
    ("fp8_per_channel", "fp8_dynamic_per_token", (40, 72, 160), 32),
    ("fp8_per_tensor", "fp8_dynamic_per_tensor", (33, 48, 64), 32),
    ("int8_per_channel", "int8_dynamic_per_token", (40, 72, 160), 32),
    ("fp8_block_128x128", "fp8_dynamic_group_128", (40, 200, 384), 128),  # ragged last N block
]


@pytest.mark.parametrize("wk,ak,shape,bk", TMA_CASES)
def test_persistent_tma_kernel_equals_the_tiled_kernel(wk, ak, shape, bk, monkeypatch):
    """The persistent TMA variant (large M on sm_90) gives the same bits as the tiled kernel: same
    per-K-step math; ragged M / N edges come from the descriptors' bounds, every tile visited once."""
    from quantc.runtime.kernels import scaled_mm_tma

    calls = []
    real = scaled_mm_tma.launch
    monkeypatch.setattr(scaled_mm_tma, "launch", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(9)
    m, n, k = shape
    t = Q.quantize_weight(torch.randn(n, k) * 0.1, wk)
    x = torch.randn(m, k).to(torch.bfloat16)
    bias = torch.randn(n).to(torch.bfloat16)
    cfg = KernelConfig(16, 32, bk, 4, 4, 2)
    tiled = scaled_mm(x, t["weight"], _scale(t).float(), wk, ak, cfg, bias=bias, tma=False)
    assert not calls
    persistent = scaled_mm(x, t["weight"], _scale(t).float(), wk, ak, cfg, bias=bias, tma=True)
    assert calls == [1]
    assert torch.equal(persistent, tiled)
    assert _rel(persistent, reference(x, t, wk, ak) + bias.float()) < TOL


def test_persistent_tma_kernel_declines_what_it_does_not_run():
    from quantc.runtime.kernels import scaled_mm as sm
    from quantc.runtime.kernels.scaled_mm_tma import supported

    cfg = KernelConfig(16, 32, 128, 4, 4, 2)
    assert supported(sm.A_ROW, sm.B_CHANNEL, False, 64, 128, cfg)
    assert not supported(sm.A_ROW, sm.B_CHANNEL, False, 64, 120, cfg)  # K row stride not 16-byte aligned
    assert not supported(sm.A_ROW, sm.B_CHANNEL, False, 60, 128, cfg)  # bf16 output row stride
    assert not supported(sm.A_ROW, sm.B_CHANNEL, False, 64, 128, KernelConfig(16, 32, 128, 4, 4, 2, 4))  # split-K
    assert not supported(sm.A_GROUP, sm.B_GROUP, True, 64, 128, cfg)  # mxfp8
    assert not supported(sm.A_NONE, sm.B_CHANNEL, False, 64, 128, cfg)  # weight-only


def test_persistent_tma_kernel_takes_only_contiguous_operands(monkeypatch):
    """Its descriptors assume row-major (M, K) and (N, K): a strided weight view runs the tiled kernel."""
    from quantc.runtime.kernels import scaled_mm_tma

    calls = []
    monkeypatch.setattr(scaled_mm_tma, "launch", lambda *a: calls.append(1))
    torch.manual_seed(10)
    wk, ak = "fp8_per_channel", "fp8_dynamic_per_token"
    t = Q.quantize_weight(torch.randn(96, 64) * 0.1, wk)
    x = torch.randn(8, 64).to(torch.bfloat16)
    strided = t["weight"][::2]  # every other row: (48, 64) with a row stride of 128
    out = scaled_mm(x, strided, _scale(t).float()[::2], wk, ak, CFG, tma=True)
    assert not calls
    ref = reference(x, {"weight": strided.contiguous(), "weight_scale": _scale(t)[::2].contiguous()}, wk, ak)
    assert _rel(out, ref) < TOL


def test_device_queries_are_made_once_per_device(monkeypatch):
    """The launch policies ask for the compute capability on every call: ``common.cc_major`` queries it
    once per device."""
    from quantc.runtime.kernels import common

    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: calls.append(d) or (9, 0))
    monkeypatch.setattr(common, "_CC_MAJORS", {})
    dev = torch.device("cuda", 3)
    assert common.cc_major(dev) == 9 and common.cc_major(dev) == 9 and calls == [dev]


def test_tma_policy_by_m_and_environment(monkeypatch):
    from quantc.runtime.kernels import scaled_mm as sm

    monkeypatch.delenv("QUANTC_TMA", raising=False)
    assert not sm._tma_policy(4096, torch.device("cpu"), sm.B_CHANNEL)  # no GPU: the tiled kernel
    monkeypatch.setattr(sm, "cc_major", lambda d: 9)  # an sm_90 GPU (common caches the real query)
    gpu = torch.device("cuda", 0)
    assert sm._tma_policy(1024, gpu, sm.B_CHANNEL) and sm._tma_policy(8192, gpu, sm.B_TENSOR)
    assert not sm._tma_policy(1023, gpu, sm.B_CHANNEL)  # decode and small prefill: tiled (split-K, fusion)
    assert not sm._tma_policy(8192, gpu, sm.B_BLOCK)  # block scales: the tiled kernel was faster
    monkeypatch.setenv("QUANTC_TMA", "1")
    assert sm._tma_policy(1, torch.device("cpu"), sm.B_BLOCK)
    monkeypatch.setenv("QUANTC_TMA", "0")
    assert not sm._tma_policy(8192, gpu, sm.B_CHANNEL)


# --- the decode GEMV (block_m = 1): CUDA-core products, one row a program, the same modes, scales, split-K --

GEMV_CASES = [(wk, ak) for wk, ak in CASES if ak != "mxfp8"]


@pytest.mark.parametrize("m,bn,bk,split", [(1, 32, 64, 1), (3, 32, 64, 3), (2, 16, 128, 4), (3, 64, 32, 2)])
@pytest.mark.parametrize("wk,ak", GEMV_CASES)
def test_gemv_matches_reference_and_the_tile_kernel(wk, ak, m, bn, bk, split):
    """N = 160 ends in a partial tile; K = 640 is 10 tiles of 64 (split 3: 4 + 4 + 2), 5 of 128 (split 4:
    2 + 2 + 1, a slice dropped) or 20 of 32 (a step of two vectors a row)."""
    torch.manual_seed(GEMV_CASES.index((wk, ak)) * 10 + m + split)
    n, k = 160, 640
    x = torch.randn(m, k).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(n, k) * 0.05, wk)
    bias = torch.randn(n).to(torch.bfloat16)
    iscale = torch.tensor(0.02)
    cfg = KernelConfig(1, bn, bk, 8, 4, 1, split)
    out = scaled_mm(x, t["weight"], _scale(t), wk, ak, cfg, input_scale=iscale, bias=bias)
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    assert _rel(out, reference(x, t, wk, ak, input_scale=iscale, bias=bias)) < TOL
    tile = scaled_mm(x, t["weight"], _scale(t), wk, ak, KernelConfig(16, 32, 64, 8, 4, 2), input_scale=iscale, bias=bias)
    if wk.startswith("int8") and ak != "none":
        assert torch.equal(out, tile)  # int32 sums: exact in both kernels
    else:
        assert _rel(out, tile.float()) < 2e-3
    from quantc.runtime.kernels.common import tile_counters

    assert tile_counters(x.device, 0).abs().max().item() == 0


def test_gemv_block_scales_across_a_block_row_boundary():
    """A 256-wide N tile spans two 128-row weight blocks (a scale per row, not one per K step), and
    N = 576 ends in a ragged block."""
    torch.manual_seed(21)
    x = torch.randn(1, 384).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(576, 384) * 0.05, "fp8_block_128x128")
    t["weight_scale_inv"] = t["weight_scale_inv"] * torch.rand_like(t["weight_scale_inv"]).add(0.5)  # distinct blocks
    for ak in ("fp8_dynamic_group_128", "none"):
        want = reference(x, t, "fp8_block_128x128", ak)
        for bn in (32, 256):
            out = scaled_mm(x, t["weight"], t["weight_scale_inv"], "fp8_block_128x128", ak, KernelConfig(1, bn, 128, 8, 4, 1))
            assert _rel(out, want) < TOL, (ak, bn)


def test_gemv_takes_strided_operands(monkeypatch):
    """A column slice of a wider activation (row stride != K) runs on the GEMV; a weight whose K is not the
    unit-stride axis runs on the tile kernel (the GEMV would copy the weight every call)."""
    from quantc.runtime.kernels import scaled_gemv

    launched = []
    real = scaled_gemv.launch
    monkeypatch.setattr(scaled_gemv, "launch", lambda *a, **kw: launched.append(a[1].stride(1)) or real(*a, **kw))
    torch.manual_seed(23)
    wide = torch.randn(2, 512).to(torch.bfloat16)
    x = wide[:, 128:384]
    t = Q.quantize_weight(torch.randn(64, 256) * 0.05, "fp8_per_channel")
    w_t = t["weight"].t().contiguous().t()  # same values, K no longer the unit stride
    for w in (t["weight"], w_t):
        out = scaled_mm(x, w, t["weight_scale"], "fp8_per_channel", "none", KernelConfig(1, 16, 128, 8, 4, 1))
        assert _rel(out, reference(x, t, "fp8_per_channel", "none")) < TOL
    assert launched == [1]  # only the K-contiguous weight took the GEMV


def test_gemv_dispatch_falls_back_to_tiles_where_it_does_not_run():
    from quantc.runtime.kernels import scaled_gemv

    w = torch.zeros(64, 256)
    assert scaled_gemv.runs(KernelConfig(1, 32, 64, 8, 4, 2), mx=False, fused=False, weight=w)
    assert not scaled_gemv.runs(KernelConfig(2, 32, 64, 8, 4, 2), mx=False, fused=False, weight=w)
    assert not scaled_gemv.runs(KernelConfig(1, 32, 64, 8, 4, 2), mx=True, fused=False, weight=w)
    assert not scaled_gemv.runs(KernelConfig(1, 32, 64, 8, 4, 2), mx=False, fused=True, weight=w)
    assert not scaled_gemv.runs(KernelConfig(1, 32, 64, 8, 4, 2), mx=False, fused=False, weight=w.t().contiguous().t())
    # those configs still compute the right thing, as 16-row tiles
    torch.manual_seed(22)
    x = torch.randn(2, 256).to(torch.bfloat16)
    for wk, ak, fuse in (("mxfp8", "mxfp8", False), ("fp8_per_channel", "fp8_dynamic_per_token", True),
                         ("fp8_block_128x128", "fp8_dynamic_group_128", True),
                         ("int8_per_channel", "int8_dynamic_per_token", False)):
        t = Q.quantize_weight(torch.randn(64, 256) * 0.05, wk)
        for bm in (1, 8):
            out = scaled_mm(x, t["weight"], _scale(t), wk, ak, KernelConfig(bm, 32, 64, 8, 4, 2), fuse=fuse)
            assert _rel(out, reference(x, t, wk, ak)) < TOL, (wk, bm)


@pytest.mark.parametrize("wk,ak", [("fp8_per_channel", "fp8_dynamic_per_token"), ("int8_per_channel", "int8_dynamic_per_token"),
                                   ("fp8_block_128x128", "fp8_dynamic_group_128"), ("fp8_per_channel", "none")])
def test_gemv_prefetch_gives_the_same_bits(wk, ak):
    """num_stages >= 2 loads the next K step before this step's products: the same sums in the same
    order, so the same output bit for bit, with slices of one, two and three steps and a ragged K (but
    for 128 x 128 blocks, whose K the compiler keeps a multiple of 128)."""
    torch.manual_seed(40)
    k = 768 if wk == "fp8_block_128x128" else 704  # 704 = 5.5 tiles of 128
    x = torch.randn(2, k).to(torch.bfloat16)
    t = Q.quantize_weight(torch.randn(80, k) * 0.05, wk)
    for split in (1, 2, 4):
        plain = scaled_mm(x, t["weight"], _scale(t), wk, ak, KernelConfig(1, 16, 128, 8, 4, 1, split))
        ahead = scaled_mm(x, t["weight"], _scale(t), wk, ak, KernelConfig(1, 16, 128, 8, 4, 2, split))
        assert torch.equal(plain, ahead), split
        assert _rel(ahead, reference(x, t, wk, ak)) < TOL


def test_warp_specialized_block_probe_kernel_equals_the_tiled_kernel():
    """bench/ws_probe.py's experiment (not in the runtime): its kernel, both tile shapes it offers and with
    or without warp specialization, runs the tiled kernel's per-step math: the same output bit for bit,
    ragged M and N, bias included (the GPU run found max difference 0.0 too)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import ws_probe

    torch.manual_seed(3)
    m, n, k = 70, 200, 384
    t = Q.quantize_weight(torch.randn(n, k) * 0.05, "fp8_block_128x128")
    x = torch.randn(m, k).to(torch.bfloat16)
    xg, sg = quantize_activation(x, "fp8_dynamic_group_128")
    bias = torch.randn(n).to(torch.bfloat16)
    ws = t["weight_scale_inv"].float()
    want = scaled_mm(xg, t["weight"], ws, "fp8_block_128x128", "fp8_dynamic_group_128",
                     KernelConfig(16, 64, 128, 8, 4, 2), x_scale=sg, bias=bias, tma=False)
    for bm, bn, on in ((128, 128, True), (64, 64, False)):
        out = torch.empty(m, n, dtype=torch.bfloat16)
        got = ws_probe.launch_ws(xg, t["weight"], sg, ws, bias, KernelConfig(bm, bn, 128, 8, 4, 3), out, ws=on)
        assert torch.equal(got, want), (bm, bn, on)


def test_workspaces_are_per_device_and_stream(monkeypatch):
    """Arrival counters, the amax pass's partials and the 4-bit split-K sums are keyed by device and
    stream (``common.workspace_key``): launches on two streams may run at once and must not share a
    counter. Each stream's set is allocated once and reused; off CUDA the stream part is None."""
    from quantc.runtime.kernels import act_quant, common, wo_mma4

    assert common.workspace_key(torch.device("cpu")) == ("cpu", None, None)
    monkeypatch.setattr(common, "current_stream", lambda device: 1234)
    assert common.workspace_key(torch.device("cuda", 1)) == ("cuda", 1, 1234)
    stream = ["a"]
    monkeypatch.setattr(common, "stream_key", lambda device: stream[0])
    cpu = torch.device("cpu")
    on_a = (common.tile_counters(cpu, 4), act_quant._amax_parts(cpu, 4), wo_mma4.split_workspace(cpu, 64, 4)[0])
    stream[0] = "b"
    on_b = (common.tile_counters(cpu, 4), act_quant._amax_parts(cpu, 4), wo_mma4.split_workspace(cpu, 64, 4)[0])
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(on_a, on_b))
    stream[0] = "a"
    again = (common.tile_counters(cpu, 4), act_quant._amax_parts(cpu, 4), wo_mma4.split_workspace(cpu, 64, 4)[0])
    assert all(a is b for a, b in zip(on_a, again))
