"""Why a quantized random-weight model loses the logits cosine it does (CPU, plain torch, fp32).

Builds the bench model (``quantc.hf.build_model``: published dimensions, few layers, random seeded
weights) in fp32, compiles the quantc plan of each scheme against it and fake-quantizes (quantize then
dequantize with ``quantc.runtime.quantize``, the kernels' reference math) exactly the modules the plan
quantizes (the weight per output channel, the activation per token); embeddings, lm_head and routers
stay exact. Reports, against the unquantized model on the prompt of ``quantc.hf.reference_logits``:

- logits cosine / min / top-1 (``quantc.hf.fidelity``) and the relative error of the logits;
- ``local``: each quantized matmul's own relative error on the input it actually got;
- ``propagated``: the relative error at each point (linear outputs, attention probabilities,
  attention / MLP / layer outputs, final norm, logits) after everything upstream;
- ``noise``: the same run with the quantization replaced by Gaussian noise of each matmul's measured
  local relative RMS (if the cosine matches, nothing format-specific is involved);
- MoE: the fraction of tokens whose top-k expert set changes per layer, and the cosine with the
  reference routing replayed (fused experts are emulated for gpt-oss only; other MoE models raise);
- ``--depths``: the cosine of each scheme on freshly built models of those depths.

Memory: fp32 weights plus one dequantized copy of the linears (experts are quantized on the fly).
Measured on 2 cores: llama-3.1-8b with --depths 1,2,4 peaks at 16 GB (4 layers) and takes 4 min;
gpt-oss-20b-bf16 at 2 layers 13 GB, 2.5 min.

    python3 bench/fidelity_probe.py                              # llama-3.1-8b, 2 layers, fp8 + int8
    python3 bench/fidelity_probe.py --depths 1,2,4 --out bench/results      # and the cosine per depth
    python3 bench/fidelity_probe.py --model gpt-oss-20b-bf16 --out bench/results

Writes ``<out>/fidelity_<model>.json`` (out: ``--out``, else $OUT, else /tmp) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import types
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from quantc import hf  # noqa: E402
from quantc.runtime import quantize as Q  # noqa: E402
from quantc.runtime.kernels.scaled_mm import fake_quant_activation as scaled_fake_quant  # noqa: E402

SCHEMES = {"fp8": "fp8_per_channel", "int8": "int8"}  # --scheme -> quantc.hf.SCHEMES
ROWWISE_ACTIVATIONS = ("fp8_dynamic_per_token", "fp8_dynamic_per_tensor", "int8_dynamic_per_token")


def rel(got, ref) -> float:
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def plan_targets(model: str, layers: int, scheme: str, tiny: bool = False) -> dict[str, tuple[str, str]]:
    """{module name: (weight key, activation key)} of what the compiled plan of ``scheme`` quantizes."""
    import quantc

    meta = hf.build_model(model, layers, device="meta", tiny=tiny)
    with tempfile.TemporaryDirectory() as d:
        config, overrides = hf.scheme_config(SCHEMES[scheme], d)
        plan = quantc.compile(config, meta, gpu="h100", tp=1, overrides=list(overrides))
    return {m.name: (m.weight, m.activation) for m in plan.modules if m.weight != "none"}


def fake_quant_weight(w, key: str):
    """(N, K) -> dequantized (N, K) fp32."""
    return Q.dequantize_weight(Q.quantize_weight(w.float(), key), key)


def fake_quant_activation(x, key: str):
    """``x`` (.., K) through the reference quantizer of ``key`` (``scaled_mm.fake_quant_activation``), in
    its own shape and dtype."""
    if key == "none":
        return x
    if key not in ROWWISE_ACTIVATIONS:
        raise ValueError(f"activation {key!r}: only {', '.join(ROWWISE_ACTIVATIONS)} are emulated")
    return scaled_fake_quant(x.reshape(-1, x.shape[-1]), key).reshape(x.shape).to(x.dtype)


class Probe:
    """Routes every matmul of the plan's targets through ``_mm``: exact (mode "off"), fake-quantized
    ("quant") or exact plus Gaussian noise of a given relative RMS per target ("noise"); accumulates
    each target's local error and records the outputs of the points the propagated error is read at."""

    def __init__(self, model, targets: dict[str, tuple[str, str]]):
        self.model, self.targets = model, targets
        self.mode, self.noise, self.replay = "off", {}, None
        self._wcache: dict = {}
        model.config._attn_implementation = "eager"  # attention modules then return their probabilities
        modules = dict(model.named_modules())
        found = set()
        for name, mod in modules.items():
            if name in targets and isinstance(mod, torch.nn.Linear):
                mod.register_forward_hook(self._linear_hook(name))
                found.add(name)
            elif name + ".down_proj" in targets and isinstance(getattr(mod, "down_proj"), torch.nn.Parameter):
                if type(mod).__name__ != "GptOssExperts":
                    raise NotImplementedError(f"{name}: fused experts of {type(mod).__name__} are not emulated")
                mod.forward = types.MethodType(self._experts_forward(name), mod)
                found |= {n for n in (name + ".gate_up_proj", name + ".down_proj") if n in targets}
        if set(targets) - found:
            raise ValueError(f"plan targets not found in the model: {sorted(set(targets) - found)}")
        for i, layer in enumerate(model.model.layers):
            for part, mod in (("attn", layer.self_attn), ("mlp", layer.mlp), ("out", layer)):
                mod.register_forward_hook(self._record(f"L{i}.{part}"))
            if hasattr(layer.mlp, "router"):
                layer.mlp.router.register_forward_hook(self._router_hook(i))
        model.model.norm.register_forward_hook(self._record("final_norm"))

    def _mm(self, name: str, x, w, b, y=None, part: int | None = None):
        """x @ w.T + b under the current mode; ``y`` is the exact result when already computed."""
        y = F.linear(x, w, b) if y is None else y
        if self.mode == "off":
            return y
        if self.mode == "quant":
            wkey, akey = self.targets[name]
            if part is None:  # experts are quantized on the fly: caching them all doubles the memory
                wq = self._wcache.setdefault((name, wkey), fake_quant_weight(w, wkey))
            else:
                wq = fake_quant_weight(w, wkey)
            got = F.linear(fake_quant_activation(x, akey), wq.to(w.dtype), b)
        else:
            g = torch.Generator().manual_seed(zlib.crc32(f"{name}/{part}".encode()))
            n = torch.randn(y.shape, generator=g, dtype=y.dtype)
            got = y + self.noise[name] * y.pow(2).mean(-1, keepdim=True).sqrt() * n
        acc = self.local.setdefault(name, [0.0, 0.0])
        acc[0] += (got - y).float().pow(2).sum().item()
        acc[1] += y.float().pow(2).sum().item()
        return got

    def _linear_hook(self, name):
        def hook(mod, args, out):
            got = self._mm(name, args[0], mod.weight, mod.bias, y=out)
            self.rec[name] = got.detach().float().clone()
            return got
        return hook

    def _experts_forward(self, name):
        probe = self

        def forward(self, hidden_states, router_indices=None, routing_weights=None):  # = GptOssExperts
            out = torch.zeros_like(hidden_states)
            for e in router_indices.unique().tolist():
                token, pos = torch.where(router_indices == e)
                h = probe._mm(name + ".gate_up_proj", hidden_states[token], self.gate_up_proj[e].t(),
                              self.gate_up_proj_bias[e], part=e)
                h = probe._mm(name + ".down_proj", self._apply_gate(h), self.down_proj[e].t(),
                              self.down_proj_bias[e], part=e)
                out.index_add_(0, token, h * routing_weights[token, pos, None])
            return out
        return forward

    def _record(self, key):
        def hook(mod, args, out):
            if isinstance(out, tuple):
                if len(out) > 1 and isinstance(out[1], torch.Tensor) and key.endswith(".attn"):
                    self.rec[key + ".probs"] = out[1].detach().float().clone()
                out = out[0]
            self.rec[key] = out.detach().float().clone()
        return hook

    def _router_hook(self, layer: int):
        def hook(mod, args, out):
            logits, scores, idx = out
            self.routes[layer] = idx.clone()  # the router's own choice, also when replaying
            if self.replay is not None:
                idx = self.replay[layer]
                return logits, torch.softmax(logits.gather(1, idx), dim=1), idx
        return hook

    @torch.no_grad()
    def run(self, ids, mode: str = "off", noise: dict | None = None, replay: dict | None = None) -> dict:
        self.mode, self.noise, self.replay = mode, noise or {}, replay
        self.rec, self.local, self.routes = {}, {}, {}
        self.rec["logits"] = self.model(ids, use_cache=False).logits[0].float()
        local = {n: (e / r) ** 0.5 for n, (e, r) in self.local.items()}
        return {"rec": self.rec, "local": local, "routes": self.routes}


def compare(ref: dict, got: dict) -> dict:
    row = {**hf.fidelity(ref["rec"]["logits"], got["rec"]["logits"]),
           "logit_rel_err": rel(got["rec"]["logits"], ref["rec"]["logits"])}
    if got["local"]:
        row["local"] = got["local"]
    row["propagated"] = {k: rel(v, ref["rec"][k]) for k, v in got["rec"].items() if k != "logits"}
    if ref["routes"]:
        row["changed_topk"] = {i: (got["routes"][i].sort(-1).values != r.sort(-1).values).any(-1).float().mean().item()
                               for i, r in ref["routes"].items()}
    return row


def prompt(model, tokens: int):
    """The prompt of quantc.hf.reference_logits (the e2e bench's fidelity prompt)."""
    return torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(13))


def probe_scheme(probe: Probe, ids, ref: dict, scheme_targets: dict) -> dict:
    """quant, its noise equivalent and (MoE) the quant run with the reference routing replayed."""
    probe.targets, probe._wcache = scheme_targets, {}
    quant = compare(ref, probe.run(ids, "quant"))
    out = {"targets": {n: {"weight": w, "activation": a} for n, (w, a) in scheme_targets.items()},
           "quant": quant, "noise": compare(ref, probe.run(ids, "noise", noise=quant["local"]))}
    if ref["routes"]:
        out["quant_routing_replayed"] = compare(ref, probe.run(ids, "quant", replay=ref["routes"]))
    return out


def probe_model(model_name: str, layers: int, schemes, tokens: int, seed: int, tiny: bool = False) -> dict:
    targets = {s: plan_targets(model_name, layers, s, tiny) for s in schemes}
    model = hf.build_model(model_name, layers, seed=seed, tiny=tiny, dtype="float32")
    probe = Probe(model, targets[schemes[0]])
    ids = prompt(model, tokens)
    ref = probe.run(ids)
    result = {"off": compare(ref, probe.run(ids)), "schemes": {}}
    for s in schemes:
        t = time.perf_counter()
        result["schemes"][s] = probe_scheme(probe, ids, ref, targets[s])
        result["schemes"][s]["seconds"] = round(time.perf_counter() - t, 1)
    return result


def depth_sweep(model_name: str, depths, schemes, tokens: int, seed: int, tiny: bool = False) -> dict:
    out = {}
    for layers in depths:
        gc.collect()  # the previous model: its hooks and the probe form reference cycles
        model = hf.build_model(model_name, layers, seed=seed, tiny=tiny, dtype="float32")
        probe = Probe(model, plan_targets(model_name, layers, schemes[0], tiny))
        ids = prompt(model, tokens)
        ref = probe.run(ids)
        out[layers] = {}
        for s in schemes:
            probe.targets = plan_targets(model_name, layers, s, tiny)
            row = compare(ref, probe.run(ids, "quant"))
            out[layers][s] = {k: row[k] for k in ("cosine", "cosine_min", "top1", "logit_rel_err")}
        del model, probe
    gc.collect()
    return out


def _pct(v) -> str:
    return f"{100 * v:.1f}%"


def table(result: dict) -> str:
    lines = [f"{result['model']}, {result['layers']} layers, {result['tokens']} tokens, fp32 CPU",
             f"{'scheme':6} {'cosine':>8} {'min':>7} {'top1':>6} {'logit err':>9} {'local err':>13} "
             f"{'noise cos':>9} {'replayed':>8}  changed top-k"]
    for s, r in result["schemes"].items():
        q, loc = r["quant"], r["quant"]["local"].values()
        rep = r.get("quant_routing_replayed", {}).get("cosine")
        flips = " ".join(f"L{i} {_pct(v)}" for i, v in q.get("changed_topk", {}).items())
        lines.append(f"{s:6} {q['cosine']:8.5f} {q['cosine_min']:7.4f} {q['top1']:6.3f} {q['logit_rel_err']:9.4f} "
                     f"{min(loc):6.2%}-{max(loc):<6.2%} {r['noise']['cosine']:9.5f} "
                     f"{'' if rep is None else f'{rep:.5f}':>8}  {flips}")
    first = next(iter(result["schemes"].values()))["quant"]["propagated"]
    points = [k for k in first if not k.startswith("model.")]  # the linears' outputs: in the JSON
    lines.append("propagated error (" + " / ".join(result["schemes"]) + "):")
    for k in points:
        lines.append(f"  {k:32} " + " / ".join(_pct(r["quant"]["propagated"][k]) for r in result["schemes"].values()))
    for layers, row in result.get("depths", {}).items():
        lines.append(f"depth {layers}: " + "  ".join(f"{s} {v['cosine']:.5f}" for s, v in row.items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama-3.1-8b", help="an examples/models name")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="weight seed (the prompt is the bench's fixed one)")
    ap.add_argument("--scheme", nargs="+", choices=sorted(SCHEMES), default=["fp8", "int8"])
    ap.add_argument("--depths", default="", help="comma-separated layer counts for a cosine-per-depth sweep")
    ap.add_argument("--tiny", action="store_true", help="quantc.hf.TINY dimensions (a quick dry run)")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"), help="directory of fidelity_<model>.json")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t = time.perf_counter()
    result = {"model": a.model, "layers": a.layers, "tokens": a.tokens, "seed": a.seed, "tiny": a.tiny,
              "dtype": "float32", "env": {"cpu": platform.processor() or platform.machine(),
                                          "torch": torch.__version__, "threads": torch.get_num_threads()}}
    result.update(probe_model(a.model, a.layers, a.scheme, a.tokens, a.seed, a.tiny))
    if a.depths:
        result["depths"] = depth_sweep(a.model, [int(v) for v in a.depths.split(",")], a.scheme, a.tokens,
                                       a.seed, a.tiny)
    result["seconds"] = round(time.perf_counter() - t, 1)
    path = Path(a.out) / f"fidelity_{a.model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"wrote {path} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
