"""apply(): a small model reproduces the reference outputs, pre-quantized weights load, and every
error leaves the model exactly as it was."""

import pytest
import torch
from torch import nn

import quantc.runtime as rt
from quantc.diagnostics import QuantcError
from quantc.plan import KernelConfig, KernelTableEntry, ModulePlan, Plan
from quantc.runtime import quantize as Q
from quantc.runtime import registry
from quantc.runtime.kernels.scaled_mm import reference
from quantc.runtime.modules import QuantLinear

CFG = KernelConfig(16, 32, 64, 8, 4, 2)
SPECS = {  # module -> (n, k, weight, activation, kernel)
    "up": (96, 64, "fp8_per_channel", "fp8_dynamic_per_token", "fp8_scaled_gemm"),
    "mid": (128, 96, "int8_per_channel", "int8_dynamic_per_token", "int8_gemm"),
    "down": (64, 128, "fp8_block_128x128", "fp8_dynamic_group_128", "fp8_block_gemm"),
    "head": (32, 64, "none", "none", None),
}


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.mid = nn.Linear(96, 128, bias=False)
        self.down = nn.Linear(128, 64, bias=False)
        self.head = nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.mid(torch.relu(self.up(x)))))))


def _plan(specs=SPECS, target=None, extra=()):
    mods, kernels = [], {}
    for name, (n, k, w, a, kern) in specs.items():
        entry = None
        if kern is not None:
            entry = f"{kern}/n{n}_k{k}"
            kernels[entry] = KernelTableEntry(entry, kern, n, k, ((16, CFG), (2**31 - 1, CFG)))
        mods.append(ModulePlan(name, "lm_head" if name == "head" else "linear", n, k, 1, None, w, a, "m", kern,
                               entry, None, None, "replicated", {}))
    return Plan(modules=tuple(mods) + tuple(extra), kernels=kernels,
                target=target or {"gpu": "h100", "sm": 90, "tensor_parallel": 1}, model={}, sources=[],
                summary={}, warnings=[], tuned_on={})


def _model():
    torch.manual_seed(0)
    return Tiny().to(torch.bfloat16)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _reference_forward(model: Tiny, x):
    """The plan's math on dequantized operands, layer by layer, in fp32 (bf16 between layers)."""
    h = x
    for name in ("up", "mid", "down"):
        lin = getattr(model, name)
        n, k, w, a, _ = SPECS[name]
        t = Q.quantize_weight(lin.weight.detach(), w)
        h = reference(h, t, w, a, bias=lin.bias).to(torch.bfloat16)
        h = torch.relu(h)
    return model.head(h).float()


def test_apply_reproduces_reference_outputs():
    model = _model()
    x = torch.randn(5, 64).to(torch.bfloat16)
    want = _reference_forward(model, x)
    report = rt.apply(model, _plan(), progress=False)
    assert report.swapped == ("up", "mid", "down") and report.kept == ("head",)
    assert isinstance(model.up, QuantLinear) and isinstance(model.head, nn.Linear)
    assert report.bytes_after < report.bytes_before
    assert any("GPU check skipped" in n for n in report.notes)
    got = model(x).float()
    # activations are re-quantized from slightly different bf16 inputs layer by layer: 3% end to end
    assert float((got - want).norm() / want.norm()) < 3e-2
    # 3-D input (batch, seq, hidden) goes through the same path
    assert model(x.reshape(1, 5, 64)).shape == (1, 5, 32)


def test_apply_loads_prequantized_weights(tmp_path):
    from safetensors.torch import save_file

    model = _model()
    state = {}
    for name in ("up", "mid", "down"):
        n, k, w, a, _ = SPECS[name]
        w_src = torch.randn(n, k) * 0.05
        for t_name, t in Q.quantize_weight(w_src, w).items():
            state[f"{name}.{t_name}"] = t
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    rt.apply(model, _plan(), weights=str(path), progress=False)
    assert torch.equal(model.up.weight.view(torch.uint8), state["up.weight"].view(torch.uint8))
    assert torch.equal(model.down.weight_scale, state["down.weight_scale_inv"])


def _assert_unchanged(model, snap):
    state, types = snap
    assert [type(m) for m in model.modules()] == types
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_planted_prepare_failure_leaves_model_untouched(monkeypatch):
    model = _model()
    snap = _snapshot(model)
    real = registry.LAUNCHERS["fp8_block_gemm"]

    def boom(*a, **k):
        raise RuntimeError("planted failure")

    monkeypatch.setitem(registry.LAUNCHERS, "fp8_block_gemm", registry.Launcher(boom, real.run))
    with pytest.raises(QuantcError) as e:
        rt.apply(model, _plan(), progress=False)
    d = e.value.diagnostics[0]
    assert d.code == "QC705" and d.path == "down" and "planted failure" in d.message and d.hint
    _assert_unchanged(model, snap)  # "up" and "mid" were prepared, but nothing was swapped


def test_bad_prequantized_tensors_are_reported_per_module():
    model = _model()
    snap = _snapshot(model)
    bad = {"mid.weight": torch.zeros(128, 96, dtype=torch.int8), "mid.weight_scale": torch.ones(7),
           "up.weight": torch.zeros(96, 64, dtype=Q.FP8)}
    with pytest.raises(QuantcError) as e:
        rt.apply(model, _plan(), weights=bad, progress=False)
    msgs = {d.path: d.message for d in e.value.diagnostics}
    assert "weight_scale is float32 (7,), int8_per_channel needs float32 (128, 1)" in msgs["mid"]
    assert "lack weight_scale" in msgs["up"]
    _assert_unchanged(model, snap)


def test_model_plan_mismatches_are_errors():
    model = _model()
    model.extra = nn.Linear(8, 8).to(torch.bfloat16)  # a linear the plan does not know
    specs = dict(SPECS)
    specs["up"] = (100, 64, *SPECS["up"][2:])  # wrong shape
    specs["gone"] = (8, 8, "fp8_per_channel", "fp8_dynamic_per_token", "fp8_scaled_gemm")
    snap = _snapshot(model)
    with pytest.raises(QuantcError) as e:
        rt.apply(model, _plan(specs), progress=False)
    text = [d.message for d in e.value.diagnostics]
    assert any("'up' has weight shape (96, 64), the plan says (N=100, K=64)" in t for t in text)
    assert any("planned module 'gone' is not in the model" in t for t in text)
    assert any("linear module(s) of the model are not in the plan: extra" in t for t in text)
    assert all(d.code == "QC701" and d.hint for d in e.value.diagnostics)
    _assert_unchanged(model, snap)


def test_static_activation_without_input_scale_is_an_error():
    model = _model()
    specs = dict(SPECS)
    specs["up"] = (96, 64, "fp8_per_tensor", "fp8_static_per_tensor", "fp8_scaled_gemm")
    with pytest.raises(QuantcError, match="needs the checkpoint's input_scale"):
        rt.apply(model, _plan(specs), progress=False)


def test_unknown_kernel_and_tp_world_are_errors():
    specs = dict(SPECS)
    specs["up"] = (96, 64, "fp8_per_channel", "fp8_dynamic_per_token", "no_such_kernel")
    with pytest.raises(QuantcError) as e:
        rt.apply(_model(), _plan(specs), progress=False)
    assert e.value.diagnostics[0].code == "QC704"
    with pytest.raises(QuantcError) as e:
        rt.apply(_model(), _plan(target={"gpu": "h100", "sm": 90, "tensor_parallel": 2}), rank=0, world=1, progress=False)
    assert "tensor_parallel=2" in e.value.diagnostics[0].message


def test_kv_cache_plan_warns_and_gpu_check_without_interpreter(monkeypatch):
    kv = ModulePlan("layers.0.kv_cache", "kv_cache", 0, 0, 1, 0, "none", "fp8_dynamic_per_tensor", "kv_fp8",
                    "kv_cache_fp8", None, None, None, "replicated", {})
    report = rt.apply(_model(), _plan(extra=(kv,)), progress=False)
    assert report.warnings[0].code == "QC706" and "does not apply kv_cache" in report.warnings[0].message
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(QuantcError) as e:
        rt.apply(_model(), _plan(), progress=False)
    assert e.value.diagnostics[0].code == "QC702" and "TRITON_INTERPRET" in e.value.diagnostics[0].hint


def test_unreadable_weights_path():
    with pytest.raises(QuantcError, match="no safetensors weights"):
        rt.apply(_model(), _plan(), weights="/nonexistent/dir/x.safetensors", progress=False)


WO_CASES = [  # 4-bit weight-only ids, now read from the plan's table like the 8-bit ones
    ("int4_group_128", "none", "int4_weight_only_gemm"),
    ("mxfp4", "none", "fp4_weight_only_gemm"),
    ("mxfp4", "mxfp8", "mxfp4_mxfp8_gemm_emulated"),
    ("nvfp4", "nvfp4", "nvfp4_gemm"),
]


def _wo_plan(weight, act, kernel, with_entry: bool):
    specs = {name: (n, k, "none", "none", None) for name, (n, k, *_) in SPECS.items()}
    specs["down"] = (64, 128, weight, act, kernel)
    plan = _plan(specs)
    entry = f"{kernel}/n64_k128"
    small, large = KernelConfig(16, 16, 128, 8, 2, 1, 2), KernelConfig(32, 64, 256, 8, 8, 2, 1)
    kernels = {entry: KernelTableEntry(entry, kernel, 64, 128, ((2, small), (2**31 - 1, large)))} if with_entry else {}
    return Plan(modules=plan.modules, kernels=kernels, target=plan.target, model={}, sources=[], summary={},
                warnings=[], tuned_on={}), small, large


def _record_run(monkeypatch, kernel):
    seen = []
    real = registry.LAUNCHERS[kernel]

    def run(x, buffers, config, *rest):
        seen.append((x.shape[0], config))
        return real.run(x, buffers, config, *rest)

    monkeypatch.setitem(registry.LAUNCHERS, kernel, registry.Launcher(real.prepare, run, real.make_module))
    return seen


@pytest.mark.parametrize("weight,act,kernel", WO_CASES)
def test_weight_only_4bit_kernels_read_the_plan_table(weight, act, kernel, monkeypatch):
    model = _model()
    plan, small, large = _wo_plan(weight, act, kernel, with_entry=True)
    rt.apply(model, plan, progress=False)
    seen = _record_run(monkeypatch, kernel)
    for m in (1, 5):
        out = model.down(torch.randn(m, 128).bfloat16())
        assert out.shape == (m, 64) and torch.isfinite(out.float()).all()
    assert seen == [(1, small), (5, large)]


@pytest.mark.parametrize("weight,act,kernel", WO_CASES[:1])
def test_weight_only_4bit_kernels_without_a_plan_entry_use_the_shape_defaults(weight, act, kernel, monkeypatch):
    from quantc.runtime.kernels.wo_gemm import default_config

    model = _model()
    rt.apply(model, _wo_plan(weight, act, kernel, with_entry=False)[0], progress=False)
    seen = _record_run(monkeypatch, kernel)
    for m in (1, 5, 40):
        model.down(torch.randn(m, 128).bfloat16())
    # buckets M = 1 (one-row planes kernel), 2..16 (the MMA pads M to 16) and prefill, each at its bound
    assert seen == [(m, default_config(m_at, 64, 128, int4=True)) for m, m_at in ((1, 1), (5, 16), (40, 17))]
    assert seen[1][1] == default_config(5, 64, 128, int4=True)
    assert len({seen[0][1], seen[1][1], seen[2][1]}) == 3
