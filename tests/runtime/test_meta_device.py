"""apply() on a model whose parameters are on the meta device: filled module by module from the
weights (a state dict or a safetensors file, read lazily), same outputs as applying to the real model;
a checkpoint that lacks a tensor swaps nothing."""

import pytest
import torch
from safetensors.torch import save_file

import quantc
import quantc.runtime
from quantc.diagnostics import QuantcError
from tests.runtime.tiny_model import Tiny

CFG = "quantc: 1\nlinear: fp8_per_channel\nrules:\n  - match: '*.down_proj'\n    linear: w4a16\n"


def _models():
    torch.manual_seed(0)
    real = Tiny(h=128, i=256, n=2, vocab=256).to(torch.bfloat16)
    with torch.device("meta"):
        meta = Tiny(h=128, i=256, n=2, vocab=256).to(torch.bfloat16)
    return real, meta


def _plan(tmp_path, model):
    cfg = tmp_path / "q.yaml"
    cfg.write_text(CFG)
    return quantc.compile(str(cfg), model)


@pytest.mark.parametrize("as_file", [False, True])
def test_meta_model_is_filled_from_the_weights(tmp_path, as_file):
    real, meta = _models()
    state = {k: v.contiguous() for k, v in real.state_dict().items()}
    plan = _plan(tmp_path, real)
    x = torch.randn(3, 128).to(torch.bfloat16)
    quantc.runtime.apply(real, plan, progress=False)
    with torch.no_grad():
        want = real(x)
    weights = state
    if as_file:
        save_file(state, str(tmp_path / "model.safetensors"))
        weights = tmp_path / "model.safetensors"
    report = quantc.runtime.apply(meta, plan, weights, progress=False, device="cpu")
    assert not any(p.is_meta for p in meta.parameters()) and not any(b.is_meta for b in meta.buffers())
    assert len(report.swapped) == 14
    with torch.no_grad():
        got = meta(x)
    assert torch.equal(got, want)


def test_meta_model_without_weights_or_with_missing_tensors(tmp_path):
    real, meta = _models()
    plan = _plan(tmp_path, real)
    with pytest.raises(QuantcError, match="the model is on the meta device and no weights were given"):
        quantc.runtime.apply(meta, plan, progress=False, device="cpu")
    state = dict(real.state_dict())
    del state["lm_head.weight"]  # lm_head stays bf16: it is filled, not swapped
    with pytest.raises(QuantcError) as err:
        quantc.runtime.apply(meta, plan, state, progress=False, device="cpu")
    assert "weights lack 1 tensor(s): lm_head.weight" in str(err.value)
    assert all(p.is_meta for p in meta.parameters())  # nothing swapped, nothing filled
    assert type(meta.model.layers[0].self_attn.q_proj) is torch.nn.Linear
