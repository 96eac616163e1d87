"""`quantc plan --html report.html`: the plan at a glance, as one self-contained HTML page.

A grid of layers (rows) x module roles (columns: ``self_attn.q_proj``, ``mlp.experts.*.down_proj``,
...), each cell coloured by the scheme of the modules in it (split into stripes when a cell holds
several), a legend with modules and bytes per scheme, and the modules outside layers (embeddings,
lm_head) in a row of their own. Inline SVG, no script, no external resource: it opens anywhere and
renders the same headless.
"""

from __future__ import annotations

import re
from html import escape

from .plan import Plan

_LAYER = re.compile(r"^(?P<head>.*?\blayers\.)(?P<layer>\d+)\.(?P<rest>.*)$")
_EXPERT = re.compile(r"\.experts\.\d+\.")

# colour-blind-safe palette (Okabe-Ito, then Tol), bf16 always light grey
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#332288",
           "#88CCEE", "#44AA99", "#117733", "#999933", "#AA4499", "#882255"]
UNQUANTIZED = "#DDDDDD"
CELL_W, CELL_H, LABEL_W, HEADER_H = 26, 14, 70, 150


def scheme_of(weight: str, activation: str) -> str:
    return f"{weight}/{activation}"


def scheme_colors(plan: Plan) -> dict[str, str]:
    schemes = sorted({scheme_of(m.weight, m.activation) for m in plan.modules})
    colors, i = {}, 0
    for s in schemes:
        if s == "none/none":
            colors[s] = UNQUANTIZED
        else:
            colors[s] = PALETTE[i % len(PALETTE)]
            i += 1
    return colors


def grid(plan: Plan) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, int]]]:
    """(row labels, column labels, cell -> scheme -> module count)."""
    rows: list[str] = []
    cols: list[str] = []
    cells: dict[tuple[str, str], dict[str, int]] = {}
    seen_rows, seen_cols = set(), set()
    for m in plan.modules:
        if m.kind == "kv_cache":
            continue
        match = _LAYER.match(m.name)
        if match:
            row, col = f"layer {int(match['layer'])}", _EXPERT.sub(".experts.*.", "." + match["rest"])[1:]
        else:
            row, col = "other", m.name
        if row not in seen_rows:
            seen_rows.add(row)
            rows.append(row)
        if col not in seen_cols:
            seen_cols.add(col)
            cols.append(col)
        cell = cells.setdefault((row, col), {})
        s = scheme_of(m.weight, m.activation)
        cell[s] = cell.get(s, 0) + 1
    layer_rows = sorted((r for r in rows if r != "other"), key=lambda r: int(r.split()[1]))
    rows = layer_rows + (["other"] if "other" in seen_rows else [])
    return rows, cols, cells


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def render_plan_html(plan: Plan) -> str:
    colors = scheme_colors(plan)
    rows, cols, cells = grid(plan)
    width = LABEL_W + CELL_W * len(cols) + 10
    height = HEADER_H + CELL_H * len(rows) + 10
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" id="grid" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="10">']
    for j, col in enumerate(cols):
        x = LABEL_W + j * CELL_W + CELL_W // 2 + 4
        svg.append(f'<text class="col" x="{x}" y="{HEADER_H - 4}" transform="rotate(-90 {x} {HEADER_H - 4})">{escape(col)}</text>')
    for i, row in enumerate(rows):
        y = HEADER_H + i * CELL_H
        svg.append(f'<text class="row" x="2" y="{y + CELL_H - 3}">{escape(row)}</text>')
        for j, col in enumerate(cols):
            cell = cells.get((row, col))
            if not cell:
                continue
            x = LABEL_W + j * CELL_W
            total = sum(cell.values())
            offset = 0.0
            for s, count in sorted(cell.items()):
                w = (CELL_W - 2) * count / total
                title = f"{row} {col}: {s} ({count} module{'s' * (count != 1)})"
                svg.append(f'<rect class="cell" data-row="{escape(row)}" data-col="{escape(col)}" data-scheme="{escape(s)}" '
                           f'x="{x + 1 + offset:.2f}" y="{y + 1}" width="{w:.2f}" height="{CELL_H - 2}" fill="{colors[s]}">'
                           f'<title>{escape(title)}</title></rect>')
                offset += w
    svg.append("</svg>")
    summary = plan.summary
    legend = []
    for s, info in summary.get("schemes", {}).items():
        legend.append(
            f'<tr class="scheme" data-scheme="{escape(s)}"><td><span class="swatch" style="background:{colors.get(s, UNQUANTIZED)}"></span></td>'
            f"<td>{escape(s)}</td><td>{info['modules']}</td><td>{_gb(info['bytes_before'])}</td><td>{_gb(info['bytes_after'])}</td></tr>")
    saved = summary.get("bytes_before", 0) - summary.get("bytes_after", 0)
    title = f"quantc plan: {plan.model.get('architecture', '?')} on {plan.target.get('gpu', '?')}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>{escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
table.legend td {{ padding: 2px 10px 2px 0; font-family: monospace; }}
.swatch {{ display: inline-block; width: 14px; height: 14px; border: 1px solid #999; }}
</style></head>
<body>
<h1>{escape(title)}</h1>
<p id="summary">{summary.get('modules', 0)} modules, tensor_parallel={plan.target.get('tensor_parallel', 1)};
weights {_gb(summary.get('bytes_before', 0))} &#8594; {_gb(summary.get('bytes_after', 0))}
({summary.get('compression', 1.0)}x smaller, {_gb(saved)} saved)</p>
<table class="legend"><tr><th></th><th>scheme (weight/activation)</th><th>modules</th><th>bf16</th><th>quantized</th></tr>
{''.join(legend)}
</table>
{''.join(svg)}
</body></html>
"""
