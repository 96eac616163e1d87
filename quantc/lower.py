"""Lowering: (config, model inventory, target, checkpoint) -> a resolved per-module plan.

For each module and each field (weight, activation) the value comes from the highest level that sets
it (SPEC §3), lowest first:

    built-in defaults < extends bases < this file's kind defaults < rules (file order, later wins)
    < --set < ignore

``linear:``/``moe:``/``kv_cache:`` kind defaults cover the modules of that kind; lm_head and MoE
routers are linears that only rules reach (their built-in default keeps them in bf16), and embeddings
are never quantized. A pre-quantized checkpoint is a constraint, not a level: its stored weight key is
fixed (a different user key is an error), a dynamic activation it declares is a default the user may
override, and static activation scales it stores fix the activation key.

Then every module is checked — block/group divisibility, tensor-parallel shard edges, fused groups and
MoE experts sharing a scheme — and a kernel is chosen: the first candidate of
``kernel_specs.candidates`` that the GPU, the shape and the ``backend:`` pin allow.

Work is shared between modules that cannot differ: pattern matches are computed once per name shape
(see ``patterns``), and resolution and checks are memoised on everything they depend on, so a
45,000-module model costs a few hundred resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config, KindSetting, Setting
from .diagnostics import Diagnostic, Span, has_errors
from .emit import entry_id, lookup, smem_fit, tables_and_fallback
from .gpus import DEFAULT_GPU, GPUS, Gpu
from .kernel_specs import KernelSpec, activation_pairs, candidates
from .keys import ACTIVATION_KEYS, WEIGHT_KEYS
from .model import Inventory, ModuleInfo
from .overrides import Overrides
from .patterns import PatternSet, name_shape
from .plan import Plan, ModulePlan, PLAN_VERSION

BUILTIN_SPAN = Span("<built-in>")
_BUILTIN_REASON = {
    "lm_head": "built-in default: lm_head is not quantized (a rule may change that)",
    "router": "built-in default: MoE routers are not quantized (a rule may change that)",
    "embedding": "built-in default: embeddings are not quantized",
    "linear": "built-in default: not quantized unless the config says so",
    "moe_experts": "built-in default: not quantized unless the config says so",
    "kv_cache": "built-in default: KV cache in bf16 unless the config says so",
}
# module kinds that a `linear:`/`moe:`/`kv_cache:` kind default (and --set) covers
_KIND_DEFAULT_SCOPE = {"linear", "moe_experts", "kv_cache"}


@dataclass(frozen=True)
class Resolved:
    weight: Setting
    activation: Setting
    # every level that set a field, lowest first: what `explain` shows as overridden
    history: dict = field(hash=False, compare=False)
    checkpoint: object | None = None


@dataclass(frozen=True)
class Rejection:
    kernel: str
    reason: str


@dataclass(frozen=True)
class Decision:
    """The outcome for one module: everything except its name."""

    weight: str
    activation: str
    method: str
    kernel: str | None
    kernel_entry: str | None
    n_rank: int
    k_rank: int
    provenance: dict
    rejected: tuple[Rejection, ...]
    errors: tuple[tuple[str, str, str, Span | None], ...]  # (code, message without the module name, hint, span)


def experts_per_block(inventory) -> dict[str, int]:
    """Experts in each MoE block: the fused tensor's count, or the distinct expert indices. Takes
    anything with ``.modules`` carrying name/kind/moe_block/num_experts (an Inventory or a Plan)."""
    counts: dict[str, set] = {}
    fused: dict[str, int] = {}
    for m in inventory.modules:
        if m.kind != "moe_experts" or m.moe_block is None:
            continue
        if m.num_experts > 1:
            fused[m.moe_block] = m.num_experts
        elif m.name.startswith(m.moe_block + "."):
            counts.setdefault(m.moe_block, set()).add(m.name[len(m.moe_block) + 1:].split(".", 1)[0])
    return {**{b: len(s) for b, s in counts.items()}, **fused}


def _builtin(kind: str) -> Setting:
    return Setting("none", BUILTIN_SPAN, _BUILTIN_REASON.get(kind, "built-in default"))


def _prov(s: Setting) -> str:
    """``file:line:col: label``; the label's own ``(file)`` suffix is dropped when the span names it."""
    if not (s.span and s.span.line > 0):
        return s.origin
    label = s.origin.replace(f" ({s.span.file})", "")
    return f"{s.span}: {label}"


class Lowering:
    """Holds the per-run state (pattern sets, memo tables) of one lowering."""

    def __init__(self, config: Config, inventory: Inventory, overrides: Overrides | None = None,
                 checkpoint=None, tables_dirs: tuple[str, ...] = ()):
        self.config = config
        self.inventory = inventory
        self.overrides = overrides or Overrides({})
        self.checkpoint = checkpoint
        gpu_setting = config.target.gpu
        self.gpu: Gpu = GPUS[gpu_setting.value if gpu_setting else DEFAULT_GPU]
        self.tp = config.target.tensor_parallel
        self.ep = config.target.expert_parallel
        self.tables, self.fallback_tables = tables_and_fallback(self.gpu.table, tables_dirs)
        # one pattern set for every rule pattern and ignore entry
        texts: list[str] = []
        self.rule_of_pattern: list[int] = []
        for r in config.rules:
            for p in r.patterns:
                texts.append(p.text)
                self.rule_of_pattern.append(r.index)
        self.n_rule_patterns = len(texts)
        for p in config.ignore:
            texts.append(p.text)
        self.patterns = PatternSet(texts)
        self.safe_idx = [i for i, p in enumerate(self.patterns.patterns) if p.shape_safe]
        self.unsafe_idx = [i for i, p in enumerate(self.patterns.patterns) if not p.shape_safe]
        self._shape_hits: dict[str, tuple[int, ...]] = {}
        self._resolve_memo: dict = {}
        self._decide_memo: dict = {}
        self.rules_by_index = {r.index: r for r in config.rules}
        self.shapes: list[str] = []  # name shape of every module, in inventory order (for report rows)
        self._experts_per_block: dict[str, int] | None = None
        self.prov_spans: dict[str, Span] = {}  # provenance text -> span, to place group conflicts

    # --- matching ---
    def matched_patterns(self, module: ModuleInfo, shape: str | None = None) -> tuple[int, ...]:
        if shape is None:
            shape = name_shape(module.name)
        hits = self._shape_hits.get(shape)
        if hits is None:
            hits = tuple(i for i in self.safe_idx if self.patterns.matches(i, module.name, shape))
            self._shape_hits[shape] = hits
        if self.unsafe_idx:
            extra = tuple(i for i in self.unsafe_idx if self.patterns.matches(i, module.name, shape))
            if extra:
                hits = tuple(sorted(hits + extra))
        return hits

    def split_hits(self, hits: tuple[int, ...]) -> tuple[tuple[int, ...], int | None]:
        rules: list[int] = []
        ignore_hit = None
        for i in hits:
            if i < self.n_rule_patterns:
                r = self.rule_of_pattern[i]
                if not rules or rules[-1] != r:
                    if r not in rules:
                        rules.append(r)
            elif ignore_hit is None:
                ignore_hit = i - self.n_rule_patterns
        return tuple(sorted(rules)), ignore_hit

    # --- resolution of (weight, activation) for a module ---
    def resolve(self, module: ModuleInfo, rules: tuple[int, ...], ignore_hit: int | None) -> Resolved:
        ck = module.config_kind
        ckpt = self.checkpoint.entry_for(module) if self.checkpoint is not None else None
        key = (module.kind, rules, ignore_hit, ckpt)
        hit = self._resolve_memo.get(key)
        if hit is not None:
            return hit
        history: dict[str, list[Setting]] = {"weight": [_builtin(module.kind)], "activation": [_builtin(module.kind)]}
        if ck is not None:
            if module.kind in _KIND_DEFAULT_SCOPE:
                self._add(history, self.config.kinds.get(ck))
            for r in rules:
                rule = self.rules_by_index[r]
                if rule.skip:
                    skip = Setting("none", rule.span, f"{rule.label} (skip)")
                    self._add(history, KindSetting(skip, skip))
                else:
                    self._add(history, rule.kinds.get(ck))
            if module.kind in _KIND_DEFAULT_SCOPE:
                self._add(history, self.overrides.kinds.get(ck))
            if ignore_hit is not None:
                pat = self.config.ignore[ignore_hit]
                ign = Setting("none", pat.span, f"ignore: {pat.text!r}")
                self._add(history, KindSetting(ign, ign))
        resolved = Resolved(history["weight"][-1], history["activation"][-1], history, ckpt)
        self._resolve_memo[key] = resolved
        return resolved

    @staticmethod
    def _add(history: dict, setting: KindSetting | None) -> None:
        if setting is None:
            return
        for f in ("weight", "activation"):
            s = setting.get(f)
            if s is not None:
                history[f].append(s)

    # --- checks and kernel choice ---
    def decide(self, module: ModuleInfo, res: Resolved) -> Decision:
        key = (module.kind, module.n, module.k, module.num_experts, module.tp_split, res.weight, res.activation, res.checkpoint)
        hit = self._decide_memo.get(key)
        if hit is not None:
            return hit
        decision = self._decide(module, res)
        # a decision is shared by every module with the same inputs: its messages must not name one
        prefix = module.name + ": "
        templates = tuple((c, m[len(prefix):] if m.startswith(prefix) else m, h, sp) for c, m, h, sp in decision.errors)
        decision = Decision(*(getattr(decision, f) for f in Decision.__dataclass_fields__ if f != "errors"), templates)
        self._decide_memo[key] = decision
        return decision

    def _decide(self, module: ModuleInfo, res: Resolved) -> Decision:
        errors: list[tuple[str, str, str, Span | None]] = []
        weight, activation = res.weight, res.activation
        provenance = {"weight": _prov(weight), "activation": _prov(activation)}
        ckpt = res.checkpoint
        if ckpt is not None:
            weight, activation, provenance = self._apply_checkpoint(module, res, ckpt, errors)
        self.prov_spans[provenance["weight"]] = weight.span
        self.prov_spans[provenance["activation"]] = activation.span
        w, a = weight.value, activation.value
        ck = module.config_kind
        n_rank, k_rank = self._rank_shape(module, w, a, weight, errors)
        if ck is None or (w == "none" and a == "none"):
            return Decision(w, a, "none", None, None, n_rank, k_rank, provenance, (), tuple(errors))
        if a == "fp8_static_per_tensor" and not (ckpt is not None and ckpt.activation == a and ckpt.activation_fixed):
            errors.append(("QC307", f"{module.name}: activation fp8_static_per_tensor needs calibrated scales from a checkpoint, and none provides them",
                           "use fp8_dynamic_per_tensor, or plan against a checkpoint with static input scales (no calibration in this version)",
                           activation.span))
        wkey, akey = WEIGHT_KEYS[w], ACTIVATION_KEYS[a]
        if ck != "kv_cache":
            for qkey, setting, role in ((wkey, weight, "weight"), (akey, activation, "activation")):
                g = qkey.group_k
                if g and module.k % g:
                    fix = [name for name, kk in (WEIGHT_KEYS if role == "weight" else ACTIVATION_KEYS).items()
                           if not kk.group_k or module.k % kk.group_k == 0]
                    errors.append(("QC301", f"{module.name}: K = {module.k} is not a multiple of {g}, the {role} key {qkey.name} groups along K",
                                   f"choose {'an' if role == 'activation' else 'a'} {role} key whose groups divide {module.k} (e.g. {', '.join(f for f in fix if f != 'none')[:120]}), or skip this module with a rule",
                                   setting.span))
        pinned = self.config.backend.get(ck)
        chosen, rejected = self._choose_kernel(ck, w, a, n_rank, k_rank, pinned)
        if chosen is None and not errors:
            reasons = "; ".join(f"{r.kernel}: {r.reason}" for r in rejected) or "no kernel implements this pair"
            pairs = sorted(x for x in activation_pairs(ck, w) if self._runnable(ck, w, x, n_rank, k_rank, pinned))
            if pairs == ["none"]:
                hint = f"only bf16 activations (activation: none, the weight-only path) run with weight {w} on {self.gpu.name}"
            elif pairs:
                hint = f"activation keys that run with weight {w} on {self.gpu.name}: {', '.join(pairs)}"
            else:
                hint = f"no kernel runs weight {w} for {ck} layers on {self.gpu.name}; choose another scheme"
            errors.append(("QC305", f"{module.name}: no kernel can run weight {w} x activation {a} ({ck}) on {self.gpu.name} (sm_{self.gpu.sm}): {reasons}",
                           hint, activation.span if activation.span != BUILTIN_SPAN else weight.span))
        if chosen is None:
            return Decision(w, a, "none", None, None, n_rank, k_rank, provenance, tuple(rejected), tuple(errors))
        eid = entry_id(chosen.id, n_rank, k_rank) if ck != "kv_cache" else None
        return Decision(w, a, chosen.method, chosen.id, eid, n_rank, k_rank, provenance, tuple(rejected), tuple(errors))

    def _apply_checkpoint(self, module, res: Resolved, ckpt, errors):
        weight, activation = res.weight, res.activation
        ck_span = Span(getattr(self.checkpoint, "source", "<checkpoint>"))
        user_w = weight if weight.span != BUILTIN_SPAN else None
        if user_w is not None and user_w.value != ckpt.weight:
            errors.append(("QC310", f"{module.name}: the config sets weight {user_w.value} ({_prov(user_w)}) but the checkpoint stores it as {ckpt.weight} ({ckpt.origin})",
                           f"the weights exist already: set weight {ckpt.weight} (or leave it unset) for this module, or use an unquantized checkpoint",
                           user_w.span))
        weight = Setting(ckpt.weight, ck_span, f"checkpoint: {ckpt.origin}")
        user_a = activation if activation.span != BUILTIN_SPAN else None
        if ckpt.activation is not None:
            if user_a is None:
                activation = Setting(ckpt.activation, ck_span, f"checkpoint: {ckpt.origin}" + ("" if ckpt.activation_fixed else " (dynamic default)"))
            elif user_a.value != ckpt.activation and ckpt.activation_fixed:
                errors.append(("QC311", f"{module.name}: the config sets activation {user_a.value} ({_prov(user_a)}) but the checkpoint fixes {ckpt.activation} with stored static scales ({ckpt.origin})",
                               f"remove the activation setting for this module or set it to {ckpt.activation}", user_a.span))
        provenance = {"weight": _prov(weight), "activation": _prov(activation)}
        return weight, activation, provenance

    def _rank_shape(self, module: ModuleInfo, w: str, a: str, weight: Setting, errors) -> tuple[int, int]:
        n, k = module.n, module.k
        if self.tp == 1 or module.config_kind in (None, "kv_cache") or (w == "none" and a == "none"):
            return n, k  # unquantized modules stay whole on every rank
        experts_split = module.kind == "moe_experts" and self.ep
        if experts_split:
            if self._experts_per_block is None:  # only expert-parallel plans need the counts
                self._experts_per_block = experts_per_block(self.inventory)
            experts = self._experts_per_block.get(module.moe_block, module.num_experts)
            if experts > 1 and experts % self.tp:
                errors.append(("QC320", f"{module.name}: {experts} experts do not split evenly over {self.tp} ranks (expert parallel)",
                               "choose a tensor_parallel size that divides the expert count", self.config.target.tensor_parallel_span))
            return n, k
        wkey, akey = WEIGHT_KEYS[w], ACTIVATION_KEYS[a]
        if module.tp_split == "column":
            if n % self.tp:
                errors.append(("QC321", f"{module.name}: N = {n} does not split evenly over tensor_parallel = {self.tp}",
                               "choose a tensor_parallel size that divides N", self.config.target.tensor_parallel_span))
                return n, k
            n_rank = n // self.tp
            block = wkey.block_n
            if block and n_rank % block:
                errors.append(("QC322", f"{module.name}: with tensor_parallel = {self.tp} each rank holds N = {n_rank} rows, which cuts a {block}-row block of {w} at a shard edge",
                               f"choose tensor_parallel so that N / tp is a multiple of {block}, or a per-channel key (fp8_per_channel) for this module",
                               weight.span if weight.span != BUILTIN_SPAN else self.config.target.tensor_parallel_span))
            return n_rank, k
        if module.tp_split == "row":
            if k % self.tp:
                errors.append(("QC321", f"{module.name}: K = {k} does not split evenly over tensor_parallel = {self.tp}",
                               "choose a tensor_parallel size that divides K", self.config.target.tensor_parallel_span))
                return n, k
            k_rank = k // self.tp
            for qkey in (wkey, akey):
                g = qkey.group_k
                if g and k % g == 0 and k_rank % g:
                    errors.append(("QC322", f"{module.name}: with tensor_parallel = {self.tp} each rank holds K = {k_rank} columns, which cuts a group of {g} of {qkey.name} at a shard edge",
                                   f"choose tensor_parallel so that K / tp is a multiple of {g}",
                                   weight.span if weight.span != BUILTIN_SPAN else self.config.target.tensor_parallel_span))
            return n, k_rank
        return n, k

    def _reject_reason(self, spec: KernelSpec, n: int, k: int, pinned: Setting | None) -> str | None:
        if pinned is not None and spec.family != pinned.value:
            return f"family {spec.family} is not the pinned backend {pinned.value} ({pinned.span})"
        if self.gpu.sm < spec.min_sm:
            return f"needs sm_{spec.min_sm}+, target {self.gpu.name} is sm_{self.gpu.sm}"
        if spec.max_sm is not None and self.gpu.sm > spec.max_sm:
            return f"runs only up to sm_{spec.max_sm}, target {self.gpu.name} is sm_{self.gpu.sm}"
        if k % spec.k_multiple:
            return f"needs K a multiple of {spec.k_multiple}, K = {k}"
        if n % spec.n_multiple:
            return f"needs N a multiple of {spec.n_multiple}, N = {n}"
        return None

    def _choose_kernel(self, ck, w, a, n, k, pinned):
        rejected = []
        for spec in candidates(ck, w, a):
            reason = self._reject_reason(spec, n, k, pinned)
            if reason is None:
                return spec, rejected
            rejected.append(Rejection(spec.id, reason))
        return None, rejected

    def _runnable(self, ck, w, a, n, k, pinned) -> bool:
        return any(self._reject_reason(s, n, k, pinned) is None for s in candidates(ck, w, a))


@dataclass(frozen=True)
class LoweringResult:
    plan: Plan | None
    diagnostics: tuple[Diagnostic, ...]
    lowering: Lowering


def lower(config: Config, inventory: Inventory, *, overrides: Overrides | None = None, checkpoint=None,
          tables_dirs: tuple[str, ...] = ()) -> LoweringResult:
    try:
        lw = Lowering(config, inventory, overrides, checkpoint, tables_dirs)
    except (ValueError, KeyError, TypeError, OSError) as exc:  # a malformed kernel table
        return LoweringResult(None, (Diagnostic("QC510", "error", f"cannot read kernel table: {exc}", None,
                                                "check the folder given to --tables, or regenerate it with `quantc tune`"),), None)
    diags: list[Diagnostic] = []
    entries: list[ModulePlan] = []
    shapes: list[str] = []
    rule_matched = {r.index: False for r in config.rules}
    rule_won: dict[int, bool] = {r.index: False for r in config.rules}
    rule_shadowed_by: dict[int, int] = {}
    ignore_matched = [False] * len(config.ignore)
    # everything a module's outcome depends on, except its name -> (decision, modules, first name)
    memo: dict[tuple, list] = {}
    entry_for = checkpoint.entry_for if checkpoint is not None else None
    for module in inventory.modules:
        shape = name_shape(module.name)
        hits = lw.matched_patterns(module, shape)
        ckpt = entry_for(module) if entry_for is not None else None
        key = (hits, module.kind, module.n, module.k, module.num_experts, module.tp_split, ckpt)
        slot = memo.get(key)
        if slot is None:
            rules, ignore_hit = lw.split_hits(hits)
            for r in rules:
                rule_matched[r] = True
            if ignore_hit is not None:
                ignore_matched[ignore_hit] = True
            res = lw.resolve(module, rules, ignore_hit)
            _track_shadowing(res, rules, lw, rule_won, rule_shadowed_by, module)
            slot = memo[key] = [lw.decide(module, res), 0, module.name]
        slot[1] += 1
        d = slot[0]
        shapes.append(shape)
        entries.append(ModulePlan(
            module.name, module.kind, d.n_rank, d.k_rank, module.num_experts, module.layer, d.weight, d.activation,
            d.method, d.kernel, d.kernel_entry, module.fused_group, module.moe_block, module.tp_split, d.provenance,
        ))
    lw.shapes = shapes
    # one diagnostic per cause: messages that differ only in the module they name are merged
    error_groups: dict[tuple, list] = {}
    for d, count, first in memo.values():
        for code, template, hint, span in d.errors:
            g = error_groups.setdefault((code, hint, span, template), [0, first])
            g[0] += count
    for (code, hint, span, template), (count, first) in error_groups.items():
        more = f" (and {count - 1} more modules like it)" if count > 1 else ""
        diags.append(Diagnostic(code, "error", f"{first}{more}: {template}", span if span and span != BUILTIN_SPAN else None, hint))
    diags.extend(_group_consistency(entries, lw.prov_spans))
    diags.extend(_usage_warnings(config, rule_matched, rule_won, rule_shadowed_by, ignore_matched, lw))
    if has_errors(diags):
        return LoweringResult(None, tuple(diags), lw)
    totals = [(d.weight, d.activation, key[1], key[2] * key[3] * key[4], count) for key, (d, count, _) in memo.items()]
    plan = _build_plan(config, inventory, lw, entries, diags, totals)
    return LoweringResult(plan, tuple(diags), lw)


def _track_shadowing(res: Resolved, rules, lw: Lowering, rule_won, rule_shadowed_by, module) -> None:
    """A rule wins a (module, field) when it is the last rule to set it, whatever the levels above
    (--set, ignore) do; a rule that never wins anywhere it matches is shadowed."""
    ck = module.config_kind
    if ck is None:
        return
    for f in ("weight", "activation"):
        setters = []
        for r in rules:
            rule = lw.rules_by_index[r]
            if rule.skip or (rule.kinds.get(ck) is not None and rule.kinds[ck].get(f) is not None):
                setters.append(r)
        if setters:
            rule_won[setters[-1]] = True
            for r in setters[:-1]:
                rule_shadowed_by.setdefault(r, setters[-1])


def _group_consistency(entries: list[ModulePlan], prov_spans: dict[str, Span]) -> list[Diagnostic]:
    """Fused groups and MoE blocks need one scheme; one diagnostic per pattern of conflict."""
    diags = []
    for attr, what, code in (("fused_group", "modules fused into one GEMM", "QC330"), ("moe_block", "experts of one MoE layer", "QC331")):
        first_of: dict[str, ModulePlan] = {}
        conflicts: dict[str, dict[tuple, ModulePlan]] = {}
        for e in entries:
            group = getattr(e, attr)
            if group is None or e.kind == "kv_cache":
                continue
            first = first_of.get(group)
            if first is None:
                first_of[group] = e
            elif (first.weight, first.activation) != (e.weight, e.activation):
                c = conflicts.setdefault(group, {(first.weight, first.activation): first})
                c.setdefault((e.weight, e.activation), e)
        seen: set = set()
        for group, schemes in conflicts.items():
            pattern = (name_shape(group), tuple(sorted(schemes)))
            if pattern in seen:
                continue
            seen.add(pattern)
            parts = [f"{m.name} has {w}/{a} (weight from {m.provenance['weight']}; activation from {m.provenance['activation']})"
                     for (w, a), m in sorted(schemes.items())]
            hint = ("modules that run as one fused GEMM need one scheme: give them the same weight and activation keys, e.g. match the whole group in one rule"
                    if attr == "fused_group" else "all experts of a MoE layer run in one grouped GEMM: match the experts of a layer together")
            # place it at the setting that made a member differ from the group's first module
            ordered = list(schemes.values())
            first, other = ordered[0], ordered[1]
            field_name = "weight" if first.weight != other.weight else "activation"
            span = None
            related = []
            for m in (other, first):
                sp = prov_spans.get(m.provenance[field_name])
                if sp is not None and sp.line > 0:
                    if span is None:
                        span = sp
                    else:
                        related.append((f"{m.name} gets {field_name} {getattr(m, field_name)} here", sp))
            diags.append(Diagnostic(code, "error", f"{group}: {what} have different schemes: " + "; ".join(parts), span, hint,
                                    related=tuple(related)))
    return diags


def _usage_warnings(config, rule_matched, rule_won, rule_shadowed_by, ignore_matched, lw) -> list[Diagnostic]:
    diags = []
    for r in config.rules:
        if not rule_matched[r.index]:
            pats = ", ".join(repr(p.text) for p in r.patterns)
            diags.append(Diagnostic("QC201", "warning", f"{r.label} matches no module of the model (match: {pats})", r.span,
                                    "check the module names with `quantc plan --format json`; patterns match full dotted names or their ancestors"))
        elif not rule_won[r.index] and r.index in rule_shadowed_by:
            later = lw.rules_by_index[rule_shadowed_by[r.index]]
            diags.append(Diagnostic("QC202", "warning", f"{r.label} is shadowed: {later.label} overrides every field it sets on every module it matches",
                                    r.span, "remove it, or move it after the later rule", related=((later.label, later.span),)))
    for i, pat in enumerate(config.ignore):
        if not ignore_matched[i]:
            diags.append(Diagnostic("QC203", "warning", f"ignore entry {pat.text!r} matches no module of the model", pat.span,
                                    "patterns match full dotted names (or an ancestor); `*` crosses dots"))
    return diags


def _build_plan(config: Config, inventory: Inventory, lw: Lowering, entries: list[ModulePlan], diags, totals) -> Plan:
    kernels = {}
    for e in entries:
        if e.kernel_entry and e.kernel_entry not in kernels:
            kernels[e.kernel_entry] = lookup(lw.tables, lw.fallback_tables, e.kernel, e.n, e.k, e.kernel_entry, lw.gpu.name,
                                             smem_fit(lw.gpu, e.kernel, e.weight, e.activation))
    summary = summarize(totals, len(entries))
    tuned_on = {}
    for t in lw.tables or lw.fallback_tables:
        tuned_on = dict(t.meta)
        break
    sources = [{"path": p, "sha256": h} for p, h in config.files]
    if lw.checkpoint is not None:
        sources.append({"path": getattr(lw.checkpoint, "source", "<checkpoint>"), "sha256": None, "role": "checkpoint"})
    warnings = [d.render_short() for d in diags if d.severity == "warning"]
    if any(e.kind == "kv_cache" and e.kernel for e in entries):
        warnings.append("kv_cache settings are planned; the runtime does not apply them yet (apply() warns)")
    return Plan(
        modules=tuple(entries),
        kernels=kernels,
        target={"gpu": lw.gpu.name, "sm": lw.gpu.sm, "tensor_parallel": lw.tp, "expert_parallel": lw.ep},
        model={"architecture": inventory.architecture, "fingerprint": inventory.fingerprint(),
               "num_modules": len(inventory.modules), "source": inventory.source},
        sources=sources,
        summary=summary,
        warnings=warnings,
        tuned_on=tuned_on,
        version=PLAN_VERSION,
    )


def summarize(totals, num_modules: int) -> dict:
    """Module counts per scheme and weight bytes before/after (bf16 before), whole model (not per rank).

    ``totals``: (weight key, activation key, module kind, weight elements, module count) tuples."""
    schemes: dict[str, dict] = {}
    before = after = 0.0
    for weight, activation, kind, elements, count in totals:
        if kind == "kv_cache":
            continue
        b = elements * 2 * count
        a = elements * WEIGHT_KEYS[weight].bytes_per_element() * count if weight != "none" else b
        before += b
        after += a
        s = schemes.setdefault(f"{weight}/{activation}", {"modules": 0, "bytes_before": 0, "bytes_after": 0})
        s["modules"] += count
        s["bytes_before"] += int(b)
        s["bytes_after"] += int(a)
    return {
        "modules": num_modules,
        "schemes": dict(sorted(schemes.items())),
        "bytes_before": int(before),
        "bytes_after": int(after),
        "compression": round(before / after, 3) if after else 1.0,
        "quantized_fraction_of_bytes": round(
            sum(v["bytes_before"] for k, v in schemes.items() if not k.startswith("none/")) / before, 4) if before else 0.0,
    }
