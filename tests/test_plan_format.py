"""Compiled plan file: exact name templates, deterministic bytes, checked load, atomic save."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantc.diagnostics import QuantcError
from quantc.plan import (KernelConfig, KernelTableEntry, ModulePlan, Plan, compress_names, expand_template,
                         load_plan, plan_from_dict)


@settings(max_examples=200, deadline=None)
@given(st.sets(st.tuples(st.integers(0, 30), st.integers(0, 12), st.sampled_from(["gate_proj", "w1", "down_proj"])), min_size=1, max_size=80))
def test_name_templates_are_exact(triples):
    names = [f"model.layers.{a}.mlp.experts.{b}.{c}" for a, b, c in sorted(triples)]
    templates = compress_names(names)
    expanded = [n for t in templates for n in expand_template(t)]
    assert sorted(expanded) == sorted(names)
    assert len(expanded) == len(set(expanded))


def test_templates_compress_a_full_grid():
    names = [f"model.layers.{i}.mlp.experts.{e}.gate_proj" for i in range(3, 61) for e in range(256)]
    assert compress_names(names) == ["model.layers.{3-60}.mlp.experts.{0-255}.gate_proj"]


def test_leading_zero_names_stay_literal():
    names = ["blk.01.w", "blk.1.w"]
    assert sorted(n for t in compress_names(names) for n in expand_template(t)) == sorted(names)


def _plan(n_layers=3):
    mods = []
    for i in range(n_layers):
        for p in ("q_proj", "k_proj"):
            mods.append(ModulePlan(f"model.layers.{i}.self_attn.{p}", "linear", 256, 128, 1, i, "fp8_per_channel",
                                   "fp8_dynamic_per_token", "w8a8_fp8", "fp8_scaled_gemm", "fp8_scaled_gemm/n256_k128",
                                   f"model.layers.{i}.self_attn.qkv_proj", None, "column", {"weight": "a.yaml:3:3: linear"}))
    mods.append(ModulePlan("lm_head", "lm_head", 1000, 128, 1, None, "none", "none", "none", None, None, None, None,
                           "column", {"weight": "built-in"}))
    kernels = {"fp8_scaled_gemm/n256_k128": KernelTableEntry("fp8_scaled_gemm/n256_k128", "fp8_scaled_gemm", 256, 128,
                                                             ((16, KernelConfig(16, 64, 128)), (2**31 - 1, KernelConfig(128, 128, 128, num_warps=8))))}
    return Plan(modules=tuple(mods), kernels=kernels, target={"gpu": "h100", "sm": 90, "tensor_parallel": 1, "expert_parallel": False},
                model={"architecture": "x", "fingerprint": "f", "num_modules": len(mods), "source": "m"},
                sources=[{"path": "a.yaml", "sha256": "0" * 64}], summary={"modules": len(mods), "bytes_before": 0, "bytes_after": 0}, warnings=[], tuned_on={})


def test_save_load_round_trip(tmp_path):
    plan = _plan()
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = load_plan(path)
    assert sorted(loaded.modules, key=lambda m: m.name) == sorted(plan.modules, key=lambda m: m.name)
    assert loaded.module("model.layers.2.self_attn.k_proj").fused_group == "model.layers.2.self_attn.qkv_proj"
    assert loaded.kernel_config(loaded.module("model.layers.0.self_attn.q_proj"), 1) == KernelConfig(16, 64, 128)
    assert loaded.kernel_config(loaded.module("model.layers.0.self_attn.q_proj"), 5000).num_warps == 8
    assert loaded.to_json() == path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left behind


def test_bytes_are_deterministic():
    assert _plan().to_json() == _plan().to_json()


def test_tampered_plan_is_rejected(tmp_path):
    path = tmp_path / "plan.json"
    _plan().save(path)
    data = json.loads(path.read_text())
    data["groups"][0]["entry"]["weight"] = "int8_per_channel"
    path.write_text(json.dumps(data))
    with pytest.raises(QuantcError, match="does not match its hash"):
        load_plan(path)


def test_wrong_version_and_format(tmp_path):
    data = json.loads(_plan().to_json())
    data["version"] = 99
    with pytest.raises(QuantcError, match="version 99 is not supported"):
        plan_from_dict(data)
    with pytest.raises(QuantcError, match="not a quantc compiled plan"):
        plan_from_dict({"groups": []})


def test_not_json_names_line(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"format": "quantc-plan",\n  oops}')
    with pytest.raises(QuantcError) as err:
        load_plan(path)
    assert err.value.diagnostics[0].span.line == 2
    assert "not valid JSON" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(QuantcError, match="cannot read plan"):
        load_plan(tmp_path / "nope.json")


def test_save_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    _plan(1).save(path)
    before = path.read_text()
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        _plan(3).save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
