"""What ``plan`` and ``explain`` show a person: grouped rows, a summary, one module's story.

Data first (plain dicts, which ``--format json|yaml`` print as they are), then text rendering.
"""

from __future__ import annotations

import re

from .diagnostics import Diagnostic
from .kernel_specs import own_config_rows, plane_mma_key
from .patterns import name_shape
from .plan import Plan, compress_same_shape


def plan_rows(plan: Plan, shapes: list[str] | None = None) -> list[dict]:
    """Modules grouped by (name shape, scheme, kernel, deciding rule), names as templates, in model order.

    ``shapes``: the modules' name shapes in plan order, when lowering has them already."""
    modules = plan.modules
    if shapes is None or len(shapes) != len(modules):
        shapes = [name_shape(m.name) for m in modules]
    groups: dict[tuple, list] = {}
    for m, shape in zip(modules, shapes):
        key = (shape, m.weight, m.activation, m.kernel, m.provenance.get("weight", ""), m.provenance.get("activation", ""))
        members = groups.get(key)
        if members is None:
            members = groups[key] = []
        members.append(m)
    rows = []
    for (shape, w, a, kernel, pw, pa), members in groups.items():
        first = members[0]
        shapes_nk = sorted({(m.n, m.k) for m in members})
        rows.append({
            "modules": compress_same_shape(shape, [m.name for m in members]),
            "count": len(members),
            "kind": first.kind,
            "n": shapes_nk[0][0] if len(shapes_nk) == 1 else None,
            "k": shapes_nk[0][1] if len(shapes_nk) == 1 else None,
            "num_experts": first.num_experts,
            "weight": w,
            "activation": a,
            "method": first.method,
            "kernel": kernel,
            "weight_from": pw,
            "activation_from": pa,
        })
    return rows


def plan_data(plan: Plan, diagnostics: list[Diagnostic], shapes: list[str] | None = None) -> dict:
    return {
        "model": plan.model,
        "target": plan.target,
        "summary": plan.summary,
        "rows": plan_rows(plan, shapes),
        "kernels": {kid: {"kernel": e.kernel, "n": e.n, "k": e.k, "source": e.source} for kid, e in sorted(plan.kernels.items())},
        "diagnostics": [d.to_dict() for d in diagnostics],
    }


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


def _row_cells(row: dict) -> tuple[str, ...]:
    shape = f"{row['n']} x {row['k']}" if row["n"] is not None else "various"
    if row["num_experts"] > 1:
        shape += f" x{row['num_experts']}e"
    names = "\n".join(row["modules"][:3]) + (f"\n(+{len(row['modules']) - 3} more)" if len(row["modules"]) > 3 else "")
    return (names, str(row["count"]), shape, row["weight"], row["activation"], row["kernel"] or "-", _decided_by(row))


_COLUMN = re.compile(r"^(.*?:\d+):\d+: ")


def _decided_by(row: dict) -> str:
    """One place when both fields come from the same line (a mapping sets them at two columns)."""
    if row["kind"] == "kv_cache":  # the cache has no weights: its activation key is the whole story
        return row["activation_from"]
    same_line = _COLUMN.sub(r"\1: ", row["weight_from"]) == _COLUMN.sub(r"\1: ", row["activation_from"])
    if same_line:
        return row["weight_from"]
    return f"weight: {row['weight_from']} | activation: {row['activation_from']}"


def render_plan_text(data: dict, width: int = 260) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    buf = StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False, soft_wrap=False)
    model, target, summary = data["model"], data["target"], data["summary"]
    console.print(f"model: {model['architecture']} ({model['num_modules']} modules, {model['source']})")
    console.print(f"target: {target['gpu']} (sm_{target['sm']}), tensor_parallel={target['tensor_parallel']}"
                  + (", expert_parallel" if target["expert_parallel"] else ""))
    table = Table(show_lines=False, box=None, pad_edge=False, header_style="bold")
    shape_header = "N x K per rank" if target["tensor_parallel"] > 1 else "N x K"
    cells = [_row_cells(row) for row in data["rows"]]
    if width < 200:  # a narrow terminal: provenance with file names, not paths
        cells = [c[:-1] + (re.sub(r"[^\s:|]*/([^/\s:]+):(\d+)", r"\1:\2", c[-1]),) for c in cells]
    headers = ("modules", "#", shape_header, "weight", "activation", "kernel", "decided by")
    for i, col in enumerate(headers):
        if col == "decided by":
            table.add_column(col, overflow="fold")
        else:  # the essential columns never shrink: the provenance column folds instead
            width = max([len(col)] + [max(len(part) for part in c[i].split("\n")) for c in cells])
            table.add_column(col, no_wrap=True, min_width=width)
    for c in cells:
        table.add_row(*c)
    console.print(table)
    console.print("summary:")
    for scheme, s in summary["schemes"].items():
        console.print(f"  {scheme:<44} {s['modules']:>7} modules  {_gb(s['bytes_before']):>10} -> {_gb(s['bytes_after']):>10}")
    console.print(f"  weights: {_gb(summary['bytes_before'])} -> {_gb(summary['bytes_after'])} "
                  f"({summary['compression']}x smaller; {summary['quantized_fraction_of_bytes'] * 100:.1f}% of bf16 bytes quantized)")
    notes = sorted({k["source"] for k in data["kernels"].values() if not k["source"].startswith("tuned")})
    for note in notes:
        n = sum(1 for k in data["kernels"].values() if k["source"] == note)
        console.print(f"  kernel configs: {n} shape(s) use {note}")
    return buf.getvalue().rstrip("\n")


# --- explain -------------------------------------------------------------------------------------


# 4-bit weight-only kernel ids whose decode calls the runtime runs at configs of its own on sm_90 (the GEMV, int4's
# natural-layout MMA kernel: kernel_specs.own_config_rows), whatever their table row says
_GEMV_KERNELS = ("int4_weight_only_gemm", "fp4_weight_only_gemm")


def explain_data(result, module_name: str) -> dict | None:
    """One module's story from a pipeline result (works even when other modules have errors)."""
    lw = result.lowering
    inv = result.inventory
    module = next((m for m in inv.modules if m.name == module_name), None)
    if module is None:
        return None
    hits = lw.matched_patterns(module)
    rules, ignore_hit = lw.split_hits(hits)
    res = lw.resolve(module, rules, ignore_hit)
    d = lw.decide(module, res)
    fields = {}
    from .lower import _prov

    for f in ("weight", "activation"):
        history = res.history[f]
        # when the checkpoint decided the field, every config level (the last one included) was overridden
        replaced = d.provenance[f] != _prov(history[-1])
        fields[f] = {
            "value": getattr(d, f),
            "set_by": d.provenance[f],
            "overridden": [f"{s.value} from {s.span}: {s.origin}" if s.span.line > 0 else f"{s.value} from {s.origin}"
                           for s in (history if replaced else history[:-1])],
        }
    ckpt = res.checkpoint
    entry = None
    if d.kernel_entry and result.plan is not None:
        e = result.plan.kernels[d.kernel_entry]
        entry = {"id": e.id, "source": e.source, "buckets": [{"m_max": m, **cfg.__dict__} for m, cfg in e.buckets]}
    elif d.kernel_entry:
        from .emit import lookup, smem_fit

        e = lookup(lw.tables, lw.fallback_tables, d.kernel, d.n_rank, d.k_rank, d.kernel_entry, lw.gpu.name,
                   smem_fit(lw.gpu, d.kernel, d.weight, d.activation))
        entry = {"id": e.id, "source": e.source, "buckets": [{"m_max": m, **cfg.__dict__} for m, cfg in e.buckets]}
    rows = own_config_rows(d.weight, d.k_rank) if d.kernel in _GEMV_KERNELS else 0
    if entry is not None and rows and lw.gpu.sm == 90:
        gemv = "the runtime's CUDA-core GEMV (runtime/kernels/wo_gemv.py)"
        entry["one_row"] = (f"one or two rows on this GPU run {gemv} at a config of its own" if rows <= 2 else
                            f"one row on this GPU runs {gemv} and 2-{rows} rows the natural layout's MMA kernel "
                            "(runtime/kernels/wo_plane_mma.py), each at a config of its own")
    # MoE 4-bit experts at decode on sm_90 (runtime/moe.py uses_moe_gemv: every expert on the rank, K % 64; and
    # uses_moe_plane_mma past that: K % 128, int4 g128 / mxfp4 / nvfp4; the id's 8-bit weights keep the grouped GEMM)
    four_bit = d.weight.startswith("int4_") or d.weight in ("mxfp4", "nvfp4")
    if (entry is not None and d.kernel == "moe_weight_only" and four_bit and lw.gpu.sm == 90 and d.k_rank % 64 == 0
            and not lw.ep):
        entry["decode"] = ("the runtime's grouped CUDA-core GEMV (runtime/kernels/wo_gemv.py) while the (token, "
                           "expert) pairs are no more than the experts" +
                           ("; from max(32, experts) pairs up to 16 an expert, the natural layout's MMA kernel "
                            "(runtime/kernels/wo_plane_mma.py) where both expert widths are multiples of 128"
                            if d.k_rank % 128 == 0 and plane_mma_key(d.weight) else ""))
    return {
        "module": module.name,
        "kind": module.kind,
        "layer_kind": module.config_kind,
        "shape": {"n": module.n, "k": module.k, "num_experts": module.num_experts},
        "rank_shape": {"n": d.n_rank, "k": d.k_rank},
        "tp_split": module.tp_split,
        "fused_group": module.fused_group,
        "moe_block": module.moe_block,
        "matched_rules": [lw.rules_by_index[r].label for r in rules],
        "ignored_by": lw.config.ignore[ignore_hit].text if ignore_hit is not None else None,
        "weight": fields["weight"],
        "activation": fields["activation"],
        "checkpoint": None if ckpt is None else {"weight": ckpt.weight, "activation": ckpt.activation,
                                                 "activation_fixed": ckpt.activation_fixed, "origin": ckpt.origin},
        "method": d.method,
        "kernel": d.kernel,
        "kernel_config": entry,
        "rejected_candidates": [{"kernel": r.kernel, "reason": r.reason} for r in d.rejected],
        "variants": backend_variants(lw, module, d),
        "errors": [{"code": c, "message": f"{module.name}: {m}", "hint": h} for c, m, h, _ in d.errors],
    }


def backend_variants(lw, module, d) -> list[dict]:
    """The backend oracle: every (activation key, kernel) that some kernel pairs with this module's
    weight key, each with whether it runs here (GPU, per-rank shape, backend pin) or why not."""
    from .kernel_specs import KERNEL_SPECS

    ck = module.config_kind
    if ck is None or d.weight == "none" and d.activation == "none":
        return []
    pinned = lw.config.backend.get(ck)
    out = []
    for spec in KERNEL_SPECS:
        if ck not in spec.layer_kinds or d.weight not in spec.weight_keys:
            continue
        reason = lw._reject_reason(spec, d.n_rank, d.k_rank, pinned)
        for act in sorted(spec.activation_keys):
            out.append({"activation": act, "kernel": spec.id, "family": spec.family, "runs": reason is None,
                        "reason": reason or "", "chosen": spec.id == d.kernel and act == d.activation})
    return out


def render_explain_text(data: dict) -> str:
    lines = [f"{data['module']}  ({data['kind']}, layer kind {data['layer_kind']})"]
    s, r = data["shape"], data["rank_shape"]
    shape = f"N={s['n']} K={s['k']}" + (f" x {s['num_experts']} experts" if s["num_experts"] > 1 else "")
    if (r["n"], r["k"]) != (s["n"], s["k"]):
        shape += f"; per rank N={r['n']} K={r['k']} ({data['tp_split']} split)"
    lines.append(f"  shape:      {shape}")
    if data["fused_group"]:
        lines.append(f"  fused in:   {data['fused_group']}")
    if data["moe_block"]:
        lines.append(f"  MoE block:  {data['moe_block']}")
    lines.append(f"  rules:      {', '.join(data['matched_rules']) or '(none match)'}"
                 + (f"; ignored by {data['ignored_by']!r}" if data["ignored_by"] else ""))
    for f in ("weight", "activation"):
        v = data[f]
        lines.append(f"  {f + ':':<11} {v['value']}  <- {v['set_by']}")
        for o in reversed(v["overridden"]):
            lines.append(f"{'':14}overrides {o}")
    if data["checkpoint"]:
        c = data["checkpoint"]
        lines.append(f"  checkpoint: weight {c['weight']}, activation {c['activation'] or '-'}"
                     f"{' (fixed: static scales)' if c['activation_fixed'] else ' (dynamic default)' if c['activation'] else ''}  <- {c['origin']}")
    lines.append(f"  method:     {data['method']}")
    lines.append(f"  kernel:     {data['kernel'] or '- (module left as is)'}")
    for rej in data["rejected_candidates"]:
        lines.append(f"    rejected  {rej['kernel']}: {rej['reason']}")
    if data["variants"]:
        lines.append(f"  variants for weight {data['weight']['value']} here (activation -> kernel):")
        for v in data["variants"]:
            mark = "*" if v["chosen"] else ("+" if v["runs"] else "-")
            why = "" if v["runs"] else f"  ({v['reason']})"
            lines.append(f"    {mark} {v['activation']:<24} {v['kernel']}{why}")
    if data["kernel_config"]:
        kc = data["kernel_config"]
        lines.append(f"  configs:    {kc['id']} from {kc['source']}")
        prev = 0
        for b in kc["buckets"]:
            hi = "inf" if b["m_max"] >= 2**31 - 1 else str(b["m_max"])
            lines.append(f"    M {prev + 1:>5}..{hi:<5} block {b['block_m']}x{b['block_n']}x{b['block_k']} "
                         f"warps {b['num_warps']} stages {b['num_stages']} group_m {b['group_m']} split_k {b['split_k']}")
            if prev == 0 and kc.get("one_row"):
                lines.append(f"      ({kc['one_row']})")
            if prev == 0 and kc.get("decode"):
                lines.append(f"      (decode on this GPU runs {kc['decode']})")
            prev = b["m_max"]
    for e in data["errors"]:
        lines.append(f"  error {e['code']}: {e['message']}")
        lines.append(f"    help: {e['hint']}")
    return "\n".join(lines)


def closest_module_names(names, wanted: str, limit: int = 3) -> list[str]:
    """Suggestions for a module name that is not in the model, cheap on 100k-module models: the
    closest name *shapes* (a few dozen), each shown as a real module, with the wanted indices
    where such a module exists."""
    import difflib

    by_shape: dict[str, list[str]] = {}
    for n in names:
        by_shape.setdefault(name_shape(n), []).append(n)
    wanted_shape = name_shape(wanted)
    digits = re.findall(r"\d+", wanted)
    close = difflib.get_close_matches(wanted_shape, list(by_shape), n=limit, cutoff=0.5)
    out = []
    for shape in close:
        members = by_shape[shape]
        candidate = None
        if shape.count("0") == len(digits):
            it = iter(digits)
            candidate = re.sub("0", lambda _: next(it), shape)
        out.append(candidate if candidate in set(members) else members[0])
    return out
