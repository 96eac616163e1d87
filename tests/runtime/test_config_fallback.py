"""A tuned config that fails at run time falls back to the kernel's default and warns once."""

import warnings

import torch

from quantc.plan import KernelConfig
from quantc.runtime import quantize as Q
from quantc.runtime.modules import _FAILED, QuantLinear
from quantc.runtime.registry import LAUNCHERS


def _layer(buckets):
    torch.manual_seed(0)
    w = (torch.randn(64, 128) * 0.05).to(torch.bfloat16)
    tensors = Q.quantize_weight(w, "fp8_per_channel")
    buffers = LAUNCHERS["fp8_scaled_gemm"].prepare(tensors, "fp8_per_channel", 64, 128)
    return QuantLinear("t", "fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token", 64, 128, buffers, None, buckets)


def test_failing_tuned_config_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setenv("QUANTC_LAUNCH_MEMO", "0")  # every call through run_dense (the memo: below)
    x = torch.randn(4, 128).to(torch.bfloat16)
    good = _layer(((2**31 - 1, KernelConfig(16, 32, 32, num_warps=4, num_stages=2)),))(x)
    bad_cfg = KernelConfig(16, 32, 32, num_warps=4, num_stages=7)
    real = LAUNCHERS["fp8_scaled_gemm"].run
    calls = []

    def flaky(x, buffers, config, *rest):
        calls.append(config)
        if config == bad_cfg:
            raise RuntimeError("out of resource: shared memory")
        return real(x, buffers, config, *rest)

    monkeypatch.setitem(LAUNCHERS, "fp8_scaled_gemm", LAUNCHERS["fp8_scaled_gemm"].__class__(
        LAUNCHERS["fp8_scaled_gemm"].prepare, flaky))
    _FAILED.clear()
    layer = _layer(((2**31 - 1, bad_cfg),))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = layer(x)
        out2 = layer(x)
    msgs = [str(w.message) for w in caught if "quantc: kernel fp8_scaled_gemm failed" in str(w.message)]
    assert len(msgs) == 1 and "out of resource" in msgs[0]
    assert calls == [bad_cfg, None, None]  # tried once, then straight to the default
    assert torch.allclose(out1.float(), good.float(), rtol=2e-2, atol=2e-2) and torch.equal(out1, out2)
    # with launch_memo: the first call records the fallback's launches, later calls replay them untried
    monkeypatch.delenv("QUANTC_LAUNCH_MEMO")
    _FAILED.clear()
    calls.clear()
    layer = _layer(((2**31 - 1, bad_cfg),))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = [layer(x) for _ in range(3)]
    assert calls == [bad_cfg, None] and all(torch.equal(o, out1) for o in outs)
    _FAILED.clear()
