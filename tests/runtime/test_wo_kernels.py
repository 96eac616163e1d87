"""Weight-only GEMMs (int4 / mxfp4 / nvfp4) against
plain-torch references on the dequantized operands, under TRITON_INTERPRET=1."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (also set by the conftest)

import pytest
import torch
import triton
import triton.language as tl

from quantc.runtime import quantize as qz
from quantc.runtime.kernels import nibble_decode as nd
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_gemm as wg
from quantc.runtime.kernels import wo_mx

CFG = wg.WoConfig(16, 32, 128)
# bf16 output rounding (2**-8 relative) plus the fp32 summation order
TOL = 1e-2


def _rel_err(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize("key", ["int4_group_32", "int4_group_64_asym", "int4_group_128", "int4_group_128_asym",
                                 "mxfp4", "nvfp4"])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_wo_gemm_matches_reference(key, m):
    torch.manual_seed(m)
    n, k = 40, 256
    w = wf.quantize(torch.randn(n, k), key)
    x = torch.randn(m, k).bfloat16()
    assert _rel_err(wg.launch(x, w, CFG), wg.reference(x, w)) < TOL


@pytest.mark.parametrize("cfg", [wg.WoConfig(16, 16, 256, split_k=2), wg.WoConfig(16, 64, 512, split_k=1),
                                 wg.WoConfig(32, 32, 128, split_k=3)])
def test_wo_gemm_configs_and_split_k(cfg):
    torch.manual_seed(1)
    n, k = 72, 512
    for key in ("int4_group_128", "nvfp4"):
        w = wf.quantize(torch.randn(n, k), key)
        for m in (1, 16):
            x = torch.randn(2, m, k).bfloat16()  # leading dims are flattened
            out = wg.launch(x, w, cfg)
            assert out.shape == (2, m, n) and out.dtype == torch.bfloat16
            assert _rel_err(out, wg.reference(x.reshape(-1, k), w).reshape(2, m, n)) < TOL


def test_split_k_reduces_in_one_launch_and_leaves_the_workspace_zeroed():
    """The last K slice to arrive writes the output and zeroes the shared workspace and counters, so
    back-to-back calls (different shapes too) see a clean workspace and repeat bit for bit."""
    from quantc.runtime.kernels import wo_mma4

    torch.manual_seed(3)
    cfg = wg.WoConfig(16, 16, 128, split_k=4)
    w = wf.quantize(torch.randn(48, 512), "int4_group_128")
    x = torch.randn(3, 512).bfloat16()
    first = wo_mma4.launch_mma4(x, w, cfg)
    ws, cnt = wo_mma4.split_workspace(x.device, 0, 0)
    assert ws.abs().max().item() == 0 and cnt.abs().max().item() == 0
    other = wf.quantize(torch.randn(32, 256), "mxfp4")
    wo_mma4.launch_mma4(torch.randn(5, 256).bfloat16(), other, cfg)
    assert torch.equal(wo_mma4.launch_mma4(x, w, cfg), first)
    assert _rel_err(first, wg.reference(x, w)) < TOL
    ws, cnt = wo_mma4.split_workspace(x.device, 0, 0)
    assert ws.abs().max().item() == 0 and cnt.abs().max().item() == 0


def test_wo_layout_is_the_checkpoint_bytes():
    torch.manual_seed(2)
    t = qz.quantize_weight(torch.randn(8, 64), "int4_group_32")
    w = wf.from_tensors("int4_group_32", t, 8, 64)
    assert w.data.dtype == torch.int32 and w.data.shape == (8, 8)
    assert torch.equal(w.data.view(torch.uint8), t["weight_packed"])
    assert torch.equal(wf.dequantize(w), qz.dequantize_weight(t, "int4_group_32"))


def _identity_product(w, k):
    """x = I (k x k) through the GEMM (dot path) returns deq(w).T exactly when the values fit bf16."""
    return wg.launch(torch.eye(k, dtype=torch.bfloat16), w, wg.WoConfig(16, 64, 128)).float().T


@triton.jit
def _decode_table_kernel(c_ptr, e_ptr, out_ptr):
    r = tl.arange(0, 16)[:, None] * 256 + tl.arange(0, 256)[None, :]
    c = tl.load(c_ptr + r)
    e = tl.load(e_ptr + r)
    tl.store(out_ptr + r, nd.e2m1_to_f32(c) * wf.e8m0_bits_to_f32(e))


def test_every_e2m1_code_times_every_e8m0_scale():
    """The in-kernel bit-trick decoders against the reference codecs: all 16 x 256 pairs, bit-exact
    (inf where the product overflows fp32, NaN for e8m0 code 255)."""
    c = torch.arange(16, dtype=torch.int32)[:, None].expand(16, 256).contiguous()
    e = torch.arange(256, dtype=torch.int32).to(torch.uint8)[None, :].expand(16, 256).contiguous()
    out = torch.empty(16, 256)
    _decode_table_kernel[(1,)](c, e, out)
    want = qz.e2m1_to_float(c) * qz.e8m0_to_float(e)
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    ok = ~torch.isnan(want)
    assert torch.equal(out[ok], want[ok])
    assert out[2, 0].item() == 2.0 ** -127  # code 0 is 2**-127, an fp32 subnormal
    assert torch.isnan(out[:, 255]).all()


def test_mxfp4_gemm_over_all_codes_and_scales():
    # row r has e8m0 scale code r + 2 (products stay normal and finite), columns cycle all 16 codes
    n, k = 251, 32
    codes = (torch.arange(k) % 16).to(torch.uint8).expand(n, k)
    scale = (torch.arange(n, dtype=torch.int32) + 2).to(torch.uint8).reshape(n, 1)
    t = {"weight_packed": qz.pack_nibbles(codes), "weight_scale": scale}
    w = wf.from_tensors("mxfp4", t, n, k)
    want = (qz.e2m1_to_float(codes) * qz.e8m0_to_float(scale)).bfloat16().float()
    assert torch.equal(_identity_product(w, k), want)
    x = torch.zeros(1, k, dtype=torch.bfloat16)
    x[0, 3] = 1.0  # M = 1 picks column 3 (code 3 = 1.5)
    assert torch.equal(wg.launch(x, w, CFG).float()[0], want[:, 3])


def test_every_e4m3_scale_of_nvfp4():
    # every finite e4m3 scale code, subnormals included (0x7f / 0xff are NaN, never a real scale)
    byte = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.int32).to(torch.uint8)
    n, k = byte.numel(), 32
    codes = (torch.arange(k) % 16).to(torch.uint8).expand(n, k)
    scale = byte.view(torch.float8_e4m3fn).reshape(n, 1).expand(n, 2)
    t = {"weight_packed": qz.pack_nibbles(codes), "weight_scale": scale.contiguous(),
         "weight_scale_2": torch.tensor(0.5)}
    w = wf.from_tensors("nvfp4", t, n, k)
    want = (qz.e2m1_to_float(codes) * scale.float().repeat_interleave(16, 1) * 0.5).bfloat16().float()
    assert torch.equal(_identity_product(w, k), want)


@pytest.mark.parametrize("zero", [False, True])
def test_every_int4_code(zero):
    n, k = 16, 128
    codes = (torch.arange(k) % 16).to(torch.uint8).expand(n, k)
    t = {"weight_packed": qz.pack_nibbles(codes), "weight_scale": torch.linspace(0.5, 2, n).bfloat16().reshape(n, 1)}
    t["weight_scale"] = t["weight_scale"].expand(n, k // 128).contiguous()
    key = "int4_group_128_asym" if zero else "int4_group_128"
    if zero:
        t["weight_zero_point"] = torch.arange(n, dtype=torch.uint8).reshape(n, 1)
    w = wf.from_tensors(key, t, n, k)
    assert torch.equal(wf.dequantize(w), qz.dequantize_weight(t, key))
    # code x bf16 scale needs more bits than bf16; one bf16 ulp (the interpreter truncates, GPUs round)
    exact = qz.dequantize_weight(t, key)
    assert ((_identity_product(w, k) - exact).abs() <= exact.abs() * 2.0 ** -7).all()
    x = torch.randn(1, k).bfloat16()  # M = 1 too
    assert _rel_err(wg.launch(x, w, CFG), wg.reference(x, w)) < TOL


def test_mxfp4_mxfp8_emulated_matches_reference():
    torch.manual_seed(3)
    n, k = 48, 128
    w = wf.quantize(torch.randn(n, k), "mxfp4")
    for m in (1, 20):
        x = torch.randn(m, k).bfloat16() * 3
        out = wo_mx.launch(x, w, CFG)
        assert _rel_err(out, wo_mx.reference(x, w)) < TOL
        # the activations really are rounded to mxfp8 (differs from the bf16-activation product)
        assert not torch.allclose(wo_mx.reference(x, w), wg.reference(x, w))


def test_mxfp8_qdq_is_bit_exact():
    torch.manual_seed(4)
    x = torch.randn(5, 96).bfloat16() * torch.logspace(-3, 3, 96).bfloat16()
    q, e = qz.quant_mx(x.float(), 32)
    want = (q.float() * qz.e8m0_to_float(e).repeat_interleave(32, 1)).bfloat16()
    assert torch.equal(wo_mx.qdq_mxfp8(x), want)


def test_wo_gemm_errors_name_the_shapes():
    w = wf.quantize(torch.randn(8, 64), "int4_group_32")
    with pytest.raises(ValueError, match="activation has K = 32, the weight K = 64"):
        wg.launch(torch.randn(1, 32).bfloat16(), w, CFG)
    with pytest.raises(ValueError, match="wo_gemm runs 4-bit weights .* fp8 / int8 weight-only layers run"):
        wg.launch(torch.randn(1, 64).bfloat16(), wf.quantize(torch.randn(8, 64), "fp8_per_channel"), CFG)
    with pytest.raises(ValueError, match="no weight-only layout for weight key 'fp4'"):
        wf.from_tensors("fp4", {}, 8, 64)


def test_custom_op_registration():
    w = wf.quantize(torch.randn(32, 64), "mxfp4")
    x = torch.randn(2, 64).bfloat16()
    args = (x, w.data, w.scale, w.zeros, w.global_scale, w.fmt, w.sfmt, w.pack, w.group, w.row_block, w.n,
            16, 32, 64, 4, 3, 1)
    torch.library.opcheck(torch.ops.quantc.wo_gemm.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_registry_launchers_run_the_weight_only_ids():
    from quantc.runtime.registry import LAUNCHERS

    torch.manual_seed(6)
    for kid, key, act in (("int4_weight_only_gemm", "int4_group_64_asym", "none"),
                          ("fp4_weight_only_gemm", "nvfp4", "none"),
                          ("mxfp4_mxfp8_gemm_emulated", "mxfp4", "mxfp8")):
        t = qz.quantize_weight(torch.randn(24, 128), key)
        bufs = LAUNCHERS[kid].prepare(t, key, 24, 128)
        x = torch.randn(3, 128).bfloat16()
        bias = torch.randn(24).bfloat16()
        out = LAUNCHERS[kid].run(x, list(bufs.values()), None, key, act, bias)
        w = wf.from_tensors(key, t, 24, 128)
        ref = (wo_mx.reference(x, w) if act == "mxfp8" else wg.reference(x, w)) + bias.float()
        assert _rel_err(out, ref) < TOL
    with pytest.raises(ValueError, match="MoE kernels run a whole MoE block"):
        LAUNCHERS["moe_weight_only"].prepare({}, "mxfp4", 8, 8)
    with pytest.raises(ValueError, match="weight key 'fp8_per_tensor' is not a 4-bit weight-only format"):
        LAUNCHERS["fp4_weight_only_gemm"].prepare({}, "fp8_per_tensor", 8, 8)
