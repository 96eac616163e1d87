"""Quantizers: the torch reference against the spec's formulas, and the Triton activation quantizers
bit-exact against the reference, over every fp8 code and its rounding ties."""

import pytest
import torch

from quantc.keys import WEIGHT_KEYS
from quantc.runtime import quantize as Q
from quantc.runtime.kernels.act_quant import quantize_activation, reference

FP8_ACT_KEYS = ["fp8_dynamic_per_token", "fp8_dynamic_per_tensor", "fp8_dynamic_group_128"]


def _e4m3_values() -> torch.Tensor:
    """Every finite e4m3 value, ascending (the 254 non-NaN codes, -0 dropped)."""
    v = torch.arange(256, dtype=torch.uint8).view(Q.FP8).float()
    v = v[~v.isnan()]
    return torch.unique(v)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == Q.FP8 else t


def test_every_fp8_code_and_every_tie_rounds_to_nearest_even():
    vals = _e4m3_values()
    pos = vals[vals >= 0]
    mids = (pos[:-1] + pos[1:]) / 2  # exact in fp32: one more mantissa bit than e4m3
    # a static scale of 1, so x / scale == x
    x = torch.cat([vals, mids, -mids, mids * (1 + 2**-20), torch.tensor([127.8, 460.0, 1e30, 3e-3])])
    q, _ = Q.quant_fp8_per_tensor(x[None, :], torch.tensor(1.0))
    got = q.float()[0]
    assert torch.equal(got[: len(vals)], vals)
    lo, hi = pos[:-1], pos[1:]
    hi_code_even = (torch.arange(1, len(pos)) % 2) == 0  # consecutive codes: even/odd alternate
    want_tie = torch.where(hi_code_even, hi, lo)
    n = len(vals)
    assert torch.equal(got[n : n + len(mids)], want_tie)
    assert torch.equal(got[n + len(mids) : n + 2 * len(mids)], -want_tie)
    assert torch.equal(got[n + 2 * len(mids) : n + 3 * len(mids)], hi)  # just above the tie: up
    assert got[-4:].tolist() == [128.0, 448.0, 448.0, 0.00390625]  # carry across 2**7, saturation


@pytest.mark.parametrize("key", FP8_ACT_KEYS + ["fp8_static_per_tensor"])
def test_triton_fp8_quantizers_bit_exact_over_all_codes(key):
    vals = _e4m3_values()
    pos = vals[vals >= 0]
    mids = (pos[:-1] + pos[1:]) / 2
    row = torch.cat([vals, mids, -mids, mids * (1 - 2**-20)])
    row = torch.cat([row, torch.zeros(1024 - len(row) % 1024 if len(row) % 1024 else 0)])
    # rows with different amax so the scales are not 1 and x / scale rounds in fp32 too
    x = torch.stack([row, row * 0.37, row * 3.1e-3, torch.roll(row, 7) * 1.7])
    static = torch.tensor(0.9) if key == "fp8_static_per_tensor" else None
    q, s = quantize_activation(x, key, static)
    rq, rs = reference(x, key, static)
    assert torch.equal(_bits(q), _bits(rq))
    assert torch.equal(s.reshape(rs.shape), rs)


@pytest.mark.parametrize("key", ["int8_dynamic_per_token", "mxfp8"])
def test_triton_int8_and_mxfp8_quantizers_bit_exact(key):
    torch.manual_seed(0)
    ties = torch.arange(-127, 127) + 0.5  # amax 127 -> scale 1: every tie between two int8 values
    x = torch.cat([ties, torch.tensor([127.0, 2.0**-3, 3.0])])
    x = torch.stack([torch.cat([x, torch.zeros(512 - len(x))]), torch.randn(512) * 40, torch.randn(512) * 1e-6])
    q, s = quantize_activation(x, key)
    rq, rs = reference(x, key)
    assert torch.equal(_bits(q), _bits(rq))
    assert torch.equal(s, rs.reshape(s.shape))
    if key == "int8_dynamic_per_token":
        want = torch.round(ties)  # torch.round is half-to-even
        assert torch.equal(q[0, : len(ties)].float(), want)


def test_bf16_activations_quantize_like_their_fp32_values():
    torch.manual_seed(1)
    x = (torch.randn(7, 384) * 5).to(torch.bfloat16)
    for key in FP8_ACT_KEYS + ["int8_dynamic_per_token", "mxfp8"]:
        q, s = quantize_activation(x, key)
        rq, rs = reference(x, key)
        assert torch.equal(_bits(q), _bits(rq)), key
        assert torch.equal(s, rs.reshape(s.shape)), key


@pytest.mark.parametrize("m, k, one", [(66, 8192, True), (66, 16384, True), (66, 16384 + 128, False),
                                        (2, 8192 + 128, True), (2, 16384 + 128, False)])
def test_long_rows_one_or_two_passes_stay_exact(m, k, one):
    """Rows up to ONE_PASS_MAX are quantized from registers; longer per-token rows read twice. Both
    exact, at decode sizes (more warps a row) and above."""
    from quantc.runtime.kernels import act_quant

    assert act_quant.one_pass(k) == one
    assert act_quant.one_pass(128)  # groups always fit
    torch.manual_seed(2)
    x = (torch.randn(m, k) * torch.logspace(-3, 2, k)).to(torch.bfloat16)
    # the row passes are the per-token keys'; per-tensor and 1 x 128 groups ride along on the short inputs
    # (their own tests cover long ones), which keeps the interpreter's time down
    keys = ("fp8_dynamic_per_token", "int8_dynamic_per_token")
    for key in keys + (("fp8_dynamic_per_tensor", "fp8_dynamic_group_128") if m <= 2 else ()):
        q, s = quantize_activation(x, key)
        rq, rs = reference(x, key)
        assert torch.equal(_bits(q), _bits(rq)), key
        assert torch.equal(s, rs.reshape(s.shape)), key


@pytest.mark.parametrize("programs, block", [(1, 64), (3, 64), (8, 32)])
def test_per_tensor_amax_pass_reduces_every_program_and_leaves_its_counter_zero(programs, block, monkeypatch):
    """The dynamic per-tensor amax: a few programs stride over the input several chunks each (the last
    chunk ragged), write their maxima, and the last to arrive reduces them; the maximum is found wherever
    it lies (first element, a middle chunk, the ragged tail), the arrival counter is zero again after
    each call, and the quantizer built on it stays bit-exact (its second pass walks rows last first)."""
    from quantc.runtime.kernels import act_quant
    from quantc.runtime.kernels.common import tile_counters

    monkeypatch.setattr(act_quant, "AMAX_PROGRAMS", programs)
    monkeypatch.setattr(act_quant, "AMAX_BLOCK", block)
    torch.manual_seed(programs)
    m, k = 5, 4160  # 20800 elements: past one program's registers (ONE_PASS_MAX), so the quantizer takes
    # the amax pass; several strided chunks a program, the last one partial
    base = torch.randn(m, k).to(torch.bfloat16)
    for flat in (0, m * k // 2 + 5, m * k - 1):
        x = base.clone()
        x.view(-1)[flat] = -40.0
        amax = act_quant._amax(x)
        assert amax.item() == 40.0, flat
        assert tile_counters(x.device, 1)[0].item() == 0
        assert amax.untyped_storage().data_ptr() == act_quant._amax_parts(x.device, 1).untyped_storage().data_ptr()
        q, s = quantize_activation(x, "fp8_dynamic_per_tensor")
        rq, rs = reference(x, "fp8_dynamic_per_tensor")
        assert torch.equal(_bits(q), _bits(rq)) and torch.equal(s.reshape(rs.shape), rs), flat


@pytest.mark.parametrize("block, held", [(1024, 1), (512, 2), (256, 4), (16384, 1)])
def test_per_tensor_cooperative_kernel_stays_exact_and_leaves_its_slots_zero(block, held, monkeypatch):
    """The one-read dynamic per-tensor kernel (past COOP_MIN_NUMEL; lowered here so a small input takes
    it): held chunks and streamed chunks (the ragged last one included), the maximum first, in the middle
    and in the ragged tail; bit-exact against the reference, the amax pass never called, and its
    arrival / departure / amax slots zero again after each call (a CUDA-graph replay starts from them)."""
    from quantc.runtime.kernels import act_quant
    from quantc.runtime.kernels.common import tile_counters

    monkeypatch.setattr(act_quant, "COOP_MIN_NUMEL", 0)
    monkeypatch.setattr(act_quant, "COOP_BLOCK", block)
    monkeypatch.setattr(act_quant, "COOP_HELD", held)
    monkeypatch.setattr(act_quant, "_amax", lambda x: pytest.fail("the amax pass ran"))
    torch.manual_seed(block + held)
    m, k = 5, 4160  # 20800 elements: past the one-row path (ONE_PASS_MAX)
    base = (torch.randn(m, k) * torch.logspace(-3, 1, k)).to(torch.bfloat16)
    for flat in (0, m * k // 2 + 5, m * k - 1):
        x = base.clone()
        x.view(-1)[flat] = -40.0
        q, s = quantize_activation(x, "fp8_dynamic_per_tensor")
        rq, rs = reference(x, "fp8_dynamic_per_tensor")
        assert torch.equal(_bits(q), _bits(rq)) and torch.equal(s.reshape(rs.shape), rs), flat
        assert s.item() == pytest.approx(40.0 / 448.0)
        assert tile_counters(x.device, 3)[:3].tolist() == [0, 0, 0]


@pytest.mark.parametrize("m, k, switch, coop", [(1024, 4096, None, False), (1024, 4097, None, True),
                                                (1024, 4097, "0", False)])
def test_per_tensor_path_by_size_and_switch(m, k, switch, coop, monkeypatch):
    """The cooperative kernel from COOP_MIN_NUMEL elements (H100: below it the two-kernel path is
    faster), never with QUANTC_PER_TENSOR_COOP=0. Sizes only: the kernels are stubbed."""
    from quantc.runtime.kernels import act_quant

    calls = []
    monkeypatch.setattr(act_quant, "_per_tensor_coop", lambda x, q, s: calls.append("coop"))
    monkeypatch.setattr(act_quant, "_amax", lambda x: calls.append("amax") or torch.ones(()))
    monkeypatch.setattr(act_quant, "launch", lambda *a, **kw: calls.append("quantize"))
    if switch is None:
        monkeypatch.delenv("QUANTC_PER_TENSOR_COOP", raising=False)
    else:
        monkeypatch.setenv("QUANTC_PER_TENSOR_COOP", switch)
    quantize_activation(torch.zeros(m, k, dtype=torch.bfloat16), "fp8_dynamic_per_tensor")
    assert calls == (["coop"] if coop else ["amax", "quantize"])


def test_per_tensor_cooperative_grid_and_register_cap():
    """As many programs as are resident (or as there are chunks), each at least HELD chunks; the register
    cap lets COOP_PER_SM programs share an SM's 65536 registers."""
    from quantc.runtime.kernels import act_quant as A

    assert A.coop_grid(A.COOP_BLOCK * 1000, 264) == (264, max(A.COOP_HELD, 4))
    assert A.coop_grid(A.COOP_BLOCK * 10 + 1, 264) == (11, A.COOP_HELD)
    assert A.coop_grid(1, 264) == (1, A.COOP_HELD)
    assert A.coop_maxnreg(8, 2) == 128 and A.coop_maxnreg(4, 4) == 128 and A.coop_maxnreg(4, 1) == 255
    assert A.coop_maxnreg(16, 1) * 32 * 16 <= 65536 and A.coop_maxnreg(12, 2) % 8 == 0


@pytest.mark.parametrize("m, k, amax_pass", [(1, 4096, False), (3, 2048, False), (2, 8192, False), (1, 16384, False),
                                             (1, 16512, True), (5, 4096, True)])
def test_dynamic_per_tensor_at_decode_sizes_takes_one_launch_and_stays_exact(m, k, amax_pass, monkeypatch):
    """Up to ONE_PASS_MAX elements in all, the dynamic per-tensor quantizer runs the per-token kernel on
    the tensor as one row (no amax pass: one launch); beyond, the amax pass first. Bit-exact either way,
    the scale a 0-d tensor."""
    from quantc.runtime.kernels import act_quant

    calls = []
    real = act_quant._amax
    monkeypatch.setattr(act_quant, "_amax", lambda x: calls.append(x.shape) or real(x))
    torch.manual_seed(m * k)
    x = (torch.randn(m, k) * torch.logspace(-2, 1, k)).to(torch.bfloat16)
    q, s = quantize_activation(x, "fp8_dynamic_per_tensor")
    rq, rs = reference(x, "fp8_dynamic_per_tensor")
    assert q.shape == (m, k) and s.shape == ()
    assert torch.equal(_bits(q), _bits(rq)) and torch.equal(s, rs.reshape(()))
    assert bool(calls) == amax_pass


def test_dynamic_per_tensor_one_launch_switch_off_takes_the_amax_pass(monkeypatch):
    """PER_TENSOR_ONE_LAUNCH = False (bench_quant's comparison): the amax pass at decode sizes too, same bits."""
    from quantc.runtime.kernels import act_quant

    x = (torch.randn(2, 1024) * 3).to(torch.bfloat16)
    q1, s1 = quantize_activation(x, "fp8_dynamic_per_tensor")
    calls = []
    real = act_quant._amax
    monkeypatch.setattr(act_quant, "_amax", lambda t: calls.append(t.shape) or real(t))
    monkeypatch.setattr(act_quant, "PER_TENSOR_ONE_LAUNCH", False)
    q2, s2 = quantize_activation(x, "fp8_dynamic_per_tensor")
    assert calls == [(2, 1024)] and torch.equal(_bits(q1), _bits(q2)) and torch.equal(s1, s2)


@pytest.mark.parametrize("key", FP8_ACT_KEYS + ["int8_dynamic_per_token", "mxfp8"])
def test_quantizers_take_zero_rows(key):
    """An empty batch (M = 0) gives empty elements and well-defined scales: per-tensor the floored amax's
    scale (1e-12 / 448), never an uninitialized value."""
    q, s = quantize_activation(torch.zeros(0, 256, dtype=torch.bfloat16), key)
    assert q.shape == (0, 256)
    if key == "fp8_dynamic_per_tensor":
        assert s.shape == () and s.item() == pytest.approx(1e-12 / 448.0)
    else:
        assert s.shape[0] == 0


def test_static_per_tensor_without_a_scale_is_an_error():
    with pytest.raises(ValueError, match="needs the checkpoint's input_scale"):
        quantize_activation(torch.randn(2, 32), "fp8_static_per_tensor")


def test_amax_floor_keeps_zero_rows_finite():
    q, s = Q.quant_fp8_per_token(torch.zeros(2, 16))
    assert torch.all(s == 1e-12 / 448.0) and torch.all(q.float() == 0)


# ---------------------------------------------------------------------------- e8m0 and fp4


def test_e8m0_exponent_follows_ocp_mx():
    # floor(log2(amax)) - emax(e4m3 = 8): amax in [256, 512) -> exponent 0 -> code 127
    amax = torch.tensor([256.0, 511.9, 512.0, 1.0, 0.75])
    assert Q.e8m0_exponent(amax, Q.FP8_EMAX).tolist() == [0, 0, 1, -8, -9]
    assert Q.e8m0_exponent(torch.tensor([6.0, 4.0, 3.99]), Q.FP4_EMAX).tolist() == [0, 0, -1]
    assert Q.e8m0_to_float(torch.tensor([127, 128, 0, 255], dtype=torch.uint8))[:3].tolist() == [1.0, 2.0, 2.0**-127]


def test_every_e2m1_code_and_tie():
    grid = torch.tensor(Q.E2M1_VALUES)
    codes = Q.round_e2m1(torch.cat([grid, -grid[1:]]))
    assert torch.equal(Q.e2m1_to_float(codes), torch.cat([grid, -grid[1:]]))
    assert len(set(codes.tolist())) == 15
    ties = (grid[:-1] + grid[1:]) / 2  # 0.25 0.75 1.25 1.75 2.5 3.5 5
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0])  # to the even mantissa
    assert torch.equal(Q.e2m1_to_float(Q.round_e2m1(ties)), want)
    assert Q.e2m1_to_float(Q.round_e2m1(torch.tensor([100.0, -7.0]))).tolist() == [6.0, -6.0]


def test_nibble_packing_round_trips():
    codes = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    packed = Q.pack_nibbles(codes)
    assert packed.shape == (4, 32)
    assert torch.equal(packed[0, 0], (codes[0, 0] | (codes[0, 1] << 4)))
    assert torch.equal(Q.unpack_nibbles(packed), codes)


# ---------------------------------------------------------------------------- weights

QUANTIZED_KEYS = [k for k in WEIGHT_KEYS if k != "none"]
SQNR_FLOOR = {"fp4_e2m1": 15.0, "int4": 18.0, "uint4": 18.0, "fp8_e4m3": 28.0, "int8": 38.0}


def _sqnr(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum()))


def test_every_weight_key_has_a_quantizer():
    assert set(Q.WEIGHT_QUANTIZERS) == set(QUANTIZED_KEYS)


@pytest.mark.parametrize("key", QUANTIZED_KEYS)
def test_weight_quantizers_shapes_and_sqnr(key):
    torch.manual_seed(2)
    w = torch.randn(192, 256) * 0.02
    t = Q.quantize_weight(w.to(torch.bfloat16), key)
    dq = Q.dequantize_weight(t, key)
    assert dq.shape == w.shape
    assert _sqnr(w, dq) > SQNR_FLOOR[WEIGHT_KEYS[key].dtype], key
    k = WEIGHT_KEYS[key]
    scale_name = "weight_scale_inv" if key == "fp8_block_128x128" else "weight_scale"
    s = t[scale_name]
    if k.scale.granularity == "tensor":
        assert s.shape == ()
    elif k.scale.granularity == "channel":
        assert s.shape == (192, 1)
    elif k.scale.granularity == "block":
        assert s.shape == (2, 2)
    else:
        assert s.shape == (192, 256 // k.group_k)


@pytest.mark.parametrize("key", ["fp8_per_tensor", "fp8_per_channel", "fp8_block_128x128", "mxfp8"])
def test_fp8_weights_on_the_grid_round_trip_exactly(key):
    vals = _e4m3_values()
    w = vals[torch.randint(0, len(vals), (256, 256))]
    w[:, 0] = 448.0  # every row, block and 1x32 group... (groups: below) holds the format max
    w[:, ::32] = 448.0
    t = Q.quantize_weight(w, key)
    assert torch.equal(Q.dequantize_weight(t, key), w)


def test_fp8_block_ragged_last_block():
    torch.manual_seed(3)
    w = torch.randn(576, 256)
    w[512:] *= 100  # the ragged 64-row block has its own scale
    t = Q.quantize_weight(w, "fp8_block_128x128")
    assert t["weight_scale_inv"].shape == (5, 2)
    want = w[512:, :128].abs().amax() / 448.0
    assert torch.equal(t["weight_scale_inv"][4, 0], want)
    assert _sqnr(w, Q.dequantize_weight(t, "fp8_block_128x128")) > 28


def test_int4_codes_stay_in_range_and_asym_covers_skewed_groups():
    torch.manual_seed(4)
    w = torch.rand(64, 128) + 1.0  # all positive: asym uses the full range
    sym = Q.quantize_weight(w, "int4_group_32")
    codes = Q.unpack_nibbles(sym["weight_packed"]).to(torch.int32)
    codes = torch.where(codes >= 8, codes - 16, codes)
    assert codes.min() >= -7 and codes.max() == 7
    asym = Q.quantize_weight(w, "int4_group_32_asym")
    assert asym["weight_zero_point"].shape == (64, 4)
    assert _sqnr(w, Q.dequantize_weight(asym, "int4_group_32_asym")) > _sqnr(w, Q.dequantize_weight(sym, "int4_group_32"))


def test_nvfp4_two_level_scale():
    torch.manual_seed(5)
    w = torch.randn(32, 64)
    t = Q.quantize_weight(w, "nvfp4")
    assert t["weight_scale"].dtype == Q.FP8 and t["weight_scale"].shape == (32, 4)
    assert torch.equal(t["weight_scale_2"], w.abs().amax() / (448.0 * 6.0))
    # the largest block scale lands at the top of e4m3
    assert t["weight_scale"].float().max() == 448.0


def test_unknown_weight_key_is_an_error():
    with pytest.raises(KeyError):
        Q.quantize_weight(torch.ones(4, 32), "int3_group_7")


@pytest.mark.parametrize("key,k", [("fp8_dynamic_group_128", 704), ("mxfp8", 80)])
def test_group_quantizers_refuse_a_k_their_group_does_not_divide(key, k):
    """A ragged last group has no scale slot: refused before any launch (it would write past the scales)."""
    with pytest.raises(ValueError, match=f"{key} needs K divisible by"):
        quantize_activation(torch.randn(2, k).to(torch.bfloat16), key)


def test_hardware_e4m3_cast_only_for_compiled_gpu_kernels(monkeypatch):
    from quantc.runtime.kernels.common import hw_cast

    monkeypatch.delenv("QUANTC_HW_CAST", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert hw_cast(torch.device("cuda", 0)) and not hw_cast(torch.device("cpu"))
    monkeypatch.setenv("QUANTC_HW_CAST", "0")
    assert not hw_cast(torch.device("cuda", 0))
    monkeypatch.delenv("QUANTC_HW_CAST")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter's cast loses carries: explicit rounding
    assert not hw_cast(torch.device("cuda", 0))
