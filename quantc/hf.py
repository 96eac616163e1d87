"""End to end with Hugging Face transformers: build a real model class from an ``examples/models``
config (reduced in layer count, random weights, no download), compile a plan against the live model,
apply it, and measure logits fidelity against the unquantized model.

Documented API (issue 8)::

    from quantc import hf
    model = hf.build_model("examples/models/llama-3.1-8b.json", layers=2, device="cuda")
    plan = quantc.compile("examples/configs/llama31_8b_fp8.yaml", model, gpu="h100", tp=1)
    report = hf.apply(model, plan)          # = quantc.runtime.apply (dense linears and MoE experts)
    hf.decode_tokens_per_s(model, 32, "cuda")               # StaticCache, one step in a CUDA graph, replayed
    hf.decode_tokens_per_s(model, 32, "cuda", graphs=False)  # eager, dynamic cache (host-bound)
    hf.static_decode_logits(model, ids, tokens, graphs=True) # logits of the captured path, for checks

Like everything in ``quantc/`` outside ``quantc/runtime/``, this module imports torch and transformers
only inside its functions: ``import quantc.hf`` stays torch-free.
"""

from __future__ import annotations

import contextlib
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


def _median_seconds(fn, device, repeat: int, *, warmup: bool = True, before=None) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs (synchronized), after one warm-up run unless the
    caller warmed up; ``before`` runs ahead of each timed run, outside the timing."""
    import time

    if warmup:
        fn()  # Triton compiles here
    _sync(device)
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
            _sync(device)
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


def _forward_names(model) -> tuple[str, bool]:
    """(the forward's cache keyword, whether it takes ``cache_position``): transformers 5.24 renamed
    ``past_key_values`` to ``cache`` (the old name is deprecated), 5.17 has only ``past_key_values``;
    neither takes ``cache_position`` (positions come from ``position_ids`` and the cache), older 4.x did."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "cache_position" in params


def static_cache(model, max_len: int):
    """A transformers ``StaticCache`` of ``max_len`` positions for ``model``, every attention layer on a
    full-length ``StaticLayer``. Sliding-window (and chunked) layers get one too: transformers'
    ``StaticSlidingWindowLayer`` picks its branch and its mask offsets from a Python int, which a
    CUDA graph would freeze at capture; on a full-length layer the position lives in the layer's
    ``cumulative_length`` tensor (advanced in place) and the model's sliding-window mask, built from
    that tensor, restricts attention to the window: the same attention, graph-safe."""
    import copy

    from transformers import StaticCache

    cfg = copy.deepcopy(model.config.get_text_config(decoder=True))
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    cfg.layer_types = ["full_attention" if t in ("sliding_attention", "chunked_attention") else t for t in types]
    # the same two parameters in transformers 5.17 and 5.24 (5.24 builds per-layer kwargs differently)
    return StaticCache(config=cfg, max_cache_len=max_len)


@contextlib.contextmanager
def _graph_safe_masks():
    """transformers' mask function for eager attention (gpt-oss: its sinks need eager) swapped, while a
    step runs, for one that computes the same mask without a host-to-device copy: transformers 5.17
    writes ``torch.tensor(0.0, device=...)``, whose copy from pageable host memory synchronizes (not
    allowed while a CUDA graph captures); 5.24 writes ``torch.zeros(())``, as this one does."""
    import torch
    from transformers import masking_utils as mu

    def eager_mask(*args, dtype=torch.float32, **kwargs):  # = transformers 5.24's eager_mask
        kwargs.pop("allow_is_causal_skip", None)
        mask = mu.sdpa_mask(*args, allow_is_causal_skip=False, **kwargs)
        if mask is not None:  # True -> 0, False -> the dtype's minimum
            mask = torch.where(mask, torch.zeros((), device=mask.device, dtype=dtype), torch.finfo(dtype).min)
        return mask

    table = mu.ALL_MASK_ATTENTION_FUNCTIONS
    previous = table._local_mapping.get("eager")  # per-instance overrides (GeneralInterface, 5.17 and 5.24)
    table["eager"] = eager_mask
    try:
        yield
    finally:
        if previous is None:
            del table["eager"]
        else:
            table["eager"] = previous


class StaticDecoder:
    """Decoding on a ``StaticCache`` with static input buffers, so that one step can be captured in a
    CUDA graph and replayed.

    ``prefill(ids)`` runs the prompt eagerly into the cache; each ``step()`` feeds ``tokens`` (B, 1)
    at ``position`` (1, 1, the ``position_ids`` of every sequence) and then advances ``position`` in
    place (``add_(1)``), as the cache layers advance their ``cumulative_length`` tensors in place:
    nothing in a step reads a host value, so ``capture()`` records it once and ``run()`` replays it,
    each replay writing the next cache slot and returning the logits (B, 1, V) in the graph's static
    output buffer (overwritten by the next replay: clone what you keep). Without a graph (CPU, or
    before ``capture``) ``run()`` calls the same step eagerly."""

    WARMUP = 3  # eager steps on a side stream before capture (Triton compiles, cuBLAS picks, lazy inits)

    def __init__(self, model, batch: int, max_len: int):
        import torch

        self.model, self.batch, self.max_len = model, batch, max_len
        self.device = next(model.parameters()).device
        self.cache = static_cache(model, max_len)
        self._cache_kw, self._cache_position = _forward_names(model)
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.logits = None
        self.graph = None

    def _forward(self, ids, position, logits_to_keep: int = 0):
        kw = {self._cache_kw: self.cache, "position_ids": position, "use_cache": True,
              "logits_to_keep": logits_to_keep}
        if self._cache_position:  # transformers 4.x: the same positions, 1-D (a view: advances with them)
            kw["cache_position"] = position.view(-1)
        return self.model(ids, **kw).logits

    def prefill(self, ids, logits_to_keep: int = 0):
        """``ids`` (B, T) into the empty cache at positions 0..T-1; returns their logits (B, T or
        logits_to_keep, V). Eager: its length is a host value, known here, not in a step."""
        import torch

        t = ids.shape[1]
        if t >= self.max_len:
            raise ValueError(f"a {t}-token prompt leaves no room in a {self.max_len}-position cache")
        with torch.no_grad():
            logits = self._forward(ids, torch.arange(t, device=self.device).view(1, t), logits_to_keep)
        self.position.fill_(t)
        return logits

    def step(self):
        """One token per sequence from ``tokens``, eagerly; what ``capture`` records."""
        import torch

        with torch.no_grad(), _graph_safe_masks():
            logits = self._forward(self.tokens, self.position, 1)
            self.position.add_(1)
        return logits

    def state(self) -> list:
        """The tensors a step advances: ``position`` and every cache layer's ``cumulative_length``."""
        import torch

        return [self.position] + [t for t in (getattr(layer, "cumulative_length", None) for layer in self.cache.layers)
                                  if isinstance(t, torch.Tensor)]

    def save(self) -> list:
        return [t.clone() for t in self.state()]

    def restore(self, saved: list) -> None:
        """Back to a saved position (``copy_`` into the same tensors: a captured graph keeps reading them);
        later steps overwrite the cache slots from there."""
        for t, s in zip(self.state(), saved):
            t.copy_(s)

    def capture(self) -> None:
        """Record one step in a CUDA graph (after the prefill). Warm-up steps run first on a side stream,
        as torch's CUDA-graph docs prescribe, and are then undone (``restore``), so the first replay
        decodes the position right after the prompt."""
        import torch

        saved = self.save()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                self.step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.restore(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # synchronizes first; records, runs nothing
            self.logits = self.step()
        self.graph = graph

    def run(self):
        """One decode step: a graph replay when captured, else ``step()``; returns the logits (B, 1, V)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.logits = self.step()
        return self.logits


def _can_graph(device, graphs: bool) -> bool:
    import torch

    return graphs and torch.device(device).type == "cuda"


def static_decode_logits(model, ids, tokens, *, graphs: bool = False):
    """Logits of prefill + fixed-token decoding on a ``StaticDecoder``: ``ids`` (B, T) prompt, ``tokens``
    (B, S) fed one step at a time (step s feeds ``tokens[:, s]``); returns (B, T + S, V), the prompt's
    logits then each step's. ``graphs`` (CUDA only): the steps are replays of one captured graph."""
    import torch

    b, t = ids.shape
    tokens = tokens.reshape(b, -1)
    dec = StaticDecoder(model, b, t + max(tokens.shape[1], StaticDecoder.WARMUP) + 1)
    out = [dec.prefill(ids)]
    if _can_graph(ids.device, graphs):
        dec.capture()
    for s in range(tokens.shape[1]):
        dec.tokens.copy_(tokens[:, s : s + 1])
        out.append(dec.run().clone())
    return torch.cat(out, 1)


def dynamic_decode_logits(model, ids, tokens):
    """``static_decode_logits`` through transformers' default (dynamic) cache, eagerly: the reference."""
    import torch

    b = ids.shape[0]
    tokens = tokens.reshape(b, -1)
    cache, kw = _dynamic_cache(model)
    with torch.no_grad():
        out = [model(ids, **kw, use_cache=True).logits]
        for s in range(tokens.shape[1]):
            out.append(model(tokens[:, s : s + 1], **kw, use_cache=True).logits)
    return torch.cat(out, 1)


def _dynamic_cache(model, cache=None):
    """(a transformers ``DynamicCache``, the forward keywords passing it): the model fills it in place."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config) if cache is None else cache
    return cache, {_forward_names(model)[0]: cache}


def decode_tokens_per_s(model, batch: int, device, context: int = 128, steps: int | None = None,
                        graphs: bool = True, static: bool | None = None) -> float:
    """Decode throughput: ``steps`` one-token steps of ``batch`` sequences after a ``context``-token
    prefill; tokens generated per second over all sequences (median of a few runs).

    - ``graphs=True`` (default): a static cache, one step captured in a CUDA graph and replayed
      ``steps`` times (default 32); on the CPU, the same static-cache loop eagerly.
    - ``graphs=False``: eager; transformers' dynamic cache (default, the figure reported before CUDA
      graphs: host-bound, a model call per step, default 8 steps), or the static-cache loop with
      ``static=True``."""
    import copy

    import torch

    static = graphs if static is None else static
    if graphs and not static:
        raise ValueError("decode under CUDA graphs needs the static cache (static=True)")
    steps = steps or (32 if static else 8)
    g = torch.Generator(device).manual_seed(12)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=device, generator=g)
    tok = torch.randint(0, model.config.vocab_size, (batch, 1), device=device, generator=g)
    if not static:
        cache, kw = _dynamic_cache(model)
        with torch.no_grad():
            model(ids, **kw, use_cache=True, logits_to_keep=1)

            def run():
                _, kw = _dynamic_cache(model, copy.deepcopy(cache))
                for _ in range(steps):
                    model(tok, **kw, use_cache=True, logits_to_keep=1)

            return batch * steps / _median_seconds(run, device, 2)

    dec = StaticDecoder(model, batch, context + max(steps, StaticDecoder.WARMUP) + 1)
    dec.prefill(ids, logits_to_keep=1)
    dec.tokens.copy_(tok)
    start = dec.save()
    if _can_graph(device, graphs):
        dec.capture()  # warms up first (Triton compiles there)
    else:
        dec.run()  # warm-up: Triton compiles here

    def run():
        for _ in range(steps):
            dec.run()

    # every run decodes the same positions from the prompt on
    seconds = _median_seconds(run, device, 3, warmup=False, before=lambda: dec.restore(start))
    dec = None  # frees the graph and its memory pool, the cache
    return batch * steps / seconds


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
    """Throughput of ``model`` as it is now: prefill of ``prompt`` tokens, and decode per batch size
    twice: ``decode_b{b}_tokens_per_s`` on a static cache under CUDA graphs (the eager static loop on
    the CPU) and ``decode_b{b}_eager_tokens_per_s`` eagerly on transformers' dynamic cache (host-bound:
    the figure reported before graphs). On the GPU a step that cannot be captured records None and its
    error under ``"errors"`` instead of losing the other figures."""
    import torch

    out = {"prefill_tokens_per_s": prefill_tokens_per_s(model, prompt, device)}
    for b in batches:
        key = f"decode_b{b}_tokens_per_s"
        try:
            out[key] = decode_tokens_per_s(model, b, device, graphs=True)
        except Exception as exc:
            if torch.device(device).type != "cuda":
                raise
            out[key] = None
            out.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"[:1000]
        out[f"decode_b{b}_eager_tokens_per_s"] = decode_tokens_per_s(model, b, device, graphs=False)
    return out


def _ratios(perf: dict, base: dict) -> dict:
    """quantized / bf16 for every figure both runs have."""
    num = (int, float)
    return {k: v / base[k] for k, v in perf.items() if isinstance(v, num) and isinstance(base.get(k), num) and base[k]}


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
           "speedup": _ratios(perf, baseline["perf"]),
           "fidelity": fidelity(baseline["logits"], logits), "baseline": baseline}
    del model
    weight_bytes(device)
    return row
