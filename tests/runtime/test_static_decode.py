"""Decode on a transformers StaticCache (``quantc.hf.StaticDecoder``), the path ``decode_tokens_per_s``
captures in a CUDA graph on the GPU: on the CPU it runs eagerly, and must give the logits of
transformers' dynamic cache, for the bf16 models and with a quantized plan applied. A CUDA graph
replays the step's kernels without its host code, so the step must not read a tensor's value on the
host: checked here with a dispatch mode that records every torch op of one step (it found
transformers 5.17's eager-attention mask creating a device tensor from host data, which
``quantc.hf`` now works around)."""

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import quantc
import quantc.runtime
from quantc import hf

# ops that wait for the device (or take data-dependent output sizes): not allowed in a captured step
SYNCING = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero", "aten.equal",
           "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive", "aten.lift_fresh",
           "aten.repeat_interleave"}


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in ("aten.index", "aten.index_put", "aten.index_put_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            name += "(bool mask)"  # boolean indexing: a nonzero inside
        self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _syncs(rec: _Ops) -> dict:
    return {k: n for k, n in rec.ops.items() if k in SYNCING or k.endswith("(bool mask)")}


def _static(model, ids, tokens):
    """``hf.static_decode_logits`` step by step, the steps after the first one (lazy initializations
    happen there, as in the warm-up before a capture) recorded: (logits, the syncing ops they ran)."""
    (b, t), s = ids.shape, tokens.shape[1]
    dec = hf.StaticDecoder(model, b, t + s + 1)
    out, rec = [dec.prefill(ids)], _Ops()
    for i in range(s):
        dec.tokens.copy_(tokens[:, i : i + 1])
        if i == 0:
            out.append(dec.run().clone())
            continue
        with rec:
            out.append(dec.run().clone())
    assert rec.ops["aten.index_copy_"] > 0, "the steps wrote no cache slot"
    return torch.cat(out, 1), _syncs(rec)


def _inputs(model, prompt: int, steps: int, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    v = model.config.vocab_size
    return torch.randint(0, v, (batch, prompt), generator=g), torch.randint(0, v, (batch, steps), generator=g)


def _assert_same(static, dynamic):
    assert static.shape == dynamic.shape
    fid = hf.fidelity(dynamic, static)
    assert fid["cosine_min"] >= 0.9999, fid
    torch.testing.assert_close(static.float(), dynamic.float(), atol=5e-2, rtol=2e-2)


# gpt-oss: 62 prompt tokens + 4 steps cross its sliding window (TINY: 64) during decode
@pytest.mark.parametrize("model_name,prompt", [("llama-3.1-8b", 8), ("qwen3-30b-a3b", 8), ("gpt-oss-20b-bf16", 62)])
def test_static_cache_matches_dynamic_bf16(model_name, prompt):
    model = hf.build_model(model_name, 2, tiny=True)
    ids, tokens = _inputs(model, prompt, 4)
    if model_name.startswith("gpt-oss"):
        assert prompt < model.config.sliding_window < prompt + tokens.shape[1]
    static = hf.static_decode_logits(model, ids, tokens)
    assert static.shape == (2, prompt + 4, model.config.vocab_size)
    _assert_same(static, hf.dynamic_decode_logits(model, ids, tokens))
    again, syncs = _static(model, ids, tokens)
    assert torch.equal(again, static) and syncs == {}


@pytest.mark.parametrize("model_name,scheme", [("llama-3.1-8b", "int8"), ("qwen3-30b-a3b", "int8")])
def test_static_cache_matches_dynamic_quantized(model_name, scheme, tmp_path):
    model = hf.build_model(model_name, 1, tiny=True)  # one layer: the kernels run in Triton's interpreter
    ids, tokens = _inputs(model, 4, 2)
    bf16 = hf.static_decode_logits(model, ids, tokens)
    config, overrides = hf.scheme_config(scheme, tmp_path)
    report = hf.apply(model, quantc.compile(config, model, gpu="h100", tp=1, overrides=list(overrides)))
    assert report.swapped
    static, syncs = _static(model, ids, tokens)
    assert not torch.equal(static, bf16)  # the quantized modules ran
    _assert_same(static, hf.dynamic_decode_logits(model, ids, tokens))
    assert syncs == {}


def test_restore_replays_the_same_positions():
    """What the timing loop relies on: after ``restore`` the steps write and read the same cache slots
    again, so every timed run decodes the same positions and gives the same logits."""
    model = hf.build_model("llama-3.1-8b", 1, tiny=True)
    ids, tokens = _inputs(model, 5, 1)
    dec = hf.StaticDecoder(model, 2, 12)
    dec.prefill(ids)
    dec.tokens.copy_(tokens)
    start = dec.save()
    first = [dec.run().clone() for _ in range(3)]
    assert dec.position.item() == 8 and all(t.item() == 8 for t in dec.state()[1:])
    dec.restore(start)
    assert dec.position.item() == 5
    assert all(torch.equal(a, dec.run()) for a in first)
    assert not torch.equal(first[0], first[1])  # each step saw one more token


def test_the_eager_mask_swap_is_undone():
    """gpt-oss (eager attention) steps run with a sync-free eager mask function, only while they run."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS as masks

    before = masks["eager"]
    model = hf.build_model("gpt-oss-20b-bf16", 1, tiny=True)
    ids, tokens = _inputs(model, 4, 2)
    hf.static_decode_logits(model, ids, tokens)
    assert masks["eager"] is before and "eager" not in masks._local_mapping


def test_decode_tokens_per_s_on_the_cpu(monkeypatch):
    model = hf.build_model("llama-3.1-8b", 1, tiny=True)

    def no_capture(self):
        raise AssertionError("no CUDA graph on the CPU")

    monkeypatch.setattr(hf.StaticDecoder, "capture", no_capture)
    assert hf.decode_tokens_per_s(model, 2, "cpu", context=4, steps=2, graphs=True) > 0  # eager static loop
    assert hf.decode_tokens_per_s(model, 2, "cpu", context=4, steps=2, graphs=False) > 0  # eager dynamic cache
    assert hf.decode_tokens_per_s(model, 1, "cpu", context=4, steps=2, graphs=False, static=True) > 0
    with pytest.raises(ValueError, match="needs the static cache"):
        hf.decode_tokens_per_s(model, 1, "cpu", graphs=True, static=False)


def test_measure_reports_graph_and_eager_decode(monkeypatch):
    calls = []
    monkeypatch.setattr(hf, "prefill_tokens_per_s", lambda model, tokens, device: 1.0)
    monkeypatch.setattr(hf, "decode_tokens_per_s", lambda model, b, device, graphs: calls.append((b, graphs)) or 2.0)
    got = hf.measure(None, "cpu", prompt=4, batches=(1, 32))
    assert got == {"prefill_tokens_per_s": 1.0, "decode_b1_tokens_per_s": 2.0, "decode_b1_eager_tokens_per_s": 2.0,
                   "decode_b32_tokens_per_s": 2.0, "decode_b32_eager_tokens_per_s": 2.0}
    assert calls == [(1, True), (1, False), (32, True), (32, False)]

    def capture_fails(model, b, device, graphs):
        if graphs:
            raise RuntimeError("operation not permitted when stream is capturing")
        return 2.0

    monkeypatch.setattr(hf, "decode_tokens_per_s", capture_fails)
    with pytest.raises(RuntimeError):  # on the CPU there is no capture to fail: an error is a bug
        hf.measure(None, "cpu", prompt=4, batches=(1,))
    got = hf.measure(None, "cuda", prompt=4, batches=(1,))  # the GPU keeps the other figures
    assert got["decode_b1_tokens_per_s"] is None and got["decode_b1_eager_tokens_per_s"] == 2.0
    assert got["errors"] == {"decode_b1_tokens_per_s": "RuntimeError: operation not permitted when stream is capturing"}
    assert hf._ratios(got, {**got, "decode_b1_tokens_per_s": 3.0, "decode_b1_eager_tokens_per_s": 4.0}) == {
        "prefill_tokens_per_s": 1.0, "decode_b1_eager_tokens_per_s": 0.5}


def test_prompt_longer_than_the_cache_is_refused():
    model = hf.build_model("llama-3.1-8b", 1, tiny=True)
    with pytest.raises(ValueError, match="a 8-token prompt leaves no room in a 8-position cache"):
        hf.StaticDecoder(model, 1, 8).prefill(torch.zeros(1, 8, dtype=torch.long))
