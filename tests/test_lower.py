"""Lowering: precedence, provenance, feasibility checks and kernel choice (SPEC §3–5)."""


from quantc.lower import lower
from quantc.overrides import apply_overrides
from tests.builders import FakeCheckpoint, llama_like, make_config, moe_like
from quantc.model import Inventory, ModuleInfo


def run(config, inv, sets=(), checkpoint=None):
    config, ov, diags = apply_overrides(config, list(sets))
    assert not diags
    return lower(config, inv, overrides=ov, checkpoint=checkpoint)


def errors(result):
    return [d for d in result.diagnostics if d.severity == "error"]


def warnings(result):
    return [d for d in result.diagnostics if d.severity == "warning"]


def entry(result, name):
    return result.plan.module(name)


def test_kind_default_rules_and_ignore_precedence():
    cfg = make_config(
        linear="fp8_per_channel",
        rules=[{"match": "re:model\\.layers\\.0\\..*", "linear": "int8"},
               {"match": "*.down_proj", "linear": {"activation": "none"}}],
        ignore=["model.layers.1.mlp.up_proj", "model.layers.1.mlp.gate_proj"],
    )
    r = run(cfg, llama_like())
    assert not errors(r), r.diagnostics
    q0 = entry(r, "model.layers.0.self_attn.q_proj")
    assert (q0.weight, q0.activation, q0.kernel) == ("int8_per_channel", "int8_dynamic_per_token", "int8_gemm")
    assert q0.provenance["weight"].startswith("cfg.yaml:11:3: rules[0]")
    q1 = entry(r, "model.layers.1.self_attn.q_proj")
    assert (q1.weight, q1.activation, q1.kernel) == ("fp8_per_channel", "fp8_dynamic_per_token", "fp8_scaled_gemm")
    assert q1.provenance["weight"] == "cfg.yaml:2:3: linear"
    # activation override alone keeps the weight: the later rule changes one field only
    d1 = entry(r, "model.layers.1.mlp.down_proj")
    assert (d1.weight, d1.activation, d1.kernel) == ("fp8_per_channel", "none", "fp8_weight_only_gemm")
    d0 = entry(r, "model.layers.0.mlp.down_proj")
    assert (d0.weight, d0.activation) == ("int8_per_channel", "none")
    up1 = entry(r, "model.layers.1.mlp.up_proj")
    assert (up1.weight, up1.kernel) == ("none", None)
    assert "ignore" in up1.provenance["weight"]


def test_builtin_defaults_keep_lm_head_router_embeddings_and_a_rule_can_change_lm_head():
    r = run(make_config(linear="fp8_per_channel", moe="fp8_per_channel"), moe_like())
    assert entry(r, "lm_head").weight == "none"
    assert "built-in default: lm_head" in entry(r, "lm_head").provenance["weight"]
    assert entry(r, "model.layers.0.mlp.gate").weight == "none"
    r2 = run(make_config(linear="fp8_per_channel", rules=[{"match": "lm_head", "linear": "fp8_per_channel"}]), llama_like())
    assert entry(r2, "lm_head").weight == "fp8_per_channel"
    assert entry(r2, "model.embed_tokens").weight == "none"


def test_set_overrides_rules_but_not_ignore():
    cfg = make_config(moe="mxfp4", rules=[{"match": "*.layers.1.*", "moe": {"activation": "none"}}])
    r = run(cfg, moe_like(), sets=["moe.activation=mxfp8"])
    assert not errors(r), r.diagnostics
    e = entry(r, "model.layers.1.mlp.experts.0.down_proj")
    assert (e.weight, e.activation, e.kernel) == ("mxfp4", "mxfp8", "moe_mxfp4_mxfp8_emulated")
    assert e.provenance["activation"].startswith("--set moe.activation=mxfp8")
    # ignore beats --set
    cfg2 = make_config(moe="mxfp4", ignore=["model.layers.0.mlp.experts"])
    r2 = run(cfg2, moe_like(), sets=["moe.activation=mxfp8"])
    assert not errors(r2), r2.diagnostics
    assert entry(r2, "model.layers.0.mlp.experts.1.up_proj").weight == "none"
    assert entry(r2, "model.layers.1.mlp.experts.1.up_proj").activation == "mxfp8"
    # ignoring one expert of a layer leaves the layer's experts disagreeing: an error of its own
    r3 = run(make_config(moe="mxfp4", ignore=["model.layers.0.mlp.experts.3"]), moe_like())
    (e,) = errors(r3)
    assert e.code == "QC331" and "experts of one MoE layer have different schemes" in e.message


def test_shadowed_and_unmatched_rules_and_ignore_warn_at_their_span():
    cfg = make_config(linear="fp8_per_channel", rules=[
        {"match": "*.q_proj", "linear": "int8"},
        {"match": "*.self_attn", "linear": "fp8_per_tensor"},
        {"match": "*.nothing_here", "linear": "int8"},
    ], ignore=["*.no_such_module"])
    r = run(cfg, llama_like())
    w = {d.code: d for d in warnings(r)}
    assert w["QC202"].span.line == 10 and "rules[1]" in w["QC202"].message and "shadowed" in w["QC202"].message
    assert w["QC201"].span.line == 20 and "'*.nothing_here'" in w["QC201"].message
    assert w["QC203"].span.line == 100 and "*.no_such_module" in w["QC203"].message


def test_k_not_divisible_by_group_is_rejected_with_module_and_fix():
    inv = Inventory("x", "X", (ModuleInfo("model.layers.0.mlp.down_proj", "linear", 256, 200, 0),), 1)
    r = run(make_config(linear="w4a16"), inv)
    (e,) = errors(r)
    assert e.code == "QC301" and "K = 200 is not a multiple of 128" in e.message and "down_proj" in e.message
    assert e.span.line == 2 and "int4_group_" not in e.hint.split("e.g.")[0]
    assert r.plan is None


def test_ragged_last_block_along_n_is_legal_like_deepseek_kv_a():
    inv = Inventory("x", "X", (ModuleInfo("model.layers.0.self_attn.kv_a_proj_with_mqa", "linear", 576, 7168, 0),), 1)
    r = run(make_config(linear="fp8_per_block"), inv)
    assert not errors(r)
    e = entry(r, "model.layers.0.self_attn.kv_a_proj_with_mqa")
    assert e.kernel == "fp8_block_gemm"


def test_explain_lists_rejected_candidates():
    # torch's blockwise path needs N % 128 == 0: with pinned torch backend it is rejected -> error naming the reason
    inv = Inventory("x", "X", (ModuleInfo("model.layers.0.self_attn.kv_a_proj_with_mqa", "linear", 576, 7168, 0),), 1)
    r = run(make_config(linear="fp8_per_block", backend={"linear": "torch"}), inv)
    (e,) = errors(r)
    assert e.code == "QC305"
    assert "fp8_block_gemm: family triton is not the pinned backend torch" in e.message
    assert "fp8_block_scaled_mm_cublas: needs N a multiple of 128, N = 576" in e.message


def test_fused_qkv_with_different_schemes_is_rejected():
    cfg = make_config(linear="fp8_per_channel", rules=[{"match": "*.k_proj", "linear": "int8"}])
    r = run(cfg, llama_like())
    (e,) = [d for d in errors(r) if d.code == "QC330"]
    assert "qkv_proj" in e.message and "int8_per_channel" in e.message and "fp8_per_channel" in e.message
    assert "one fused GEMM" in e.hint


def test_experts_of_one_layer_must_share_a_scheme():
    cfg = make_config(moe="fp8_per_channel", rules=[{"match": "*.experts.2", "moe": "int8"}])
    r = run(cfg, moe_like())
    codes = {d.code for d in errors(r)}
    assert "QC331" in codes


def test_scheme_the_gpu_cannot_run():
    r = run(make_config(linear="nvfp4", gpu="h100"), llama_like())
    e = [d for d in errors(r) if d.code == "QC305"][0]
    assert "nvfp4_gemm: needs sm_100+, target h100 is sm_90" in e.message
    assert "more modules like it" in e.message
    assert "only bf16 activations (activation: none, the weight-only path) run with weight nvfp4 on h100" in e.hint
    r2 = run(make_config(linear="nvfp4", gpu="b200"), llama_like())
    assert not errors(r2)
    r3 = run(make_config(linear="fp8_per_channel", gpu="a100"), llama_like())
    assert any("needs sm_89+" in d.message for d in errors(r3))


def test_tensor_parallel_shard_that_cuts_a_block():
    # gate/up N = 384 over tp=2 -> 192 rows per rank: cuts a 128-row block
    inv = Inventory("x", "X", (ModuleInfo("model.layers.0.mlp.gate_proj", "linear", 384, 256, 0, tp_split="column"),
                               ModuleInfo("model.layers.0.mlp.down_proj", "linear", 256, 384, 0, tp_split="row")), 1)
    r = run(make_config(linear="fp8_per_block", tp=2), inv)
    msgs = [d.message for d in errors(r) if d.code == "QC322"]
    assert any("each rank holds N = 192 rows" in m for m in msgs)
    assert any("each rank holds K = 192 columns" in m for m in msgs)
    r4 = run(make_config(linear="fp8_per_block", tp=3), inv)
    assert not errors(r4)  # 384/3 = 128: whole blocks on every rank
    assert entry(r4, "model.layers.0.mlp.gate_proj").n == 128
    assert entry(r4, "model.layers.0.mlp.down_proj").k == 128


def test_tp_that_does_not_divide():
    inv = Inventory("x", "X", (ModuleInfo("a.q_proj", "linear", 100, 256, 0, tp_split="column"),), 1)
    r = run(make_config(linear="fp8_per_channel", tp=3), inv)
    assert any(d.code == "QC321" and "N = 100 does not split evenly" in d.message for d in errors(r))


def test_static_activation_needs_checkpoint_scales():
    r = run(make_config(linear={"weight": "fp8_per_tensor", "activation": "fp8_static_per_tensor"}), llama_like())
    assert any(d.code == "QC307" for d in errors(r))


def test_checkpoint_weight_is_fixed_and_dynamic_activation_is_a_default():
    ck = FakeCheckpoint("fp8_block_128x128", "fp8_dynamic_group_128", False)
    r = run(make_config(), llama_like(), checkpoint=ck)
    assert not errors(r), r.diagnostics
    q = entry(r, "model.layers.0.self_attn.q_proj")
    assert (q.weight, q.activation, q.kernel) == ("fp8_block_128x128", "fp8_dynamic_group_128", "fp8_block_gemm")
    assert "checkpoint" in q.provenance["weight"]
    # the user may override a dynamic activation: weight-only fp8 via activation none
    r2 = run(make_config(linear={"activation": "none"}), llama_like(), checkpoint=ck)
    assert entry(r2, "model.layers.0.self_attn.q_proj").kernel == "fp8_weight_only_gemm"
    # a conflicting weight key is an error naming both and the user's line
    r3 = run(make_config(linear="int8"), llama_like(), checkpoint=ck)
    e = [d for d in errors(r3) if d.code == "QC310"][0]
    assert "int8_per_channel" in e.message and "fp8_block_128x128" in e.message and e.span.line == 2


def test_checkpoint_static_activation_conflict():
    ck = FakeCheckpoint("fp8_per_tensor", "fp8_static_per_tensor", True)
    ok = run(make_config(), llama_like(), checkpoint=ck)
    assert not errors(ok)
    assert entry(ok, "model.layers.0.self_attn.q_proj").activation == "fp8_static_per_tensor"
    bad = run(make_config(linear={"activation": "fp8_dynamic_per_token"}), llama_like(), checkpoint=ck)
    e = [d for d in errors(bad) if d.code == "QC311"][0]
    assert "fp8_static_per_tensor" in e.message and "fp8_dynamic_per_token" in e.message and e.span.line == 2


def test_summary_counts_bytes_by_scheme():
    r = run(make_config(linear="w4a16"), llama_like(hidden=256, inter=512))
    s = r.plan.summary
    assert s["schemes"]["int4_group_128/none"]["modules"] == 2 * 7
    assert s["bytes_after"] < s["bytes_before"]
    total = sum(v["bytes_before"] for v in s["schemes"].values())
    assert total == s["bytes_before"]


def test_kernel_table_entries_per_distinct_shape():
    r = run(make_config(linear="fp8_per_channel"), llama_like())
    ids = sorted(r.plan.kernels)
    assert "fp8_scaled_gemm/n256_k256" in ids and "fp8_scaled_gemm/n512_k256" in ids
    q = entry(r, "model.layers.0.self_attn.q_proj")
    cfg1 = r.plan.kernel_config(q, 1)
    assert cfg1.block_m == 16 and cfg1.block_n <= 256


def test_kv_cache_is_planned_with_a_note():
    r = run(make_config(kv_cache={"activation": "fp8_dynamic_per_tensor"}), llama_like())
    assert not errors(r)
    assert entry(r, "model.layers.0.self_attn.kv_cache").kernel == "kv_cache_fp8"
    assert any("kv_cache" in w and "does not apply" in w for w in r.plan.warnings)


def test_set_errors():
    cfg = make_config()
    for text, code in (("moe.activation", "QC601"), ("moe.actvation=mxfp8", "QC602"), ("moe.activation=mxfp9", "QC603"),
                       ("target.gpu=h1000", "QC604"), ("target.tensor_parallel=0", "QC605"), ("backend.linear=cutlass", "QC606")):
        _, _, diags = apply_overrides(cfg, [text])
        assert [d.code for d in diags] == [code], text
        assert diags[0].span.file == f"--set {text}"
    _, _, diags = apply_overrides(cfg, ["moe.actvation=mxfp8"])
    assert "did you mean 'moe.activation'" in diags[0].hint
