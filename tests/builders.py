"""Small builders for lowering tests: a Config and an Inventory from plain Python, with fake spans
(line numbers = position in the builder call) so provenance can be asserted."""

from __future__ import annotations

from dataclasses import dataclass

from quantc.config import Config, KindSetting, Pattern, Rule, Setting, Target
from quantc.diagnostics import Span
from quantc.keys import SHORTHANDS
from quantc.model import Inventory, ModuleInfo

FILE = "cfg.yaml"


def _kind(value, line, origin):
    if value is None:
        return None
    if isinstance(value, str):
        w, a = SHORTHANDS[value]
        return KindSetting(Setting(w, Span(FILE, line, 3), origin), Setting(a, Span(FILE, line, 3), origin))
    w, a = value.get("weight"), value.get("activation")
    return KindSetting(Setting(w, Span(FILE, line, 5), origin) if w else None,
                       Setting(a, Span(FILE, line, 5), origin) if a else None)


def make_config(*, linear=None, moe=None, kv_cache=None, rules=(), ignore=(), gpu=None, tp=1, ep=False, backend=None):
    kinds = {}
    for i, (name, value) in enumerate((("linear", linear), ("moe", moe), ("kv_cache", kv_cache))):
        ks = _kind(value, 2 + i, f"{name} ({FILE})")
        if ks is not None:
            kinds[name] = ks
    built_rules = []
    for idx, r in enumerate(rules):
        line = 10 + 5 * idx
        match = r["match"] if isinstance(r["match"], list) else [r["match"]]
        label = f"rules[{idx}] ({FILE})"
        rk = {k: _kind(r[k], line + 1, label) for k in ("linear", "moe", "kv_cache") if k in r}
        built_rules.append(Rule(idx, label, tuple(Pattern(m, Span(FILE, line, 5)) for m in match), rk,
                                bool(r.get("skip")), Span(FILE, line, 3)))
    ign = tuple(Pattern(p, Span(FILE, 100 + i, 5)) for i, p in enumerate(ignore))
    target = Target(Setting(gpu, Span(FILE, 200, 8), "target") if gpu else None, tp, Span(FILE, 201, 20) if tp != 1 else None, ep)
    be = {k: Setting(v, Span(FILE, 300, 10), "backend") for k, v in (backend or {}).items()}
    return Config(1, FILE, ((FILE, "0" * 64),), kinds, tuple(built_rules), ign, be, target)


def llama_like(layers=2, hidden=256, inter=512, heads_kv=64, vocab=1000):
    mods = [ModuleInfo("model.embed_tokens", "embedding", vocab, hidden, tp_split="column")]
    for i in range(layers):
        a = f"model.layers.{i}.self_attn"
        for p, n, s in (("q_proj", hidden, "column"), ("k_proj", heads_kv, "column"), ("v_proj", heads_kv, "column")):
            mods.append(ModuleInfo(f"{a}.{p}", "linear", n, hidden, i, fused_group=f"{a}.qkv_proj", tp_split=s))
        mods.append(ModuleInfo(f"{a}.o_proj", "linear", hidden, hidden, i, tp_split="row"))
        m = f"model.layers.{i}.mlp"
        mods.append(ModuleInfo(f"{m}.gate_proj", "linear", inter, hidden, i, fused_group=f"{m}.gate_up_proj", tp_split="column"))
        mods.append(ModuleInfo(f"{m}.up_proj", "linear", inter, hidden, i, fused_group=f"{m}.gate_up_proj", tp_split="column"))
        mods.append(ModuleInfo(f"{m}.down_proj", "linear", hidden, inter, i, tp_split="row"))
        mods.append(ModuleInfo(f"{a}.kv_cache", "kv_cache", heads_kv, 0, i))
    mods.append(ModuleInfo("lm_head", "lm_head", vocab, hidden, tp_split="column"))
    return Inventory("llama-like", "LlamaForCausalLM", tuple(mods), layers)


def moe_like(layers=2, experts=4, hidden=256, inter=128):
    mods = []
    for i in range(layers):
        a = f"model.layers.{i}.self_attn"
        mods.append(ModuleInfo(f"{a}.q_proj", "linear", hidden, hidden, i, tp_split="column"))
        mods.append(ModuleInfo(f"{a}.o_proj", "linear", hidden, hidden, i, tp_split="row"))
        mods.append(ModuleInfo(f"model.layers.{i}.mlp.gate", "router", experts, hidden, i))
        for e in range(experts):
            x = f"model.layers.{i}.mlp.experts.{e}"
            blk = f"model.layers.{i}.mlp.experts"
            mods.append(ModuleInfo(f"{x}.gate_proj", "moe_experts", inter, hidden, i, fused_group=f"{x}.gate_up_proj", moe_block=blk, tp_split="column"))
            mods.append(ModuleInfo(f"{x}.up_proj", "moe_experts", inter, hidden, i, fused_group=f"{x}.gate_up_proj", moe_block=blk, tp_split="column"))
            mods.append(ModuleInfo(f"{x}.down_proj", "moe_experts", hidden, inter, i, moe_block=blk, tp_split="row"))
    mods.append(ModuleInfo("lm_head", "lm_head", 1000, hidden, tp_split="column"))
    return Inventory("moe-like", "Qwen3MoeForCausalLM", tuple(mods), layers)


@dataclass(frozen=True)
class FakeEntry:
    weight: str
    activation: str | None
    activation_fixed: bool
    origin: str


class FakeCheckpoint:
    """Quantizes every linear/expert module except lm_head, like an fp8 checkpoint would."""

    format = "fake"
    source = "ckpt/config.json"
    kv_cache = None

    def __init__(self, weight, activation, fixed):
        self.entry = FakeEntry(weight, activation, fixed, "config.json: quantization_config")

    def entry_for(self, module):
        return self.entry if module.kind in ("linear", "moe_experts") else None
