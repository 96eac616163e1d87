"""A per-module memo of an eager linear's launches, replayed without the launchers' Python.

An eager ``QuantLinear`` call runs ~60 us of host Python on the CI machine (76-99 us on the H100's host)
before its two launches: routing rules, constexpr dicts, specialization keys, switch reads. For a given
module and input signature (rows, alignment, device, stream) and the same switch values that work is the same
every call; only the input and the freshly allocated tensors change. So the first call of a signature
runs the launchers under a recorder, and later calls replay the recording: allocate the same fresh
tensors, substitute them into each recorded launch's arguments and call the compiled kernels.

What the recorder sees:

- launches, through ``common.launch`` and the Gluon launchers' ``_launch``, and torch ops that make a new
  tensor, through ``common.torch_op`` (the 4-bit launcher's bias add, cuBLAS after a dequantization);
- allocations, through ``common.empty``, and the runtime's long-lived workspaces (tile counters, the
  amax pass's buffer) through ``common.persistent``;
- switch reads, through ``common.env``: a recording is replayed only while every switch it read holds
  the same value.

A recording is kept only where every tensor a launch reads or the call returns is the input, a module
buffer, a recorded allocation or workspace, or a view of one of them: any other tensor (made by a torch op
the recorder does not see, e.g. ``F.linear``'s output or a ``.contiguous()`` copy) marks the signature
unreplayable, and it keeps running the launchers. Tensor descriptors (Gluon) are rebuilt around the new
base tensor. Under the interpreter, and with ``QUANTC_FAST_LAUNCH=0``, a replayed launch goes through
Triton's ``kernel[grid](...)`` with the recorded arguments (the recording logic is the same, so the CPU
tests cover it); on a GPU it calls the compiled kernel as ``common.launch``'s fast path does.

What it cannot see is a torch op writing into a tensor in place (``out.add_(bias)``, ``out=``): the replay
would skip it, so the launchers it records use none (a test scans them). ``QUANTC_LAUNCH_MEMO=0`` turns the
memo off; ``clear()`` forgets every recording (tests that patch a launcher's module constants call it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .kernels import common

MAX_SIGNATURES = 64  # recordings kept per module (oldest dropped first): decode batch sizes, fixed prefills

_GENERATION = [0]


def clear() -> None:
    """Forget every module's recordings (they are checked against this generation)."""
    _GENERATION[0] += 1


_MEMO_SWITCH = ("QUANTC_LAUNCH_MEMO",)


def enabled() -> bool:
    return common.env_raw(_MEMO_SWITCH)[0] not in (b"0", "0")


class _Unreplayable(Exception):
    pass


@dataclass
class _Step:
    kernel: object
    grid: tuple
    template: list  # the launch's runtime arguments, fresh tensors left as placeholders
    subs: tuple  # (position, slot) of each fresh tensor argument
    desc_subs: tuple  # (position, slot, descriptor) of each descriptor over a fresh tensor
    call_kwargs: dict  # Triton's path: constexprs and launch options
    compiled: object  # the fast path: the compiled kernel and its constexpr values
    const_vals: tuple


@dataclass
class Recording:
    """One signature's work. ``program`` None: the call is not replayable (run the launchers)."""
    generation: int
    buffers: tuple  # the module tensors the recording captured (checked by identity at replay)
    switch_names: tuple  # every switch the call read
    switch_raw: tuple  # and its raw value (``common.env_raw``)
    # in the call's order: ("alloc", shape, dtype, device) and ("view", slot, offset from that slot's own,
    # size, stride) make the next slot (slot 0 is the input), ("op", fn, template, subs) calls a torch op
    # whose result is the next slot, ("launch", _Step) launches a kernel
    program: tuple | None = None
    out_slot: int = 0
    device: object = None


@dataclass
class _Recorder:
    x: torch.Tensor
    known: dict = field(default_factory=dict)  # id(tensor) -> slot, for x and the fresh allocations
    slot_tensors: list = field(default_factory=list)  # slot -> its tensor (0 is x)
    storages: dict = field(default_factory=dict)  # storage pointer -> slot, fresh tensors and x
    persistent: set = field(default_factory=set)  # storage pointers of buffers and workspaces
    program: list = field(default_factory=list)  # Recording.program
    switches: dict = field(default_factory=dict)
    failed: str | None = None

    def add_slot(self, t: torch.Tensor) -> int:
        slot = len(self.slot_tensors)
        self.slot_tensors.append(t)
        self.known[id(t)] = slot
        if t.numel():
            self.storages[t.untyped_storage().data_ptr()] = slot
        return slot

    def resolve(self, t: torch.Tensor):
        """A tensor argument -> its slot where it changes per call, None where it is the module's or a
        workspace's (passed as it is), else raises _Unreplayable."""
        slot = self.known.get(id(t))
        if slot is not None:
            return slot
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr in self.persistent:
            return None
        base = self.storages.get(ptr)
        if base is None or t.dtype != self.slot_tensors[base].dtype:
            raise _Unreplayable(f"a {tuple(t.shape)} {t.dtype} tensor the recorder did not see made")
        offset = t.storage_offset() - self.slot_tensors[base].storage_offset()
        self.program.append(("view", base, offset, tuple(t.shape), t.stride()))
        slot = len(self.slot_tensors)
        self.slot_tensors.append(t)
        self.known[id(t)] = slot
        return slot

    def switch(self, name: str, raw) -> None:
        self.switches.setdefault(name, raw)

    def alloc(self, t: torch.Tensor) -> None:
        self.program.append(("alloc", tuple(t.shape), t.dtype, t.device))
        self.add_slot(t)

    def persist(self, t: torch.Tensor) -> None:
        if t.numel():
            self.persistent.add(t.untyped_storage().data_ptr())

    def _arguments(self, args):
        """(template, subs, desc_subs) of a launch's or a torch op's arguments, or None where one is a tensor
        the recorder did not see made (the recording is then refused)."""
        if self.failed:
            return None
        template, subs, desc_subs = list(args), [], []
        try:
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    slot = self.resolve(a)
                    if slot is not None:
                        template[i] = None
                        subs.append((i, slot))
                elif isinstance(getattr(a, "base", None), torch.Tensor) and hasattr(a, "block_shape"):
                    slot = self.resolve(a.base)  # a tensor descriptor: rebuilt around the new base
                    if slot is not None:
                        template[i] = None
                        desc_subs.append((i, slot, a))
        except _Unreplayable as exc:
            self.failed = str(exc)
            return None
        return template, tuple(subs), tuple(desc_subs)

    def launch(self, kernel, grid, args, call_kwargs: dict, compiled, const_vals) -> None:
        resolved = self._arguments(args)
        if resolved is None:
            return
        g = tuple(grid) + (1,) * (3 - len(grid))
        self.program.append(("launch", _Step(kernel, tuple(grid) if compiled is None else g, *resolved, call_kwargs,
                                             compiled, tuple(const_vals))))

    def op(self, fn, args, out: torch.Tensor) -> None:
        resolved = self._arguments(args)
        if resolved is None:
            return
        template, subs, _ = resolved
        if id(out) in self.known or (out.numel() and out.untyped_storage().data_ptr() in self.storages):
            self.failed = "a torch op returned a tensor the call already had (a view, or in place)"
            return
        self.program.append(("op", fn, template, subs))
        self.add_slot(out)


def recording() -> bool:
    return getattr(common.MEMO_STATE, "rec", None) is not None


def run(memo: dict, key, buffers: list, fn, x: torch.Tensor):
    """``fn(x)`` (the launchers, with the module's ``buffers``) through the memo ``memo`` (the module's dict)
    under ``key`` (the input's signature): replayed where a recording holds, else run and recorded."""
    rec = memo.get(key)
    if rec is not None:
        if (rec.generation == _GENERATION[0] and all(a is b for a, b in zip(rec.buffers, buffers))
                and common.env_raw(rec.switch_names) == rec.switch_raw):
            if rec.program is None:
                return fn(x)
            return _replay(rec, x)
        del memo[key]
    if recording():  # a memoized call inside another's recording: no nesting
        return fn(x)
    recorder = _Recorder(x)
    recorder.add_slot(x)
    for t in buffers:
        if t is not None and t.numel():
            recorder.persistent.add(t.untyped_storage().data_ptr())
    common.MEMO_STATE.rec = recorder
    try:
        out = fn(x)
    finally:
        common.MEMO_STATE.rec = None
    names = tuple(recorder.switches)
    result = Recording(_GENERATION[0], tuple(buffers), names, common.env_raw(names))
    if recorder.failed is None and isinstance(out, torch.Tensor):
        try:
            out_slot = recorder.resolve(out)
        except _Unreplayable as exc:
            recorder.failed = str(exc)
        else:
            # a call that launched nothing yet returns a fresh tensor wrote it by means the recorder did not see
            if out_slot is not None and out_slot != 0 and any(p[0] in ("launch", "op") for p in recorder.program):
                result.program, result.out_slot, result.device = tuple(recorder.program), out_slot, x.device
    if len(memo) >= MAX_SIGNATURES:
        del memo[next(iter(memo))]
    memo[key] = result
    return out


def _replay(rec: Recording, x: torch.Tensor) -> torch.Tensor:
    slots = [x]
    stream = None
    for action in rec.program:
        kind = action[0]
        if kind == "alloc":
            slots.append(torch.empty(action[1], dtype=action[2], device=action[3]))
        elif kind == "view":
            base = slots[action[1]]
            slots.append(base.as_strided(action[3], action[4], base.storage_offset() + action[2]))
        elif kind == "op":
            args = list(action[2])
            for pos, slot in action[3]:
                args[pos] = slots[slot]
            slots.append(action[1](*args))
        else:
            step = action[1]
            args = step.template
            if step.subs or step.desc_subs:
                args = list(args)
                for pos, slot in step.subs:
                    args[pos] = slots[slot]
                for pos, slot, desc in step.desc_subs:
                    d = copy.copy(desc)
                    d.base = slots[slot]
                    args[pos] = d
            if step.compiled is None:
                step.kernel[step.grid](*args, **step.call_kwargs)
                continue
            if stream is None:
                stream = common.current_stream(rec.device)
            c = step.compiled
            g = step.grid
            c.run(g[0], g[1], g[2], stream, c.function, c.packed_metadata, None, None, None, *args, *step.const_vals)
    return slots[rec.out_slot]
