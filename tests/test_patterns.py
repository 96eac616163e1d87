"""Pattern language (SPEC §3): globs cross dots, `re:` is a full match, ancestors count, and the
per-shape cache never changes an answer."""

import fnmatch
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantc.patterns import PatternSet, ancestors_and_self, compile_pattern


def naive(pattern: str, name: str) -> bool:
    cands = ancestors_and_self(name)
    if pattern.startswith("re:"):
        return any(re.fullmatch(pattern[3:], c) for c in cands)
    return any(fnmatch.fnmatchcase(c, pattern) for c in cands)


@pytest.mark.parametrize(
    "pattern, name, expected",
    [
        ("*.mlp.gate", "model.layers.3.mlp.gate", True),
        ("*.mlp.gate", "model.layers.3.mlp.gate_proj", False),  # whole components only
        ("model.visual", "model.visual.blocks.0.attn.qkv", True),  # ancestor match
        ("lm_head", "lm_head", True),
        ("lm_head", "model.lm_head", False),  # globs are anchored at both ends
        ("*lm_head", "model.lm_head", True),
        ("*.experts", "model.layers.1.mlp.experts.7.down_proj", True),
        ("re:model\\.layers\\.(0|1)\\..*", "model.layers.1.self_attn.q_proj", True),
        ("re:model\\.layers\\.(0|1)\\..*", "model.layers.10.self_attn.q_proj", False),
        ("re:.*q_proj", "model.layers.0.self_attn.q_proj", True),
        ("re:q_proj", "model.layers.0.self_attn.q_proj", False),  # full match, not search
        ("model.layers.1?.*", "model.layers.12.mlp.down_proj", True),
        ("model.layers.1?.*", "model.layers.2.mlp.down_proj", False),
        ("model.layers.[0-2].*", "model.layers.2.mlp.down_proj", True),
        ("model.layers.[0-2].*", "model.layers.20.mlp.down_proj", False),
    ],
)
def test_pattern_semantics(pattern, name, expected):
    ps = PatternSet([pattern])
    assert ps.matches(0, name) is expected
    assert naive(pattern, name) is expected


def test_shape_safety_classification():
    assert compile_pattern("*.self_attn.q_proj").shape_safe
    assert not compile_pattern("model.layers.1.*").shape_safe
    assert not compile_pattern("layers.?.mlp").shape_safe
    assert compile_pattern("re:.*\\.mlp\\.experts.*").shape_safe
    assert not compile_pattern("re:model\\.layers\\.\\d\\..*").shape_safe
    assert not compile_pattern("re:model\\.layers\\.(0|1)\\..*").shape_safe
    assert not compile_pattern("re:.+x.+").shape_safe


def test_bad_regex_raises_re_error():
    with pytest.raises(re.error):
        compile_pattern("re:model\\.layers\\.(0|1")


_SEGMENTS = ["model", "layers", "0", "1", "12", "7", "mlp", "experts", "gate_proj", "q_proj", "self_attn", "lm_head", "w1"]
_PATTERNS = [
    "*", "*.mlp.*", "*.experts", "model.layers.1.*", "model.layers.1?.*", "*.[0-1].*", "lm_head", "*q_proj",
    "re:.*\\.experts\\..*", "re:model\\.layers\\.(0|1)\\..*", "re:.*\\.\\d\\..*", "re:(model|x)\\.layers.*",
    "re:.*_proj", "re:.*w1", "*.w*", "re:[a-z.]*", "re:.*1.*",
    # literal-prefix pruning must never change an answer
    "re:model\\.layers\\.1\\..*", "re:mo\\(|lm_head", "re:model[(]|lm_head", "re:model[|]x|lm_head",
    "re:mlp.*|model\\.layers\\.0.*", "re:model\\.layers\\.7?.*", "re:(model|lm)_?.*", "model.layers.1?",
    # a trailing `.*` / `*` lets the name alone decide (its ancestors are not tried)
    "re:lm_head|model\\.layers\\.1.*", "re:(lm|model)\\.l.*", "re:model\\.*", "model.*.mlp*", "re:.*\\.1\\..*",
]


@pytest.mark.parametrize("pattern, prefix", [
    ("re:model\\.layers\\.5\\..*", "model.layers.5."), ("re:a|b", ""), ("re:a\\(|b", ""), ("re:ab[(]|c", ""),
    ("re:abc*", "ab"), ("model.layers.1?.*", "model.layers.1"), ("*.q", ""), ("re:ab{2}", "a"),
])
def test_literal_prefix(pattern, prefix):
    from quantc.patterns import literal_prefix

    assert literal_prefix(pattern) == prefix


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=6).map(".".join), min_size=1, max_size=30))
def test_cached_matching_equals_naive(names):
    ps = PatternSet(_PATTERNS)
    for name in names:
        got = [ps.matches(i, name) for i in range(len(_PATTERNS))]
        want = [naive(p, name) for p in _PATTERNS]
        assert got == want, name
