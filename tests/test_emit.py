"""Emission from kernel tables: exact entry, nearest tuned shape, defaults, the H100 fallback for a
GPU without its own entry, --tables on top of the shipped tables, and block clamping."""

import json

from quantc.emit import load_tables, lookup, read_table
from quantc.lower import lower
from tests.builders import llama_like, make_config


def _table(path, gpu, entries, defaults=None):
    doc = {"format": "quantc-kernels", "version": 1, "gpu": gpu, "defaults": defaults or {}, "entries": entries}
    path.write_text(json.dumps(doc))
    return path


def _row(kernel, n, k, m_max, bm, bn=128, bk=128, warps=4):
    return {"kernel": kernel, "n": n, "k": k, "m_max": m_max, "block_m": bm, "block_n": bn, "block_k": bk, "num_warps": warps}


def test_exact_then_nearest_then_default(tmp_path):
    t = read_table(_table(tmp_path / "h100.json", "h100", [
        _row("fp8_scaled_gemm", 4096, 4096, 16, 16), _row("fp8_scaled_gemm", 4096, 4096, 1024, 64),
        _row("fp8_scaled_gemm", 4096, 4096, 8192, 128, warps=8),
    ], {"fp8_scaled_gemm": [{"m_max": 64, "block_m": 32, "block_n": 64, "block_k": 64}]}))
    exact = lookup([t], [], "fp8_scaled_gemm", 4096, 4096, "e")
    assert exact.source == "tuned (h100)"
    assert [m for m, _ in exact.buckets] == [16, 1024, 2**31 - 1]  # last bucket covers every larger M
    assert exact.config_for(20000).num_warps == 8
    near = lookup([t], [], "fp8_scaled_gemm", 6144, 4096, "e")
    assert near.source == "nearest tuned shape n=4096 k=4096 (h100)"
    far = lookup([t], [], "fp8_scaled_gemm", 128, 65536, "e")
    assert far.source == "default (h100)" and far.config_for(1).block_m == 32
    none = lookup([t], [], "int8_gemm", 4096, 4096, "e")
    assert none.source == "built-in fallback (no table)"


def test_h100_table_serves_a_gpu_without_an_entry(tmp_path):
    h200 = read_table(_table(tmp_path / "h200.json", "h200", [_row("fp8_block_gemm", 7168, 2048, 64, 16)]))
    h100 = read_table(_table(tmp_path / "h100.json", "h100", [_row("int8_gemm", 4096, 4096, 64, 16)]))
    got = lookup([h200], [h100], "int8_gemm", 4096, 4096, "e", "h200")
    assert got.source == "tuned (h100 table; no h200 entry)"
    assert lookup([h200], [h100], "fp8_block_gemm", 7168, 2048, "e", "h200").source == "tuned (h200)"


def test_blocks_are_clamped_to_the_problem(tmp_path):
    t = read_table(_table(tmp_path / "h100.json", "h100", [], {"fp8_scaled_gemm": [{"m_max": 64, "block_m": 64, "block_n": 256, "block_k": 256}]}))
    e = lookup([t], [], "fp8_scaled_gemm", 64, 48, "e")
    cfg = e.config_for(1)
    assert cfg.block_n == 64 and cfg.block_k == 64


def test_user_tables_come_before_the_shipped_ones(tmp_path):
    _table(tmp_path / "h100.json", "h100", [_row("fp8_scaled_gemm", 256, 256, 64, 16, bn=32, bk=32)])
    tables = load_tables("h100", (str(tmp_path),))
    assert tables[0].path == str(tmp_path / "h100.json") and len(tables) == 2
    r = lower(make_config(linear="fp8_per_channel"), llama_like(), tables_dirs=(str(tmp_path),))
    entry = r.plan.kernels["fp8_scaled_gemm/n256_k256"]
    assert entry.source.startswith("tuned") and entry.config_for(8).block_n == 32
    shipped = lower(make_config(linear="fp8_per_channel"), llama_like())
    assert shipped.plan.kernels["fp8_scaled_gemm/n256_k256"].source != entry.source


def test_bad_table_is_refused(tmp_path):
    p = tmp_path / "h100.json"
    p.write_text(json.dumps({"format": "something-else"}))
    try:
        read_table(p)
    except ValueError as exc:
        assert "not a quantc kernel table" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def test_malformed_user_table_is_a_diagnostic(tmp_path):
    (tmp_path / "h100.json").write_text("{not json")
    r = lower(make_config(linear="fp8_per_channel"), llama_like(), tables_dirs=(str(tmp_path),))
    (d,) = r.diagnostics
    assert d.code == "QC510" and "cannot read kernel table" in d.message and r.plan is None


def test_an_entry_measured_only_at_decode_sizes_hands_prefill_to_the_defaults(tmp_path):
    t = read_table(_table(tmp_path / "h100.json", "h100", [
        _row("int4_weight_only_gemm", 4096, 4096, 1, 16), _row("int4_weight_only_gemm", 4096, 4096, 64, 64),
    ], {"int4_weight_only_gemm": [{"m_max": 16, "block_m": 16, "block_n": 32, "block_k": 128},
                                  {"m_max": 256, "block_m": 64, "block_n": 128, "block_k": 64},
                                  {"m_max": 2**31 - 1, "block_m": 128, "block_n": 128, "block_k": 64}]}))
    e = lookup([t], [], "int4_weight_only_gemm", 4096, 4096, "e")
    assert [m for m, _ in e.buckets] == [1, 64, 256, 2**31 - 1]
    assert e.config_for(64).block_m == 64 and e.config_for(200).block_k == 64
    assert e.config_for(4096).block_m == 128  # prefill: the default, not the M = 64 tile


def test_configs_are_fitted_to_the_target_gpus_shared_memory(tmp_path):
    from quantc.emit import fit_smem, smem_fit, tile_smem_bytes
    from quantc.gpus import GPUS
    from quantc.plan import KernelConfig

    # a MoE bf16 gate_up on the built-in fallback (no table: a GPU nobody tuned): 64 x 128 x 128 in four
    # stages with two weight tiles is 320 KB, past the H200's 227 KB; fitted, it launches
    fit = smem_fit(GPUS["h200"], "moe_bf16", "none", "none")
    assert (fit.a_bytes, fit.b_bytes, fit.b_tiles) == (2.0, 2.0, 2)
    e = lookup([], [], "moe_bf16", 1536, 2048, "e", "h200", fit)
    assert e.source == "built-in fallback (no table); fitted to 227 KB of shared memory"
    assert all(tile_smem_bytes(c, 2, 2, 2) <= 227 * 1024 for _, c in e.buckets)
    assert e.config_for(256) == KernelConfig(64, 128, 128, 8, 4, 2, 1)  # four stages -> two
    # rows tuned for this shape on a GPU with as much shared memory stay as they are (the H100 table on an H200)
    h100 = read_table(_table(tmp_path / "h100.json", "h100", [_row("fp8_scaled_gemm", 4096, 4096, 8192, 128, 256)]))
    same = lookup([], [h100], "fp8_scaled_gemm", 4096, 4096, "e", "h200",
                  smem_fit(GPUS["h200"], "fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"))
    assert same.source == "tuned (h100 table; no h200 entry)" and same.config_for(1).block_n == 256
    # but not on an L40S (99 KB, served by the H100 table): 128 x 256 x 128 fp8 in 3 stages is 144 KB
    l40s = lookup([h100], [], "fp8_scaled_gemm", 4096, 4096, "e", "l40s",
                  smem_fit(GPUS["l40s"], "fp8_scaled_gemm", "fp8_per_channel", "fp8_dynamic_per_token"))
    assert l40s.source.endswith("fitted to 99 KB of shared memory")
    assert tile_smem_bytes(l40s.config_for(1), 1, 1) <= 99 * 1024 < tile_smem_bytes(same.config_for(1), 1, 1)
    # a tile that cannot shrink further is returned as small as it gets
    tiny = fit_smem(KernelConfig(128, 32, 32, 8, 4, 2, 1), 1024, 2, 2, 1)
    assert tiny == KernelConfig(128, 32, 32, 8, 4, 2, 1)


def test_a_plan_for_a_small_shared_memory_gpu_fits_every_config():
    from quantc.emit import tile_smem_bytes

    # an L40S (99 KB) is served by the H100 table, whose prefill tiles need up to ~144 KB there
    res = lower(make_config(linear="fp8_per_channel", gpu="l40s"), llama_like(layers=1, hidden=4096, inter=14336))
    assert res.plan is not None and res.plan.kernels
    for e in res.plan.kernels.values():
        assert all(tile_smem_bytes(c, 1, 1) <= 99 * 1024 for _, c in e.buckets), e
    assert any("fitted to 99 KB" in e.source for e in res.plan.kernels.values())
