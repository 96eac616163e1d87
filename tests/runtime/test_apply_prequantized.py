"""apply() from pre-quantized checkpoints in each format's own tensor layout (issue 12).

Each writer below quantizes the model's bf16 weights with the format's own packing (written here,
independently of the loaders), saves a safetensors file, compiles a plan for a tiny model whose
config says that format, applies it with ``weights=<file>`` and checks the loaded weights value by
value and the outputs against the dequantized reference."""

import types

import pytest
import torch
from safetensors.torch import save_file

import quantc
import quantc.runtime as rt
from quantc.diagnostics import QuantcError
from quantc.runtime import checkpoint_layouts as cl
from quantc.runtime import quantize as Q
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_launch
from quantc.runtime.kernels.scaled_mm import WEIGHT_MODE
from quantc.runtime.modules import QuantLinear
from quantc.runtime.prequantized import PermutedQuantLinear
from tests.runtime.test_checkpoint_layouts import _pack8
from tests.runtime.tiny_model import Tiny

G = 32


def _asym_int4(w, g_idx, groups):
    """Per (row, group) uint4 codes, zero points and fp16 scales; groups given by g_idx along K."""
    n, k = w.shape
    lo = torch.stack([w[:, g_idx == i].amin(1) for i in range(groups)], 1).clamp(max=0)
    hi = torch.stack([w[:, g_idx == i].amax(1) for i in range(groups)], 1).clamp(min=0)
    s = ((hi - lo).clamp_min(1e-6) / 15).half()
    z = torch.round(-lo / s.float()).clamp(0, 15).long()
    codes = (torch.round(w / s.float()[:, g_idx]) + z[:, g_idx]).clamp(0, 15).long()
    return codes, z, s, (codes - z[:, g_idx]) * s.float()[:, g_idx]


def _sym_int4(w, g_idx, groups, lo=-8):
    amax = torch.stack([w[:, g_idx == i].abs().amax(1) for i in range(groups)], 1).clamp_min(1e-6)
    s = (amax / 7).bfloat16()
    q = torch.round(w / s.float()[:, g_idx]).clamp(lo, 7).long()
    return q, s, q * s.float()[:, g_idx]


def _g_idx(k, act_order, seed=0):
    g = torch.arange(k) // G
    return g[torch.randperm(k, generator=torch.Generator().manual_seed(seed))] if act_order else g


# --- writers: bf16 weight (N, K) -> (tensors in the format's names, dequantized reference (N, K)) ---

def w_awq(w):
    codes, z, s, ref = _asym_int4(w, _g_idx(w.shape[1], False), w.shape[1] // G)
    return {"qweight": _pack8(codes.T, 1, cl.AWQ_ORDER), "qzeros": _pack8(z.T, 1, cl.AWQ_ORDER), "scales": s.T.contiguous()}, ref


def _gptq(w, sym, act_order):
    k = w.shape[1]
    g_idx = _g_idx(k, act_order)
    if sym:  # GPTQ sym: codes q + 8 in [0, 15], zero point 8, stored as 7
        q, s, ref = _sym_int4(w, g_idx, k // G, lo=-7)
        codes, z, s = q + 8, torch.full_like(s, 8, dtype=torch.long), s.half()
        ref = (codes - 8) * s.float()[:, g_idx]
    else:
        codes, z, s, ref = _asym_int4(w, g_idx, k // G)
    return {"qweight": _pack8(codes.T, 0), "qzeros": _pack8((z - 1).T & 0xF, 1), "scales": s.T.contiguous(),
            "g_idx": g_idx.to(torch.int32)}, ref


def w_gptq_sym_act_order(w):
    return _gptq(w, True, True)


def w_gptq_asym(w):
    return _gptq(w, False, False)


def _ct_int4(w, sym, act_order):
    k = w.shape[1]
    g_idx = _g_idx(k, act_order, seed=1)
    if sym:
        q, s, ref = _sym_int4(w, g_idx, k // G)
        z = torch.zeros_like(s, dtype=torch.long)
    else:
        codes, z, s, ref = _asym_int4(w, g_idx, k // G)
        q, z, s = codes - 8, z - 8, s.bfloat16()  # compressed-tensors asym: q, z in [-8, 7]
        ref = (q - z[:, g_idx]) * s.float()[:, g_idx]
    out = {"weight_packed": _pack8(q + 8, 1), "weight_scale": s, "weight_shape": torch.tensor(list(w.shape))}
    if not sym:
        out["weight_zero_point"] = _pack8(z + 8, 0)
    if act_order:
        out["weight_g_idx"] = g_idx.to(torch.int32)
    return out, ref


def w_ct_int4_act_order(w):
    return _ct_int4(w, True, True)


def w_ct_int4_asym(w):
    return _ct_int4(w, False, False)


def _nvfp4(w):
    t = Q.quantize_weight(w, "nvfp4")
    return t, Q.dequantize_weight(t, "nvfp4")


def w_ct_nvfp4(w):
    t, _ = _nvfp4(w)
    gs = (1.0 / t["weight_scale_2"]).reshape(1)  # compressed-tensors stores the divisor
    ref = Q.e2m1_to_float(Q.unpack_nibbles(t["weight_packed"])) * t["weight_scale"].float().repeat_interleave(16, 1) / gs
    return {"weight_packed": t["weight_packed"], "weight_scale": t["weight_scale"], "weight_global_scale": gs,
            "input_global_scale": torch.ones(1)}, ref


def w_modelopt_nvfp4(w):
    t, ref = _nvfp4(w)
    return {"weight": t["weight_packed"], "weight_scale": t["weight_scale"], "weight_scale_2": t["weight_scale_2"],
            "input_scale": torch.tensor(0.01)}, ref


def w_modelopt_fp8(w):
    t = Q.quantize_weight(w, "fp8_per_tensor")
    return {**t, "input_scale": torch.tensor(0.02)}, Q.dequantize_weight(t, "fp8_per_tensor")


def w_fp8_block(w):
    t = Q.quantize_weight(w, "fp8_block_128x128")
    return t, Q.dequantize_weight(t, "fp8_block_128x128")


def w_ct_fp8_block(w):
    t, ref = w_fp8_block(w)
    return {"weight": t["weight"], "weight_scale": t["weight_scale_inv"].bfloat16()}, \
        Q.dequantize_weight({"weight": t["weight"], "weight_scale_inv": t["weight_scale_inv"].bfloat16().float()},
                            "fp8_block_128x128")


def w_ct_int8(w):
    t = Q.quantize_weight(w, "int8_per_channel")
    n = w.shape[0]
    return {"weight": t["weight"], "weight_scale": t["weight_scale"], "weight_zero_point": torch.zeros(n, 1, dtype=torch.int8)}, \
        Q.dequantize_weight(t, "int8_per_channel")


def w_gptq_int8(w):
    t = Q.quantize_weight(w, "int8_per_channel")
    s = t["weight_scale"].half()
    codes = (t["weight"].to(torch.int32) + 128).T  # (K, N), uint8 codes along K, 4 per int32 word
    qweight = codes.to(torch.uint8).reshape(-1, 4, codes.shape[1]).permute(0, 2, 1).contiguous().view(torch.int32)
    qzeros = torch.full((1, w.shape[0]), 127, dtype=torch.uint8).view(torch.int32)
    return {"qweight": qweight.squeeze(-1), "qzeros": qzeros, "scales": s.T.contiguous(),
            "g_idx": torch.zeros(w.shape[1], dtype=torch.int32)}, t["weight"].float() * s.float()


CT_INT4 = {"format": "pack-quantized", "config_groups": {"g": {"targets": ["Linear"], "weights": {
    "num_bits": 4, "type": "int", "strategy": "group", "group_size": G, "symmetric": True}}}, "ignore": ["lm_head"],
    "quant_method": "compressed-tensors"}


def _ct(weights, fmt, acts=None):
    group = {"targets": ["Linear"], "weights": weights}
    if acts:
        group["input_activations"] = acts
    return {"quant_method": "compressed-tensors", "format": fmt, "config_groups": {"g": group}, "ignore": ["lm_head"]}


# name -> (writer, quantization_config, weight key, output cosine floor against the dequantized reference)
FORMATS = {
    "awq": (w_awq, {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": True}, "int4_group_32_asym", 0.999),
    "gptq_sym_act_order": (w_gptq_sym_act_order, {"quant_method": "gptq", "bits": 4, "group_size": G, "sym": True,
                                                  "desc_act": True}, "int4_group_32", 0.999),
    "gptq_asym": (w_gptq_asym, {"quant_method": "gptq", "bits": 4, "group_size": G, "sym": False}, "int4_group_32_asym", 0.999),
    "gptq_int8": (w_gptq_int8, {"quant_method": "gptq", "bits": 8, "group_size": -1, "sym": True}, "int8_per_channel", 0.99),
    "ct_int4_act_order": (w_ct_int4_act_order, _ct({"num_bits": 4, "type": "int", "strategy": "group", "group_size": G,
                                                    "actorder": "group"}, "pack-quantized"), "int4_group_32", 0.999),
    "ct_int4_asym": (w_ct_int4_asym, _ct({"num_bits": 4, "type": "int", "strategy": "group", "group_size": G,
                                          "symmetric": False}, "pack-quantized"), "int4_group_32_asym", 0.999),
    "ct_nvfp4": (w_ct_nvfp4, _ct({"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
                                 "nvfp4-pack-quantized"), "nvfp4", 0.999),
    "ct_fp8_block": (w_ct_fp8_block, _ct({"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]},
                                         "float-quantized", {"num_bits": 8, "type": "float", "strategy": "group",
                                                             "group_size": 128, "dynamic": True}), "fp8_block_128x128", 0.99),
    "ct_int8": (w_ct_int8, _ct({"num_bits": 8, "type": "int", "strategy": "channel"}, "int-quantized",
                               {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}), "int8_per_channel", 0.99),
    "modelopt_nvfp4": (w_modelopt_nvfp4, {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16}, "nvfp4", 0.99),
    "modelopt_fp8": (w_modelopt_fp8, {"quant_method": "modelopt", "quant_algo": "FP8"}, "fp8_per_tensor", 0.98),
    "fp8_block": (w_fp8_block, {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
                  "fp8_block_128x128", 0.99),
}
# weight-only formats: the reference is exact up to bf16 rounding of the activations
WEIGHT_ONLY = {"awq", "gptq_sym_act_order", "gptq_asym", "ct_int4_act_order", "ct_int4_asym", "ct_nvfp4"}


def _model(qconfig, seed=0):
    torch.manual_seed(seed)
    m = Tiny(h=128, i=256, n=1).bfloat16()
    m.config = types.SimpleNamespace(quantization_config=qconfig)
    return m


def _plan(model, tmp_path, text="quantc: 1\n"):
    cfg = tmp_path / "q.yaml"
    cfg.write_text(text)
    # W4A4 nvfp4 needs sm_100; the interpreter skips the live-GPU check
    gpu = "b200" if model.config.quantization_config.get("quant_algo") == "NVFP4" else "h100"
    return quantc.compile(str(cfg), model, gpu=gpu, tp=1)


def _checkpoint(model, plan, writer, tmp_path):
    """The planned linears in the format (file), and their dequantized references by module."""
    state, refs = {}, {}
    mods = dict(model.named_modules())
    for mp in plan.modules:
        if mp.kind == "linear" and mp.kernel is not None:
            tensors, refs[mp.name] = writer(mods[mp.name].weight.detach().float())
            state.update({f"{mp.name}.{n}": t.contiguous() for n, t in tensors.items()})
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return path, refs


def _loaded(q: QuantLinear) -> torch.Tensor:
    """The weight a swapped module holds, dequantized, in the model's K order."""
    bufs = [getattr(q, n) for n in q._names]
    if q.kernel in ("int4_weight_only_gemm", "fp4_weight_only_gemm", "nvfp4_gemm"):
        w = wf.dequantize(wo_launch.rebuild(bufs, q.weight_key)[0])
    else:
        w = Q.dequantize_weight({"weight": bufs[0], WEIGHT_MODE[q.weight_key][1]: bufs[1]}, q.weight_key)
    if isinstance(q, PermutedQuantLinear):
        w = w[:, torch.argsort(q.k_perm)]
    return w


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_apply_loads_each_format(fmt, tmp_path):
    writer, qconfig, key, floor = FORMATS[fmt]
    model = _model(qconfig)
    plan = _plan(model, tmp_path)
    assert {mp.weight for mp in plan.modules if mp.kind == "linear"} == {key}
    path, refs = _checkpoint(model, plan, writer, tmp_path)
    ref_model = _model(qconfig)
    for name, ref in refs.items():
        dict(ref_model.named_modules())[name].weight.data = ref.bfloat16()
    report = rt.apply(model, plan, weights=path, progress=False)
    assert len(report.swapped) == len(refs) == 7
    mods = dict(model.named_modules())
    for name, ref in refs.items():
        assert isinstance(mods[name], QuantLinear) and mods[name].weight_key == key
        assert torch.allclose(_loaded(mods[name]), ref, rtol=2**-8, atol=1e-6), name
    act_order = fmt.endswith("act_order")
    assert any(isinstance(m, PermutedQuantLinear) for m in mods.values()) == act_order
    if fmt == "modelopt_nvfp4":  # the calibrated activation global scale rides along and is used (W4A4)
        assert all(mods[n]._names[-1] == "input_scale" and float(mods[n].input_scale) == pytest.approx(0.01)
                   for n in refs)
    x = torch.randn(3, 128).bfloat16()
    with torch.no_grad():
        got, want = model(x).float(), ref_model(x).float()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item()
    assert cos > (0.999 if fmt in WEIGHT_ONLY else floor), cos


def test_act_order_input_permutation_is_needed(tmp_path):
    """Without the stored permutation the layer is wrong: the buffer is what makes act-order right."""
    writer, qconfig, _, _ = FORMATS["gptq_sym_act_order"]
    model = _model(qconfig)
    plan = _plan(model, tmp_path)
    path, refs = _checkpoint(model, plan, writer, tmp_path)
    rt.apply(model, plan, weights=path, progress=False)
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(4, 256).bfloat16()
    want = x.float() @ refs["model.layers.0.mlp.down_proj"].T
    with torch.no_grad():
        got = layer(x).float()
        unpermuted = QuantLinear.forward(layer, x).float()
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.999
    assert torch.nn.functional.cosine_similarity(unpermuted, want, dim=-1).min() < 0.9
    assert layer.k_perm.dtype == torch.int64 and "k_perm" in dict(layer.named_buffers())


def _apply_error(model, plan, weights):
    snap = ({k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()])
    with pytest.raises(QuantcError) as err:
        rt.apply(model, plan, weights=weights, progress=False)
    assert [type(m) for m in model.modules()] == snap[1]
    assert all(torch.equal(v, snap[0][k]) for k, v in model.state_dict().items())
    return {d.path: d for d in err.value.diagnostics}


def _format_state(fmt, tmp_path):
    writer, qconfig, _, _ = FORMATS[fmt]
    model = _model(qconfig)
    plan = _plan(model, tmp_path)
    path, _ = _checkpoint(model, plan, writer, tmp_path)
    from safetensors.torch import load_file

    return model, plan, dict(load_file(str(path)))


def test_missing_scale_tensor_names_it_and_the_format(tmp_path):
    model, plan, state = _format_state("awq", tmp_path)
    del state["model.layers.0.mlp.down_proj.scales"]
    diags = _apply_error(model, plan, state)
    (d,) = diags.values()
    assert d.code == "QC705" and d.path == "model.layers.0.mlp.down_proj"
    assert "AWQ: pre-quantized int4_group_32_asym weights lack scales (found qweight (int32 (256, 16)), " \
           "qzeros (int32 (8, 16)))" in d.message


def test_wrong_dtype_names_the_tensor_and_what_was_expected(tmp_path):
    model, plan, state = _format_state("modelopt_nvfp4", tmp_path)
    name = "model.layers.0.self_attn.o_proj.weight_scale"
    state[name] = state[name].float()
    d = _apply_error(model, plan, state)["model.layers.0.self_attn.o_proj"]
    assert "ModelOpt NVFP4: weight_scale is float32 (128, 8), nvfp4 needs float8_e4m3fn (128, 8)" \
        in d.message
    state[name] = state[name].to(torch.float8_e4m3fn)
    state["model.layers.0.self_attn.o_proj.weight"] = state["model.layers.0.self_attn.o_proj.weight"][:, :32]
    d = _apply_error(model, plan, state)["model.layers.0.self_attn.o_proj"]
    assert "ModelOpt NVFP4: weight is uint8 (128, 32), expected uint8 (128, 64) for a nvfp4 weight of (N, K) = " \
           "(128, 128)" in d.message


def test_awq_and_gptq_are_told_apart_by_shape_and_wrong_shapes_listed(tmp_path):
    model, plan, state = _format_state("awq", tmp_path)
    q = "model.layers.0.mlp.up_proj.qweight"
    state[q] = torch.zeros(64, 64, dtype=torch.int32)  # neither AWQ's (128, 32) nor GPTQ's (16, 256)
    d = _apply_error(model, plan, state)["model.layers.0.mlp.up_proj"]
    assert "the weights hold qweight (int32 (64, 64)), qzeros (int32 (4, 32)), scales (float16 (4, 256)) for this " \
           "module, which is no pre-quantized layout of int4_group_32_asym (N, K) = (256, 128); by name: AWQ, GPTQ " \
           "(dtype or shape differ)" in d.message


def test_unknown_tensor_set_lists_what_was_found_and_the_layouts(tmp_path):
    model, plan, state = _format_state("ct_int4_asym", tmp_path)
    state["model.layers.0.mlp.gate_proj.weight_foo"] = torch.zeros(3)
    d = _apply_error(model, plan, state)["model.layers.0.mlp.gate_proj"]
    assert d.code == "QC705" and "weight_foo (float32 (3,))" in d.message
    assert "which is no pre-quantized layout of int4_group_32_asym" in d.message
    assert "compressed-tensors pack-quantized int4: weight_packed, weight_scale [+ weight_zero_point, weight_shape, " \
           "weight_g_idx]" in d.message and "AWQ: qweight, qzeros, scales" in d.message


def test_format_for_another_key_is_refused(tmp_path):
    model, plan, state = _format_state("awq", tmp_path)  # plan: int4_group_32_asym
    fp8 = {f"model.layers.0.mlp.up_proj.{n}": t for n, t in w_ct_fp8_block(torch.randn(256, 128))[0].items()}
    state = {k: v for k, v in state.items() if not k.startswith("model.layers.0.mlp.up_proj.")} | fp8
    d = _apply_error(model, plan, state)["model.layers.0.mlp.up_proj"]
    assert "the weights hold weight (float8_e4m3fn (256, 128)), weight_scale (bfloat16 (2, 1))" in d.message
    assert "these names are the layout of compressed-tensors fp8 block, which does not hold int4_group_32_asym" in d.message


def test_symmetric_key_with_asymmetric_zero_points_is_refused(tmp_path):
    model, plan, state = _format_state("gptq_sym_act_order", tmp_path)
    z = "model.layers.0.mlp.down_proj.qzeros"
    state[z] = torch.zeros_like(state[z])  # zero points 1, not 8
    d = _apply_error(model, plan, state)["model.layers.0.mlp.down_proj"]
    assert "GPTQ: the zero points are not all 8, so these weights are asymmetric; the plan says int4_group_32 " \
           "(symmetric)" in d.message


def test_a_bad_tensor_in_the_last_module_leaves_the_model_untouched(tmp_path):
    model, plan, state = _format_state("ct_nvfp4", tmp_path)
    last = [mp.name for mp in plan.modules if mp.kind == "linear"][-1]
    state[f"{last}.weight_global_scale"] = torch.ones(2)
    diags = _apply_error(model, plan, state)
    assert list(diags) == [last]
    assert "compressed-tensors nvfp4-pack-quantized: weight_global_scale: shape (2,), expected (1,)" in diags[last].message


# --- MoE experts: the issue-4 worked example (gpt-oss MXFP4 checkpoint, MXFP8 activations) and
# per-expert fp8 block tensors (DeepSeek-V3 / Qwen3-FP8 checkpoints) into a fused experts module ----

def _mx_blocks(w):
    """(E, N, K) fp32 -> gpt-oss ``*_blocks`` (E, N, K/32, 16) uint8 and ``*_scales`` (E, N, K/32) e8m0."""
    e, n, k = w.shape
    codes, scales = Q.quant_mx(w.reshape(e * n, k), 32, fp4=True)
    blocks = Q.pack_nibbles(codes).reshape(e, n, k // 32, 16)
    return blocks, scales.reshape(e, n, k // 32)


def _mx_dequant(blocks, scales):
    e, n, kb, _ = blocks.shape
    vals = Q.e2m1_to_float(Q.unpack_nibbles(blocks.reshape(e, n, kb * 16)))
    return vals * Q.e8m0_to_float(scales).repeat_interleave(32, -1)


def _gpt_oss(tmp_path):
    from quantc import hf

    model = hf.build_model("gpt-oss-20b-bf16", 1, tiny=True)
    model.config.quantization_config = {"quant_method": "mxfp4"}
    return model, _plan(model, tmp_path, "quantc: 1\nmoe: {activation: mxfp8}\n")


def test_gpt_oss_mxfp4_checkpoint_with_mxfp8_activations(tmp_path):
    from quantc.runtime.hf_moe import QuantExperts

    model, plan = _gpt_oss(tmp_path)
    name = "model.layers.0.mlp.experts"
    gu = plan.module(f"{name}.gate_up_proj")
    assert (gu.weight, gu.activation, gu.kernel) == ("mxfp4", "mxfp8", "moe_mxfp4_mxfp8_emulated")
    ex = model.model.layers[0].mlp.experts
    # the checkpoint stores (E, out, in) rows: gate_up rows interleave gate and up, as in the model
    gb, gs = _mx_blocks(ex.gate_up_proj.detach().float().transpose(1, 2))
    db, ds = _mx_blocks(ex.down_proj.detach().float().transpose(1, 2))
    bias_gu, bias_dn = torch.randn_like(ex.gate_up_proj_bias), torch.randn_like(ex.down_proj_bias)
    state = {f"{name}.gate_up_proj_blocks": gb, f"{name}.gate_up_proj_scales": gs, f"{name}.down_proj_blocks": db,
             f"{name}.down_proj_scales": ds, f"{name}.gate_up_proj_bias": bias_gu, f"{name}.down_proj_bias": bias_dn}
    save_file(state, str(tmp_path / "experts.safetensors"))
    ref = _gpt_oss(tmp_path)[0].model.layers[0].mlp.experts  # same seed: the same model
    ref.gate_up_proj.data = _mx_dequant(gb, gs).transpose(1, 2).bfloat16()
    ref.down_proj.data = _mx_dequant(db, ds).transpose(1, 2).bfloat16()
    ref.gate_up_proj_bias.data, ref.down_proj_bias.data = bias_gu, bias_dn
    report = rt.apply(model, plan, weights=tmp_path / "experts.safetensors", progress=False)
    assert report.swapped == (name,)
    q = model.model.layers[0].mlp.experts
    assert isinstance(q, QuantExperts) and q.moe.kernel == "moe_mxfp4_mxfp8_emulated"
    # loaded as stored (never dequantized): the bytes are the checkpoint's, gate rows first
    rows = torch.cat([torch.arange(0, gb.shape[1], 2), torch.arange(1, gb.shape[1], 2)])
    assert torch.equal(q.moe.w13_data.view(torch.uint8), gb[:, rows].reshape(gb.shape[0], gb.shape[1], -1))
    assert torch.equal(q.moe.w2_scale, ds)
    hidden = torch.randn(6, ex.gate_up_proj.shape[1]).bfloat16()
    ids = torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0], [0, 2], [1, 3]])
    w = torch.softmax(torch.randn(6, 2), -1)
    with torch.no_grad():
        got, want = q(hidden, ids, w).float(), ref(hidden, ids, w).float()
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.99  # mxfp8 activations


def test_gpt_oss_blocks_errors(tmp_path):
    model, plan = _gpt_oss(tmp_path)
    name = "model.layers.0.mlp.experts"
    ex = model.model.layers[0].mlp.experts
    gb, gs = _mx_blocks(ex.gate_up_proj.detach().float().transpose(1, 2))
    diags = _apply_error(model, plan, {f"{name}.gate_up_proj_blocks": gb, f"{name}.gate_up_proj_scales": gs})
    assert "gpt-oss MXFP4 experts: the weights lack model.layers.0.mlp.experts.down_proj_blocks, " \
           "model.layers.0.mlp.experts.down_proj_scales" in diags[name].message
    db, ds = _mx_blocks(ex.down_proj.detach().float().transpose(1, 2))
    state = {f"{name}.gate_up_proj_blocks": gb, f"{name}.gate_up_proj_scales": gs[:, :, :2],
             f"{name}.down_proj_blocks": db, f"{name}.down_proj_scales": ds}
    diags = _apply_error(model, plan, state)
    assert f"gpt-oss MXFP4 experts: *_scales: shape {tuple(gs[:, :, :2].shape)}, expected {tuple(gs.shape)}" \
        in diags[name].message


def test_per_expert_fp8_block_tensors_load_into_fused_experts(tmp_path):
    """DeepSeek-V3 / Qwen3-FP8 checkpoints name experts one by one; transformers 5 fuses them."""
    from quantc import hf
    from quantc.runtime.hf_moe import QuantExperts

    qconfig = FORMATS["fp8_block"][1]
    model = hf.build_model("qwen3-30b-a3b", 1, tiny=True)
    model.config.quantization_config = qconfig
    plan = _plan(model, tmp_path)
    name = "model.layers.0.mlp.experts"
    assert plan.module(f"{name}.gate_up_proj").kernel == "moe_fp8_block"
    ex = model.model.layers[0].mlp.experts
    inter = ex.down_proj.shape[2]
    state, w13, w2 = {}, [], []
    for e in range(ex.gate_up_proj.shape[0]):
        parts = {"gate_proj": ex.gate_up_proj[e, :inter], "up_proj": ex.gate_up_proj[e, inter:],
                 "down_proj": ex.down_proj[e]}
        deq = {}
        for leaf, wt in parts.items():
            t = Q.quantize_weight(wt.detach().float(), "fp8_block_128x128")
            state.update({f"{name}.{e}.{leaf}.{n}": v for n, v in t.items()})
            deq[leaf] = Q.dequantize_weight(t, "fp8_block_128x128")
        w13.append(torch.cat([deq["gate_proj"], deq["up_proj"]]))
        w2.append(deq["down_proj"])
    rt.apply(model, plan, weights=state, progress=False)
    q = model.model.layers[0].mlp.experts
    assert isinstance(q, QuantExperts)
    assert torch.equal(wf.dequantize(q.moe._weight("w13")), torch.stack(w13))
    assert torch.equal(wf.dequantize(q.moe._weight("w2")), torch.stack(w2))
    e1 = f"{name}.1.up_proj.weight_scale_inv"
    model = hf.build_model("qwen3-30b-a3b", 1, tiny=True)
    diags = _apply_error(model, plan, {k: v for k, v in state.items() if k != e1})
    assert f"the weights hold {name}.1.up_proj.weight (float8_e4m3fn): pre-quantized expert tensors are not loaded " \
           "by this runtime unless they form a layout of the planned fp8_block_128x128" in diags[name].message
    assert "lack weight_scale_inv" in diags[name].message
    diags = _apply_error(model, plan, {k: v for k, v in state.items() if ".3.down_proj." not in k})
    assert f"the weights hold pre-quantized experts of this block but lack {name}.3.down_proj" in diags[name].message


def test_per_expert_module_list_takes_checkpoint_experts_and_the_model_for_the_rest(tmp_path):
    """A ModuleList of expert MLPs (older transformers): GPTQ-style int8 tensors for expert 0, the model's own
    bf16 weights quantized for the others; the block's routing loop still runs."""
    from tests.runtime.test_moe import H, I, T, _moe_plan, _tiny_moe

    model = _tiny_moe()
    plan = _moe_plan(model, tmp_path, "int8")
    block = "layers.0.mlp.experts"
    state, refs = {}, {}
    for leaf in ("gate_proj", "up_proj", "down_proj"):
        tensors, refs[leaf] = w_gptq_int8(getattr(model.layers[0].mlp.experts[0], leaf).weight.detach().float())
        state.update({f"{block}.0.{leaf}.{n}": t for n, t in tensors.items()})
    rt.apply(model, plan, weights=state, progress=False)
    moe = model.layers[0].mlp.experts.moe
    w13, w2 = wf.dequantize(moe._weight("w13")), wf.dequantize(moe._weight("w2"))
    assert torch.allclose(w13[0], torch.cat([refs["gate_proj"], refs["up_proj"]]), rtol=2**-10)
    assert torch.allclose(w2[0], refs["down_proj"], rtol=2**-10)
    fresh = _tiny_moe()  # same seed: expert 1 quantized from the model's own weight
    assert torch.equal(w2[1], Q.dequantize_weight(Q.quantize_weight(fresh.layers[0].mlp.experts[1].down_proj.weight,
                                                                    "int8_per_channel"), "int8_per_channel"))
    out = model.layers[0].mlp(torch.randn(T, H).bfloat16())
    assert out.shape == (T, H) and torch.isfinite(out.float()).all() and I == w2.shape[2]
