"""Checkpoint layouts: tensors written in each format's real layout (packing done here, independently
of the loader), saved to safetensors, loaded into quantc's layout and checked value by value and
through the weight-only GEMM."""

import pytest
import torch
from safetensors.torch import save_file

from quantc.runtime import checkpoint_layouts as cl
from quantc.runtime import quantize as qz
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_gemm as wg

N, K, G = 32, 128, 32
CFG = wg.WoConfig(16, 32, 128)


def _pack8(codes: torch.Tensor, dim: int, order=range(8)) -> torch.Tensor:
    """Eight 4-bit codes along ``dim`` -> one int32, nibble i = element order[i] (written longhand)."""
    c = codes.to(torch.int64).movedim(dim, -1)
    c = c.reshape(*c.shape[:-1], -1, 8)
    word = sum(c[..., e] << (4 * i) for i, e in enumerate(order))
    word = torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)
    return word.movedim(-1, dim)


def _check_gemm(w: wf.WoWeight, dense: torch.Tensor):
    torch.manual_seed(0)
    x = torch.randn(3, dense.shape[1]).bfloat16()
    ref = x.float() @ dense.T
    out = wg.launch(x, w, CFG).float()
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-2


def test_awq(tmp_path):
    torch.manual_seed(1)
    codes = torch.randint(0, 16, (K, N))
    zeros = torch.randint(0, 16, (K // G, N))
    scales = (torch.rand(K // G, N) + 0.5).half()
    dense = ((codes - zeros.repeat_interleave(G, 0)) * scales.float().repeat_interleave(G, 0)).T
    sd = {"l.qweight": _pack8(codes, 1, cl.AWQ_ORDER), "l.qzeros": _pack8(zeros, 1, cl.AWQ_ORDER), "l.scales": scales}
    save_file(sd, tmp_path / "awq.safetensors")
    w = cl.load(tmp_path / "awq.safetensors", "l", "awq", group=G)
    assert torch.allclose(wf.dequantize(w), dense, rtol=2**-8)  # scales go fp16 -> bf16
    _check_gemm(w, wf.dequantize(w))


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq(tmp_path, act_order):
    torch.manual_seed(2)
    codes = torch.randint(0, 16, (K, N))
    zeros = torch.randint(1, 16, (K // G, N))
    scales = (torch.rand(K // G, N) + 0.5).bfloat16()
    g_idx = torch.arange(K) // G
    if act_order:
        g_idx = g_idx[torch.randperm(K)]
    dense = ((codes - zeros[g_idx]) * scales.float()[g_idx]).T  # (N, K) in the model's K order
    sd = {"l.qweight": _pack8(codes, 0), "l.qzeros": _pack8(zeros - 1, 1), "l.scales": scales,
          "l.g_idx": g_idx.to(torch.int32)}
    save_file(sd, tmp_path / "gptq.safetensors")
    w = cl.load(tmp_path / "gptq.safetensors", "l", "gptq", group=G)
    assert (w.k_perm is not None) == act_order
    perm = w.k_perm if act_order else torch.arange(K)
    assert torch.equal(wf.dequantize(w), dense[:, perm])
    _check_gemm(w, dense)  # launch() permutes the input itself


def test_gptq_rejects_uneven_groups():
    codes = torch.randint(0, 16, (K, N))
    g_idx = torch.zeros(K, dtype=torch.int32)
    g_idx[: K // 2] = 1
    with pytest.raises(cl.LayoutError, match="every group must hold exactly 32 input rows"):
        cl.gptq(_pack8(codes, 0), torch.zeros(K // G, N // 8, dtype=torch.int32), torch.ones(K // G, N), G, g_idx)


def test_gpt_oss_mxfp4(tmp_path):
    torch.manual_seed(3)
    e = 2
    codes = torch.randint(0, 16, (e, N, K), dtype=torch.uint8)
    scales = torch.randint(118, 136, (e, N, K // 32), dtype=torch.uint8)
    blocks = qz.pack_nibbles(codes).reshape(e, N, K // 32, 16)
    dense = qz.e2m1_to_float(codes) * torch.exp2(scales.float() - 127).repeat_interleave(32, -1)
    save_file({"m.gate_up_proj_blocks": blocks, "m.gate_up_proj_scales": scales}, tmp_path / "oss.safetensors")
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "oss.safetensors")
    w = cl.gpt_oss_mxfp4(sd["m.gate_up_proj_blocks"], sd["m.gate_up_proj_scales"])
    assert torch.equal(wf.dequantize(w), dense)
    wd = cl.gpt_oss_mxfp4(blocks, scales, deinterleave=True)
    assert torch.equal(wf.dequantize(wd), torch.cat([dense[:, 0::2], dense[:, 1::2]], 1))
    single = cl.gpt_oss_mxfp4(blocks[:1], scales[:1])
    _check_gemm(wf.WoWeight(single.fmt, N, K, single.data[0], single.scale[0], single.sfmt, 32), dense[0])


@pytest.mark.parametrize("asym", [False, True])
def test_compressed_tensors_int4(tmp_path, asym):
    torch.manual_seed(4)
    q = torch.randint(-8, 8, (N, K))
    z = torch.randint(-8, 8, (N, K // G)) if asym else torch.zeros(N, K // G, dtype=torch.int64)
    scale = (torch.rand(N, K // G) + 0.5).bfloat16()
    dense = (q - z.repeat_interleave(G, 1)) * scale.float().repeat_interleave(G, 1)
    sd = {"l.weight_packed": _pack8(q + 8, 1), "l.weight_scale": scale}
    if asym:
        sd["l.weight_zero_point"] = _pack8(z + 8, 0)
    save_file(sd, tmp_path / "ct.safetensors")
    w = cl.load(str(tmp_path / "ct.safetensors"), "l", "ct_int4", group=G)
    assert (w.zeros is not None) == asym
    assert torch.equal(wf.dequantize(w), dense)
    _check_gemm(w, dense)


def test_compressed_tensors_nvfp4(tmp_path):
    torch.manual_seed(5)
    codes = torch.randint(0, 16, (N, K), dtype=torch.uint8)
    scale = (torch.rand(N, K // 16) * 4 + 0.25).to(torch.float8_e4m3fn)
    gscale = torch.tensor([448.0 * 6 / 3.0])
    dense = qz.e2m1_to_float(codes) * scale.float().repeat_interleave(16, 1) / gscale
    sd = {"l.weight_packed": qz.pack_nibbles(codes), "l.weight_scale": scale, "l.weight_global_scale": gscale}
    save_file(sd, tmp_path / "nv.safetensors")
    w = cl.load(tmp_path / "nv.safetensors", "l", "ct_nvfp4")
    assert torch.allclose(wf.dequantize(w), dense, rtol=1e-6)
    _check_gemm(w, dense)


def test_layout_errors_name_the_tensor():
    with pytest.raises(cl.LayoutError, match=r"qzeros: shape \(3, 4\), expected \(4, 4\)"):
        cl.awq(torch.zeros(K, N // 8, dtype=torch.int32), torch.zeros(3, 4, dtype=torch.int32), torch.ones(4, N), G)
    with pytest.raises(cl.LayoutError, match=r"missing tensor\(s\) l.qzeros"):
        cl.load({"l.qweight": torch.zeros(1), "l.scales": torch.zeros(1)}, "l", "gptq", group=G)
    with pytest.raises(cl.LayoutError, match="unknown checkpoint layout 'marlin'"):
        cl.load({}, "l", "marlin")
    with pytest.raises(cl.LayoutError, match=r"\*_blocks: shape \(4, 8\), expected \(E, N, K/32, 16\)"):
        cl.gpt_oss_mxfp4(torch.zeros(4, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(cl.LayoutError, match="weight_scale: dtype torch.float32, expected torch.float8_e4m3fn"):
        cl.ct_nvfp4(torch.zeros(N, K // 2, dtype=torch.uint8), torch.zeros(N, K // 16), torch.ones(1))
