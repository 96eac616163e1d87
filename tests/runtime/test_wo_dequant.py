"""4-bit weights at prefill sizes (wo_dequant): the dequantized bf16 operand equals the reference's
values rounded once to bf16, for every format, group size, zero points and K tiles of 128 / 64 / 32; the
launcher takes this path from DEQUANT_MIN_M (256) on a GPU only."""

import pytest
import torch

from quantc.runtime.kernels import wo_dequant as wd
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_gemm as wg

KEYS = ["int4_group_32", "int4_group_64_asym", "int4_group_128", "int4_group_128_asym", "mxfp4", "nvfp4"]


def _group(key):
    return int(key.split("_")[2]) if key.startswith("int4") else (32 if key == "mxfp4" else 16)


# K tiles of 128, 64 and 32, with every format whose groups divide K (the compiler refuses the rest)
CASES = [(key, k) for key in KEYS for k in (256, 320, 96) if k % _group(key) == 0]


@pytest.mark.parametrize("key,k", CASES)
def test_dequantized_operand_is_the_reference_rounded_to_bf16(key, k):
    torch.manual_seed(12)
    w = wf.quantize(torch.randn(40, k) * 3, key)  # 40 rows: a ragged last N block
    got = wd.dequantize_bf16(w)
    assert got.shape == (40, k) and got.dtype == torch.bfloat16
    assert torch.equal(got, wf.dequantize(w).to(torch.bfloat16)), key


def test_every_int4_code_with_zero_points():
    """Rows spanning 0.1x-8x the same ramp hit every asymmetric code and many zero points."""
    torch.manual_seed(13)
    base = torch.linspace(-1, 1, 32).repeat(16, 1) * torch.linspace(0.1, 8, 16)[:, None] + torch.linspace(-2, 2, 16)[:, None]
    w = wf.quantize(base, "int4_group_32_asym")
    codes = torch.cat([(w.data.view(torch.uint8) >> s) & 15 for s in (0, 4)])
    assert set(codes.unique().tolist()) == set(range(16))
    assert torch.equal(wd.dequantize_bf16(w), wf.dequantize(w).to(torch.bfloat16))


def test_launcher_takes_the_dequant_path_from_the_threshold(monkeypatch):
    seen = []
    real = wg.launch_dequant
    monkeypatch.setattr(wg, "launch_dequant", lambda x, w: seen.append(x.shape[0]) or real(x, w))
    torch.manual_seed(14)
    w = wf.quantize(torch.randn(48, 256), "int4_group_128")
    x = torch.randn(40, 256).bfloat16()
    cfg = wg.WoConfig(32, 32, 128)
    monkeypatch.delenv("QUANTC_DEQUANT_MIN_M", raising=False)
    wg.launch(x, w, cfg)
    assert seen == []  # on the CPU the tensor-core kernel runs at every M
    monkeypatch.setenv("QUANTC_DEQUANT_MIN_M", "33")
    out = wg.launch(x, w, cfg)
    assert seen == [40]
    ref = wg.reference(x, w)
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 1e-2
    assert not wd.uses_dequant(32, torch.device("cpu"))


def test_policy_on_a_gpu(monkeypatch):
    """On a GPU from DEQUANT_MIN_M (256, the crossover bench/dequant_probe.py measured) on; the variable
    overrides the threshold either way; DEQUANT_DEFAULT_ON = False leaves only the variable."""
    monkeypatch.delenv("QUANTC_DEQUANT_MIN_M", raising=False)
    gpu = torch.device("cuda", 0)
    assert wd.DEQUANT_MIN_M == 256
    assert wd.uses_dequant(256, gpu) and wd.uses_dequant(8192, gpu) and not wd.uses_dequant(255, gpu)
    assert not wd.uses_dequant(4096, torch.device("cpu"))
    monkeypatch.setenv("QUANTC_DEQUANT_MIN_M", "100000")
    assert not wd.uses_dequant(8192, gpu)
    monkeypatch.delenv("QUANTC_DEQUANT_MIN_M")
    monkeypatch.setattr(wd, "DEQUANT_DEFAULT_ON", False)
    assert not wd.uses_dequant(8192, gpu)


@pytest.mark.parametrize("key", KEYS)
def test_expert_stack_in_one_launch(key):
    """A stack of experts (E, N, K) dequantizes as E * N rows in one launch, nvfp4 with each expert's own
    global scale: each expert equals the reference's values rounded once to bf16."""
    torch.manual_seed(15)
    w = wf.quantize(torch.randn(3, 40, 128) * torch.tensor([0.5, 3.0, 40.0])[:, None, None], key)
    if key == "nvfp4":
        assert w.global_scale.numel() == 3 and len(set(w.global_scale.tolist())) == 3  # one an expert
    got = wd.dequantize_bf16(w)
    assert got.shape == (3, 40, 128) and got.dtype == torch.bfloat16
    assert torch.equal(got, wf.dequantize(w).to(torch.bfloat16)), key
