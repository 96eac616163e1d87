"""The model inventory: config.json builders against published dimensions, safetensors headers,
index files, live modules (duck-typed and real torch), and every error path."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from quantc.diagnostics import QuantcError
from quantc.inventory import inventory_or_raise, load_inventory, synthetic_inventory
from quantc.safetensors_header import read_header
from quantc.tensor_names import canonical_key

MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "U8": 1, "I32": 4, "I64": 8}


def load(name: str):
    inv, diags = load_inventory(MODELS / name)
    assert inv is not None and not diags, diags
    return inv, {m.name: m for m in inv.modules}


def kinds(inv) -> Counter:
    return Counter(m.kind for m in inv.modules)


def shape(m) -> tuple[int, int]:
    return (m.n, m.k)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]], header: bytes | None = None):
    """A safetensors file written byte by byte: u64 header length, JSON header, zeroed data."""
    doc, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, dims) in tensors.items():
        size = math.prod(dims) * DTYPE_BYTES[dtype]
        doc[name] = {"dtype": dtype, "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    raw = header if header is not None else json.dumps(doc).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


def signature(inv) -> list[tuple]:
    return [(m.name, m.kind, m.n, m.k, m.layer, m.num_experts, m.fused_group, m.moe_block, m.tp_split)
            for m in inv.modules]


# --- config.json: published dimensions ------------------------------------------------------------


def test_llama_3_1_8b():
    inv, by = load("llama-3.1-8b.json")
    assert inv.architecture == "LlamaForCausalLM" and inv.num_layers == 32
    assert kinds(inv) == {"linear": 224, "kv_cache": 32, "embedding": 1, "lm_head": 1}
    a = "model.layers.31.self_attn"
    assert shape(by[f"{a}.q_proj"]) == (4096, 4096)
    assert shape(by[f"{a}.k_proj"]) == shape(by[f"{a}.v_proj"]) == (1024, 4096)
    assert shape(by[f"{a}.o_proj"]) == (4096, 4096)
    assert shape(by["model.layers.0.mlp.gate_proj"]) == (14336, 4096)
    assert shape(by["model.layers.0.mlp.down_proj"]) == (4096, 14336)
    assert shape(by["model.embed_tokens"]) == shape(by["lm_head"]) == (128256, 4096)
    assert by[f"{a}.q_proj"].fused_group == by[f"{a}.v_proj"].fused_group == f"{a}.qkv_proj"
    assert by["model.layers.0.mlp.up_proj"].fused_group == "model.layers.0.mlp.gate_up_proj"
    assert by["model.layers.0.mlp.down_proj"].fused_group is None
    assert [by[f"{a}.{p}"].tp_split for p in ("q_proj", "o_proj")] == ["column", "row"]
    kv = by[f"{a}.kv_cache"]
    assert (kv.kind, kv.n, kv.k, kv.tp_split) == ("kv_cache", 1024, 128, "column")
    assert inv.modules[0].name == "model.embed_tokens" and inv.modules[-1].name == "lm_head"
    assert inv.quantization_config is None and inv.quantization_config_source is None


def test_llama_3_1_70b():
    inv, by = load("llama-3.1-70b.json")
    assert inv.num_layers == 80 and kinds(inv)["linear"] == 560 and len(inv.modules) == 642
    assert shape(by["model.layers.79.self_attn.q_proj"]) == (8192, 8192)
    assert shape(by["model.layers.79.self_attn.k_proj"]) == (1024, 8192)
    assert shape(by["model.layers.79.mlp.up_proj"]) == (28672, 8192)


def test_qwen3_8b_dense():
    inv, by = load("qwen3-8b.json")
    assert inv.architecture == "Qwen3ForCausalLM" and inv.num_layers == 36
    assert kinds(inv) == {"linear": 252, "kv_cache": 36, "embedding": 1, "lm_head": 1}
    assert shape(by["model.layers.0.self_attn.k_proj"]) == (1024, 4096)
    assert shape(by["model.layers.35.mlp.gate_proj"]) == (12288, 4096)
    assert shape(by["lm_head"]) == (151936, 4096)


def test_qwen2_dense_by_model_type(tmp_path):
    # Qwen2.5-7B's published dimensions; head_dim = hidden / heads (no head_dim field)
    cfg = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
           "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064, "torch_dtype": "float16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    inv = inventory_or_raise(tmp_path / "config.json")
    by = {m.name: m for m in inv.modules}
    assert inv.architecture == "Qwen2ForCausalLM" and len(inv.modules) == 28 * 8 + 2
    assert shape(by["model.layers.27.self_attn.k_proj"]) == (512, 3584)
    assert shape(by["model.layers.27.self_attn.kv_cache"]) == (512, 128)
    assert {m.dtype for m in inv.modules} == {"fp16"}


def test_qwen3_30b_a3b_moe():
    inv, by = load("qwen3-30b-a3b.json")
    assert inv.architecture == "Qwen3MoeForCausalLM" and inv.num_layers == 48
    assert kinds(inv) == {"moe_experts": 48 * 128 * 3, "linear": 48 * 4, "router": 48, "kv_cache": 48,
                          "embedding": 1, "lm_head": 1}
    # 32 heads x head_dim 128 = 4096 != hidden 2048
    assert shape(by["model.layers.0.self_attn.q_proj"]) == (4096, 2048)
    assert shape(by["model.layers.0.self_attn.k_proj"]) == (512, 2048)
    assert shape(by["model.layers.0.self_attn.o_proj"]) == (2048, 4096)
    e = "model.layers.47.mlp.experts.127"
    assert shape(by[f"{e}.gate_proj"]) == (768, 2048) and shape(by[f"{e}.down_proj"]) == (2048, 768)
    assert by[f"{e}.up_proj"].fused_group == f"{e}.gate_up_proj"
    assert {by[f"{e}.{p}"].moe_block for p in ("gate_proj", "up_proj", "down_proj")} == {"model.layers.47.mlp.experts"}
    assert by[f"{e}.down_proj"].tp_split == "row" and by[f"{e}.gate_proj"].tp_split == "column"
    router = by["model.layers.47.mlp.gate"]
    assert (router.kind, router.n, router.k, router.tp_split) == ("router", 128, 2048, "replicated")
    assert "model.layers.0.mlp.gate_proj" not in by


def test_qwen3_moe_dense_layers(tmp_path):
    cfg = json.loads((MODELS / "qwen3-30b-a3b.json").read_text())
    cfg.update(num_hidden_layers=4, mlp_only_layers=[0], decoder_sparse_step=2, num_experts=4)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    by = {m.name: m for m in inventory_or_raise(tmp_path).modules}
    # layer 0 listed dense; sparse where (i+1) % 2 == 0: layers 1 and 3
    assert shape(by["model.layers.0.mlp.gate_proj"]) == (6144, 2048)
    assert shape(by["model.layers.2.mlp.gate_proj"]) == (6144, 2048)
    assert "model.layers.1.mlp.experts.3.down_proj" in by and "model.layers.3.mlp.gate" in by
    assert "model.layers.0.mlp.gate" not in by and "model.layers.2.mlp.experts.0.up_proj" not in by


def test_mixtral_8x7b():
    inv, by = load("mixtral-8x7b.json")
    assert kinds(inv) == {"moe_experts": 32 * 8 * 3, "linear": 128, "router": 32, "kv_cache": 32,
                          "embedding": 1, "lm_head": 1}
    e = "model.layers.5.block_sparse_moe.experts.7"
    assert shape(by[f"{e}.w1"]) == shape(by[f"{e}.w3"]) == (14336, 4096)
    assert shape(by[f"{e}.w2"]) == (4096, 14336)
    assert by[f"{e}.w1"].fused_group == by[f"{e}.w3"].fused_group == f"{e}.gate_up_proj"
    assert by[f"{e}.w2"].moe_block == "model.layers.5.block_sparse_moe.experts"
    assert shape(by["model.layers.5.block_sparse_moe.gate"]) == (8, 4096)
    assert shape(by["lm_head"]) == (32000, 4096)


def test_deepseek_v3_fp8():
    inv, by = load("deepseek-v3.json")
    assert inv.architecture == "DeepseekV3ForCausalLM" and inv.num_layers == 61
    experts = 58 * 256 * 3
    assert kinds(inv) == {"moe_experts": experts, "linear": 61 * 5 + 3 * 3 + 58 * 3, "router": 58,
                          "kv_cache": 61, "embedding": 1, "lm_head": 1}
    assert len(inv.modules) == 45153
    a = "model.layers.10.self_attn"
    assert shape(by[f"{a}.kv_a_proj_with_mqa"]) == (576, 7168)
    assert shape(by[f"{a}.q_a_proj"]) == (1536, 7168)
    assert shape(by[f"{a}.q_b_proj"]) == (128 * (128 + 64), 1536)
    assert shape(by[f"{a}.kv_b_proj"]) == (128 * (128 + 128), 512)
    assert shape(by[f"{a}.o_proj"]) == (7168, 128 * 128)
    assert by[f"{a}.q_a_proj"].fused_group == by[f"{a}.kv_a_proj_with_mqa"].fused_group == f"{a}.fused_qkv_a_proj"
    assert [by[f"{a}.{p}"].tp_split for p in ("q_a_proj", "kv_a_proj_with_mqa", "q_b_proj", "kv_b_proj", "o_proj")] \
        == ["replicated", "replicated", "column", "column", "row"]
    assert shape(by[f"{a}.kv_cache"]) == (576, 576) and by[f"{a}.kv_cache"].tp_split == "replicated"
    for i in range(3):  # first_k_dense_replace = 3
        assert shape(by[f"model.layers.{i}.mlp.gate_proj"]) == (18432, 7168)
        assert f"model.layers.{i}.mlp.gate" not in by
    assert "model.layers.3.mlp.gate_proj" not in by
    assert shape(by["model.layers.3.mlp.gate"]) == (256, 7168) and by["model.layers.3.mlp.gate"].kind == "router"
    e = by["model.layers.60.mlp.experts.255.down_proj"]
    assert (e.n, e.k, e.moe_block, e.tp_split) == (7168, 2048, "model.layers.60.mlp.experts", "row")
    s = by["model.layers.60.mlp.shared_experts.gate_proj"]
    assert (s.kind, s.n, s.k, s.moe_block, s.fused_group) == \
        ("linear", 2048, 7168, None, "model.layers.60.mlp.shared_experts.gate_up_proj")
    assert "model.layers.61.self_attn.q_a_proj" not in by and inv.extra["mtp_layers_not_listed"] == 1
    # the published fp8 block checkpoint: linears and experts stored fp8 with inverse block scales
    assert inv.quantization_config == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                       "weight_block_size": [128, 128]}
    assert inv.quantization_config_source == str(MODELS / "deepseek-v3.json")
    assert e.dtype == "fp8_e4m3" and e.tensors == (e.name + ".weight", e.name + ".weight_scale_inv")
    assert {by[n].dtype for n in ("model.layers.3.mlp.gate", "model.embed_tokens", "lm_head")} == {"bf16"}


def test_deepseek_v3_bf16_and_q_lora_null(tmp_path):
    inv, by = load("deepseek-v3-bf16.json")
    assert len(inv.modules) == 45153 and inv.quantization_config is None
    assert {m.dtype for m in inv.modules} == {"bf16"} and all(m.tensors == () for m in inv.modules)
    cfg = json.loads((MODELS / "deepseek-v3-bf16.json").read_text())
    cfg.update(q_lora_rank=None, num_hidden_layers=4)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    by = {m.name: m for m in inventory_or_raise(tmp_path / "config.json").modules}
    q = by["model.layers.0.self_attn.q_proj"]
    assert (q.n, q.k, q.fused_group, q.tp_split) == (128 * 192, 7168, None, "column")
    assert "model.layers.0.self_attn.q_a_proj" not in by
    assert by["model.layers.0.self_attn.kv_a_proj_with_mqa"].fused_group is None


def test_gpt_oss_20b_mxfp4():
    inv, by = load("gpt-oss-20b.json")
    assert inv.architecture == "GptOssForCausalLM" and inv.num_layers == 24
    assert kinds(inv) == {"linear": 96, "moe_experts": 48, "router": 24, "kv_cache": 24, "embedding": 1, "lm_head": 1}
    x = "model.layers.23.mlp.experts"
    gu, down = by[f"{x}.gate_up_proj"], by[f"{x}.down_proj"]
    assert (gu.kind, gu.n, gu.k, gu.num_experts, gu.moe_block, gu.tp_split) == \
        ("moe_experts", 5760, 2880, 32, x, "column")
    assert (down.n, down.k, down.num_experts, down.moe_block, down.tp_split) == (2880, 2880, 32, x, "row")
    assert gu.dtype == "mxfp4" and gu.tensors == (f"{x}.gate_up_proj_blocks", f"{x}.gate_up_proj_scales")
    assert gu.weight_elements == 32 * 5760 * 2880
    assert shape(by["model.layers.0.self_attn.q_proj"]) == (4096, 2880)
    assert shape(by["model.layers.0.self_attn.k_proj"]) == (512, 2880)
    assert shape(by["model.layers.0.self_attn.o_proj"]) == (2880, 4096)
    assert shape(by["model.layers.0.mlp.router"]) == (32, 2880) and by["model.layers.0.mlp.router"].kind == "router"
    assert shape(by["model.layers.0.self_attn.kv_cache"]) == (512, 64)
    assert by["model.layers.0.self_attn.q_proj"].dtype == "bf16"  # modules_to_not_convert: self_attn
    assert shape(by["lm_head"]) == (201088, 2880)
    assert inv.quantization_config["quant_method"] == "mxfp4"
    assert inv.quantization_config["modules_to_not_convert"][0] == "model.layers.*.self_attn"


def test_gpt_oss_bf16_and_120b():
    inv, by = load("gpt-oss-20b-bf16.json")
    gu = by["model.layers.0.mlp.experts.gate_up_proj"]
    assert gu.dtype == "bf16" and gu.tensors == (gu.name,) and inv.quantization_config is None
    inv, by = load("gpt-oss-120b.json")
    assert inv.num_layers == 36 and by["model.layers.35.mlp.experts.down_proj"].num_experts == 128


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.json")))
def test_examples_are_in_canonical_order(name):
    inv, _ = load(name)
    assert list(inv.modules) == sorted(inv.modules, key=canonical_key)
    assert len({m.name for m in inv.modules}) == len(inv.modules)


def test_modelopt_sidecar_and_directory(tmp_path):
    cfg = json.loads((MODELS / "llama-3.1-8b.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    side = {"producer": {"name": "modelopt", "version": "0.35.0"},
            "quantization": {"quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["lm_head"]}}
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(side))
    inv = inventory_or_raise(tmp_path)
    assert inv.quantization_config == side
    assert inv.quantization_config_source == str(tmp_path / "hf_quant_config.json")
    # config.json's own quantization_config wins over the sidecar
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    inv = inventory_or_raise(tmp_path)
    assert inv.quantization_config["activation_scheme"] == "static"
    assert inv.quantization_config_source == str(tmp_path / "config.json")
    assert inv.modules[1].dtype == "fp8_e4m3" and inv.modules[1].tensors[1].endswith(".weight_scale")


# --- safetensors headers --------------------------------------------------------------------------


def tiny_llama_tensors(layers=2, hidden=64, heads=4, kv_heads=2, inter=96, vocab=100):
    hd = hidden // heads
    t = {"model.embed_tokens.weight": ("BF16", (vocab, hidden)), "model.norm.weight": ("BF16", (hidden,)),
         "lm_head.weight": ("BF16", (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}"
        t.update({f"{p}.input_layernorm.weight": ("BF16", (hidden,)),
                  f"{p}.self_attn.q_proj.weight": ("BF16", (heads * hd, hidden)),
                  f"{p}.self_attn.k_proj.weight": ("BF16", (kv_heads * hd, hidden)),
                  f"{p}.self_attn.v_proj.weight": ("BF16", (kv_heads * hd, hidden)),
                  f"{p}.self_attn.o_proj.weight": ("BF16", (hidden, heads * hd)),
                  f"{p}.mlp.gate_proj.weight": ("BF16", (inter, hidden)),
                  f"{p}.mlp.up_proj.weight": ("BF16", (inter, hidden)),
                  f"{p}.mlp.down_proj.weight": ("BF16", (hidden, inter))})
    return t


def test_safetensors_header_llama(tmp_path):
    # 12 layers: the header's alphabetical order (layers.10 before layers.2) is not the module order
    path = write_safetensors(tmp_path / "model.safetensors", tiny_llama_tensors(layers=12))
    inv, diags = load_inventory(path)
    assert not diags and inv.architecture == "safetensors" and inv.num_layers == 12
    by = {m.name: m for m in inv.modules}
    assert kinds(inv) == {"linear": 84, "kv_cache": 12, "embedding": 1, "lm_head": 1}
    assert shape(by["model.layers.1.self_attn.k_proj"]) == (32, 64)
    assert by["model.layers.1.self_attn.k_proj"].fused_group == "model.layers.1.self_attn.qkv_proj"
    assert by["model.layers.1.mlp.down_proj"].tp_split == "row"
    assert by["model.layers.1.self_attn.kv_cache"].k == 0  # head size unknown without config.json
    assert by["model.layers.1.self_attn.q_proj"].tensors == ("model.layers.1.self_attn.q_proj.weight",)
    assert [m.layer for m in inv.modules if m.layer is not None] == sorted(m.layer for m in inv.modules if m.layer is not None)
    assert list(inv.modules) == sorted(inv.modules, key=canonical_key)


def test_safetensors_pre_quantized_layouts(tmp_path):
    n, k, e = 256, 512, 4
    t = {
        # DeepSeek-style fp8 block weights
        "model.layers.0.self_attn.o_proj.weight": ("F8_E4M3", (n, k)),
        "model.layers.0.self_attn.o_proj.weight_scale_inv": ("F32", (n // 128, k // 128)),
        # GPTQ: qweight (K/8, N) int32, scales (K/G, N), g_idx
        "model.layers.0.mlp.gate_proj.qweight": ("I32", (k // 8, n)),
        "model.layers.0.mlp.gate_proj.scales": ("F16", (k // 128, n)),
        "model.layers.0.mlp.gate_proj.qzeros": ("I32", (k // 128, n // 8)),
        "model.layers.0.mlp.gate_proj.g_idx": ("I32", (k,)),
        # AWQ: qweight (K, N/8), scales (K/G, N)
        "model.layers.0.mlp.up_proj.qweight": ("I32", (k, n // 8)),
        "model.layers.0.mlp.up_proj.scales": ("F16", (k // 128, n)),
        # compressed-tensors pack-quantized int4
        "model.layers.0.mlp.down_proj.weight_packed": ("I32", (n, k // 8)),
        "model.layers.0.mlp.down_proj.weight_scale": ("BF16", (n, k // 128)),
        "model.layers.0.mlp.down_proj.weight_shape": ("I64", (2,)),
        # ModelOpt NVFP4: two e2m1 a byte, fp8 scales per 16, fp32 global
        "model.layers.0.self_attn.q_proj.weight": ("U8", (n, k // 2)),
        "model.layers.0.self_attn.q_proj.weight_scale": ("F8_E4M3", (n, k // 16)),
        "model.layers.0.self_attn.q_proj.weight_scale_2": ("F32", ()),
        # gpt-oss MXFP4 experts: (E, N, K/32, 16) blocks, (E, N, K/32) e8m0 scales
        "model.layers.0.mlp.experts.gate_up_proj_blocks": ("U8", (e, 2 * n, k // 32, 16)),
        "model.layers.0.mlp.experts.gate_up_proj_scales": ("U8", (e, 2 * n, k // 32)),
        "model.layers.0.mlp.experts.gate_up_proj_bias": ("BF16", (e, 2 * n)),
        "model.layers.0.mlp.router.weight": ("BF16", (e, k)),
        "model.layers.0.mlp.router.bias": ("BF16", (e,)),
        "model.layers.0.self_attn.sinks": ("BF16", (8,)),
        "model.layers.0.mixer.conv1d.weight": ("BF16", (128, 1, 4)),  # 3D but not experts: not listed
    }
    by = {m.name: m for m in inventory_or_raise(write_safetensors(tmp_path / "q.safetensors", t)).modules}
    p = "model.layers.0"
    assert (by[f"{p}.self_attn.o_proj"].dtype, shape(by[f"{p}.self_attn.o_proj"])) == ("fp8_e4m3", (n, k))
    assert set(by[f"{p}.self_attn.o_proj"].tensors) == {f"{p}.self_attn.o_proj.weight", f"{p}.self_attn.o_proj.weight_scale_inv"}
    assert (by[f"{p}.mlp.gate_proj"].dtype, shape(by[f"{p}.mlp.gate_proj"])) == ("int4_packed", (n, k))
    assert shape(by[f"{p}.mlp.up_proj"]) == (n, k)
    assert (by[f"{p}.mlp.down_proj"].dtype, shape(by[f"{p}.mlp.down_proj"])) == ("int4_packed", (n, k))
    assert (by[f"{p}.self_attn.q_proj"].dtype, shape(by[f"{p}.self_attn.q_proj"])) == ("nvfp4", (n, k))
    gu = by[f"{p}.mlp.experts.gate_up_proj"]
    assert (gu.kind, gu.dtype, gu.n, gu.k, gu.num_experts, gu.moe_block) == \
        ("moe_experts", "mxfp4", 2 * n, k, e, f"{p}.mlp.experts")
    assert f"{p}.mlp.experts.gate_up_proj_blocks" in gu.tensors
    assert by[f"{p}.mlp.router"].kind == "router" and shape(by[f"{p}.mlp.router"]) == (e, k)
    assert not any("sinks" in name or "conv1d" in name for name in by)


def test_safetensors_fused_expert_layouts(tmp_path):
    hidden, inter, e = 64, 48, 4
    gpt_oss = {"model.layers.0.mlp.experts.gate_up_proj": ("BF16", (e, hidden, 2 * inter)),  # [E, in, out]
               "model.layers.0.mlp.experts.down_proj": ("BF16", (e, inter, hidden))}
    v5 = {"model.layers.0.mlp.experts.gate_up_proj": ("BF16", (e, 2 * inter, hidden)),  # [E, out, in]
          "model.layers.0.mlp.experts.down_proj": ("BF16", (e, hidden, inter))}
    for i, t in enumerate((gpt_oss, v5)):
        by = {m.name: m for m in inventory_or_raise(write_safetensors(tmp_path / f"{i}.safetensors", t)).modules}
        gu, down = by["model.layers.0.mlp.experts.gate_up_proj"], by["model.layers.0.mlp.experts.down_proj"]
        assert (gu.n, gu.k, gu.num_experts, gu.tp_split) == (2 * inter, hidden, e, "column")
        assert (down.n, down.k, down.tp_split) == (hidden, inter, "row")


def test_safetensors_library_layout_agrees(tmp_path):
    import torch  # the runtime extra is part of the test install
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors = {"model.embed_tokens.weight": torch.zeros(10, 8, dtype=torch.bfloat16),
               "model.layers.0.self_attn.q_proj.weight": torch.zeros(16, 8, dtype=torch.float8_e4m3fn),
               "model.layers.0.self_attn.q_proj.weight_scale_inv": torch.ones(1, 1),
               "model.layers.0.mlp.experts.3.w2.weight": torch.zeros(8, 12, dtype=torch.float16),
               "model.layers.0.mlp.experts.gate_up_proj": torch.zeros(2, 8, 24, dtype=torch.bfloat16),
               "model.layers.0.post_attention_layernorm.weight": torch.ones(8)}
    path = tmp_path / "lib.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    headers, diags = read_header(str(path))
    assert not diags
    with safe_open(str(path), "pt") as f:
        assert set(headers) == set(f.keys())
    assert {name: h.shape for name, h in headers.items()} == {name: tuple(t.shape) for name, t in tensors.items()}
    assert headers["model.layers.0.self_attn.q_proj.weight"].dtype == "F8_E4M3"
    assert headers["model.embed_tokens.weight"].dtype == "BF16"
    by = {m.name: m for m in inventory_or_raise(path).modules}
    assert (by["model.layers.0.self_attn.q_proj"].dtype, shape(by["model.layers.0.self_attn.q_proj"])) == ("fp8_e4m3", (16, 8))
    assert (by["model.layers.0.mlp.experts.3.w2"].dtype, shape(by["model.layers.0.mlp.experts.3.w2"])) == ("fp16", (8, 12))
    assert by["model.layers.0.mlp.experts.gate_up_proj"].num_experts == 2


SMALL = {  # real configs with small dimensions: every builder against a checkpoint of its own names
    "llama-3.1-8b.json": dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=100),
    "qwen3-30b-a3b.json": dict(num_hidden_layers=3, hidden_size=64, moe_intermediate_size=32, num_experts=4,
                               head_dim=16, num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
    "mixtral-8x7b.json": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_local_experts=3,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
    "deepseek-v3.json": dict(num_hidden_layers=4, first_k_dense_replace=1, hidden_size=64, intermediate_size=96,
                             moe_intermediate_size=32, n_routed_experts=12, num_attention_heads=4, q_lora_rank=48,
                             kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, vocab_size=100),
    "gpt-oss-20b-bf16.json": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=48, head_dim=16,
                                  num_local_experts=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=100),
}


def small_model(tmp_path: Path, name: str):
    """config.json with SMALL dims, and the checkpoint tensors its inventory names (norms included)."""
    cfg = {**json.loads((MODELS / name).read_text()), **SMALL[name]}
    cfg.pop("quantization_config", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    inv = inventory_or_raise(tmp_path / "config.json")
    tensors = {"model.norm.weight": ("BF16", (cfg["hidden_size"],))}
    for m in inv.modules:
        if m.kind == "kv_cache":
            continue
        if m.num_experts > 1:  # gpt-oss: fused [E, in, out] under the module's own name
            tensors[m.name] = ("BF16", (m.num_experts, m.k, m.n))
        else:
            tensors[m.name + ".weight"] = ("BF16", (m.n, m.k))
    return inv, tensors


@pytest.mark.parametrize("name", sorted(SMALL))
def test_checkpoint_headers_match_config(tmp_path, name):
    inv, tensors = small_model(tmp_path, name)
    names = sorted(tensors)  # safetensors writes its header sorted by name
    half = len(names) // 2
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {n: tensors[n] for n in names[:half]})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {n: tensors[n] for n in names[half:]})
    index = {"metadata": {}, "weight_map": {n: f"model-0000{1 + (i >= half)}-of-00002.safetensors"
                                            for i, n in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    from_headers, diags = load_inventory(tmp_path / "model.safetensors.index.json")
    assert not diags
    assert signature(from_headers) == signature(inv)
    assert from_headers.fingerprint() == inv.fingerprint()
    assert from_headers.architecture == inv.architecture
    # the index alone (shards gone): names from the index, shapes from config.json
    for shard in tmp_path.glob("*.safetensors"):
        shard.unlink()
    only_index, diags = load_inventory(tmp_path / "model.safetensors.index.json")
    assert not diags and signature(only_index) == signature(inv)
    assert only_index.source.endswith("model.safetensors.index.json")


def test_checkpoint_mtp_layer_and_tied_lm_head(tmp_path):
    inv, tensors = small_model(tmp_path, "deepseek-v3.json")
    mtp = "model.layers.4"  # num_hidden_layers = 4: DeepSeek's MTP layer is the next index
    tensors.update({f"{mtp}.eh_proj.weight": ("BF16", (64, 128)), f"{mtp}.shared_head.head.weight": ("BF16", (100, 64)),
                    f"{mtp}.self_attn.kv_a_proj_with_mqa.weight": ("BF16", (40, 64))})
    got = inventory_or_raise(write_safetensors(tmp_path / "model.safetensors", tensors))
    assert signature(got) == signature(inv) and got.extra["mtp_layers_not_listed"] == 1
    inv, tensors = small_model(tmp_path, "llama-3.1-8b.json")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    del tensors["lm_head.weight"]
    got = inventory_or_raise(write_safetensors(tmp_path / "model.safetensors", tensors))
    assert signature(got) == signature(inv) and got.modules[-1].tensors == ("model.embed_tokens.weight",)


def test_index_names_disagreeing_with_config_warn(tmp_path):
    inv, tensors = small_model(tmp_path, "llama-3.1-8b.json")
    tensors = {n: v for n, v in tensors.items() if not n.startswith("model.layers.2.")}
    index = {"weight_map": {n: "model-00001-of-00001.safetensors" for n in tensors}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    got, diags = load_inventory(tmp_path / "model.safetensors.index.json")
    assert got is not None and [d.code for d in diags] == ["QC812"] and diags[0].severity == "warning"
    assert "7 module(s)" in diags[0].message and "model.layers.2.self_attn.q_proj" in diags[0].message


# --- live modules ---------------------------------------------------------------------------------


class FakeTensor:
    def __init__(self, *shape, dtype="torch.bfloat16"):
        self.shape, self.dtype = shape, dtype


class FakeLinear:
    def __init__(self, k, n):
        self.in_features, self.out_features, self.weight = k, n, FakeTensor(n, k)


class FakeEmbedding:
    def __init__(self, vocab, dim):
        self.num_embeddings, self.embedding_dim, self.weight = vocab, dim, FakeTensor(vocab, dim)


class FakeAttention:
    head_dim = 16

    def __init__(self):
        self.k_proj = FakeLinear(64, 32)


class FakeFusedExperts:  # gpt-oss GptOssExperts: [E, in, out] parameters
    def __init__(self, e, hidden, inter):
        self.gate_up_proj, self.down_proj = FakeTensor(e, hidden, 2 * inter), FakeTensor(e, inter, hidden)


class FakeModel:
    """Duck-typed: only named_modules(), like the names a gpt-oss model gives."""

    def __init__(self, layers=2, hidden=64, heads=4, kv_heads=2, hd=16, inter=48, experts=4, vocab=100):
        mods = [("", self), ("model", object()), ("model.embed_tokens", FakeEmbedding(vocab, hidden))]
        for i in range(layers):
            a = f"model.layers.{i}.self_attn"
            attn = FakeAttention()
            mods += [(a, attn), (f"{a}.q_proj", FakeLinear(hidden, heads * hd)), (f"{a}.k_proj", attn.k_proj),
                     (f"{a}.v_proj", FakeLinear(hidden, kv_heads * hd)), (f"{a}.o_proj", FakeLinear(heads * hd, hidden)),
                     (f"model.layers.{i}.mlp.router", FakeLinear(hidden, experts)),
                     (f"model.layers.{i}.mlp.experts", FakeFusedExperts(experts, hidden, inter))]
        self.mods = mods + [("lm_head", FakeLinear(hidden, vocab))]

    def named_modules(self):
        return iter(self.mods)


def test_duck_typed_module_matches_config(tmp_path):
    inv, _ = small_model(tmp_path, "gpt-oss-20b-bf16.json")
    live, diags = load_inventory(FakeModel())
    assert not diags and live.source == "<module FakeModel>" and live.architecture == "FakeModel"
    assert signature(live) == signature(inv) and live.fingerprint() == inv.fingerprint()
    assert {m.dtype for m in live.modules} == {"bf16"}


def test_torch_module_matches_config(tmp_path):
    import torch  # the runtime extra is part of the test install
    nn = torch.nn
    inv, _ = small_model(tmp_path, "mixtral-8x7b.json")
    dims = SMALL["mixtral-8x7b.json"]
    hidden, inter, heads, kv, experts = (dims[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                             "num_key_value_heads", "num_local_experts"))
    hd = hidden // heads

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.head_dim = hd
            self.q_proj, self.k_proj = nn.Linear(hidden, heads * hd, bias=False), nn.Linear(hidden, kv * hd, bias=False)
            self.v_proj, self.o_proj = nn.Linear(hidden, kv * hd, bias=False), nn.Linear(heads * hd, hidden, bias=False)

    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2 = nn.Linear(hidden, inter, bias=False), nn.Linear(inter, hidden, bias=False)
            self.w3 = nn.Linear(hidden, inter, bias=False)

    class Moe(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(hidden, experts, bias=False)
            self.experts = nn.ModuleList(Expert() for _ in range(experts))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_layernorm = nn.LayerNorm(hidden)
            self.self_attn, self.block_sparse_moe = Attention(), Moe()

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(100, hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(dims["num_hidden_layers"]))
            self.norm = nn.LayerNorm(hidden)

    class Causal(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.lm_head = Inner(), nn.Linear(hidden, 100, bias=False)

    model = Causal().to(torch.bfloat16)
    live, diags = load_inventory(model)
    assert not diags
    assert signature(live) == signature(inv) and live.fingerprint() == inv.fingerprint()
    assert {m.dtype for m in live.modules} == {"bf16"}


def test_torch_fused_experts_parameters():
    import torch  # the runtime extra is part of the test install

    class Experts(torch.nn.Module):  # transformers v5 fused layout: [E, out, in]
        def __init__(self):
            super().__init__()
            self.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 2 * 24, 32))
            self.down_proj = torch.nn.Parameter(torch.zeros(4, 32, 24))

    root = torch.nn.Module()
    root.layers = torch.nn.ModuleList([torch.nn.Module()])
    root.layers[0].mlp = torch.nn.Module()
    root.layers[0].mlp.experts = Experts()
    by = {m.name: m for m in inventory_or_raise(root).modules}
    gu = by["layers.0.mlp.experts.gate_up_proj"]
    assert (gu.kind, gu.n, gu.k, gu.num_experts, gu.dtype, gu.layer) == ("moe_experts", 48, 32, 4, "fp32", 0)
    assert shape(by["layers.0.mlp.experts.down_proj"]) == (32, 24)


# --- synthetic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("count,experts", [(1000, 0), (5003, 16), (1, 0)])
def test_synthetic_inventory(count, experts):
    inv = synthetic_inventory(count, experts=experts)
    assert len(inv.modules) == count and len({m.name for m in inv.modules}) == count
    assert set(kinds(inv)) <= {"linear", "router", "moe_experts"}
    if experts:
        assert kinds(inv)["moe_experts"] > count * 0.9


def test_compiler_side_never_imports_torch():
    code = ("import sys, quantc.inventory as i; i.load_inventory(sys.argv[1]); "
            "assert 'torch' not in sys.modules and 'safetensors' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(MODELS / "deepseek-v3.json")], check=True,
                   cwd=Path(__file__).resolve().parent.parent)


# --- errors ---------------------------------------------------------------------------------------


def only_error(source):
    inv, diags = load_inventory(source)
    assert inv is None and len(diags) >= 1 and diags[0].severity == "error", diags
    with pytest.raises(QuantcError) as raised:
        inventory_or_raise(source)
    assert diags[0].code in str(raised.value)
    return diags[0]


def test_unknown_architecture(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{\n  "architectures": ["FalconForCausalLM"],\n  "model_type": "falcon"\n}\n')
    d = only_error(p)
    assert d.code == "QC801" and "unknown architecture 'FalconForCausalLM'" in d.message and str(p) in d.message
    assert (d.span.line, d.span.col) == (2, 3)
    assert "LlamaForCausalLM" in d.hint and "DeepseekV3ForCausalLM" in d.hint and "GptOssForCausalLM" in d.hint
    assert ".safetensors" in d.hint and "torch.nn.Module" in d.hint
    p.write_text('{"model_type": "mamba"}')
    assert "model_type 'mamba'" in only_error(p).message


def test_unknown_architecture_in_directory_falls_back_to_headers(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["FalconForCausalLM"]}')
    write_safetensors(tmp_path / "model.safetensors", tiny_llama_tensors())
    inv, diags = load_inventory(tmp_path)
    assert inv is not None and [d.code for d in diags] == ["QC813"] and diags[0].severity == "note"
    assert len(inv.modules) == 2 * 8 + 2


def test_missing_and_invalid_fields(tmp_path):
    cfg = json.loads((MODELS / "deepseek-v3.json").read_text())
    del cfg["kv_lora_rank"], cfg["hidden_size"]
    cfg["n_routed_experts"] = "many"
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg, indent=2))
    inv, diags = load_inventory(p)
    assert inv is None
    by = {d.path: d for d in diags}
    assert set(by) == {"kv_lora_rank", "hidden_size", "n_routed_experts"} and {d.code for d in diags} == {"QC802"}
    assert "missing the field 'kv_lora_rank'" in by["kv_lora_rank"].message and str(p) in by["kv_lora_rank"].message
    assert "DeepseekV3ForCausalLM" in by["hidden_size"].message and by["hidden_size"].hint
    bad = by["n_routed_experts"]
    assert "'n_routed_experts' must be an integer" in bad.message and "'many'" in bad.message
    assert bad.span.line == p.read_text().splitlines().index('  "n_routed_experts": "many",') + 1


def test_invalid_config_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{\n  "architectures": ["LlamaForCausalLM"],\n  "hidden_size": 4096,,\n}')
    d = only_error(p)
    assert d.code == "QC803" and "not valid JSON" in d.message and d.span.line == 3
    p.write_text("[1, 2]")
    assert "must hold a JSON object" in only_error(p).message


def test_truncated_safetensors_header(tmp_path):
    p = tmp_path / "short.safetensors"
    p.write_bytes(b"\x10\x00\x00")
    d = only_error(p)
    assert d.code == "QC804" and "truncated safetensors header" in d.message and "3 bytes" in d.message
    assert d.span.file == str(p) and d.hint


def test_header_length_larger_than_file(tmp_path):
    p = tmp_path / "big.safetensors"
    p.write_bytes(struct.pack("<Q", 10_000) + b'{"a": 1}')
    d = only_error(p)
    assert d.code == "QC805" and "header length 10000 is larger than the file (16 bytes)" in d.message


def test_non_json_header(tmp_path):
    d = only_error(write_safetensors(tmp_path / "x.safetensors", {}, header=b"not json at all"))
    assert d.code == "QC806" and "not valid JSON" in d.message
    d = only_error(write_safetensors(tmp_path / "y.safetensors", {}, header=b'{"w": {"dtype": "BF16"}}'))
    assert d.code == "QC806" and "'w' has no valid dtype/shape" in d.message
    d = only_error(write_safetensors(tmp_path / "z.safetensors", {}, header=b'{"__metadata__": {}}'))
    assert d.code == "QC811" and "no weight tensors" in d.message


def test_missing_shard(tmp_path):
    tensors = tiny_llama_tensors()
    names = sorted(tensors)
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {n: tensors[n] for n in names[:5]})
    index = {"weight_map": {n: f"model-0000{1 + (i >= 5)}-of-00002.safetensors" for i, n in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    d = only_error(tmp_path)
    assert d.code == "QC807" and "shard 'model-00002-of-00002.safetensors'" in d.message and "missing" in d.message


def test_index_without_shards_or_config(tmp_path):
    p = tmp_path / "model.safetensors.index.json"
    p.write_text(json.dumps({"weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}}))
    d = only_error(p)
    assert d.code == "QC808" and "no shapes" in d.message and "config.json" in d.hint
    p.write_text(json.dumps({"metadata": {}}))
    assert only_error(p).code == "QC810"


def test_bad_sources(tmp_path):
    d = only_error(tmp_path / "nope.json")
    assert d.code == "QC809" and "not found" in d.message
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert "unsupported model description" in only_error(tmp_path / "weights.bin").message
    (tmp_path / "empty").mkdir()
    assert "no config.json" in only_error(tmp_path / "empty").message


def test_module_without_weights():
    class Empty:
        def named_modules(self):
            return iter([("", self)])

    class Broken:
        def named_modules(self):
            raise TypeError("not walkable")

    d = only_error(Empty())
    assert d.code == "QC811" and "has no Linear" in d.message
    d = only_error(Broken())
    assert d.code == "QC811" and "not walkable" in d.message


def test_live_router_without_in_features_is_listed():
    """transformers v5 routers (Qwen3MoeTopKRouter, GptOssTopKRouter) are a bare 2D weight, no Linear."""
    import torch
    from torch import nn

    class TopKRouter(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8, 64))

    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.zeros(8, 256, 64))
            self.down_proj = nn.Parameter(torch.zeros(8, 64, 128))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate, self.experts = TopKRouter(), Experts()
            self.norm_gate = nn.LayerNorm(64)  # a 1D weight named like a gate is not a router

    model = nn.Module()
    model.model = nn.Module()
    layer = nn.Module()
    layer.mlp = Mlp()
    model.model.layers = nn.ModuleList([layer])
    inv, diags = load_inventory(model)
    assert not diags
    by = {m.name: m for m in inv.modules}
    r = by["model.layers.0.mlp.gate"]
    assert (r.kind, r.n, r.k) == ("router", 8, 64)
    assert "model.layers.0.mlp.norm_gate" not in by
