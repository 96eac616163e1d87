"""End to end with Hugging Face transformers: build a real model class from an ``examples/models``
config (reduced in layer count, random weights, no download), compile a plan against the live model,
apply it, and measure logits fidelity against the unquantized model.

Documented API (issue 8)::

    from quantc import hf
    model = hf.build_model("examples/models/llama-3.1-8b.json", layers=2, device="cuda")
    plan = quantc.compile("examples/configs/llama31_8b_fp8.yaml", model, gpu="h100", tp=1)
    report = hf.apply(model, plan)          # = quantc.runtime.apply (dense linears and MoE experts)

Like everything in ``quantc/`` outside ``quantc/runtime/``, this module imports torch and transformers
only inside its functions: ``import quantc.hf`` stays torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "examples" / "models"
CONFIGS_DIR = ROOT / "examples" / "configs"

# examples/models file -> the examples/configs written for it
MODEL_EXAMPLES: dict[str, tuple[str, ...]] = {
    "llama-3.1-8b.json": ("llama31_8b_fp8.yaml", "llama31_8b_int8.json", "llama31_8b_w4a16.toml"),
    "qwen3-30b-a3b.json": ("qwen3_30b_a3b_fp8_child.yaml", "qwen3_30b_a3b_mxfp4.yaml",
                           "qwen3_30b_a3b_mxfp4_mxfp8.yaml"),
    "gpt-oss-20b-bf16.json": ("gpt_oss_20b_mxfp4_mxfp8.toml",),
    "deepseek-v3-bf16.json": ("deepseek_v3_fp8_block.yaml",),
}

# issue 8's schemes: name -> (linear shorthand, moe shorthand, --set overrides on top)
SCHEMES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "bf16": ("none", "none", ()),
    "fp8_per_channel": ("fp8_per_channel", "fp8_per_channel", ()),
    "fp8_block": ("fp8_per_block", "fp8_per_block", ()),
    "int8": ("int8", "int8", ()),
    "w4a16": ("w4a16", "w4a16", ()),
    "mxfp4": ("mxfp4", "mxfp4", ()),
    # mxfp4 weights with an activation override: the weight key stays, activations become mxfp8
    "mxfp4_mxfp8": ("mxfp4", "mxfp4", ("linear.activation=mxfp8", "moe.activation=mxfp8")),
}

# dimensions of the CPU test models (TRITON_INTERPRET=1): every K a multiple of 128 so block and
# group formats apply, and every fused gate_up (E, 2I, H) non-square so its layout is unambiguous
TINY = {
    "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128, "vocab_size": 256,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "num_experts": 4,
    "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "n_group": 1, "topk_group": 1, "q_lora_rank": 128, "kv_lora_rank": 128, "qk_rope_head_dim": 32,
    "qk_nope_head_dim": 96, "v_head_dim": 128, "first_k_dense_replace": 1, "sliding_window": 64,
}


def model_path(name: str | Path) -> Path:
    """``llama-3.1-8b`` / ``llama-3.1-8b.json`` / a path -> the config.json path."""
    p = Path(name)
    if p.is_file():
        return p
    cand = MODELS_DIR / (p.name if p.suffix == ".json" else p.name + ".json")
    if not cand.is_file():
        known = ", ".join(sorted(f.stem for f in MODELS_DIR.glob("*.json")))
        raise FileNotFoundError(f"no model description {name!r}; known: {known}")
    return cand


def hf_config(model: str | Path, layers: int = 2, *, tiny: bool = False):
    """The transformers config of an examples/models file, with ``layers`` decoder layers (and the
    TINY dimensions when ``tiny``); a published ``quantization_config`` is dropped (random bf16
    weights stand in for the checkpoint)."""
    from transformers import AutoConfig

    data = json.loads(model_path(model).read_text())
    data.pop("quantization_config", None)
    full = int(data["num_hidden_layers"])
    data["num_hidden_layers"] = layers
    if isinstance(data.get("layer_types"), list) and len(data["layer_types"]) == full:
        data["layer_types"] = data["layer_types"][:layers]
    if tiny:
        data.update({k: v for k, v in TINY.items() if k in data or k == "head_dim"})
        if data.get("first_k_dense_replace", 0) >= layers:
            data["first_k_dense_replace"] = max(0, layers - 1)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # token ids past a reduced vocabulary
        ids = data.get(key)
        if any(i >= data["vocab_size"] for i in (ids if isinstance(ids, list) else [ids]) if i is not None):
            data[key] = 0
    return AutoConfig.for_model(data.pop("model_type"), **data)


def build_model(model: str | Path, layers: int = 2, *, tiny: bool = False, seed: int = 0, device="cpu",
                dtype: str = "bfloat16"):
    """A transformers ``*ForCausalLM`` with random weights (seeded: same seed, same weights), in eval
    mode, built directly on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(model, layers, tiny=tiny)
    torch.manual_seed(seed)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    return m.eval()


def scheme_config(scheme: str, directory: str | Path, gpu: str = "h100") -> tuple[Path, tuple[str, ...]]:
    """Write the config of one of ``SCHEMES`` into ``directory``; returns (path, overrides to pass to
    ``quantc.compile``)."""
    if scheme not in SCHEMES:
        from .diagnostics import unknown_name_hint

        raise ValueError(f"unknown scheme {scheme!r}: {unknown_name_hint(scheme, SCHEMES)}")
    linear, moe, overrides = SCHEMES[scheme]
    path = Path(directory) / f"scheme_{scheme}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# issue 8 scheme {scheme}\nquantc: 1\nlinear: {linear}\nmoe: {moe}\n"
                    f"target: {{gpu: {gpu}, tensor_parallel: 1}}\n")
    return path, overrides


def apply(model, plan, weights=None, *, rank=None, world=None, progress: bool = False):
    """``quantc.runtime.apply`` (which handles MoE models itself); the name is kept for compatibility."""
    from .runtime import apply as runtime_apply

    return runtime_apply(model, plan, weights, rank=rank, world=world, progress=progress)


def fidelity(ref, got) -> dict:
    """Logits (.., V) of a quantized model against the reference: mean per-position cosine similarity,
    its minimum, and top-1 (argmax) agreement."""
    import torch

    r = ref.float().reshape(-1, ref.shape[-1])
    g = got.float().reshape(-1, got.shape[-1])
    cos = torch.nn.functional.cosine_similarity(r, g, dim=-1)
    top1 = (r.argmax(-1) == g.argmax(-1)).float().mean()
    return {"cosine": cos.mean().item(), "cosine_min": cos.min().item(), "top1": top1.item()}


# --- measurement (the example script and bench/bench_e2e.py) ---------------------------------------


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn, device, repeat: int) -> float:
    import time

    fn()  # warm-up: Triton compiles here
    _sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def prefill_tokens_per_s(model, tokens: int, device, repeat: int = 3) -> float:
    """One sequence of ``tokens`` through the model (no cache, logits of the last position only)."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device,
                        generator=torch.Generator(device).manual_seed(11))
    with torch.no_grad():
        return tokens / _median_seconds(lambda: model(ids, use_cache=False, logits_to_keep=1), device, repeat)


def decode_tokens_per_s(model, batch: int, device, context: int = 128, steps: int = 8) -> float:
    """Eager decode (no CUDA graphs): ``steps`` one-token steps of ``batch`` sequences after a
    ``context``-token prefill; tokens generated per second over all sequences."""
    import copy

    import torch

    g = torch.Generator(device).manual_seed(12)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=device, generator=g)
    tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device, generator=g)
    with torch.no_grad():
        cache = model(ids, use_cache=True, logits_to_keep=1).past_key_values

        def run():
            c = copy.deepcopy(cache)
            for _ in range(steps):
                c = model(tok, past_key_values=c, use_cache=True, logits_to_keep=1).past_key_values

        return batch * steps / _median_seconds(run, device, 2)


def reference_logits(model, device, tokens: int = 256):
    """Logits (tokens, V) of a fixed random prompt, kept on the CPU in bf16."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device,
                        generator=torch.Generator(device).manual_seed(13))
    with torch.no_grad():
        return model(ids, use_cache=False).logits[0].to("cpu", torch.bfloat16)


def weight_bytes(device) -> int:
    import gc

    import torch

    gc.collect()
    if torch.device(device).type != "cuda":
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def measure(model, device, *, prompt: int = 2048, batches=(1, 32)) -> dict:
    """Throughput of ``model`` as it is now: prefill of ``prompt`` tokens and decode per batch size."""
    out = {"prefill_tokens_per_s": prefill_tokens_per_s(model, prompt, device)}
    for b in batches:
        out[f"decode_b{b}_tokens_per_s"] = decode_tokens_per_s(model, b, device)
    return out


def run_e2e(model_name, layers: int, plan, device, *, baseline: dict | None = None, prompt: int = 2048,
            batches=(1, 32), seed: int = 0, tiny: bool = False) -> dict:
    """Issue 8 for one (model, plan): build the model, measure it in bf16 (unless ``baseline`` from an
    earlier call on the same model is given), apply the plan, measure again and compare logits.
    Returns the result row; ``row["baseline"]`` can be passed to the next call."""
    import time

    model = build_model(model_name, layers, seed=seed, device=device, tiny=tiny)
    mem_before = weight_bytes(device)
    if baseline is None:
        baseline = {"perf": measure(model, device, prompt=prompt, batches=batches),
                    "logits": reference_logits(model, device)}
    t = time.perf_counter()
    report = apply(model, plan)
    _sync(device)
    startup = time.perf_counter() - t
    mem_after = weight_bytes(device)
    t = time.perf_counter()
    logits = reference_logits(model, device)
    first_forward = time.perf_counter() - t
    perf = measure(model, device, prompt=prompt, batches=batches)
    row = {"apply_s": startup, "first_forward_s": first_forward, "swapped": len(report.swapped),
           "weight_bytes_before": mem_before, "weight_bytes_after": mem_after,
           "planned_bytes_before": report.bytes_before, "planned_bytes_after": report.bytes_after,
           "bf16": baseline["perf"], "quantized": perf,
           "speedup": {k: perf[k] / baseline["perf"][k] for k in perf},
           "fidelity": fidelity(baseline["logits"], logits), "baseline": baseline}
    del model
    weight_bytes(device)
    return row
