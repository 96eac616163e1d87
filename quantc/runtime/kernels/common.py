"""Rounding helpers shared by the Triton kernels (fp32 in, fp32 out, exact), and the host-side grid
arithmetic of their launchers.

Casts are not trusted to round under the interpreter: its float32 -> float8e4nv cast loses the carry
when rounding crosses a power of two (127.8 -> 64), and casts from types wider than fp32 may round
twice. So values are rounded to the target grid in fp32 first, after which every cast is exact. On the
GPU (``HW`` = True, ``hw_cast``) the fp32 -> e4m3 cast is one ``cvt.rn.satfinite.e4m3x2.f32`` on sm_89+:
a single round to nearest even with saturation to +-448, the same value in one instruction where the
explicit rounding takes ~15 (the quantizers are ALU-bound at large M).
"""

import os
import threading

import torch
import triton
import triton.language as tl

_TMA_ALLOCATOR_SET = False


def ensure_tma_allocator() -> None:
    """Device-side tensor descriptors need a global scratch allocator for their 128-byte records
    (Triton calls it per launch); the caching allocator serves it, also under CUDA-graph capture."""
    global _TMA_ALLOCATOR_SET
    if not _TMA_ALLOCATOR_SET:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"
                                                                     if torch.cuda.is_available() else "cpu"))
        _TMA_ALLOCATOR_SET = True


# Host-side grid arithmetic. triton.cdiv / triton.next_power_of_2 are constexpr functions whose Python
# call unwraps every argument (~4 us each on the host): a launch used to spend ~40 us in nine of them.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length() if x > 0 else 0


_ENV_KEYS: dict = {}

# ``launch_memo``'s recorder while it records a call on this thread (``rec``; unset otherwise): the
# switch reads, allocations and launches below report to it
MEMO_STATE = threading.local()


def env(name: str, default: str | None = None) -> str | None:
    """``os.environ.get(name, default)`` at a fifth of its host time where the variable is unset (~0.3
    against ~1.9 us: Mapping.get raises and catches a KeyError). The launchers read their switches at
    every call (benchmarks and tests flip them in one process), ~9 reads an eager linear. Reads
    os.environ's own store, so it sees every change made through os.environ (monkeypatch included)."""
    store = getattr(os.environ, "_data", None)
    encode = getattr(os.environ, "encodekey", None)
    if store is None or encode is None:  # not CPython's os._Environ
        value = os.environ.get(name)
    else:
        key = _ENV_KEYS.get(name)
        if key is None:
            key = _ENV_KEYS[name] = encode(name)
        value = store.get(key)
        if value is not None:
            value = os.environ.decodevalue(value)
    rec = getattr(MEMO_STATE, "rec", None)
    if rec is not None:
        rec.switch(name, value)
    return default if value is None else value


def env_raw(names: tuple) -> tuple:
    """The raw values of several switches (None where unset) in one pass, without reporting the reads:
    ``launch_memo`` checks its recordings' switches with it at every replay."""
    store = getattr(os.environ, "_data", None)
    encode = getattr(os.environ, "encodekey", None)
    if store is None or encode is None:
        return tuple(os.environ.get(n) for n in names)
    keys = _ENV_KEYS_OF.get(names)
    if keys is None:
        keys = _ENV_KEYS_OF[names] = tuple(encode(n) for n in names)
    return tuple(map(store.get, keys))


_ENV_KEYS_OF: dict = {}


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for a launcher's per-call tensors (outputs, quantized activations, split-K
    workspaces): ``launch_memo`` re-allocates what it saw allocated here when it replays a call."""
    t = torch.empty(shape, dtype=dtype, device=device)
    rec = getattr(MEMO_STATE, "rec", None)
    if rec is not None:
        rec.alloc(t)
    return t


def torch_op(fn, *args) -> torch.Tensor:
    """``fn(*args)``, a torch op that makes a new tensor a launcher returns or launches on (a bias add,
    cuBLAS after a dequantization): ``launch_memo`` records the call and replays it."""
    out = fn(*args)
    rec = getattr(MEMO_STATE, "rec", None)
    if rec is not None:
        rec.op(fn, args, out)
    return out


def persistent(t: torch.Tensor) -> torch.Tensor:
    """A long-lived workspace a launch reads (counters, partial buffers): ``launch_memo`` keeps it as it is."""
    rec = getattr(MEMO_STATE, "rec", None)
    if rec is not None:
        rec.persist(t)
    return t


def interpreted() -> bool:
    """Whether kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1), read at each call."""
    return env("TRITON_INTERPRET") == "1"


def _gpu_path(device: torch.device, switch: str) -> bool:
    """Whether kernels on ``device`` are compiled for a GPU (not the interpreter) with the environment
    variable ``switch`` not set to 0 (benchmarks compare both paths)."""
    return device.type == "cuda" and not interpreted() and env(switch, "1") != "0"


def hw_cast(device: torch.device) -> bool:
    """Whether kernels on ``device`` take the hardware e4m3 cast (``to_e4m3``): compiled for a GPU, not
    the interpreter; QUANTC_HW_CAST=0 keeps the explicit rounding there too."""
    return _gpu_path(device, "QUANTC_HW_CAST")


# --- launching ---------------------------------------------------------------------------------------
# ``kernel[grid](...)`` costs 30-70 us of Python a call on the H100 image (triton 3.6:
# bench/results/host_overhead_h100.json): binding ~35 arguments, building the specialization key,
# hooks. Eager decode and prefill launch two or three kernels a linear, so that host time exceeds the
# GPU's. ``launch`` calls the compiled kernel directly once it has been compiled for the same
# specialization: Triton specializes a launch on each tensor's dtype and 16-byte alignment and each
# int's width, divisibility by 16 and equality to 1, which the cache key here records (a finer key
# than Triton's own is safe: a miss takes Triton's path, which compiles or reuses). The interpreter and
# QUANTC_FAST_LAUNCH=0 always take Triton's path.
_COMPILED: dict = {}


def fast_launch_on() -> bool:
    return env("QUANTC_FAST_LAUNCH", "1") != "0" and not interpreted()


def _no_key(v):
    raise TypeError(f"no fast-launch key for a {type(v).__name__} argument")


_INT32 = (-(2**31), 2**31)


def _args_key(args: tuple) -> tuple:
    """Each argument's part of the specialization key: an int's equality to 1, divisibility by 16 and
    32-bit range as bits of 8..15 (never equal to a bool, which keys as itself, as does None), a tensor's
    dtype and 16-byte alignment, a float its type. One list comprehension, ints tested first (most
    arguments are sizes and strides): ~5 us for a GEMM's 21 arguments on the CI machine, 8 with a tuple
    an int and the tensor test first, 15 with a function call an argument."""
    lo, hi = _INT32
    return tuple([8 | (a == 1) | (not a & 15) << 1 | (lo <= a < hi) << 2 if type(a) is int
                  else (a.dtype, not a.data_ptr() & 15) if isinstance(a, torch.Tensor)
                  else a if a is None or type(a) is bool
                  else float if type(a) is float else _no_key(a) for a in args])


def launch_key(kernel, device: torch.device, args: tuple, consts: dict, num_warps: int, num_stages: int) -> tuple:
    """The fast launch's cache key. id(kernel): kernels are module globals that live as long as the
    process; hashing the JIT function itself goes through a property and a lock (~0.5 us)."""
    return (id(kernel), device, _args_key(args), tuple(consts.items()), num_warps, num_stages)


def launch(kernel, grid: tuple, args: tuple, consts: dict, num_warps: int, num_stages: int = 3) -> None:
    """``kernel[grid](*args, **consts, num_warps=..., num_stages=...)``: the runtime arguments ``args``
    in the kernel's parameter order, then every constexpr by name. The first launch of a specialization
    goes through Triton (compiling it if needed); later ones call the compiled kernel directly."""
    rec = getattr(MEMO_STATE, "rec", None)
    if not fast_launch_on():
        kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)
        if rec is not None:
            rec.launch(kernel, grid, args, dict(consts, num_warps=num_warps, num_stages=num_stages), None, ())
        return
    device = args[0].device  # every tensor of a launch is on it
    key = launch_key(kernel, device, args, consts, num_warps, num_stages)
    hit = _COMPILED.get(key)
    if hit is None:
        # the launcher takes every parameter in order, constexprs included (it skips them)
        const_vals = tuple(consts[n] for n in kernel.arg_names[len(args):])
        compiled = kernel[grid](*args, **consts, num_warps=num_warps, num_stages=num_stages)
        _COMPILED[key] = hit = (compiled, const_vals)
        if rec is not None:
            rec.launch(kernel, grid, args, {}, compiled, const_vals)
        return
    compiled, const_vals = hit
    if rec is not None:
        rec.launch(kernel, grid, args, {}, compiled, const_vals)
    g = tuple(grid) + (1,) * (3 - len(grid))
    compiled.run(g[0], g[1], g[2], current_stream(device), compiled.function, compiled.packed_metadata,
                 None, None, None, *args, *const_vals)


_CC_MAJORS: dict = {}  # device -> compute-capability major: one query per device
_SM_COUNTS: dict = {}  # device -> SM count: one driver query per device


def sm_count(device: torch.device) -> int:
    """The GPU's SM count (persistent grids size themselves by it), queried once per device."""
    if device not in _SM_COUNTS:
        _SM_COUNTS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SM_COUNTS[device]


_SMEM_OPTIN: dict = {}  # device -> shared memory a block may opt in to, in bytes


def smem_optin(device: torch.device) -> int:
    """The shared memory one block may use on the GPU (tiles are fitted to it), queried once per device."""
    if device not in _SMEM_OPTIN:
        _SMEM_OPTIN[device] = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return _SMEM_OPTIN[device]


def on_sm90(device: torch.device) -> bool:
    """Whether kernels run compiled for an sm_90 (Hopper) GPU here: a CUDA device, not the interpreter."""
    return device.type == "cuda" and not interpreted() and cc_major(device) == 9


def cc_major(device: torch.device) -> int:
    """The GPU's compute-capability major version (9: Hopper), queried once per device: the launchers'
    kernel policies ask on every call."""
    if device not in _CC_MAJORS:
        _CC_MAJORS[device] = torch.cuda.get_device_capability(device)[0]
    return _CC_MAJORS[device]


def current_stream(device: torch.device) -> int:
    """The raw CUDA stream kernels launch on (the capture stream inside CUDA-graph capture); torch's raw
    getter, as Triton's driver uses, skips building a Stream object."""
    return torch._C._cuda_getCurrentRawStream(device.index if device.index is not None else torch.cuda.current_device())


def stream_key(device: torch.device):
    """The stream kernels on ``device`` launch on now (None off CUDA): part of every workspace's key and of
    ``launch_memo``'s signatures."""
    return current_stream(device) if device.type == "cuda" else None


def workspace_key(device: torch.device) -> tuple:
    """The key of a long-lived workspace (arrival counters, partial sums, amax slots): one per device and
    stream. Kernels on two streams may run at once, and with one shared set of counters one launch's
    arrivals would release another's wait or reduction: silently wrong results, where each stream's own
    set costs only its memory."""
    return (device.type, device.index, stream_key(device))


_WORKSPACES: dict = {}


def workspace(kind: str, device: torch.device, numel: int, dtype: torch.dtype, zeroed: bool,
              reserve: int = 0) -> torch.Tensor:
    """The long-lived workspace ``kind`` of this device and stream (``workspace_key``), at least ``numel``
    long (``reserve`` at its first allocation): allocated by the first call and grown, never shrunk, never
    per call; ``zeroed`` for those kept zero at rest by the launches that use them. ``launch_memo`` keeps it
    as it is (``persistent``)."""
    key = (kind,) + workspace_key(device)
    buf = _WORKSPACES.get(key)
    if buf is None or buf.numel() < numel:
        buf = _WORKSPACES[key] = (torch.zeros if zeroed else torch.empty)(max(numel, reserve), dtype=dtype,
                                                                           device=device)
    return persistent(buf)


def tile_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """The int32 arrival counters (``workspace``: per device and stream) of launches that reduce or
    wait in the same launch (split-K, the amax pass, the cooperative per-tensor quantizer), zero at rest
    (every such launch leaves them zeroed). Allocated by a stream's first call with room for 65536 tiles
    (256 KB), so a decode grid does not regrow them inside CUDA-graph capture. A capture stream met first
    inside capture allocates there (a zero fill the graph replays: harmless, they are zero at rest)."""
    return workspace("tile_counters", device, tiles, torch.int32, zeroed=True, reserve=1 << 16)


@triton.jit
def k_slice(K, pid_k, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """[t_start, t_end): a split-K program's K tiles of BLOCK_K, all of them without split-K, else slice
    ``pid_k`` of ceil(tiles / SPLIT_K) whole tiles (the last one possibly shorter)."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    if SPLIT_K == 1:
        return 0, k_tiles
    else:
        per_slice = tl.cdiv(k_tiles, SPLIT_K)
        t_start = pid_k * per_slice
        return t_start, tl.minimum(t_start + per_slice, k_tiles)


@triton.jit
def split_k_reduce(acc, ws_tile, o_mask, cnt_ptr, pid_k, mn, SPLIT_K: tl.constexpr):
    """Same-launch split-K reduction of one output tile: this slice's raw partial goes to
    ``ws_tile + pid_k * mn`` (the workspace is (SPLIT_K, M, N)); the slice that arrives last on the tile's
    counter (``cnt_ptr``, zero at rest) sums the partials in slice order, so the result does not depend
    on which slice is last, and zeroes the counter. Returns (the sum, or this slice's partial; whether
    this program finishes the tile)."""
    tl.store(ws_tile + pid_k.to(tl.int64) * mn, acc, mask=o_mask)
    tl.debug_barrier()  # every thread's partial is written before the arrival is counted
    last = tl.atomic_add(cnt_ptr, 1, sem="acq_rel") == SPLIT_K - 1
    if last:
        acc = tl.load(ws_tile, mask=o_mask, other=0, cache_modifier=".cg")
        for sl in tl.static_range(1, SPLIT_K):
            acc += tl.load(ws_tile + sl * mn, mask=o_mask, other=0, cache_modifier=".cg")
        tl.atomic_xchg(cnt_ptr, 0)  # zero at rest for the next launch (and graph replay)
    return acc, last


@triton.jit
def grouped_tile(t, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Output tile ``t`` of a (num_pid_m x num_pid_n) grid -> (pid_m, pid_n), GROUP_M row tiles taking each
    column tile in turn (L2 reuse of a column tile's operand across the group)."""
    width = GROUP_M * num_pid_n
    first_m = (t // width) * GROUP_M
    rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    return first_m + (t % width) % rows, (t % width) // rows


@triton.jit
def rint(x):
    """Round fp32 to the nearest integer, ties to even (|x| < 2**22): adding and subtracting
    1.5 * 2**23 leaves no fraction bits, so the fp32 adder rounds for us."""
    return (x + 12582912.0) - 12582912.0


@triton.jit
def pow2(e):
    """2**e as fp32 for int32 e in [-126, 127], built from the bits."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def floor_log2(x):
    """floor(log2(x)) of a positive normal fp32, read off its exponent bits."""
    return ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def round_e4m3(x):
    """Clamp fp32 to +-448 and round to the nearest e4m3 value (ties to even); returns fp32."""
    sign = x.to(tl.int32, bitcast=True) & -2147483648  # kept, so -0 and tiny negatives stay -0
    x = tl.minimum(tl.abs(x), 448.0)
    e = tl.maximum(floor_log2(x), -6)  # e4m3: 3 mantissa bits, smallest normal exponent -6
    r = rint(x * pow2(3 - e)) * pow2(e - 3)
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def round_bf16(x):
    """Round finite fp32 to the nearest bf16 value (ties to even), still fp32: the cast after it is exact
    (the interpreter's fp32 -> bf16 cast truncates; the GPU's rounds)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def to_e4m3(x, HW: tl.constexpr):
    """fp32 -> e4m3, round to nearest even, saturated to +-448: the hardware cast (HW) or the explicit
    rounding and an exact cast."""
    if HW:
        return x.to(tl.float8e4nv)
    else:
        return round_e4m3(x).to(tl.float8e4nv)


def fma_div(device: torch.device) -> bool:
    """Whether quantizers on ``device`` divide by a dynamic scale through its reciprocal and FMAs
    (``div_rn_fma``) instead of ``div.rn.f32`` (~10 instructions, a range check and a branch an
    element): compiled for a GPU, not the interpreter (whose FMA may round twice);
    QUANTC_FMA_DIV=0 keeps div.rn there too."""
    return _gpu_path(device, "QUANTC_FMA_DIV")


@triton.jit
def div_rn_fma(x, b, y):
    """RN(x / b), the correctly rounded quotient, from y = RN(1 / b) in five operations: q0 = RN(x y) is
    within 2 ulps of x / b; a Markstein step (remainder x - b q exact by FMA, q + r y rounded once)
    brings it within 1 ulp, and a second one, by Markstein's theorem (y within half an ulp of 1 / b, q
    within an ulp of x / b), rounds it correctly. Holds while no step underflows: here b >= 1e-12 / 448
    and quotients below 2**-126 are far under every 8-bit grid (they quantize to zero either way).
    tests/runtime/test_fma_division.py checks it in exact arithmetic."""
    q = x * y
    q = tl.fma(tl.fma(-q, b, x), y, q)
    return tl.fma(tl.fma(-q, b, x), y, q)


@triton.jit
def div_rn_by(x, b, y, FMA: tl.constexpr):
    """RN(x / b): ``div_rn_fma`` from y = RN(1 / b) (FMA), else div.rn."""
    if FMA:
        return div_rn_fma(x, b, y)
    else:
        return tl.math.div_rn(x, b)


@triton.jit
def quant_e4m3(x, scale, HW: tl.constexpr = False):
    """x / scale (correctly rounded), saturated and rounded to e4m3."""
    return to_e4m3(tl.math.div_rn(x, scale), HW)


@triton.jit
def to_int8(v):
    """fp32 quotients -> int8, clamped to +-127, round half to even."""
    return rint(tl.minimum(tl.maximum(v, -127.0), 127.0)).to(tl.int8)


@triton.jit
def quant_int8(x, scale):
    return to_int8(tl.math.div_rn(x, scale))


@triton.jit
def e8m0_to_f32(e):
    """Biased e8m0 code (uint8) -> 2**(e - 127) in fp32 (codes 1..254; 0 gives 0, only below any real
    scale of an e4m3 group)."""
    return (e.to(tl.int32) << 23).to(tl.float32, bitcast=True)
