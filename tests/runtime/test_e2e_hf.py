"""Issue 8 on the CPU: real transformers model classes (tiny dimensions, 2 layers, random seeded
weights), a plan compiled against the live model, applied with ``quantc.runtime.apply`` (MoE experts
included), then prefill and decode with the KV cache against the unquantized model. Kernels run under
TRITON_INTERPRET=1 (conftest)."""

import pytest
import torch

import quantc
import quantc.runtime
from quantc import hf
from quantc.runtime import moe_apply
from quantc.runtime import quantize as ref_q
from quantc.runtime.hf_moe import QuantExperts, QuantRouter, expert_weights, prepare_experts, quant_router
from quantc.runtime.kernels.scaled_mm import fake_quant_activation
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.modules import QuantLinear

PROMPT, DECODE = 8, 1

# model, config ("scheme:<name>" = quantc.hf.SCHEMES), cosine floor of every position's logits
# against the bf16 model. Measured on these tiny random models: fp8/int8 >= 0.997, w4a16 ~0.98; 4-bit
# experts of the tiny gpt-oss swing its logits more (mxfp4: mean ~0.91, worst position ~0.7), so the
# cases are also held against the bf16 model with the same plan fake-quantized in plain torch (weights
# dequantized, dense layers' activations through the reference quantizer; W8A8 experts excepted), which
# the kernels must match to >= 0.999 (top-1 is not asserted there: tiny random models have near-tied logits).
CASES = [
    ("llama-3.1-8b", "examples/configs/llama31_8b_fp8.yaml", 0.99),
    ("llama-3.1-8b", "scheme:int8", 0.99),
    ("llama-3.1-8b", "scheme:w4a16", 0.95),
    ("qwen3-30b-a3b", "examples/configs/qwen3_30b_a3b_fp8_child.yaml", 0.99),
    ("qwen3-30b-a3b", "scheme:w4a16", 0.95),  # every expert block on moe_weight_only, dense on int4
    ("gpt-oss-20b-bf16", "scheme:mxfp4", 0.6),
]
FAKE_QUANT_FLOOR = 0.999


def _fake_quantize(model, plan):
    """Every planned weight-only weight replaced by its dequantized value, in place (bf16); a dense linear
    with an activation key runs plain torch instead: its input through the reference quantizer, times the
    dequantized weight in fp32."""
    mods = dict(model.named_modules())
    done = set()
    for mp in plan.modules:
        if mp.kernel is None or mp.kind in ("kv_cache", "embedding", "norm"):
            continue
        if mp.kind != "moe_experts":
            mod = mods[mp.name]
            if mp.activation == "none":
                mod.weight.data = wf.dequantize(wf.quantize(mod.weight.data, mp.weight)).to(mod.weight.dtype)
                continue
            # the kernels' math: dequantized operands, fp32 products and sums, one bf16 rounding at the end
            w = ref_q.dequantize_weight(ref_q.quantize_weight(mod.weight.data, mp.weight), mp.weight)
            b = None if mod.bias is None else mod.bias.float()
            mod.forward = lambda x, w=w, b=b, key=mp.activation: torch.nn.functional.linear(
                fake_quant_activation(x.reshape(-1, x.shape[-1]), key), w, b).to(x.dtype).reshape(*x.shape[:-1], -1)
            continue
        assert mp.activation == "none", "expert fake quantization stands in for weight-only experts only"
        name = mp.name.rpartition(".")[0]
        if name in done:
            continue
        done.add(name)
        mod = mods[name]
        gu, dn = plan.module(name + ".gate_up_proj"), plan.module(name + ".down_proj")
        w13, w2, _, _ = expert_weights(mod, gu, dn)
        w13, w2 = (wf.dequantize(wf.quantize(w, gu.weight)).to(torch.bfloat16) for w in (w13, w2))
        if not mod.is_concatenated:  # back to transformers' layout: interleave gate/up rows
            w13 = torch.stack(w13.chunk(2, 1), 2).flatten(1, 2)
        if mod.is_transposed:
            w13, w2 = w13.transpose(1, 2), w2.transpose(1, 2)
        mod.gate_up_proj.data, mod.down_proj.data = w13.contiguous(), w2.contiguous()


def _compile(config: str, model, tmp_path):
    overrides = ()
    if config.startswith("scheme:"):
        config, overrides = hf.scheme_config(config.split(":", 1)[1], tmp_path)
    return quantc.compile(config, model, gpu="h100", tp=1, overrides=list(overrides))


def _run(model, ids, steps):
    """Prefill, then ``steps`` decode steps feeding the tokens in ``steps`` through the KV cache;
    returns the logits of every position ([prefill (T, V)] + [(1, V)] * steps)."""
    with torch.no_grad():
        out = model(ids, use_cache=True)
        logits, cache = [out.logits[0]], out.past_key_values
        for tok in steps:
            out = model(tok.view(1, 1), past_key_values=cache, use_cache=True)
            logits.append(out.logits[0])
            cache = out.past_key_values
    return logits


def _swapped_as_planned(model, plan):
    mods = dict(model.named_modules())
    checked = set()
    for mp in plan.modules:
        if mp.kernel is None or mp.kind in ("kv_cache", "embedding", "norm"):
            continue
        if mp.kind == "moe_experts":
            name = mp.name.rpartition(".")[0]
            mod = mods[name]
            assert isinstance(mod, QuantExperts) and mod.moe.kernel == mp.kernel, mp.name
        else:
            mod = mods[mp.name]
            name = mp.name
            assert isinstance(mod, QuantLinear) and (mod.kernel, mod.weight_key) == (mp.kernel, mp.weight), mp.name
        checked.add(name)
    return len(checked)


@pytest.mark.parametrize("model_name,config,floor", CASES, ids=[f"{m}-{c.rsplit('/', 1)[-1]}" for m, c, _ in CASES])
def test_apply_prefill_decode(model_name, config, floor, tmp_path):
    ref = hf.build_model(model_name, 2, tiny=True, seed=0)
    model = hf.build_model(model_name, 2, tiny=True, seed=0)
    plan = _compile(config, model, tmp_path)
    ids = torch.randint(0, ref.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    steps = torch.randint(0, ref.config.vocab_size, (DECODE,), generator=torch.Generator().manual_seed(2))
    want = _run(ref, ids, steps)

    report = quantc.runtime.apply(model, plan, progress=False)
    assert _swapped_as_planned(model, plan) == len(report.swapped) > 0
    assert report.bytes_after < report.bytes_before
    got = _run(model, ids, steps)
    for i, (w, g) in enumerate(zip(want, got)):
        fid = hf.fidelity(w, g)
        assert fid["cosine_min"] >= floor, (i, fid)
    # the quantized model is not the reference by accident: its logits differ somewhere
    assert any(not torch.equal(w, g) for w, g in zip(want, got))
    if all(mp.activation == "none" for mp in plan.modules if mp.kernel and mp.kind == "moe_experts"):
        _fake_quantize(ref, plan)
        for i, (w, g) in enumerate(zip(_run(ref, ids, steps), got)):
            fid = hf.fidelity(w, g)
            assert fid["cosine_min"] >= FAKE_QUANT_FLOOR, (i, fid)


@pytest.mark.parametrize("model_name", ["gpt-oss-20b-bf16", "qwen3-30b-a3b"])
def test_expert_layouts_against_transformers(model_name):
    """QuantExperts on moe_bf16 against transformers' own experts forward: checks the layout
    conversion (gpt-oss: transposed, gate/up interleaved, biases; Qwen3: (E, out, in), gate first)."""
    model = hf.build_model(model_name, 1, tiny=True, seed=3)
    experts = model.model.layers[0].mlp.experts
    if hasattr(experts, "gate_up_proj_bias"):  # non-zero biases, so their layout is exercised too
        experts.gate_up_proj_bias.data.normal_(0, 0.05)
        experts.down_proj_bias.data.normal_(0, 0.05)
    plan = quantc.compile(hf.scheme_config("bf16", "/tmp/quantc-e2e-test")[0], model, tp=1)
    gu, dn = (plan.module(f"model.layers.0.mlp.experts.{p}")._replace(kernel="moe_bf16")
              for p in ("gate_up_proj", "down_proj"))
    q = prepare_experts("e", experts, gu, dn)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 128, generator=g).bfloat16()
    ids = torch.stack([torch.randperm(4, generator=g)[:2] for _ in range(6)])
    w = torch.rand(6, 2, generator=g).bfloat16()
    with torch.no_grad():
        fid = hf.fidelity(experts(x, ids, w), q(x, ids, w))
    assert fid["cosine_min"] > 0.9999, fid


def test_experts_planned_none_keep_the_transformers_module(tmp_path):
    model = hf.build_model("qwen3-30b-a3b", 2, tiny=True)
    report = hf.apply(model, _compile("scheme:bf16", model, tmp_path))
    assert report.swapped == ()
    assert type(model.model.layers[0].mlp.experts).__name__ == "Qwen3MoeExperts"


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


@pytest.mark.parametrize("model_name", ["qwen3-30b-a3b", "gpt-oss-20b-bf16"])
def test_planted_failure_in_an_expert_block_leaves_the_model_untouched(model_name, tmp_path, monkeypatch):
    """Dense modules and layer 0's experts prepare fine; layer 1's experts fail: nothing is swapped."""
    model = hf.build_model(model_name, 2, tiny=True)
    plan = _compile("scheme:int8", model, tmp_path)
    before, types = _state(model)
    real = moe_apply.prepare_experts
    prepared = []

    def planted(name, *args, **kwargs):
        if ".layers.1." in name:
            raise RuntimeError("planted failure")
        prepared.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(moe_apply, "prepare_experts", planted)
    with pytest.raises(quantc.QuantcError) as err:
        quantc.runtime.apply(model, plan, progress=False)
    (d,) = err.value.diagnostics
    assert d.code == "QC705" and d.path == "model.layers.1.mlp.experts" and d.hint
    assert "cannot prepare 'model.layers.1.mlp.experts' (MoE experts, int8_per_channel via moe_int8): " \
           "planted failure" in d.message
    assert prepared == ["model.layers.0.mlp.experts"]  # it was prepared, and then not swapped
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    monkeypatch.setattr(moe_apply, "prepare_experts", real)
    report = quantc.runtime.apply(model, plan, progress=False)  # the same model and plan, unplanted
    assert "model.layers.1.mlp.experts" in report.swapped and report.bytes_after < report.bytes_before


def test_fused_expert_weights_from_the_state(tmp_path):
    """bf16 expert tensors in ``weights`` replace the model's; pre-quantized ones are refused, naming them."""
    model = hf.build_model("qwen3-30b-a3b", 1, tiny=True)
    plan = _compile("scheme:int8", model, tmp_path)
    experts = model.model.layers[0].mlp.experts
    name = "model.layers.0.mlp.experts"
    bad = {f"{name}.gate_up_proj_blocks": torch.zeros(4, 256, 4, 16, dtype=torch.uint8)}
    with pytest.raises(quantc.QuantcError) as err:
        quantc.runtime.apply(model, plan, weights=bad, progress=False)
    (d,) = err.value.diagnostics
    assert d.code == "QC705" and d.path == name
    assert f"the weights hold {name}.gate_up_proj_blocks (uint8): pre-quantized expert tensors" in d.message
    wrong = {f"{name}.down_proj": torch.zeros(4, 128, 64, dtype=torch.bfloat16)}
    with pytest.raises(quantc.QuantcError, match=r"down_proj in the weights has shape \(4, 128, 64\), the model's "
                       r"is \(4, 128, 128\)"):
        quantc.runtime.apply(model, plan, weights=wrong, progress=False)
    zeros = {f"{name}.down_proj": torch.zeros_like(experts.down_proj)}
    quantc.runtime.apply(model, plan, weights=zeros, progress=False)
    ids = torch.tensor([[0, 1], [2, 3]])
    out = model.model.layers[0].mlp.experts(torch.randn(2, 128).bfloat16(), ids, torch.ones(2, 2))
    assert torch.equal(out, torch.zeros(2, 128, dtype=torch.bfloat16))


def test_plan_for_another_model_is_refused_and_nothing_swapped(tmp_path):
    small = hf.build_model("qwen3-30b-a3b", 2, tiny=True)
    cfg = hf.hf_config("qwen3-30b-a3b", 2, tiny=True)
    cfg.moe_intermediate_size = 256
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    plan = _compile("scheme:int8", small, tmp_path)
    with pytest.raises(quantc.QuantcError) as err:
        hf.apply(other, plan)
    text = str(err.value)
    assert "QC705" in text and "model.layers.0.mlp.experts" in text and "the plan says (256, 128)" in text
    assert not any(isinstance(m, (QuantLinear, QuantExperts)) for m in other.modules())


def test_expert_errors_name_the_reason():
    model = hf.build_model("qwen3-30b-a3b", 1, tiny=True)
    plan = quantc.compile(hf.scheme_config("bf16", "/tmp/quantc-e2e-test")[0], model, tp=1)
    experts = model.model.layers[0].mlp.experts
    gu, dn = (plan.module(f"model.layers.0.mlp.experts.{p}")._replace(kernel="moe_bf16")
              for p in ("gate_up_proj", "down_proj"))
    q = prepare_experts("e", experts, gu, dn)
    with pytest.raises(ValueError, match="router picked 3 experts per token, the experts were prepared for top_k=2"):
        q(torch.zeros(4, 128, dtype=torch.bfloat16), torch.zeros(4, 3, dtype=torch.long), torch.ones(4, 3))
    experts.act_fn = torch.nn.GELU()
    with pytest.raises(ValueError, match="expert activation GELU is not SiLU"):
        prepare_experts("e", experts, gu, dn)
    with pytest.raises(ValueError, match="share one scheme"):
        prepare_experts("e", experts, gu, dn._replace(weight="int8_per_channel"))


def test_helper_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model description 'llama-9'; known: .*llama-3.1-8b"):
        hf.model_path("llama-9")
    with pytest.raises(ValueError, match="unknown scheme 'fp8_per_chanel': did you mean 'fp8_per_channel'"):
        hf.scheme_config("fp8_per_chanel", tmp_path)


def test_reduced_config_keeps_the_architecture():
    cfg = hf.hf_config("gpt-oss-20b.json", 3)  # published dims, MXFP4 quantization_config dropped
    assert (cfg.num_hidden_layers, cfg.hidden_size, len(cfg.layer_types)) == (3, 2880, 3)
    assert getattr(cfg, "quantization_config", None) is None
    a, b = (hf.build_model("llama-3.1-8b", 1, tiny=True, seed=7) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("model_name, attr, cls, weight_dtype", [
    ("qwen3-30b-a3b", "gate", "Qwen3MoeTopKRouter", torch.bfloat16),
    ("mixtral-8x7b", "gate", "MixtralTopKRouter", torch.float32),
    ("gpt-oss-20b-bf16", "router", "GptOssTopKRouter", torch.bfloat16)])
def test_routers_run_in_one_launch_with_the_originals_outputs(model_name, attr, cls, weight_dtype, tmp_path,
                                                              monkeypatch):
    """apply() puts a QuantRouter where a swapped experts module's block has a transformers router it
    knows: the original's logits, ids (int64) and weights (its dtype: bf16 for Qwen3 and gpt-oss, fp32 for
    Mixtral; to one rounding) on the interpreter's one launch, the same from its torch fallback
    (QUANTC_MOE_ROUTER_KERNEL=0); the model's state dict keeps its names; the report says so."""
    model = hf.build_model(model_name, 2, tiny=True, seed=4)
    if attr == "router":  # gpt-oss's router has a bias: a non-zero one, so its place is checked too
        for layer in model.model.layers:
            layer.mlp.router.bias.data.normal_(0, 0.5)
    originals = [getattr(layer.mlp, attr) for layer in model.model.layers]
    keys = {k for k in model.state_dict() if f".mlp.{attr}." in k}
    report = quantc.runtime.apply(model, _compile("scheme:int8", model, tmp_path), progress=False)
    assert {k for k in model.state_dict() if f".mlp.{attr}." in k} == keys and keys
    assert any("2 transformers router(s)" in n and cls in n for n in report.notes), report.notes
    h = torch.randn(7, model.config.hidden_size, generator=torch.Generator().manual_seed(6)).bfloat16()
    for layer, orig in zip(model.model.layers, originals):
        new = getattr(layer.mlp, attr)
        assert isinstance(new, QuantRouter) and new.weight is orig.weight and type(orig).__name__ == cls
        with torch.no_grad():
            want = orig(h)
            for switch in ("1", "0"):
                monkeypatch.setenv("QUANTC_MOE_ROUTER_KERNEL", switch)
                logits, w, ids = new(h)
                assert torch.equal(logits, want[0]) and ids.dtype == torch.int64
                # the same top-k: bf16 logits tie often in these tiny models, and torch.topk's pick among
                # equal values is its own, so the chosen logits are compared (equal values, distinct ids)
                picked, want_picked = logits.gather(1, ids), logits.gather(1, want[2])
                assert torch.equal(picked.sort(1).values, want_picked.sort(1).values)
                assert all(len(set(r)) == len(r) for r in ids.tolist())
                shared = (logits.unsqueeze(1) == want_picked.unsqueeze(2)).sum(2)  # experts holding each value
                assert torch.equal(ids[shared == 1], want[2][shared == 1])  # no tie: the same expert, same slot
                assert w.dtype == want[1].dtype == weight_dtype
                assert torch.allclose(w.float(), want[1].float(), rtol=2**-8 if weight_dtype == torch.bfloat16 else 1e-6)


class _CustomRouter(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, hidden_states):
        return self.inner(hidden_states)


def test_routers_outside_the_known_classes_keep_their_modules(tmp_path):
    """A router of a class quantc does not know keeps its module (and the report says nothing), as does a
    known class missing an attribute its rule reads."""
    model = hf.build_model("qwen3-30b-a3b", 2, tiny=True)
    for layer in model.model.layers:  # a custom router: the same interface, another class
        layer.mlp.gate = _CustomRouter(layer.mlp.gate)
    report = quantc.runtime.apply(model, _compile("scheme:int8", model, tmp_path), progress=False)
    assert isinstance(model.model.layers[0].mlp.gate, _CustomRouter)
    assert not any("router(s)" in n for n in report.notes)
    assert quant_router("x", torch.nn.Linear(4, 4)) is None and quant_router("x", None) is None
    qwen = hf.build_model("qwen3-30b-a3b", 1, tiny=True).model.layers[0].mlp.gate
    assert isinstance(quant_router("g", qwen), QuantRouter)
    del qwen.norm_topk_prob
    assert quant_router("g", qwen) is None


def test_meta_moe_model_gets_routers_with_the_checkpoints_weights(tmp_path):
    """A Qwen3-MoE model built on the meta device, filled from a state dict by apply(): its routers are
    replaced after the fill, so they hold the checkpoint's weights (not meta tensors), and the model's
    logits equal those of the same plan applied to the real model."""
    real = hf.build_model("qwen3-30b-a3b", 2, tiny=True, seed=8)
    meta = hf.build_model("qwen3-30b-a3b", 2, tiny=True, seed=8)
    for mod in meta.modules():  # parameters on meta only (buffers such as rotary inv_freq stay real)
        for name, prm in list(mod._parameters.items()):
            if prm is not None:
                mod._parameters[name] = torch.nn.Parameter(torch.empty_like(prm, device="meta"), requires_grad=False)
    state = {k: v.contiguous() for k, v in real.state_dict().items()}
    plan = _compile("scheme:int8", real, tmp_path)
    quantc.runtime.apply(real, plan, progress=False)
    quantc.runtime.apply(meta, plan, state, progress=False, device="cpu")
    for layer in meta.model.layers:
        gate = layer.mlp.gate
        assert isinstance(gate, QuantRouter) and not gate.weight.is_meta
    assert not any(p.is_meta for p in meta.parameters()) and not any(b.is_meta for b in meta.buffers())
    ids = torch.randint(0, real.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(meta(ids).logits, real(ids).logits)
