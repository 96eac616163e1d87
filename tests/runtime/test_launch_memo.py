"""launch_memo: an eager QuantLinear's first call of an input signature records its launches, later calls
replay them without the launchers' Python; the replay gives the launchers' bits, re-records when a switch
it read, a module buffer or the signature changes, and is refused where a tensor came from outside the
recorder's sight. The interpreter replays through Triton's launch; the compiled-kernel branch is checked
with stand-ins for the JIT function (as test_fast_launch)."""

import pytest
import torch

from quantc.plan import KernelConfig
from quantc.runtime import launch_memo
from quantc.runtime import modules
from quantc.runtime import quantize as Q
from quantc.runtime.kernels import common
from quantc.runtime.modules import QuantLinear
from quantc.runtime.registry import LAUNCHERS

CFG = ((2**31 - 1, KernelConfig(16, 32, 32, 1, 4, 2, 1)),)
FORMATS = [("fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token", 64),
           ("fp8_scaled_gemm", "fp8_per_tensor", "fp8_dynamic_per_tensor", 64),
           ("int8_gemm", "int8_per_channel", "int8_dynamic_per_token", 64),
           ("fp8_block_gemm", "fp8_block_128x128", "fp8_dynamic_group_128", 128),
           ("fp8_weight_only_gemm", "fp8_per_channel", "none", 64),
           ("int4_weight_only_gemm", "int4_group_128", "none", 128)]


def layer(kernel="fp8_scaled_gemm", wk="fp8_per_channel", ak="fp8_dynamic_per_token", k=64, n=32, bias=True):
    torch.manual_seed(0)
    bufs = LAUNCHERS[kernel].prepare(Q.quantize_weight(torch.randn(n, k) * 0.05, wk), wk, n, k)
    return QuantLinear("m", kernel, wk, ak, n, k, dict(bufs), torch.randn(n) if bias else None, CFG)


@pytest.fixture
def counted(monkeypatch):
    """How many times the launchers ran (modules.run_dense: what the memo skips when it replays)."""
    calls = []
    real = modules.run_dense

    def run_dense(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(modules, "run_dense", run_dense)
    monkeypatch.delenv("QUANTC_LAUNCH_MEMO", raising=False)
    return calls


def launchers_output(mod, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("QUANTC_LAUNCH_MEMO", "0")
        return mod(x)


@pytest.mark.parametrize("kernel,wk,ak,k", FORMATS)
def test_replays_give_the_launchers_bits_without_running_them(kernel, wk, ak, k, counted, monkeypatch):
    mod = layer(kernel, wk, ak, k, bias=kernel != "int4_weight_only_gemm")  # the 4-bit launcher adds bias by torch
    x = torch.randn(2, 3, k, dtype=torch.bfloat16)  # (batch, tokens, hidden): 6 rows
    first = mod(x)
    replays = [mod(x), mod(torch.randn_like(x))]
    assert counted == [6]
    rec = mod._memo[(6, True, x.device, None)]
    assert rec.program is not None and sum(a[0] == "launch" for a in rec.program) == (1 if ak == "none" else 2)
    assert torch.equal(first, launchers_output(mod, x, monkeypatch)) and torch.equal(replays[0], first)
    assert replays[0].shape == (2, 3, 32) and replays[0].data_ptr() != first.data_ptr()  # a fresh output
    other = torch.randn_like(x)
    assert torch.equal(mod(other), launchers_output(mod, other, monkeypatch))


def test_each_row_count_and_alignment_is_its_own_recording(counted, monkeypatch):
    mod = layer()
    buf = torch.randn(4 * 64 + 1, dtype=torch.bfloat16)
    aligned, misaligned = buf[:4 * 64].view(4, 64), buf[1:].view(4, 64)  # 2 bytes off a 16-byte boundary
    inputs = (aligned, misaligned, aligned[:1], aligned, misaligned, aligned[:1])
    outs = [mod(x) for x in inputs]
    assert counted == [4, 4, 1]
    assert all(torch.equal(o, launchers_output(mod, x, monkeypatch)) for o, x in zip(outs, inputs))
    dev = aligned.device
    assert set(mod._memo) == {(4, True, dev, None), (4, False, dev, None), (1, True, dev, None)}


def test_each_stream_is_its_own_recording(counted, monkeypatch):
    """A recording holds its stream's workspaces (``common.workspace_key``), so a call on another stream
    records again rather than replaying launches that would share the first stream's counters."""
    stream = ["s1"]
    monkeypatch.setattr(modules, "stream_key", lambda device: stream[0])
    mod = layer()
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    first = mod(x)
    mod(x)
    stream[0] = "s2"
    on_s2 = mod(x)
    assert counted == [3, 3]  # recorded once per stream, replayed once on s1
    assert set(mod._memo) == {(3, True, x.device, "s1"), (3, True, x.device, "s2")}
    assert torch.equal(first, on_s2)


def test_a_switch_the_call_read_invalidates_its_recording(counted, monkeypatch):
    mod = layer()
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    want = mod(x)
    names = mod._memo[(5, True, x.device, None)].switch_names
    assert "QUANTC_FAST_LAUNCH" in names and "TRITON_INTERPRET" in names  # what the launchers consulted
    monkeypatch.setenv("QUANTC_FAST_LAUNCH", "0")
    assert torch.equal(mod(x), want) and counted == [5, 5]  # re-recorded under the new value
    mod(x)
    monkeypatch.delenv("QUANTC_FAST_LAUNCH")
    mod(x)
    assert counted == [5, 5, 5]


def test_switched_off_every_call_runs_the_launchers(counted, monkeypatch):
    monkeypatch.setenv("QUANTC_LAUNCH_MEMO", "0")
    mod = layer()
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    for _ in range(3):
        mod(x)
    assert counted == [3, 3, 3] and mod._memo == {}


def test_a_replaced_buffer_or_a_moved_module_records_again(counted):
    mod = layer()
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    before = mod(x)
    mod._buffers["weight_scale"] = mod.weight_scale * 2  # a new tensor object: the recording held the old one
    after = mod(x)
    assert counted == [3, 3] and torch.allclose(after.float(), before.float() * 2 - mod.bias.float(), atol=0.05)
    mod.to("cpu")  # nn.Module._apply: recordings dropped (they would keep the old buffers alive)
    assert mod._memo == {}
    launch_memo.clear()
    mod(x)
    mod(x)
    assert counted == [3, 3, 3]


def test_clear_forgets_every_recording(counted):
    mod = layer()
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    mod(x)
    mod(x)
    launch_memo.clear()
    mod(x)
    mod(x)
    assert counted == [3, 3]


def test_a_tensor_from_outside_the_recorder_keeps_the_launchers(counted):
    # a launcher whose output comes from a torch op the recorder does not see (bf16_matmul: F.linear)
    mod = QuantLinear("b", "bf16_matmul", "none", "none", 32, 64, {"weight": torch.randn(32, 64).bfloat16()}, None,
                      None)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    outs = [mod(x) for _ in range(3)]
    assert counted == [3, 3, 3] and mod._memo[(3, True, x.device, None)].program is None
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_torch_ops_through_common_torch_op_are_replayed(counted, monkeypatch):
    # the 4-bit launcher adds its bias with torch.add through common.torch_op: recorded, replayed
    mod = layer("int4_weight_only_gemm", "int4_group_128", "none", 128, bias=True)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    first = mod(x)
    replays = [mod(x) for _ in range(2)]
    prog = mod._memo[(3, True, x.device, None)].program
    assert counted == [3] and [a[0] for a in prog if a[0] in ("launch", "op")] == ["launch", "op"]
    assert all(torch.equal(r, first) for r in replays) and torch.equal(first, launchers_output(mod, x, monkeypatch))
    # the dequantize-then-cuBLAS path (forced on here): a dequant launch, then torch.matmul, then the bias add
    monkeypatch.setenv("QUANTC_DEQUANT_MIN_M", "0")
    big = torch.randn(20, 128, dtype=torch.bfloat16)
    first = mod(big)
    again = mod(big)
    prog = mod._memo[(20, True, x.device, None)].program
    assert [a[0] for a in prog if a[0] in ("launch", "op")] == ["launch", "op", "op"]
    assert counted == [3, 3, 20] and torch.equal(again, first)  # (the second 3: the launchers' run above) and torch.equal(first, launchers_output(mod, big, monkeypatch))


def test_a_torch_op_that_returns_a_known_tensor_is_refused():
    def launcher(x):
        return common.torch_op(torch.Tensor.view, x, -1)  # a view of the input: no new tensor

    memo = {}
    launch_memo.run(memo, "k", [], launcher, torch.zeros(2, 2))
    assert memo["k"].program is None


def test_the_recorder_names_what_it_did_not_see():
    x = torch.randn(4, 8)
    rec = launch_memo._Recorder(x)
    rec.add_slot(x)
    assert rec.resolve(x) == 0 and rec.resolve(x[1:]) == 1  # a view of the input: replayed as a view
    assert rec.program == [("view", 0, 8, (3, 8), (8, 1))]
    buf = torch.zeros(4)
    rec.persist(buf)
    assert rec.resolve(buf[1:]) is None  # a workspace: passed as it is
    with pytest.raises(launch_memo._Unreplayable, match=r"a \(2, 2\) torch.float32 tensor the recorder did not see"):
        rec.resolve(torch.zeros(2, 2))
    with pytest.raises(launch_memo._Unreplayable):
        rec.resolve(x.view(torch.int32))  # another dtype over the input's bytes


def test_at_most_max_signatures_recordings_a_module(counted, monkeypatch):
    monkeypatch.setattr(launch_memo, "MAX_SIGNATURES", 2)
    mod = layer()
    for m in (1, 2, 3, 3):
        mod(torch.randn(m, 64, dtype=torch.bfloat16))
    assert counted == [1, 2, 3] and [key[0] for key in mod._memo] == [2, 3]


# --- the compiled-kernel branch (what a GPU runs), with stand-ins for the JIT function --------------------
class FakeCompiled:
    function = "fn"
    packed_metadata = "meta"

    def __init__(self, log):
        self.log = log

    def run(self, *a):
        self.log.append(a)


class FakeJit:
    arg_names = ["x", "out", "w", "n", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        return lambda *args, **kw: FakeCompiled(self.log)


def test_replay_calls_the_compiled_kernel_on_fresh_tensors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(common, "current_stream", lambda device: 77)
    monkeypatch.setattr(common, "_COMPILED", {})
    kernel, weight = FakeJit(), torch.zeros(3)

    def launcher(x):
        out = common.empty((x.shape[0], 2), torch.float32, x.device)
        common.launch(kernel, (4,), (x.view(-1), out, weight, x.shape[0]), {"BLOCK": 16}, 4)  # compiles
        common.launch(kernel, (4,), (x.view(-1), out[2:], weight, x.shape[0]), {"BLOCK": 16}, 4)  # direct call
        return out.t()

    memo, x = {}, torch.zeros(5, 2)
    recorded = launch_memo.run(memo, "k", [weight], launcher, x)
    assert len(kernel.log) == 1  # the second launch of the recording; the first went through "Triton"
    x2 = torch.ones(5, 2)
    replayed = launch_memo.run(memo, "k", [weight], launcher, x2)
    assert replayed.shape == (2, 5) and replayed.data_ptr() != recorded.data_ptr()
    runs = kernel.log[1:]
    assert len(runs) == 2 and all(r[:9] == (4, 1, 1, 77, "fn", "meta", None, None, None) for r in runs)
    flat, out, w, n, block = runs[0][9:]
    assert flat.data_ptr() == x2.data_ptr() and flat.shape == (10,) and w is weight and (n, block) == (5, 16)
    assert out.data_ptr() == replayed.data_ptr() and runs[1][10].data_ptr() == out.data_ptr() + 16  # out[2:]


def test_a_memoized_call_inside_a_recording_runs_its_launchers():
    inner_calls = []

    def inner(x):
        inner_calls.append(1)
        return common.empty((1,), torch.float32, x.device)

    def outer(x):
        assert launch_memo.recording()
        return launch_memo.run({}, "inner", [], inner, x)

    launch_memo.run({}, "outer", [], outer, torch.zeros(2))
    assert inner_calls == [1] and not launch_memo.recording()


def test_the_replayed_launchers_write_tensors_only_through_kernels():
    """What a recording cannot see: a torch op that writes into a tensor in place (``out.add_(bias)``,
    ``torch.mul(a, b, out=c)``) would be skipped by the replay and leave a wrong result, so the launchers the
    memo records use none (a torch op that makes a new tensor is safe: the recorder refuses the call)."""
    import re
    from pathlib import Path

    import quantc.runtime as rt

    root = Path(rt.__file__).parent
    files = [root / "registry.py", root / "modules.py"] + [root / "kernels" / f"{m}.py" for m in (
        "common", "act_quant", "scaled_mm", "scaled_gemv", "scaled_mm_tma", "rowwise_mm_ws", "block_mm_ws",
        "wo_launch", "wo_gemm", "wo_mma4", "wo_planes", "wo_mx", "wo_dequant")]
    in_place = re.compile(r"\.(add|sub|mul|div|copy|zero|fill|clamp|masked_fill|index_copy|scatter|index_put)_\("
                          r"|torch\.\w+\([^)]*\bout=")
    hits = [f"{f.name}:{i}: {line.strip()}" for f in files for i, line in enumerate(f.read_text().splitlines(), 1)
            if in_place.search(line) and not line.lstrip().startswith("#")]
    assert hits == []


def test_a_used_module_pickles_and_copies_without_its_recordings(counted):
    import copy
    import io

    mod = layer()
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    want = mod(x)
    assert mod._memo  # a recording that holds compiled kernels, which do not pickle
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(mod)
    assert loaded._memo == {} and twin._memo == {} and mod._memo
    assert torch.equal(loaded(x), want) and torch.equal(twin(x), want)
