"""`quantc plan --html`: the page is parsed (every module counted once, colours match the legend)
and rendered headless in Chromium, whose screenshot must show each cell in its scheme's colour."""

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser


from quantc.html import CELL_H, CELL_W, HEADER_H, LABEL_W, grid, render_plan_html, scheme_colors
from quantc.lower import lower
from tests.builders import make_config, moe_like


def _plan():
    cfg = make_config(linear="fp8_per_channel", moe="mxfp4", rules=[{"match": "re:model\\.layers\\.0\\..*", "linear": "int8"}],
                      ignore=["model.layers.1.self_attn.o_proj"])
    result = lower(cfg, moe_like(layers=3, experts=4))
    assert result.plan is not None, result.diagnostics
    return result.plan


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rects, self.legend = [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "rect" and a.get("class") == "cell":
            self.rects.append(a)
        if tag == "tr" and a.get("class") == "scheme":
            self.legend[a["data-scheme"]] = None


def test_page_structure_matches_the_plan():
    plan = _plan()
    page = render_plan_html(plan)
    p = _Cells()
    p.feed(page)
    colors = scheme_colors(plan)
    # every (row, col, scheme) is one rect of the scheme's colour
    seen = {(r["data-row"], r["data-col"], r["data-scheme"]) for r in p.rects}
    assert len(seen) == len(p.rects)
    for r in p.rects:
        assert r["fill"] == colors[r["data-scheme"]]
    assert ("layer 0", "self_attn.q_proj", "int8_per_channel/int8_dynamic_per_token") in seen
    assert ("layer 1", "self_attn.o_proj", "none/none") in seen
    assert ("layer 2", "mlp.experts.*.down_proj", "mxfp4/none") in seen
    assert ("other", "lm_head", "none/none") in seen
    assert set(p.legend) == set(plan.summary["schemes"])
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_names_are_escaped():
    plan = _plan()
    page = render_plan_html(plan)
    assert "<title>quantc plan: Qwen3MoeForCausalLM on h100</title>" in page


def _decode_png(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, width = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and ctype in (2, 6)
            bpp = 4 if ctype == 6 else 3
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(height):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def test_renders_headless_with_the_scheme_colours(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed to render the report headless: apt-get install chromium (README setup)"
    plan = _plan()
    page = render_plan_html(plan).replace("<body>", '<body style="margin:0">').replace(
        '<svg xmlns', '<svg style="position:absolute;left:0;top:0;background:white" xmlns')
    html = tmp_path / "report.html"
    html.write_text(page)
    png = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--window-size=800,600", f"--screenshot={png}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    width, bpp, rows = _decode_png(png.read_bytes())
    rows_l, cols, cells = grid(plan)
    colors = scheme_colors(plan)
    checked = 0
    for i, row in enumerate(rows_l):
        for j, col in enumerate(cols):
            cell = cells.get((row, col))
            if not cell or len(cell) != 1:
                continue
            (scheme,) = cell
            x = LABEL_W + j * CELL_W + CELL_W // 2
            y = HEADER_H + i * CELL_H + CELL_H // 2
            px = rows[y][x * bpp:x * bpp + 3]
            want = bytes.fromhex(colors[scheme][1:])
            assert max(abs(a - b) for a, b in zip(px, want)) <= 8, (row, col, scheme, px.hex(), want.hex())
            checked += 1
    assert checked == sum(1 for c in cells.values() if len(c) == 1) and checked >= 15
