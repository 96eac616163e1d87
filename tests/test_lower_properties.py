"""Properties of lowering over generated configs and models: only diagnostics come out, every module
is planned exactly once with catalog keys and a kernel that accepts them, plans are deterministic and
survive the file round trip, and the winning rule really is the last one that matches."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantc.gpus import GPUS
from quantc.kernel_specs import KERNELS_BY_ID
from quantc.keys import ACTIVATION_KEYS, SHORTHANDS, WEIGHT_KEYS
from quantc.lower import lower
from quantc.patterns import PatternSet
from quantc.plan import plan_from_dict
from tests.builders import llama_like, make_config, moe_like

PATTERNS = ["*.q_proj", "*.self_attn", "re:model\\.layers\\.0\\..*", "*.mlp.*", "lm_head", "*.experts",
            "re:.*_proj", "model.layers.1.*", "*.down_proj", "*.mlp.gate", "*.nothing"]
KIND_VALUES = st.one_of(
    st.sampled_from(sorted(SHORTHANDS)),
    st.fixed_dictionaries({}, optional={"weight": st.sampled_from(sorted(WEIGHT_KEYS)),
                                        "activation": st.sampled_from(sorted(ACTIVATION_KEYS))}),
)
RULE = st.fixed_dictionaries({"match": st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2)},
                             optional={"linear": KIND_VALUES, "moe": KIND_VALUES, "skip": st.just(True)})


@st.composite
def cases(draw):
    model = draw(st.sampled_from(["llama", "moe"]))
    hidden = draw(st.sampled_from([128, 256, 384]))
    inv = llama_like(layers=2, hidden=hidden, inter=2 * hidden, heads_kv=hidden // 2) if model == "llama" \
        else moe_like(layers=2, experts=4, hidden=hidden, inter=hidden)
    rules = draw(st.lists(RULE, max_size=4))
    rules = [r for r in rules if any(k in r for k in ("linear", "moe", "skip"))]
    cfg = make_config(linear=draw(st.none() | KIND_VALUES), moe=draw(st.none() | KIND_VALUES), rules=rules,
                      ignore=draw(st.lists(st.sampled_from(PATTERNS), max_size=2)),
                      gpu=draw(st.sampled_from(sorted(GPUS))), tp=draw(st.sampled_from([1, 2, 4])))
    return cfg, inv


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_lowering_properties(case):
    cfg, inv = case
    result = lower(cfg, inv)
    for d in result.diagnostics:
        assert d.code.startswith("QC") and d.message and d.severity in ("error", "warning", "note")
    if result.plan is None:
        assert any(d.severity == "error" for d in result.diagnostics)
        return
    plan = result.plan
    assert [m.name for m in plan.modules] == [m.name for m in inv.modules]
    for m in plan.modules:
        assert m.weight in WEIGHT_KEYS and m.activation in ACTIVATION_KEYS
        if m.kernel is not None:
            spec = KERNELS_BY_ID[m.kernel]
            assert m.weight in spec.weight_keys and m.activation in spec.activation_keys
            assert GPUS[plan.target["gpu"]].sm >= spec.min_sm
            assert m.k % spec.k_multiple == 0 and m.n % spec.n_multiple == 0
        else:
            assert (m.weight, m.activation) == ("none", "none") or m.kind in ("embedding", "kv_cache")
    # deterministic, and the file round trip gives the same modules
    text = plan.to_json()
    assert lower(cfg, inv).plan.to_json() == text
    again = plan_from_dict(json.loads(text))
    assert sorted(again.modules) == sorted(plan.modules)
    # the weight of a plain linear comes from the last matching rule that sets it, unless ignored
    ps = PatternSet([p.text for r in cfg.rules for p in r.patterns])
    offsets, i = [], 0
    for r in cfg.rules:
        offsets.append(range(i, i + len(r.patterns)))
        i += len(r.patterns)
    ignore = PatternSet([p.text for p in cfg.ignore])
    for m in inv.modules:
        if m.kind != "linear" or any(ignore.matches(j, m.name) for j in range(len(cfg.ignore))):
            continue
        setters = [r for r, offs in zip(cfg.rules, offsets)
                   if any(ps.matches(j, m.name) for j in offs)
                   and (r.skip or (r.kinds.get("linear") is not None and r.kinds["linear"].weight is not None))]
        if setters:
            last = setters[-1]
            want = "none" if last.skip else last.kinds["linear"].weight.value
            assert plan.module(m.name).weight == want, (m.name, last.label)
