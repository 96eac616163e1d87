"""Tensor parallelism from packed checkpoints (issue 14): AWQ, GPTQ, compressed-tensors pack-quantized
int4, nvfp4 and fp8 block, ModelOpt NVFP4. Each rank reads only its slices of the packed tensors
(safetensors ``get_slice``) and the whole scalars, and converts them; the result must be bit-identical
to converting the whole module and slicing it, for both ranks of world=2 and both split kinds."""

import types

import pytest
import torch

import quantc
from quantc.runtime import apply_plan
from quantc.runtime.apply_plan import module_tensors
from quantc.runtime.parallel import global_shape, shard_tensor
from quantc.runtime.prequantized import checkpoint_tensors, packed_slices
from quantc.runtime.registry import LAUNCHERS
from quantc.runtime.weights import WeightSource
from tests.runtime.test_apply_prequantized import FORMATS, _checkpoint, _model
from tests.runtime.tiny_model import Tiny

WORLD = 2
# the tensor each format's test counts as "read by its slice": exactly half its bytes per rank
PRIMARY = {"awq": "qweight", "gptq_asym": "qweight", "gptq_int8": "qweight", "ct_int4_asym": "weight_packed",
           "ct_nvfp4": "weight_packed", "modelopt_nvfp4": "weight", "ct_fp8_block": "weight"}


def _plan(model, tmp_path):
    cfg = tmp_path / "q.yaml"
    cfg.write_text("quantc: 1\n")
    # W4A4 nvfp4 needs sm_100 (the plan is only compiled here)
    gpu = "b200" if model.config.quantization_config.get("quant_algo") == "NVFP4" or \
        model.config.quantization_config.get("format") == "nvfp4-pack-quantized" else "h100"
    return quantc.compile(str(cfg), model, gpu=gpu, tp=WORLD)


def _model_for(fmt):
    """The tiny model of the prequantized tests; fp8 block needs shards that are whole 128-blocks."""
    if fmt != "ct_fp8_block":
        return _model(FORMATS[fmt][1])
    torch.manual_seed(0)
    m = Tiny(h=256, i=512, n=1).bfloat16()
    m.config = types.SimpleNamespace(quantization_config=FORMATS[fmt][1])
    return m


class _Reads:
    """Bytes each tensor of a file-backed WeightSource is read with (whole or sliced)."""

    def __init__(self, monkeypatch):
        self.bytes: dict[str, int] = {}
        real_get, real_part = WeightSource.__getitem__, WeightSource.read_part
        reads = self

        def get(src, key):
            t = real_get(src, key)
            if src._file_of:
                reads.bytes[key] = reads.bytes.get(key, 0) + t.numel() * t.element_size()
            return t

        def part(src, key, bounds):
            if bounds is None or not src._file_of:
                return real_part(src, key, bounds)  # a whole read goes through __getitem__
            t = real_part(src, key, bounds)
            reads.bytes[key] = reads.bytes.get(key, 0) + t.numel() * t.element_size()
            return t

        monkeypatch.setattr(WeightSource, "__getitem__", get)
        monkeypatch.setattr(WeightSource, "read_part", part)


def _whole_then_sliced(mp, whole: dict, rank: int) -> dict[str, torch.Tensor]:
    """The reference: convert the module's whole tensors, then take this rank's shard of each."""
    full_n, full_k = global_shape(mp, WORLD)
    out = checkpoint_tensors(whole, mp.weight, full_n, full_k)
    k_perm = out.pop("k_perm", None)
    out = {name: shard_tensor(t, mp, full_n, full_k, rank, WORLD) for name, t in out.items()}
    if k_perm is not None:
        out["k_perm"] = k_perm
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    as_bytes = (lambda t: t.contiguous().view(torch.uint8)) if a.dtype.itemsize == 1 else (lambda t: t)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(as_bytes(a), as_bytes(b))


@pytest.mark.parametrize("fmt", sorted(PRIMARY))
def test_each_rank_reads_and_converts_only_its_slices(fmt, tmp_path, monkeypatch):
    writer, qconfig, key, _ = FORMATS[fmt]
    model = _model_for(fmt)
    plan = _plan(model, tmp_path)
    path, _ = _checkpoint(model, plan, writer, tmp_path)
    whole_file = WeightSource.from_path(path)
    planned = [mp for mp in plan.modules if mp.kind == "linear" and mp.kernel is not None]
    assert {mp.tp_split for mp in planned} == {"column", "row"} and {mp.weight for mp in planned} == {key}
    wholes = {mp.name: whole_file.under(mp.name) for mp in planned}
    reads = _Reads(monkeypatch)
    for mp in planned:
        stored = sum(t.numel() * t.element_size() for t in wholes[mp.name].values())
        mod = torch.nn.Linear(*reversed(global_shape(mp, WORLD)), bias=False, device="meta")
        for rank in range(WORLD):
            reads.bytes.clear()
            src = WeightSource.from_path(path)
            got = module_tensors(mp, mod, src, rank, WORLD)
            want = _whole_then_sliced(mp, wholes[mp.name], rank)
            assert set(got) == set(want), (mp.name, rank)
            for name in want:
                assert _same(got[name], want[name]), (mp.name, rank, name)
            # what the launcher builds from them (the per-rank module's buffers) is the same too
            prep = LAUNCHERS[mp.kernel].prepare
            got_bufs, want_bufs = prep(dict(got), key, mp.n, mp.k), prep(dict(want), key, mp.n, mp.k)
            assert list(got_bufs) == list(want_bufs)
            assert all(_same(got_bufs[n], want_bufs[n]) for n in want_bufs), (mp.name, rank)
            # every packed tensor was read by its slice: about half the module's bytes per rank
            assert set(reads.bytes) == {f"{mp.name}.{n}" for n in wholes[mp.name]}, mp.name  # g_idx: whole
            primary = wholes[mp.name][PRIMARY[fmt]]
            assert reads.bytes[f"{mp.name}.{PRIMARY[fmt]}"] == primary.numel() * primary.element_size() // WORLD
            assert sum(reads.bytes.values()) < 0.56 * stored, (mp.name, rank, reads.bytes, stored)


@pytest.mark.parametrize("fmt,g_name,packed", [("gptq_sym_act_order", "g_idx", "qweight"),
                                                ("ct_int4_act_order", "weight_g_idx", "weight_packed")])
def test_act_order_column_shards_keep_the_permutation_and_row_shards_are_refused(fmt, g_name, packed, tmp_path,
                                                                                  monkeypatch):
    """Act-order (GPTQ g_idx, compressed-tensors weight_g_idx): a column shard reads its rows of N and the
    whole g_idx (every rank permutes its input the same way); a K slice would refer to groups anywhere,
    so a row-parallel module is read whole and refused exactly as before (apply with tensor_parallel=1)."""
    writer, qconfig, key, _ = FORMATS[fmt]
    model = _model(qconfig)
    plan = _plan(model, tmp_path)
    path, _ = _checkpoint(model, plan, writer, tmp_path)
    by_split = {}
    for mp in plan.modules:
        if mp.kind == "linear" and mp.kernel is not None:
            by_split.setdefault(mp.tp_split, mp)
    col, row = by_split["column"], by_split["row"]
    whole = WeightSource.from_path(path).under(col.name)
    reads = _Reads(monkeypatch)
    mod = torch.nn.Linear(*reversed(global_shape(col, WORLD)), bias=False, device="meta")
    got = module_tensors(col, mod, WeightSource.from_path(path), 1, WORLD)
    want = _whole_then_sliced(col, whole, 1)
    assert set(got) == set(want) and "k_perm" in got
    assert all(_same(got[n], want[n]) for n in want)
    assert reads.bytes[f"{col.name}.{packed}"] == whole[packed].numel() * 4 // WORLD
    assert reads.bytes[f"{col.name}.{g_name}"] == whole[g_name].numel() * 4  # whole: the permutation of all K
    mod = torch.nn.Linear(*reversed(global_shape(row, WORLD)), bias=False, device="meta")
    with pytest.raises(ValueError, match="act-order weights \\(g_idx\\) permute K across the row-parallel shards"):
        module_tensors(row, mod, WeightSource.from_path(path), 0, WORLD)


def test_a_shard_edge_inside_a_packed_word_or_a_group_reads_whole():
    """Bounds that cut an int32 word (8 codes) or a group fall back to the whole read (None)."""
    awq = {"qweight": (256, 16), "qzeros": (8, 16), "scales": (8, 128)}  # (N, K) = (128, 256), G = 32
    key = "int4_group_32_asym"
    assert packed_slices(awq, None, key, 128, 256, "column", 64, 128) == {
        "qweight": (1, 8, 16), "qzeros": (1, 8, 16), "scales": (1, 64, 128)}
    assert packed_slices(awq, None, key, 128, 256, "column", 60, 124) is None  # cuts a word along N
    assert packed_slices(awq, None, key, 128, 256, "row", 128, 256) == {
        "qweight": (0, 128, 256), "qzeros": (0, 4, 8), "scales": (0, 4, 8)}
    assert packed_slices(awq, None, key, 128, 256, "row", 136, 256) is None  # cuts a group along K
    gptq = {"qweight": (32, 128), "qzeros": (8, 16), "scales": (8, 128), "g_idx": (256,)}
    plain = torch.arange(256, dtype=torch.int32) // 32
    assert packed_slices(gptq, plain, key, 128, 256, "row", 0, 128) == {
        "qweight": (0, 0, 16), "qzeros": (0, 0, 4), "scales": (0, 0, 4)}  # a plain g_idx is dropped
    assert packed_slices(gptq, plain.flip(0), key, 128, 256, "row", 0, 128) is None  # act-order
    assert packed_slices(gptq, None, key, 128, 256, "column", 64, 128)["g_idx"] is None  # whole
    # neither AWQ's nor GPTQ's shape for this (N, K): no slices, the whole read reports it
    assert packed_slices({**awq, "qweight": (64, 64)}, None, key, 128, 256, "column", 0, 64) is None


def test_compressed_tensors_and_modelopt_edges_that_cut_a_word_a_group_or_a_block_read_whole():
    """(N, K) = (256, 512). Packed words (8 int4 codes, 2 fp4 codes), scale groups (G, 16) and fp8 scale
    blocks (128) must not be cut by a shard edge; scalars are read whole; weight_shape must be right."""
    n, k, key = 256, 512, "int4_group_32_asym"
    ct = {"weight_packed": (n, k // 8), "weight_scale": (n, k // 32), "weight_zero_point": (n // 8, k // 32),
          "weight_shape": (2,)}
    shape = torch.tensor([n, k])
    assert packed_slices(ct, None, key, n, k, "column", 128, 256, shape) == {
        "weight_packed": (0, 128, 256), "weight_scale": (0, 128, 256), "weight_zero_point": (0, 16, 32)}
    assert packed_slices(ct, None, key, n, k, "column", 124, 256, shape) is None  # cuts a zero-point word
    assert packed_slices(ct, None, key, n, k, "row", 256, 512, shape) == {
        "weight_packed": (1, 32, 64), "weight_scale": (1, 8, 16), "weight_zero_point": (1, 8, 16)}
    assert packed_slices(ct, None, key, n, k, "row", 240, 512, shape) is None  # cuts a group of 32
    assert packed_slices(ct, None, key, n, k, "column", 0, 128, torch.tensor([n, k // 2])) is None  # wrong
    assert packed_slices(ct, None, key, n, k, "column", 0, 128) is None  # weight_shape stored, value not given
    act = {"weight_packed": (n, k // 8), "weight_scale": (n, k // 32), "weight_g_idx": (k,)}
    plain = torch.arange(k, dtype=torch.int32) // 32
    assert packed_slices(act, plain, "int4_group_32", n, k, "row", 0, 256) == {
        "weight_packed": (1, 0, 32), "weight_scale": (1, 0, 8)}  # a plain weight_g_idx is dropped
    assert packed_slices(act, plain.roll(1), "int4_group_32", n, k, "row", 0, 256) is None  # act-order
    assert packed_slices(act, None, "int4_group_32", n, k, "row", 0, 256) is None  # g_idx not given
    modelopt = {"weight": (n, k // 2), "weight_scale": (n, k // 16), "weight_scale_2": ()}
    assert packed_slices(modelopt, None, "nvfp4", n, k, "row", 256, 512) == {
        "weight": (1, 128, 256), "weight_scale": (1, 16, 32), "weight_scale_2": None}
    assert packed_slices(modelopt, None, "nvfp4", n, k, "row", 8, 264) is None  # cuts a group of 16
    ct_fp4 = {"weight_packed": (n, k // 2), "weight_scale": (n, k // 16), "weight_global_scale": (1,),
              "input_global_scale": (1,)}
    assert packed_slices(ct_fp4, None, "nvfp4", n, k, "column", 0, 128) == {
        "weight_packed": (0, 0, 128), "weight_scale": (0, 0, 128), "weight_global_scale": None,
        "input_global_scale": None}
    assert packed_slices({**ct_fp4, "weight_scale": (n, k // 32)}, None, "nvfp4", n, k, "column", 0, 128) is None
    block = {"weight": (n, k), "weight_scale": (n // 128, k // 128)}
    assert packed_slices(block, None, "fp8_block_128x128", n, k, "row", 256, 512) == {
        "weight": (1, 256, 512), "weight_scale": (1, 2, 4)}
    assert packed_slices(block, None, "fp8_block_128x128", n, k, "column", 64, 128) is None  # cuts a block


def test_a_bad_packed_tensor_is_reported_with_the_whole_shapes(tmp_path):
    """Tensors that are not what the layout says are reported with the module's full shapes, exactly
    as with tensor_parallel=1: a wrong shape is never sliced (a rank's slice of it could convert
    cleanly), and a shard that fails to convert falls back to the whole read."""
    from safetensors.torch import save_file

    writer, qconfig, key, _ = FORMATS["awq"]
    model = _model(qconfig)
    plan = _plan(model, tmp_path)
    mp = next(m for m in plan.modules if m.kind == "linear" and m.tp_split == "column")
    full_n, full_k = global_shape(mp, WORLD)
    mod = torch.nn.Linear(full_k, full_n, bias=False, device="meta")
    good, _ = writer(torch.randn(full_n, full_k))
    cases = [({"scales": good["scales"][:, : full_n - 8]}, True,
              rf"AWQ: scales: shape \({full_k // 32}, {full_n - 8}\), expected \({full_k // 32}, {full_n}\)"),
             ({"qweight": good["qweight"].float()}, False,
              rf"the weights hold qweight \(float32 \({full_k}, {full_n // 8}\)\), .* which is no pre-quantized "
              rf"layout of {key} \(N, K\) = \({full_n}, {full_k}\); by name: AWQ, GPTQ \(dtype or shape differ\)")]
    for i, (bad, whole, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.safetensors"
        save_file({f"{mp.name}.{n}": t.contiguous() for n, t in {**good, **bad}.items()}, str(path))
        assert (apply_plan._packed_shard_source(mp, WeightSource.from_path(path), full_n, full_k, 0) is None) == whole
        for rank in range(WORLD):
            with pytest.raises(ValueError, match=message):
                module_tensors(mp, mod, WeightSource.from_path(path), rank, WORLD)


@pytest.mark.parametrize("fmt,bad,whole,message", [
    ("ct_int4_asym", lambda g, n, k: {"weight_shape": torch.tensor([n, k - 32])}, True,
     lambda n, k: rf"compressed-tensors pack-quantized int4: weight_shape says \[{n}, {k - 32}\], the plan says "
                  rf"\[{n}, {k}\]"),
    ("modelopt_nvfp4", lambda g, n, k: {"weight_scale": g["weight_scale"][:, : k // 16 - 2]}, True,
     lambda n, k: rf"weight_scale is float8_e4m3fn \({n}, {k // 16 - 2}\), nvfp4 needs float8_e4m3fn \({n}, {k // 16}\)"),
    ("ct_nvfp4", lambda g, n, k: {"weight_global_scale": torch.ones(2)}, False,
     lambda n, k: r"weight_global_scale: shape \(2,\), expected \(1,\)"),
])
def test_a_bad_compressed_tensors_or_modelopt_tensor_is_reported_with_the_whole_shapes(fmt, bad, whole, message,
                                                                                       tmp_path):
    """A wrong weight_shape or scale shape is never sliced (the whole read reports it with the module's
    full shapes, as with tensor_parallel=1); a bad scalar read whole fails the shard's conversion, which
    falls back to the whole read and the same message."""
    from safetensors.torch import save_file

    writer, qconfig, key, _ = FORMATS[fmt]
    model = _model_for(fmt)
    plan = _plan(model, tmp_path)
    for split in ("column", "row"):
        mp = next(m for m in plan.modules if m.kind == "linear" and m.tp_split == split and m.kernel is not None)
        full_n, full_k = global_shape(mp, WORLD)
        mod = torch.nn.Linear(full_k, full_n, bias=False, device="meta")
        good, _ = writer(torch.randn(full_n, full_k))
        path = tmp_path / f"bad_{split}.safetensors"
        save_file({f"{mp.name}.{n}": t.contiguous() for n, t in {**good, **bad(good, full_n, full_k)}.items()},
                  str(path))
        assert (apply_plan._packed_shard_source(mp, WeightSource.from_path(path), full_n, full_k, 0) is None) == whole
        with pytest.raises(ValueError, match=message(full_n, full_k)):
            checkpoint_tensors(WeightSource.from_path(path).under(mp.name), key, full_n, full_k)  # as tp=1 says
        for rank in range(WORLD):
            with pytest.raises(ValueError, match=message(full_n, full_k)):
                module_tensors(mp, mod, WeightSource.from_path(path), rank, WORLD)


def test_compressed_tensors_pack_quantized_int8_slices_convert_like_the_whole():
    """pack-quantized int8 (int32 words of 4 codes + 128 along K, per-row scales): a column shard reads
    its rows of both, a row shard its words of K and the whole scale column; both convert bit-identically."""
    from quantc.runtime import quantize as Q

    n, k, key = 64, 256, "int8_per_channel"
    t = Q.quantize_weight(torch.randn(n, k), key)
    whole = {"weight_packed": (t["weight"].view(torch.uint8) ^ 0x80).contiguous().view(torch.int32),
             "weight_scale": t["weight_scale"], "weight_shape": torch.tensor([n, k])}
    shapes = {name: tuple(v.shape) for name, v in whole.items()}
    ref = checkpoint_tensors(whole, key, n, k)
    for split, lo, hi in (("column", 32, 64), ("row", 128, 256)):
        bounds = packed_slices(shapes, None, key, n, k, split, lo, hi, whole["weight_shape"])
        part = {name: whole[name] if b is None else whole[name].narrow(b[0], b[1], b[2] - b[1]) for name, b in bounds.items()}
        sn, sk = (hi - lo, k) if split == "column" else (n, hi - lo)
        got = checkpoint_tensors(part, key, sn, sk)
        want = {"weight": ref["weight"][lo:hi] if split == "column" else ref["weight"][:, lo:hi],
                "weight_scale": ref["weight_scale"][lo:hi] if split == "column" else ref["weight_scale"]}
        assert set(got) == set(want) and all(_same(got[x], want[x]) for x in want), split
    assert packed_slices(shapes, None, key, n, k, "row", 130, 256, whole["weight_shape"]) is None  # cuts a word
