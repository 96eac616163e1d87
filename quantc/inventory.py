"""The model inventory (SPEC §4): every quantizable module of a model, without loading a weight.

Sources, all through ``load_inventory(source)``:

- a Hugging Face ``config.json`` (or a directory holding one) of a supported architecture
  (``quantc.archs.ARCHITECTURES``); ModelOpt's ``hf_quant_config.json`` beside it is picked up
  when config.json has no ``quantization_config``;
- a ``.safetensors`` file: only its header is read (``quantc.safetensors_header``);
- a ``model.safetensors.index.json``: the headers of the shards beside it; with no shard present,
  the index names plus config.json beside it (shapes come from the config);
- a live ``torch.nn.Module``-like object (anything with ``named_modules()``), duck-typed.

Every source yields the same names, kinds and canonical module order for the same model, so a
plan compiled from config.json matches the live model it is applied to.

Diagnostic codes (QC8xx): 801 unknown architecture, 802 missing/invalid config field, 803 unreadable
or invalid JSON file, 804 truncated safetensors header, 805 header length past the end of the file,
806 header not JSON / malformed entry, 807 missing shard, 808 index without shards or config.json,
809 source not found / unsupported, 810 index without weight_map, 811 no weights found / module not
walkable, 812 (warning) index and config.json disagree, 813 (note) config architecture unknown,
modules read from the checkpoint headers instead.
"""

from __future__ import annotations

import json
import os

from . import archs
from .diagnostics import Diagnostic, QuantcError, Span, has_errors
from .live_module import entries_from_module
from .model import Inventory, ModuleInfo
from .safetensors_header import TensorHeader, read_header
from .tensor_names import entries_from_headers, modules_from_entries

Result = tuple[Inventory | None, tuple[Diagnostic, ...]]
SOURCES_HINT = ("other models: pass the checkpoint's .safetensors file or its "
                "model.safetensors.index.json (read from the tensor headers), or a live torch.nn.Module")


def _fail(code: str, path: str, message: str, hint: str, line: int = 0, col: int = 0) -> Result:
    return None, (Diagnostic(code, "error", message, Span(path, line, col), hint),)


def _read_json(path: str) -> tuple[dict | None, str, tuple[Diagnostic, ...]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        return None, "", _fail("QC803", path, f"cannot read {path}: {e.strerror or e}",
                               "check the path and the file's permissions")[1]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, text, _fail("QC803", path, f"{os.path.basename(path)} is not valid JSON: {e.msg}",
                                 "fix the JSON syntax at the position shown", e.lineno, e.colno)[1]
    if not isinstance(data, dict):
        return None, text, _fail("QC803", path, f"{os.path.basename(path)} must hold a JSON object",
                                 "a config.json/index.json is one object of fields")[1]
    return data, text, ()


def _quantization_config(folder: str, data: dict | None, config_path: str | None):
    """config.json's quantization_config verbatim, else ModelOpt's hf_quant_config.json beside it."""
    if data is not None and isinstance(data.get("quantization_config"), dict):
        return data["quantization_config"], config_path, ()
    sidecar = os.path.join(folder, "hf_quant_config.json")
    if not os.path.isfile(sidecar):
        return None, None, ()
    side, _, diags = _read_json(sidecar)
    return side, (sidecar if side is not None else None), diags


def _config_beside(folder: str) -> tuple[dict | None, str | None]:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None, None
    data, _, diags = _read_json(path)
    return (data, path) if not diags else (None, None)


# --- config.json ----------------------------------------------------------------------------------


def from_config(path) -> Result:
    path = os.fspath(path)
    data, text, diags = _read_json(path)
    if data is None:
        return None, diags
    arch = archs.resolve_architecture(data)
    if arch is None:
        named = (data.get("architectures") or [None])[0]
        what = f"'{named}'" if named else f"model_type '{data.get('model_type')}'"
        f = archs.ConfigFields(data, path, text)
        span = f.span("architectures" if named else "model_type")
        return None, (Diagnostic(
            "QC801", "error", f"unknown architecture {what} in {path}", span,
            f"supported: {', '.join(sorted(archs.ARCHITECTURES))}; {SOURCES_HINT}",
            "architectures" if named else "model_type"),)
    f = archs.ConfigFields(data, path, text, arch)
    folder = os.path.dirname(os.path.abspath(path))
    qcfg, qsrc, qdiags = _quantization_config(folder, data, path)
    with archs.gc_paused():
        rows = archs.ARCHITECTURES[arch](f)
        embed, head = archs.embed_rows(f, f.int("hidden_size"))
        if f.diagnostics:
            return None, tuple(f.diagnostics)
        modules = archs.build_modules([embed, *rows, head], archs.torch_dtype_of(data), qcfg)
    extra = {"config": path, "hidden_size": data.get("hidden_size"),
             "tie_word_embeddings": bool(data.get("tie_word_embeddings", False))}
    if data.get("num_nextn_predict_layers"):
        extra["mtp_layers_not_listed"] = data["num_nextn_predict_layers"]
    inv = Inventory(path, arch, modules, data["num_hidden_layers"], qcfg, qsrc, extra)
    return inv, qdiags


# --- safetensors headers --------------------------------------------------------------------------


def _head_dim(config: dict | None) -> int:
    """The attention head size a config beside a checkpoint gives, for kv_cache entries (0: unknown)."""
    if not config:
        return 0
    hd = config.get("head_dim")
    if isinstance(hd, int) and hd > 0:
        return hd
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 else 0


def _like_config(modules: tuple[ModuleInfo, ...], config: dict | None) -> tuple[ModuleInfo, ...]:
    """What the config.json builders list, from a checkpoint: no multi-token-prediction layers past
    num_hidden_layers (DeepSeek-V3's model.layers.61), and an lm_head even when it is tied to the
    embedding and so has no tensor of its own."""
    if not config:
        return modules
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int):
        modules = tuple(m for m in modules if m.layer is None or m.layer < layers)
    embed = next((m for m in modules if m.kind == "embedding"), None)
    if config.get("tie_word_embeddings") and embed and not any(m.kind == "lm_head" for m in modules):
        modules += (ModuleInfo("lm_head", "lm_head", embed.n, embed.k, None, 1, None, None, "column", embed.dtype,
                               embed.tensors),)
    return modules


def _from_headers(source: str, headers: dict[str, TensorHeader], diags=()) -> Result:
    folder = os.path.dirname(os.path.abspath(source))
    config, config_path = _config_beside(folder)
    with archs.gc_paused():
        modules = _like_config(modules_from_entries(entries_from_headers(headers), _head_dim(config)), config)
    if not modules:
        return None, (*diags, Diagnostic(
            "QC811", "error", f"no weight tensors (2D or larger) found in {source}", Span(source),
            "point --model at a model checkpoint, its config.json or a live module"))
    qcfg, qsrc, qdiags = _quantization_config(folder, config, config_path)
    arch = (config and archs.resolve_architecture(config)) or "safetensors"
    layers = max((m.layer for m in modules if m.layer is not None), default=-1) + 1
    extra = {"config": config_path}
    if config and config.get("num_nextn_predict_layers"):
        extra["mtp_layers_not_listed"] = config["num_nextn_predict_layers"]
    return Inventory(source, arch, modules, layers, qcfg, qsrc, extra), (*diags, *qdiags)


def from_safetensors(path) -> Result:
    path = os.fspath(path)
    headers, diags = read_header(path)
    if headers is None:
        return None, diags
    return _from_headers(path, headers)


def from_index(path) -> Result:
    path = os.fspath(path)
    data, _, diags = _read_json(path)
    if data is None:
        return None, diags
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return _fail("QC810", path, f"{os.path.basename(path)} has no 'weight_map' of tensor -> shard file",
                     "use the model.safetensors.index.json that came with the checkpoint")
    folder = os.path.dirname(os.path.abspath(path))
    shards = list(dict.fromkeys(weight_map.values()))
    present = [s for s in shards if os.path.isfile(os.path.join(folder, s))]
    if present and len(present) < len(shards):
        missing = [s for s in shards if s not in present]
        return None, tuple(Diagnostic(
            "QC807", "error", f"shard '{s}' listed in {os.path.basename(path)} is missing from {folder}",
            Span(path), "download every shard (only their headers are read), or remove them all and put "
            "config.json beside the index to take shapes from the config") for s in missing)
    if present:
        headers: dict[str, TensorHeader] = {}
        for shard in shards:
            part, shard_diags = read_header(os.path.join(folder, shard))
            if part is None:
                return None, shard_diags
            headers.update(part)
        return _from_headers(path, headers)
    return _index_with_config(path, folder, weight_map)


def _index_with_config(path: str, folder: str, weight_map: dict) -> Result:
    """No shard beside the index: shapes from config.json, checked against the index's names."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        return _fail("QC808", path, f"{os.path.basename(path)} gives tensor names but no shapes, and "
                     f"neither its shards nor a config.json are in {folder}",
                     "put the model's config.json (or the shard files) beside the index")
    inv, diags = from_config(config_path)
    if inv is None:
        return None, diags
    tied = inv.extra.get("tie_word_embeddings")
    absent = [m.name for m in inv.modules
              if m.kind != "kv_cache" and not (tied and m.kind == "lm_head")
              and not any(t in weight_map for t in (m.tensors or (m.name + ".weight",)))]
    if absent:
        diags = (*diags, Diagnostic(
            "QC812", "warning", f"{len(absent)} module(s) of the {inv.architecture} config are not in "
            f"{os.path.basename(path)}, e.g. {', '.join(absent[:3])}", Span(path),
            "the config.json beside the index may belong to another model"))
    return Inventory(path, inv.architecture, inv.modules, inv.num_layers, inv.quantization_config,
                     inv.quantization_config_source, {**inv.extra, "index": path}), diags


# --- live module ----------------------------------------------------------------------------------


def from_module(model) -> Result:
    label = f"<module {type(model).__name__}>"
    try:
        entries, head_dim = entries_from_module(model)
    except (AttributeError, TypeError, ValueError) as e:
        return _fail("QC811", label, f"cannot walk the modules of {label}: {e}",
                     "pass a torch.nn.Module (or an object with named_modules())")
    modules = modules_from_entries(entries, head_dim)
    if not modules:
        return _fail("QC811", label, f"{label} has no Linear, Embedding or fused expert modules",
                     "pass the model itself, not a submodule without weights")
    config = getattr(model, "config", None)
    archs_named = getattr(config, "architectures", None) or [type(model).__name__]
    qcfg = getattr(config, "quantization_config", None)
    if qcfg is not None and not isinstance(qcfg, dict):
        qcfg = qcfg.to_dict() if hasattr(qcfg, "to_dict") else None
    layers = max((m.layer for m in modules if m.layer is not None), default=-1) + 1
    return Inventory(label, archs_named[0], modules, layers, qcfg, label if qcfg else None), ()


# --- dispatch -------------------------------------------------------------------------------------


def _from_directory(folder: str) -> Result:
    config = os.path.join(folder, "config.json")
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    weights = index if os.path.isfile(index) else single if os.path.isfile(single) else None
    if os.path.isfile(config):
        data, _, _ = _read_json(config)
        if weights and data is not None and archs.resolve_architecture(data) is None:
            inv, diags = load_inventory(weights)  # an architecture without a builder: read headers
            note = Diagnostic("QC813", "note", f"{config} names an architecture quantc has no "
                              f"config builder for; modules read from {os.path.basename(weights)}",
                              Span(config))
            return inv, (note, *diags)
        return from_config(config)
    if weights:
        return load_inventory(weights)
    return _fail("QC809", folder, f"no config.json, model.safetensors.index.json or model.safetensors in {folder}",
                 "point --model at the model's config.json, a .safetensors file, an index file or a directory "
                 "holding one")


def load_inventory(source) -> Result:
    """The inventory of ``source`` (a path or a live module) and the diagnostics found reading it."""
    if hasattr(source, "named_modules"):
        return from_module(source)
    path = os.fspath(source)
    if os.path.isdir(path):
        return _from_directory(path)
    if not os.path.exists(path):
        return _fail("QC809", path, f"model description not found: {path}",
                     "pass a config.json, a .safetensors file, a model.safetensors.index.json or a directory")
    if path.endswith(".safetensors"):
        return from_safetensors(path)
    if path.endswith(".index.json"):
        return from_index(path)
    if path.endswith(".json"):
        return from_config(path)
    return _fail("QC809", path, f"unsupported model description {path}",
                 "pass a config.json, a .safetensors file, a model.safetensors.index.json or a directory")


def inventory_or_raise(source) -> Inventory:
    inv, diags = load_inventory(source)
    if inv is None or has_errors(diags):
        raise QuantcError(diags)
    return inv


# --- synthetic models for benchmarks --------------------------------------------------------------


def synthetic_inventory(num_modules: int, *, experts: int = 0, hidden: int = 4096, intermediate: int = 14336,
                        heads: int = 32, kv_heads: int = 8) -> Inventory:
    """A Llama-like (``experts=0``) or Qwen3-MoE-like model with exactly ``num_modules`` modules, all
    linear / router / expert modules (no embeddings, lm_head or kv_cache), layer after layer; the
    last layer may be cut short."""
    with archs.gc_paused():
        return _synthetic(num_modules, experts, hidden, intermediate, heads, kv_heads)


def _synthetic(num_modules: int, experts: int, hidden: int, intermediate: int, heads: int, kv_heads: int) -> Inventory:
    rows: list = []
    hd = hidden // heads
    layer = 0
    while len(rows) < num_modules:
        part: list = []
        archs.gqa_attention(part, layer, hidden, heads, kv_heads, hd)
        rows += [r for r in part if r[1] != "kv_cache"]
        mlp = f"model.layers.{layer}.mlp"
        if experts:
            archs.router_row(rows, mlp + ".gate", layer, experts, hidden)
            archs.expert_mlps(rows, mlp, layer, hidden, intermediate, experts)
        else:
            archs.gated_mlp(rows, mlp, layer, hidden, intermediate)
        layer += 1
    modules: tuple[ModuleInfo, ...] = archs.build_modules(rows[:num_modules], "bf16")
    arch = f"synthetic-{'moe' if experts else 'dense'}"
    return Inventory(f"<{arch} {num_modules}>", arch, modules, modules[-1].layer + 1 if modules else 0)
