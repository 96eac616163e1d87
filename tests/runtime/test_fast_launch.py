"""common.launch: Triton's launch path for the first call of a specialization, the compiled kernel
called directly after it, keyed by what Triton specializes on (no GPU here: a recording stand-in for the
JIT function and its compiled kernel)."""

import pytest
import torch

from quantc.runtime.kernels import common


class FakeCompiled:
    function = "fn-handle"
    packed_metadata = ("meta",)

    def __init__(self):
        self.runs = []

    def run(self, *a):
        self.runs.append(a)


class FakeJit:
    arg_names = ["x_ptr", "n", "stride", "BLOCK", "MODE"]

    def __init__(self):
        self.launches = []
        self.compiled = []

    def __getitem__(self, grid):
        def call(*args, **kw):
            self.launches.append((grid, args, kw))
            self.compiled.append(FakeCompiled())
            return self.compiled[-1]
        return call


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("QUANTC_FAST_LAUNCH", raising=False)
    monkeypatch.setattr(common, "current_stream", lambda device: 1234)
    monkeypatch.setattr(common, "_COMPILED", {})


def test_second_launch_calls_the_compiled_kernel_with_every_parameter(fast):
    k = FakeJit()
    x = torch.zeros(64)
    consts = {"MODE": 2, "BLOCK": 32}  # any order: the launcher gets them in parameter order
    common.launch(k, (4,), (x, 64, 1), consts, num_warps=4, num_stages=2)
    assert len(k.launches) == 1 and k.launches[0][2] == {"MODE": 2, "BLOCK": 32, "num_warps": 4, "num_stages": 2}
    common.launch(k, (8, 2), (x, 64, 1), consts, num_warps=4, num_stages=2)
    assert len(k.launches) == 1  # no second trip through Triton
    assert k.compiled[0].runs == [(8, 2, 1, 1234, "fn-handle", ("meta",), None, None, None, x, 64, 1, 32, 2)]


def test_the_key_follows_what_triton_specializes(fast):
    k = FakeJit()
    buf = torch.zeros(64)
    base = (buf, 64, 2)
    common.launch(k, (1,), base, {"BLOCK": 32, "MODE": 0}, 4)
    variants = [
        (buf[1:], 64, 2),          # 4-byte offset: not 16-byte aligned
        (buf.double(), 64, 2),     # dtype
        (buf, 65, 2),              # no longer divisible by 16
        (buf, 64, 1),              # equal to 1
        (buf, 2**31, 2),           # 64-bit
        (torch.zeros(64, device="meta"), 64, 2),  # another device (the key takes the first tensor's)
    ]
    for args in variants:
        common.launch(k, (1,), args, {"BLOCK": 32, "MODE": 0}, 4)
    common.launch(k, (1,), base, {"BLOCK": 64, "MODE": 0}, 4)  # a constexpr
    common.launch(k, (1,), base, {"BLOCK": 32, "MODE": 0}, 8)  # warps
    assert len(k.launches) == 1 + len(variants) + 2
    common.launch(k, (1,), (buf, 80, 2), {"BLOCK": 32, "MODE": 0}, 4)  # same key as base: 80 % 16 == 0
    assert len(k.launches) == 1 + len(variants) + 2 and len(k.compiled[0].runs) == 1


def test_switched_off_and_under_the_interpreter_every_launch_goes_through_triton(fast, monkeypatch):
    k = FakeJit()
    x = torch.zeros(16)
    for env, val in (("QUANTC_FAST_LAUNCH", "0"), ("TRITON_INTERPRET", "1")):
        with monkeypatch.context() as m:
            m.setenv(env, val)
            for _ in range(3):
                common.launch(k, (1,), (x, 16, 2), {"BLOCK": 16, "MODE": 0}, 4)
    assert len(k.launches) == 6 and not any(c.runs for c in k.compiled)


def test_a_missing_constexpr_fails_before_anything_launches(fast):
    k = FakeJit()
    with pytest.raises(KeyError, match="MODE"):
        common.launch(k, (1,), (torch.zeros(16), 16, 2), {"BLOCK": 16}, 4)
    assert k.launches == []


def test_an_argument_without_a_key_is_refused(fast):
    with pytest.raises(TypeError, match="no fast-launch key for a list"):
        common.launch(FakeJit(), (1,), (torch.zeros(16), [1], 2), {"BLOCK": 16, "MODE": 0}, 4)


def test_an_int_never_keys_like_a_bool_or_none():
    # a position that is a bool in one call and an int in another must not share a compiled kernel
    keys = {common._args_key((v,)) for v in (True, False, None, 1, 16, 17, 2**31, 1.5)}
    assert len(keys) == 8
    assert common._args_key((0,)) == common._args_key((16,))  # what Triton tells apart, nothing more
