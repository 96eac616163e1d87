"""The warp-specialized MoE grouped GEMM (``kernels/moe_mm_ws.py``, Gluon) and its route. Gluon kernels do not
run under the CPU interpreter, so CI checks: the kernel compiles for sm_90 (Triton's bundled ptxas) into the
structure its speed depends on (TMA loads, the gate and up wgmmas of a K step chained with the previous
step's still allowed to run, registers moved from the producer to the consumers, nothing in local memory)
for each operand type and epilogue; the sorted copy of the rows (a Triton kernel) bit for bit under the
interpreter; the routing rule; and that QuantMoE hands both GEMMs to it with 128-row routing blocks when the
rule says so (opt-in: QUANTC_MOE_WS). On the GPU ``bench/moe_ws_probe.py`` compares its output with the Triton grouped GEMM's
(relative error <= 3e-5, bf16 bit-identical; bench/results/moe_ws_probe_h100.json)."""

import textwrap

import pytest
import torch

from tests.runtime.offline_sass import inspect_cases
from quantc.runtime.kernels import moe_gemm as mg
from quantc.runtime.kernels import moe_mm_ws as ws
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels.moe_routing import align_by_expert
from quantc.runtime.moe import QuantMoE

SCRIPT = textwrap.dedent("""
    import json, os, re, subprocess, sys, pathlib
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from quantc.runtime.kernels import moe_mm_ws
    out = []
    for dtype, act, bias, topw, block_m in json.loads(sys.argv[1]):
        scaled = 0 if dtype == "bf16" else 2
        c = moe_mm_ws.compile_for_hopper(dtype, 128, act, 3, scaled, scaled, bias, topw, block_m)
        path = pathlib.Path(os.environ["TMPDIR_CUBIN"]) / "k.cubin"
        path.write_bytes(c.asm["cubin"])
        nvdisasm = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
        sass = subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True).stdout
        ptx = c.asm["ptx"]
        out.append({"mma": len(re.findall(r"\\b[QIH]GMMA\\.64x128x(?:16|32)", sass)),
                    "kinds": sorted(set(re.findall(r"\\b([QIH]GMMA)\\.", sass))),
                    "waits": {w: len(re.findall(r"WARPGROUP\\.DEPBAR\\.LE gsb0, %s\\b" % w, sass))
                              for w in ("0x0", "0x1", "0x2")},
                    "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\\.(inc|dec)", ptx))),
                    "local": len(re.findall(r"\\.local", ptx)) + len(re.findall(r"\\b(?:LDL|STL)\\b", sass)),
                    "tma": "cp.async.bulk.tensor" in ptx})
    print(json.dumps(out))
""")

# (operand type, activation 0 none / 1 silu / 2 gpt-oss, bias, routing weights, block rows): the gate_up GEMMs
# of each operand type and the down GEMM, at 128-row blocks and at 64
CASES = [("fp8e4nv", 1, False, False, 128), ("i8", 2, True, False, 128), ("bf16", 1, False, False, 128),
         ("fp8e4nv", 0, False, True, 128), ("fp8e4nv", 1, False, False, 64), ("i8", 0, False, True, 64)]
KIND = {"fp8e4nv": "QGMMA", "i8": "IGMMA", "bf16": "HGMMA"}


def test_kernel_compiles_for_hopper_with_chained_mmas(tmp_path):
    for case, got in zip(CASES, inspect_cases(SCRIPT, CASES, tmp_path)):
        dtype, act, consumers = case[0], case[1], case[4] // 64
        assert got["tma"] and got["local"] == 0, (case, got)
        assert got["setmaxnreg"] == ["dec", "inc"], (case, got)  # the producer gives registers to the consumers
        assert got["kinds"] == [KIND[dtype]], (case, got)
        # a consumer warpgroup per 64 rows; a 128-byte K step is four MMAs per accumulator (gate, and up when
        # fused)
        mmas = 2 if act else 1
        assert got["mma"] == consumers * 4 * mmas, (case, got)
        # in the loop one wait per consumer that leaves the step just issued running (its one or two MMAs);
        # a wait of 0 only after the loop (ptxas serialising the chain would show 0-waits after every MMA)
        assert got["waits"] == {"0x0": consumers, "0x1": 0 if act else consumers, "0x2": consumers if act else 0}, (
            case, got)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16, torch.int8])
def test_sorted_copy_of_the_rows(dtype):
    """Row p of the copy is the input row of sorted pair p for p < total (zeros for padding entries), bit for
    bit; rows from total on are not written (the kernel's tiles stop at total)."""
    torch.manual_seed(3)
    t, k, e, h = 37, 2, 4, 96
    ids = torch.rand(t, e).topk(k, dim=-1).indices.to(torch.int32)
    sorted_ids, _, total = align_by_expert(ids, e, 128)
    x = torch.randint(-100, 100, (t, h), dtype=torch.int8) if dtype == torch.int8 else torch.randn(t, h).to(dtype)
    got = ws.gather_sorted(x, sorted_ids, total, t * k, k)
    n = int(total)
    assert got.shape == (sorted_ids.numel(), h) and got.dtype == dtype and n < sorted_ids.numel()
    live = sorted_ids[:n] < t * k
    want = torch.zeros(n, h, dtype=dtype)
    want[live] = x[(sorted_ids[:n][live] // k).long()]
    bits = torch.uint8 if dtype.itemsize == 1 else torch.int16
    assert torch.equal(got[:n].view(bits), want.view(bits))
    assert not live.all()  # the case has padding entries


def _weights(fmt=wf.FP8, k=256, group=None, pack=1, row_block=1, sfmt=wf.S_FLOAT):
    return [wf.WoWeight(fmt, 64, k, torch.zeros(1), None, sfmt, group or k, row_block)]


@pytest.mark.parametrize("weights,a_quant,a_group,experts,pairs,mode,want", [
    (_weights(), 1, 0, 8, 4095, None, 0),                       # by default off under 512 pairs an expert
    (_weights(), 1, 0, 8, 4096, None, 128),                     # ... the gate_up on it from there
    (_weights(), 1, 0, 128, 16384, None, 0),                    # gpt-oss-120b at 4096 tokens: 128 an expert
    (_weights(), 1, 128, 8, 8192, None, 0),                     # ... where the operands fit
    (_weights(), 1, 0, 8, 8192, "0", 0),                        # =0: never
    (_weights(), 1, 0, 8, 32, "1", 128),                        # opted in: 128-row blocks
    (_weights(), 1, 0, 8, 32, "128", 128),
    (_weights(), 1, 0, 8, 32, "64", 64),                        # ... or 64-row ones
    (_weights(), 1, 0, 8, 32, "up", 128),                       # the gate_up alone, 128-row blocks
    (_weights(), 1, 0, 8, 32, "yes", 0),                        # not a mode
    (_weights(wf.INT8), 2, 0, 128, 1024, "1", 128),
    (_weights(wf.BF16, sfmt=wf.S_NONE), 0, 0, 8, 512, "64", 64),
    (_weights(wf.INT8), 1, 0, 8, 4096, "1", 0),                 # fp8 activations x int8 weights
    (_weights(), 1, 128, 8, 4096, "1", 0),                      # 1 x 128 activation groups: scaled per K step
    (_weights(group=128), 1, 0, 8, 4096, "1", 0),               # per-group weight scales
    (_weights(wf.MXFP4, pack=8, group=32, sfmt=wf.S_E8M0), 0, 0, 8, 4096, "1", 0),
    (_weights(k=200), 1, 0, 8, 4096, "1", 0),                   # rows of 200 bytes: no TMA
    (_weights(wf.BF16, k=200, sfmt=wf.S_NONE), 0, 0, 8, 4096, "1", 128),  # ... 400 bytes in bf16
])
def test_routing_rule(monkeypatch, weights, a_quant, a_group, experts, pairs, mode, want):
    monkeypatch.setattr(mg, "cc_major", lambda device: 9)
    if mode is None:
        monkeypatch.delenv("QUANTC_MOE_WS", raising=False)
    else:
        monkeypatch.setenv("QUANTC_MOE_WS", mode)
    assert mg.ws_block_m(torch.device("cuda"), weights, a_quant, a_group, experts, pairs) == want


def test_rule_keeps_the_cpu_and_other_gpus_on_the_triton_kernel(monkeypatch):
    monkeypatch.setenv("QUANTC_MOE_WS", "1")
    assert mg.ws_block_m(torch.device("cpu"), _weights(), 1, 0, 8, 4096) == 0
    monkeypatch.setattr(mg, "cc_major", lambda device: 10)
    assert mg.ws_block_m(torch.device("cuda"), _weights(), 1, 0, 8, 4096) == 0


def _spied_layer(monkeypatch, kernel, wkey, akey, seed):
    """A small QuantMoE on 16-row table tiles and a batch for it, with ``mg.grouped_gemm`` spied: ``seen``
    gets each GEMM's (ws, BLOCK_M) and the Triton kernel runs it on that routing."""
    from quantc.plan import KernelConfig

    seen = []
    real = mg.grouped_gemm

    def spy(a, a_scale, w, routing, **kw):
        seen.append((kw.pop("ws"), kw["cfg"].block_m))
        return real(a, a_scale, w, routing, **kw)

    monkeypatch.setattr(mg, "grouped_gemm", spy)
    torch.manual_seed(seed)
    e, k, h, i, t = 4, 2, 128, 128, 6
    w13 = wf.quantize(torch.randn(e, 2 * i, h) * 0.1, wkey)
    w2 = wf.quantize(torch.randn(e, h, i) * 0.1, wkey)
    cfg = KernelConfig(16, 64, 128, 8, 4, 2)
    moe = QuantMoE(kernel, w13, w2, torch.randn(e, h).bfloat16(), top_k=k, activation="silu", act_key=akey,
                   configs=lambda tokens: (cfg, cfg))
    return seen, moe, torch.randn(t, h).bfloat16()


@pytest.mark.parametrize("kernel,wkey,akey,rows,routed", [
    ("moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token", 128, True), ("moe_bf16", "none", "none", 128, True),
    ("moe_int8", "int8_per_channel", "int8_dynamic_per_token", 64, True),
    ("moe_fp8_block", "fp8_block_128x128", "fp8_dynamic_group_128", 128, False)])
def test_quant_moe_hands_both_gemms_to_it(monkeypatch, kernel, wkey, akey, rows, routed):
    """Where the rule says yes, the GEMMs get routing blocks of the rule's rows (whatever the table's
    BLOCK_M) and ws=True (both at 128 rows, the down GEMM at 64); kernel ids outside the raw-sum ones are never asked. The spy runs the Triton kernel on that
    routing, so the layer's output can be held against the layer's without the route."""
    asked = []
    seen, moe, x = _spied_layer(monkeypatch, kernel, wkey, akey, 5)
    plain = moe(x).float()  # on the CPU the rule says no
    assert seen == [(False, 16)] * 2
    seen.clear()
    monkeypatch.setenv("QUANTC_MOE_WS", "1")  # both GEMMs opted in
    monkeypatch.setattr(mg, "ws_block_m", lambda *a: asked.append(a) or rows)
    out = moe(x).float()
    assert bool(asked) is routed
    # at 64-row blocks only the down GEMM takes it (the gate_up keeps the Triton kernel, at 64-row blocks)
    assert seen == ([(rows == 128, rows), (True, rows)] if routed else [(False, 16)] * 2), seen
    assert ((out - plain).abs().max() / plain.abs().max()).item() < 1e-2


def test_up_mode_hands_the_gate_up_alone_to_it(monkeypatch):
    """QUANTC_MOE_WS=up: the gate_up on the Gluon kernel at 128-row blocks, the down GEMM on the Triton
    kernel at those blocks (its table tile, fitted to shared memory on a GPU); the layer's output as the
    Triton path's."""
    seen, moe, x = _spied_layer(monkeypatch, "moe_fp8", "fp8_per_channel", "fp8_dynamic_per_token", 6)
    plain = moe(x).float()
    seen.clear()
    monkeypatch.setenv("QUANTC_MOE_WS", "up")
    monkeypatch.setattr(mg, "ws_block_m", lambda *a: 128)
    out = moe(x).float()
    assert seen == [(True, 128), (False, 128)], seen
    assert mg.ws_down(128) is False and mg.ws_down(0) is False
    monkeypatch.delenv("QUANTC_MOE_WS")  # the default rule routes the gate_up alone too
    assert mg.ws_down(128) is False
    monkeypatch.setenv("QUANTC_MOE_WS", "1")
    assert mg.ws_down(128) is True and mg.ws_down(64) is True
    assert ((out - plain).abs().max() / plain.abs().max()).item() < 1e-2


def test_launcher_refuses_routing_blocks_it_has_no_tile_for():
    """Routing aligned to 16-row blocks (a table's BLOCK_M) cannot feed 128- or 64-row tiles: a clear error
    before anything is launched."""
    ids = torch.randint(0, 4, (10, 2), dtype=torch.int32)
    sorted_ids, block_expert, total = align_by_expert(ids, 4, 16)
    with pytest.raises(ValueError, match=r"routing blocks of \(128, 64\) rows, not 16"):
        ws.moe_mm_ws(torch.zeros(sorted_ids.numel(), 64, dtype=torch.float8_e4m3fn), torch.ones(10, 1),
                     torch.zeros(4, 256, 64, dtype=torch.float8_e4m3fn), torch.ones(4, 256, 1), None, None,
                     sorted_ids, block_expert, total, 20, 2, 128, 1, 2)


def test_down_tile_at_128_row_blocks_is_fitted_to_shared_memory(monkeypatch):
    """The down GEMM's table tile taken to 128-row blocks (up mode) is fitted to the device's shared memory:
    fewer stages first, then narrower tiles; bf16 operands take twice fp8's bytes; unchanged where it fits."""
    from types import SimpleNamespace

    from quantc.plan import KernelConfig
    from quantc.runtime import moe as moe_mod

    from quantc.runtime.kernels import common

    queries = []
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: queries.append(device) or SimpleNamespace(shared_memory_per_block_optin=232448))
    monkeypatch.setattr(common, "_SMEM_OPTIN", {})  # the per-device cache starts empty and is restored after
    cuda = torch.device("cuda")
    bf16 = wf.WoWeight(wf.BF16, 64, 128, torch.zeros(2, 64, 128, dtype=torch.bfloat16))
    fp8 = wf.quantize(torch.randn(2, 64, 128), "fp8_per_channel")
    big = KernelConfig(128, 256, 128, 8, 8, 4)
    got = moe_mod._fit_down_tile(big, bf16, cuda)  # 4 x (32 + 64) KiB in bf16: over 227 KiB
    assert (got.num_stages, got.block_n) == (2, 256) and got.block_m == 128
    assert moe_mod._fit_down_tile(big, fp8, cuda) == big  # 4 x (16 + 32) KiB in fp8: fits
    assert moe_mod._fit_down_tile(big, bf16, torch.device("cpu")) == big
    assert queries == [cuda]  # one driver query per device, not one a call
