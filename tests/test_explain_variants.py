"""`explain`'s backend oracle: every activation key some kernel pairs with the module's weight key,
with whether it runs on the target (GPU, per-rank shape, backend pin) and why not."""

from quantc.pipeline import run_pipeline
from quantc.report import explain_data, render_explain_text


def _explain(tmp_path, text, model, module, **kw):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    result = run_pipeline(str(cfg), model, **kw)
    return explain_data(result, module)


def test_fp8_block_variants_on_deepseek_kv_a(tmp_path):
    data = _explain(tmp_path, "quantc: 1\nlinear: fp8_per_block\n", "examples/models/deepseek-v3-bf16.json",
                    "model.layers.0.self_attn.kv_a_proj_with_mqa")
    by = {(v["activation"], v["kernel"]): v for v in data["variants"]}
    assert by[("fp8_dynamic_group_128", "fp8_block_gemm")]["chosen"]
    cublas = by[("fp8_dynamic_group_128", "fp8_block_scaled_mm_cublas")]
    assert not cublas["runs"] and cublas["reason"] == "needs N a multiple of 128, N = 576"
    assert by[("none", "fp8_weight_only_gemm")]["runs"]  # the weight-only alternative
    text = render_explain_text(data)
    assert "* fp8_dynamic_group_128" in text and "- fp8_dynamic_group_128    fp8_block_scaled_mm_cublas  (needs N a multiple of 128" in text


def test_variants_follow_the_gpu(tmp_path):
    data = _explain(tmp_path, "quantc: 1\nlinear: nvfp4a16\n", "examples/models/llama-3.1-8b.json",
                    "model.layers.0.mlp.down_proj", gpu="h100")
    by = {v["activation"]: v for v in data["variants"]}
    assert by["none"]["chosen"] and by["nvfp4"]["runs"] is False and "needs sm_100+" in by["nvfp4"]["reason"]
    data = _explain(tmp_path, "quantc: 1\nlinear: nvfp4a16\n", "examples/models/llama-3.1-8b.json",
                    "model.layers.0.mlp.down_proj", gpu="b200")
    assert {v["activation"]: v["runs"] for v in data["variants"]} == {"none": True, "nvfp4": True}


def test_unquantized_module_has_no_variants(tmp_path):
    data = _explain(tmp_path, "quantc: 1\nlinear: int8\n", "examples/models/llama-3.1-8b.json", "lm_head")
    assert data["variants"] == [] and data["kernel"] is None


def test_one_row_4bit_configs_say_the_gemv_takes_them_on_sm90(tmp_path):
    """On sm_90 the runtime runs a 4-bit weight-only layer's one-row calls on its CUDA-core GEMV, and 2-8 rows of
    int4 g128, mxfp4 and nvfp4 (int4 with zero points 2-16) on the natural layout's MMA kernel, whatever the table's
    first bucket says: explain says so under that bucket (int4 in groups of 64: the GEMV's one or two rows); other
    GPUs, and K the GEMV refuses, do not."""
    gemv = "(one or two rows on this GPU run the runtime's CUDA-core GEMV"
    int4 = ("(one row on this GPU runs the runtime's CUDA-core GEMV (runtime/kernels/wo_gemv.py) and 2-{} rows the "
            "natural layout's MMA kernel (runtime/kernels/wo_plane_mma.py)")
    for gpu, key, model, module, note in [
        ("h100", "w4a16", "examples/models/llama-3.1-8b.json", "model.layers.0.mlp.down_proj", int4.format(8)),
        ("h100", "{weight: int4_group_128_asym}", "examples/models/llama-3.1-8b.json", "model.layers.0.mlp.down_proj",
         int4.format(16)),
        ("h100", "{weight: int4_group_64}", "examples/models/llama-3.1-8b.json", "model.layers.0.mlp.down_proj", gemv),
        ("h200", "mxfp4", "examples/models/llama-3.1-8b.json", "model.layers.0.mlp.down_proj", int4.format(8)),
        ("a100", "w4a16", "examples/models/llama-3.1-8b.json", "model.layers.0.mlp.down_proj", None),
        ("h100", "fp8_per_channel", "examples/models/llama-3.1-8b.json", "model.layers.0.mlp.down_proj", None),
    ]:
        data = _explain(tmp_path, f"quantc: 1\nlinear: {key}\n", model, module, gpu=gpu)
        text = render_explain_text(data)
        assert ("one_row" in data["kernel_config"]) == (note is not None), (gpu, key)
        assert (note is None and "on this GPU run" not in text) or note in text, (gpu, key, text)
        if note:  # right under the first bucket
            lines = text.splitlines()
            first = next(i for i, line in enumerate(lines) if line.strip().startswith("M     1..1"))
            assert note in lines[first + 1]


def test_moe_4bit_configs_say_decode_runs_the_grouped_gemv_on_sm90(tmp_path):
    """4-bit MoE experts on sm_90 without expert parallelism: explain says decode runs the grouped GEMV (pairs up to
    the experts), under the first bucket; with expert parallelism, on other GPUs, or with fp8 weights on the same
    weight-only kernel id, it does not."""
    note = "(decode on this GPU runs the runtime's grouped CUDA-core GEMV"
    model, module = "examples/models/qwen3-30b-a3b.json", "model.layers.0.mlp.experts.0.down_proj"
    for gpu, moe, ep, shown in [("h100", "mxfp4", False, True), ("h200", "w4a16", False, True),
                                ("h100", "mxfp4", True, False), ("a100", "mxfp4", False, False),
                                ("h100", "fp8_per_channel", False, False),
                                ("h100", "{weight: fp8_per_channel, activation: none}", False, False)]:
        text = f"quantc: 1\nmoe: {moe}\n" + (f"target: {{gpu: {gpu}, expert_parallel: true, tensor_parallel: 2}}\n"
                                                if ep else "")
        data = _explain(tmp_path, text, model, module, **({} if ep else {"gpu": gpu}))
        rendered = render_explain_text(data)
        assert (note in rendered) == shown, (gpu, moe, ep)
        assert ("decode" in data["kernel_config"]) == shown, (gpu, moe, ep)
        # past that, from max(32, experts) pairs, the MMA kernel on the natural layout (Qwen3's widths: 128 | 768)
        assert ("wo_plane_mma.py) where both expert widths" in rendered) == shown, (gpu, moe, ep)
