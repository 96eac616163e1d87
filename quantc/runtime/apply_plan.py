"""``apply(model, plan, weights=None)``: execute a compiled plan on a live torch model (SPEC §7).

Steps, all-or-nothing:
1. check the plan against the model (every planned module present with the planned shape, no linear
   layer of the model missing from the plan) and the live GPU against ``plan.target``;
2. prepare every module: quantize its weight (or take pre-quantized tensors from ``weights``) and
   build its replacement, without touching the model. MoE experts (kind ``moe_experts``) are
   prepared per ``moe_block``: one grouped module replaces the block's fused experts module or its
   ModuleList of per-expert Linears (``moe_apply``);
3. only when every module is prepared, swap them in. Any error before that leaves the model exactly as
   it was and raises ``QuantcError`` with every problem found, each naming its module.

Peak memory: the model plus the quantized copies of all swapped modules (8-bit weights add about half
of the bf16 bytes); the bf16 weights are released when the swapped-out modules are. A model on the
meta device holds no bf16 weights: ``weights`` is read lazily (safetensors ``safe_open``), one module's
tensors at a time, so the peak is the quantized modules plus the largest single module in bf16, and
the unquantized rest (embeddings, norms, lm_head) is filled tensor by tensor after the swap.

Diagnostic codes: QC701 model/plan mismatch, QC702 GPU mismatch, QC703 weights, QC704 no runtime for a
planned kernel or MoE experts layout, QC705 a module failed to prepare, QC706 kv_cache not applied (warning),
QC707 tensor-parallel rank/world.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from quantc.diagnostics import Diagnostic, QuantcError, Span

from . import quantize as Q
from .modules import QuantLinear
from .hf_moe import QuantExperts, quant_router
from .moe_apply import expert_blocks, layout, prepare_block
from .prequantized import PermutedQuantLinear, checkpoint_tensors, is_prequantized
from .registry import LAUNCHERS
from .tables import WEIGHT_ONLY_4BIT, default_buckets

_LINEAR_KINDS = ("linear", "lm_head", "router")


@dataclass(frozen=True)
class ApplyReport:
    swapped: tuple[str, ...]
    kept: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    notes: tuple[str, ...] = ()
    warnings: tuple[Diagnostic, ...] = field(default=())

    def summary(self) -> str:
        ratio = self.bytes_after / self.bytes_before if self.bytes_before else 1.0
        return (f"{len(self.swapped)} modules swapped, {len(self.kept)} kept; weights "
                f"{self.bytes_before / 2**20:.1f} MiB -> {self.bytes_after / 2**20:.1f} MiB ({ratio:.2f}x)")


def _err(code: str, message: str, module: str | None, hint: str) -> Diagnostic:
    return Diagnostic(code, "error", message, Span(module or "<model>"), hint=hint, path=module)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ---------------------------------------------------------------------------- checks


def check_gpu(plan, device: torch.device) -> tuple[list[Diagnostic], list[str]]:
    """Live GPU against ``plan.target``; on the CPU interpreter the check is skipped with a note."""
    from quantc.gpus import GPUS, gpu_from_device_name

    target = plan.target.get("gpu", "h100")
    want_sm = int(plan.target.get("sm") or GPUS.get(target, GPUS["h100"]).sm)
    if device.type != "cuda":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return [], [f"GPU check skipped: running on {device.type} under TRITON_INTERPRET=1 (plan target {target})"]
        return [_err("QC702", f"the model is on {device.type}, but the plan targets the GPU {target!r}", None,
                     "move the model to the GPU first (model.cuda()), or set TRITON_INTERPRET=1 for a CPU check")], []
    live = gpu_from_device_name(torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
    if live.sm < want_sm or live.sm // 10 != want_sm // 10:
        return [_err("QC702", f"the live GPU is {live.name} (sm_{live.sm}), the plan targets {target} (sm_{want_sm})",
                     None, f"recompile the plan with --gpu {live.name}")], []
    notes = [] if live.name == target else [f"live GPU {live.name} differs from the plan's {target}; same sm_{live.sm}"]
    return [], notes


def _linear_names(model: nn.Module) -> set[str]:
    return {name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)}


def check_model(model: nn.Module, plan, world: int = 1) -> list[Diagnostic]:
    """Every planned module present with the planned shape (the unsharded shape under tensor
    parallelism: every rank holds the full model and keeps only its shards)."""
    from .parallel import global_shape

    diags: list[Diagnostic] = []
    mods = dict(model.named_modules())
    planned = set()
    for mp in plan.modules:
        if mp.kind in ("kv_cache", "norm", "embedding"):
            continue
        planned.add(mp.name)
        if mp.kernel is None:
            continue
        mod = mods.get(mp.name)
        if mod is None and mp.kind == "moe_experts" and isinstance(getattr(mods.get(mp.name.rpartition(".")[0]),
                                                                            mp.name.rpartition(".")[2], None), torch.Tensor):
            continue  # a fused experts parameter (<experts>.gate_up_proj): checked when its block is prepared
        if mod is None:
            diags.append(_err("QC701", f"planned module {mp.name!r} is not in the model", mp.name,
                              "compile the plan against this model (quantc compile --model ...)"))
            continue
        w = getattr(mod, "weight", None)
        if mp.kind in _LINEAR_KINDS:
            if not isinstance(w, torch.Tensor) or w.dim() != 2:
                diags.append(_err("QC701", f"{mp.name!r} is a {type(mod).__name__} without a 2-D weight; the plan "
                                  f"has it as {mp.kind}", mp.name, "compile the plan against this model"))
            elif tuple(w.shape) != global_shape(mp, world):
                n, k = global_shape(mp, world)
                diags.append(_err("QC701", f"{mp.name!r} has weight shape {tuple(w.shape)}, the plan says "
                                  f"(N={n}, K={k})", mp.name,
                                  "compile the plan against this model (for tensor parallelism: this rank's shard)"))
    unplanned = sorted(_linear_names(model) - planned)
    if unplanned:
        shown = ", ".join(unplanned[:5]) + (f" and {len(unplanned) - 5} more" if len(unplanned) > 5 else "")
        diags.append(_err("QC701", f"{len(unplanned)} linear module(s) of the model are not in the plan: {shown}",
                          unplanned[0], "compile the plan against this model; nothing is skipped silently"))
    return diags


# ---------------------------------------------------------------------------- weights

_META_TARGET = {"device": None}  # where a meta-device model is filled (set by apply for its duration)


def _target_device(mod: nn.Module) -> torch.device:
    w = getattr(mod, "weight", None)
    if isinstance(w, torch.Tensor) and not w.is_meta:
        return w.device
    return _META_TARGET["device"] or torch.device("cpu")


def _meta_fills(model: nn.Module, covered: set[str], state) -> tuple[list[tuple[nn.Module, str, str, bool]], list[str]]:
    """Parameters and buffers still on the meta device outside the swapped modules: (owner, attribute,
    checkpoint name, is_parameter) for each, and the names the weights lack."""
    fills, missing = [], []
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in covered):
            continue
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is None or not t.is_meta:
                continue
            full = f"{name}.{attr}" if name else attr
            if state is None or full not in state:
                missing.append(full)
            else:
                fills.append((module, attr, full, attr in module._parameters))
    return fills, missing


def _load_weights(weights):
    """A lazy ``WeightSource`` over a state dict, a .safetensors file or a checkpoint directory."""
    from .weights import WeightSource

    if weights is None:
        return None
    if isinstance(weights, WeightSource):
        return weights
    if isinstance(weights, dict):
        return WeightSource(tensors=weights)
    try:
        return WeightSource.from_path(weights)
    except FileNotFoundError:
        raise QuantcError([_err("QC703", f"no safetensors weights at {weights}", None,
                                "pass a state dict, a .safetensors file or a checkpoint directory")]) from None


def _check_prequantized(key: str, given: dict, want: dict) -> dict[str, torch.Tensor]:
    from .prequantized import check_native

    return check_native(key, given, want)


def module_tensors(mp, mod: nn.Module, state: dict | None, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """Checkpoint-named quantized tensors of one module (this rank's shard under tensor parallelism):
    from ``state`` when it holds them pre-quantized, else the bf16 weight quantized now — only the
    shard, except for keys with a whole-tensor scale, quantized whole and then sliced."""
    from .parallel import global_shape, is_split, needs_whole_quantization, shard_tensor

    if not is_split(mp, world):
        return _module_tensors(mp, mod, state, mp.n, mp.k)
    full_n, full_k = global_shape(mp, world)
    shard_state = _shard_only_source(mp, state, full_n, full_k, rank, world)
    if shard_state is not None:  # read this rank's slices from the checkpoint, never the whole tensors
        return _module_tensors(mp, mod, shard_state, mp.n, mp.k)
    packed = _packed_shard_source(mp, state, full_n, full_k, rank)
    if packed is not None:  # AWQ / GPTQ / CT / ModelOpt: this rank's slices of the packed tensors, converted
        try:
            return _module_tensors(mp, mod, packed, mp.n, mp.k)
        except ValueError:
            pass  # a bad tensor: the whole read below reports it with the module's full shapes, as tp=1 does
    whole = _module_tensors(mp, mod, state, full_n, full_k, quantize=needs_whole_quantization(mp.weight)
                            if mp.weight != "none" else True)
    if "k_perm" in whole and mp.tp_split == "row":
        raise ValueError("act-order weights (g_idx) permute K across the row-parallel shards; apply this plan "
                         "with tensor_parallel=1, or use a checkpoint without act-order")
    k_perm = whole.pop("k_perm", None)
    if "__bf16_shard__" in whole:  # online quantization of the shard alone
        w = shard_tensor(whole.pop("__bf16_shard__"), mp, full_n, full_k, rank, world)
        out = Q.quantize_weight(w, mp.weight)
        out.update({n: t for n, t in whole.items() if n == "input_scale"})
        return out
    out = {n: shard_tensor(t, mp, full_n, full_k, rank, world) for n, t in whole.items()}
    if k_perm is not None:  # column-parallel: every rank reads the whole input, permuted the same way
        out["k_perm"] = k_perm
    return out


def _shard_only_source(mp, state, full_n: int, full_k: int, rank: int, world: int):
    """For a split module whose checkpoint tensors can be sliced as they are stored — a high-precision
    ``weight`` quantized online, or tensors already in quantc's own layout for the planned key — a
    small source holding only this rank's slices (read with ``get_slice``). None when the module must
    be read whole: keys with a whole-tensor scale, or a checkpoint format converted after reading
    (packed formats are sliced before their conversion by ``_packed_shard_source``)."""
    from .parallel import needs_whole_quantization, shard_bounds

    if state is None or mp.weight == "none" or needs_whole_quantization(mp.weight):
        return None
    names = state.names_under(mp.name) - {"bias", "input_scale"}
    online = names == {"weight"} and state.is_float(f"{mp.name}.weight")
    own_layout = names == set(Q.tensor_specs(mp.weight, full_n, full_k)) and names != {"weight"}
    if not (online or own_layout):
        return None
    from .weights import WeightSource

    part = {}
    for key in state.under_keys(mp.name):
        name = key[len(mp.name) + 1:]
        bounds = None if name in ("bias", "input_scale") else shard_bounds(state.shape(key), mp, full_n, full_k, rank, world)
        part[key] = state.read_part(key, bounds)
    return WeightSource(tensors=part)


def _packed_shard_source(mp, state, full_n: int, full_k: int, rank: int):
    """For a split module stored packed (AWQ, GPTQ, compressed-tensors pack-quantized / nvfp4 / fp8
    block, ModelOpt NVFP4): a small source holding this rank's slices of the packed tensors
    (``prequantized.packed_slices``) and the whole scalars, whose conversion equals the rank's shard of
    the whole conversion. None when the module must be read whole (another format, act-order under a
    row split, a shard edge that cuts a packed word, a group or a scale block, a wrong weight_shape)."""
    from .prequantized import G_IDX_NAMES, RIDE_ALONG, packed_slices

    if state is None or mp.weight == "none":
        return None
    key_of = {name: f"{mp.name}.{name}" for name in state.names_under(mp.name)}
    names = set(key_of) - set(RIDE_ALONG)
    if not names or names == {"weight"}:  # nothing stored packed (a weight quantized online)
        return None
    lo = rank * (mp.n if mp.tp_split == "column" else mp.k)
    hi = lo + (mp.n if mp.tp_split == "column" else mp.k)
    g_name = next((name for name in G_IDX_NAMES if name in names), None)
    g_idx = state[key_of[g_name]] if g_name and mp.tp_split == "row" else None  # K int32: small
    weight_shape = state[key_of["weight_shape"]] if "weight_shape" in names else None  # two integers
    bounds = packed_slices({name: state.shape(key_of[name]) for name in names}, g_idx, mp.weight, full_n, full_k,
                           mp.tp_split, lo, hi, weight_shape)
    if bounds is None:
        return None
    from .weights import WeightSource

    bounds.update({name: None for name in RIDE_ALONG if name in key_of})
    return WeightSource(tensors={key_of[name]: state.read_part(key_of[name], b) for name, b in bounds.items()})


def _module_tensors(mp, mod: nn.Module, state, n: int, k: int, quantize: bool = True) -> dict[str, torch.Tensor]:
    device = _target_device(mod)
    given = {name: t.to(device) for name, t in (state.under(mp.name) if state is not None else {}).items()}
    w = given.get("weight")
    if w is None and mod.weight.is_meta and not (given.keys() - {"input_scale", "bias"}):
        raise ValueError(f"the model is on the meta device and the weights hold no {mp.name}.weight")
    if mp.weight == "none":
        return {"weight": (w if w is not None else mod.weight.detach()).to(torch.bfloat16)}
    if is_prequantized(given):  # in a checkpoint format's own names: detected, converted, checked
        out = checkpoint_tensors(given, mp.weight, n, k)
    else:
        bf16 = w if w is not None else mod.weight.detach()  # a bf16 checkpoint or the model's own weight
        out = {"__bf16_shard__": bf16} if not quantize else Q.quantize_weight(bf16, mp.weight)
    if "input_scale" in given:
        out["input_scale"] = given["input_scale"]
    if "bias" in given:
        out["bias"] = given["bias"]
    if mp.activation == "fp8_static_per_tensor" and "input_scale" not in out:
        raise ValueError("fp8_static_per_tensor needs the checkpoint's input_scale, and none was given")
    return out


# ---------------------------------------------------------------------------- apply


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("quantc apply"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                    transient=True)


def _prepare(mp, mod, state, plan, rank: int = 0, world: int = 1) -> nn.Module:
    from .parallel import ShardedLinear, is_split

    tensors = module_tensors(mp, mod, state, rank, world)
    k_perm = tensors.pop("k_perm", None)
    launcher = LAUNCHERS[mp.kernel]
    entry = plan.kernels.get(mp.kernel_entry) if mp.kernel_entry else None
    if launcher.make_module is not None:
        return launcher.make_module(mp, tensors, entry)
    buffers = launcher.prepare(tensors, mp.weight, mp.n, mp.k)
    buckets = entry.buckets if entry is not None else default_buckets(mp.kernel, mp.n, mp.k)
    bias = getattr(mod, "bias", None)
    split = is_split(mp, world)
    args = (mp.name, mp.kernel, mp.weight, mp.activation, mp.n, mp.k, buffers,
            None if (bias is None or split) else bias.detach(), buckets if mp.kernel in _TABLED else ())
    if k_perm is not None and launcher.make_module is None and mp.kernel in WEIGHT_ONLY_4BIT:
        inner = PermutedQuantLinear(args, k_perm)
    elif k_perm is not None:
        raise ValueError(f"act-order weights (g_idx) need a 4-bit weight-only kernel, the plan has {mp.kernel}")
    else:
        inner = QuantLinear(*args)
    if not split:
        return inner
    return ShardedLinear(inner, mp.tp_split, rank, world, mp.k, bias)


# kernels whose launcher takes a KernelConfig (the torch-family ids choose their own): each QuantLinear
# keeps its plan table entry's buckets and picks the config for the live M
_TABLED = {"fp8_scaled_gemm", "fp8_block_gemm", "int8_gemm", "mxfp8_gemm_emulated", "fp8_weight_only_gemm",
           "int8_weight_only_gemm", "fp8_block_scaled_mm_cublas", *WEIGHT_ONLY_4BIT}


def apply(model: nn.Module, plan, weights=None, *, rank: int | None = None, world: int | None = None,
          progress: bool = True, device=None) -> ApplyReport:
    """Quantize ``model`` in place as ``plan`` says; returns an ``ApplyReport``. See the module doc.

    A model whose parameters are on the meta device is filled from ``weights`` module by module, on
    ``device`` (default: the current CUDA device, else the CPU)."""
    diags: list[Diagnostic] = []
    on_meta = any(p.is_meta for p in model.parameters())
    _META_TARGET["device"] = torch.device(device) if device is not None else (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
    try:
        return _apply(model, plan, weights, rank, world, progress, diags, on_meta)
    finally:
        _META_TARGET["device"] = None


def _apply(model, plan, weights, rank, world, progress, diags, on_meta) -> ApplyReport:
    warnings: list[Diagnostic] = []
    tp = int(plan.target.get("tensor_parallel", 1) or 1)
    world_n = world or 1
    if world_n != tp or (world_n > 1 and rank is None) or (rank is not None and not 0 <= rank < world_n):
        diags.append(_err("QC707", f"apply got rank={rank}, world={world}; the plan is for tensor_parallel={tp}",
                          None, f"pass world={tp} and this process's rank (0..{tp - 1})"))
    elif world_n > 1:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_n):
            diags.append(_err("QC707", f"tensor_parallel={tp} needs torch.distributed initialised with {tp} processes",
                              None, "call torch.distributed.init_process_group (nccl on GPUs, gloo on the CPU) first"))
    rank_n = rank or 0
    diags += check_model(model, plan, world_n)
    first = next((p for p in model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    if on_meta:
        device = _META_TARGET["device"]
        if weights is None:
            diags.append(_err("QC703", "the model is on the meta device and no weights were given", None,
                              "pass weights= (a state dict, a .safetensors file or a checkpoint directory)"))
    gpu_diags, notes = check_gpu(plan, device)
    diags += gpu_diags
    todo = []
    for mp in plan.modules:
        if mp.kind == "kv_cache" and mp.kernel is not None and mp.kernel != "kv_cache_bf16":
            warnings.append(Diagnostic("QC706", "warning", f"kv_cache of {mp.name!r} is planned as {mp.activation}; "
                                       "the runtime does not apply kv_cache settings yet", Span(mp.name),
                                       hint="the KV cache stays bf16 for now", path=mp.name))
        elif mp.kind not in ("kv_cache", "norm", "embedding") and mp.kernel is not None:
            if mp.kernel not in LAUNCHERS:
                diags.append(_err("QC704", f"no runtime launcher for kernel {mp.kernel!r} (module {mp.name!r})",
                                  mp.name, "compile with a backend this runtime provides"))
            elif mp.kind != "moe_experts":
                todo.append(mp)
    mods = dict(model.named_modules())
    blocks = expert_blocks(plan)
    for block, entries in blocks.items():
        if block not in mods:
            continue  # its experts are already reported missing (QC701)
        try:
            layout(block, mods[block], entries)
        except ValueError as exc:
            diags.append(_err("QC704", str(exc), block, "compile the plan against this model, or keep these experts "
                              "unquantized (moe: none) until the runtime supports their layout"))
    if diags:
        raise QuantcError(diags + warnings)
    try:
        state = _load_weights(weights)
    except QuantcError:
        raise
    except Exception as exc:  # unreadable file: report, never a traceback
        raise QuantcError([_err("QC703", f"cannot read weights: {exc}", None, "pass a state dict or a safetensors path")]) from None

    prepared: dict[str, nn.Module] = {}
    covered: set[str] = set()  # plan entries a prepared module stands for
    before = after = 0
    jobs = [(mp.name, mp, None) for mp in todo] + [(block, None, entries) for block, entries in blocks.items()]
    with (_progress() if progress else _NoProgress()) as bar:
        task = bar.add_task("", total=len(jobs))
        for name, mp, entries in jobs:
            bar.update(task, description=name)
            try:
                if entries is None:
                    new = _prepare(mp, mods[name], state, plan, rank_n, world_n)
                else:
                    new = prepare_block(name, mods[name], entries, plan, state, rank_n, world_n)
            except Exception as exc:
                what = f"({mp.weight} via {mp.kernel})" if entries is None else \
                    f"(MoE experts, {entries[0].weight} via {entries[0].kernel})"
                diags.append(_err("QC705", f"cannot prepare {name!r} {what}: {exc}", name,
                                  "check the weights given for this module" if entries is None
                                  else "compile the plan against this model"))
            else:
                prepared[name] = new
                covered.update([name] if entries is None else [e.name for e in entries])
                before += _nbytes([p for p in mods[name].parameters()] + list(mods[name].buffers()))
                after += _nbytes(list(new.buffers()) + list(new.parameters()))
            bar.advance(task)
    fills = []
    if on_meta:  # every other meta tensor must come from the weights too, or nothing is swapped
        fills, missing = _meta_fills(model, set(prepared), state)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            diags.append(_err("QC703", f"the model is on the meta device and the weights lack {len(missing)} tensor(s): "
                              f"{shown}", missing[0], "pass the full checkpoint; non-persistent buffers (rotary "
                              "inv_freq) must be real: build with parameters on meta only"))
    if diags:
        raise QuantcError(diags + warnings)  # nothing was swapped
    for name, new in prepared.items():
        parent_name, _, child = name.rpartition(".")
        setattr(mods[parent_name] if parent_name else model, child, new)
    for module, attr, full, is_param in fills:  # module by module: one tensor read at a time
        t = state[full].to(_META_TARGET["device"])
        if is_param:
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(t.to(old.dtype), requires_grad=old.requires_grad)
        else:
            module._buffers[attr] = t
    routers = _quant_routers(model, prepared)  # after the fills: they hold the routers' real weights
    for parent, attr, new in routers:
        setattr(parent, attr, new)
    if routers:
        notes.append(f"{len(routers)} transformers router(s) ({routers[0][2].source_class}) run their routing after the "
                     "router GEMM in one Triton launch (QUANTC_MOE_ROUTER_KERNEL=0: the same rule in torch ops)")
    kept = tuple(mp.name for mp in plan.modules if mp.name not in covered and mp.kind not in ("kv_cache",))
    return ApplyReport(tuple(prepared), kept, before, after, tuple(notes), tuple(warnings))


def _quant_routers(model: nn.Module, prepared: dict) -> list:
    """(MoE block, attribute, QuantRouter) for each swapped experts module whose block's router (``gate``;
    gpt-oss: ``router``) is a transformers router ``hf_moe.HF_ROUTERS`` knows; built for every block before
    any is swapped."""
    mods = dict(model.named_modules())
    out = []
    for name, new in prepared.items():
        if not isinstance(new, QuantExperts):
            continue
        block_name = name.rpartition(".")[0]
        block = mods.get(block_name)
        if block is None:
            continue
        for attr in ("gate", "router"):
            router = quant_router(f"{block_name}.{attr}", getattr(block, attr, None))
            if router is not None:
                out.append((block, attr, router))
                break
    return out


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass
