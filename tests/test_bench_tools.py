"""bench/results_to_table.py and bench/wo_summary.py: benchmark results -> shipped kernel tables and
merged result files (no GPU: they only read JSON)."""

import json
import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import results_to_table as rt  # noqa: E402
import wo_summary as ws  # noqa: E402


def _wo_row(n, k, m, us=10.0, cfg=(16, 32, 128, 2, 4, 1)):
    entry = {"us": us, "cfg": list(cfg), "over_bf16": 2.0, "over_tinygemm": 1.1, "frac_ref_bw": 0.6}
    return {"N": n, "K": k, "M": m, "bf16_us": 2 * us, "tinygemm_us": 1.1 * us,
            "int4_group_128": dict(entry, over_gemlite=1.2), "mxfp4": dict(entry, us=us + 1), "nvfp4": dict(entry)}


def _run(device="NVIDIA H200", rows=()):
    return {"device": device, "torch": "2.11.0+cu130", "triton": "3.6.0", "copy_GBps": 4200.0, "ref_GBps": 4200.0,
            "rows": list(rows), "check": [{"ok": True}], "notes": []}


def test_wo_results_become_table_entries_with_h100_defaults_for_their_kernels(tmp_path):
    path = tmp_path / "h200.json"
    wo = tmp_path / "wo.json"
    wo.write_text(json.dumps(_run(rows=[_wo_row(4096, 4096, 1), _wo_row(4096, 4096, 16, cfg=(16, 64, 128, 2, 4, 9))])))
    dense = tmp_path / "dense.json"
    dense.write_text(json.dumps({**_run(), "rows": [{"kernel": "fp8_scaled_gemm", "n": 4096, "k": 4096, "m_max": 1,
                                                      "block_m": 16, "block_n": 64, "block_k": 128, "group_m": 8,
                                                      "num_warps": 4, "num_stages": 4, "split_k": 2, "us": 7.5,
                                                      "default_us": 9.0}]}))
    sys.argv = ["results_to_table", str(path), "--wo", str(wo), "--dense", str(dense)]
    rt.main()
    table = json.loads(path.read_text())
    jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "kernels.schema.json").read_text())).validate(table)
    keys = [(e["kernel"], e["n"], e["k"], e["m_max"]) for e in table["entries"]]
    assert keys == sorted(keys) and len(keys) == 5
    int4 = [e for e in table["entries"] if e["kernel"] == "int4_weight_only_gemm"]
    assert [(e["m_max"], e["block_n"], e["num_warps"], e["split_k"]) for e in int4] == [(1, 32, 2, 1), (16, 64, 2, 9)]
    assert table["gpu"] == "h200" and table["device_name"] == "NVIDIA H200" and table["torch"] == "2.11.0"
    fp8 = next(e for e in table["entries"] if e["kernel"] == "fp8_scaled_gemm")
    assert (fp8["time_us"], fp8["default_time_us"], fp8["split_k"]) == (7.5, 9.0, 2)
    assert all("default_time_us" not in e for e in int4)  # the wo rows here carry no default time
    # defaults only for kernels with entries: the others fall back to the H100 table in the compiler
    assert sorted(table["defaults"]) == ["fp4_weight_only_gemm", "fp8_scaled_gemm", "int4_weight_only_gemm"]
    # a second run replaces the same keys and keeps the rest
    wo.write_text(json.dumps(_run(rows=[_wo_row(4096, 4096, 1, us=5.0)])))
    sys.argv = ["results_to_table", str(path), "--wo", str(wo)]
    rt.main()
    again = json.loads(path.read_text())
    assert len(again["entries"]) == 5
    assert [e["time_us"] for e in again["entries"] if e["kernel"] == "int4_weight_only_gemm"] == [5.0, 10.0]


def test_tuned_tables_merge_filtered_by_kernel_and_bucket(tmp_path, capsys):
    path = tmp_path / "h100.json"
    tuned = tmp_path / "tuned.json"

    def entry(kernel, m_max, bm, us):
        return {"kernel": kernel, "n": 4096, "k": 4096, "m_max": m_max, "block_m": bm, "block_n": 16, "block_k": 512,
                "group_m": 8, "num_warps": 4, "num_stages": 1, "split_k": 4, "time_us": us}

    tuned.write_text(json.dumps({"format": rt.TABLE_FORMAT, "version": 1, "gpu": "h100", "defaults": {},
                                 "entries": [entry("int8_weight_only_gemm", 1, 1, 9.0), entry("int8_weight_only_gemm", 16, 16, 12.0),
                                             entry("fp8_scaled_gemm", 1, 1, 8.0)]}))
    sys.argv = ["results_to_table", str(path), "--tuned", str(tuned), "--kernels", "int8_weight_only_gemm", "--m-max", "1"]
    rt.main()
    table = json.loads(path.read_text())
    assert [(e["kernel"], e["m_max"], e["block_m"]) for e in table["entries"]] == [("int8_weight_only_gemm", 1, 1)]
    assert "1 entries written" in capsys.readouterr().out
    sys.argv = ["results_to_table", str(path), "--tuned", str(tuned)]  # no filter: all three, the first replaced
    rt.main()
    assert len(json.loads(path.read_text())["entries"]) == 3
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    sys.argv = ["results_to_table", str(path), "--tuned", str(bad)]
    with pytest.raises(SystemExit, match="bad.json is not a quantc kernel table"):
        rt.main()
    assert len(json.loads(path.read_text())["entries"]) == 3  # nothing written


def test_results_to_table_refuses_a_file_that_is_not_a_table(tmp_path):
    path = tmp_path / "h200.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(SystemExit, match="is not a quantc kernel table"):
        rt.update(path, "h200", [], {})
    assert path.read_text() == '{"hello": 1}'


def test_wo_runs_merge_with_their_own_reference_and_a_summary(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_run(rows=[_wo_row(28672, 4096, 1), _wo_row(4096, 4096, 1)])))
    b.write_text(json.dumps(_run(rows=[_wo_row(24576, 7168, 1, us=20.0)])))
    merged = ws.merge([str(a), str(b)])
    assert len(merged["rows"]) == 3 and [r["shapes"] for r in merged["runs"]] == [[(4096, 4096), (28672, 4096)],
                                                                                 [(24576, 7168)]]
    s = merged["summary"]["int4_group_128/M1"]
    assert s["shapes"] == 3 and s["geomean_over_bf16"] == pytest.approx(2.0) and s["large_min_frac_ref_bw"] == 0.6
    assert merged["summary"]["int4_group_128/M1_over_gemlite"]["n"] == 3
    b.write_text(json.dumps(_run(device="NVIDIA H100 80GB HBM3", rows=[_wo_row(24576, 7168, 1)])))
    with pytest.raises(SystemExit, match="different devices"):
        ws.merge([str(a), str(b)])


def _dense_row(n, k, m, ours, peer):
    return {"N": n, "K": k, "M": m, "fp8_scaled_gemm_us": ours, "peer_fp8_row_us": peer, "bf16_us": 2 * ours}


def _dense_run(device, rows, decode=(), check=None, gl_check=None):
    return {"device": device, "torch": "2.11.0+cu130", "triton": "3.6.0", "cuda": "13.0", "copy_GBps": 3000.0,
            "ref_GBps": 3000.0, "bf16_m1_GBps": 2900.0, "rows": list(rows), "decode": list(decode),
            "gpu_check": check or {}, "gemlite": {"version": "0.6", "check_rel_err": gl_check or {}}}


def test_dense_runs_merge_into_one_result_with_a_recomputed_summary(tmp_path):
    """bench_dense.py merge: runs split by the time cap become one file; a (N, K, M) measured twice keeps
    the later run's row; checks and GemLite checks are unions; the summary covers every row."""
    import bench_dense as bd

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_dense_run("NVIDIA H100 80GB HBM3", [_dense_row(6144, 4096, 1024, 10.0, 10.0),
                                                                  _dense_row(2048, 7168, 1024, 10.0, 30.0)],
                                       decode=[{"kernel": "fp8_scaled_gemm", "N": 6144, "K": 4096, "GBps": 1500.0,
                                                "frac_ref": 0.5}], check={"quant_mxfp8": True},
                                       gl_check={"6144x4096": {"fp8": 0.0}})))
    b.write_text(json.dumps(_dense_run("NVIDIA H100 80GB HBM3", [_dense_row(2048, 7168, 1024, 10.0, 20.0)],
                                       check={"tma/int8_per_channel/vs_tiled": 0.0},
                                       gl_check={"2048x7168": {"fp8": 0.0}})))
    merged = bd.merge([str(a), str(b)])
    assert [(r["N"], r["K"], r["M"], r["peer_fp8_row_us"]) for r in merged["rows"]] == [(6144, 4096, 1024, 10.0),
                                                                                        (2048, 7168, 1024, 20.0)]
    assert merged["gpu_check"] == {"quant_mxfp8": True, "tma/int8_per_channel/vs_tiled": 0.0}
    assert set(merged["gemlite"]["check_rel_err"]) == {"6144x4096", "2048x7168"} and len(merged["decode"]) == 1
    out = tmp_path / "dense_h100.json"
    bd.summary(merged, str(out))
    line = json.loads(out.read_text())["summary"]["fp8 rowwise / _scaled_mm, M>=1024"]
    assert line["n"] == 2 and line["worst"] == 1.0 and line["best"] == 2.0 and abs(line["geomean"] - 2 ** 0.5) < 1e-9
    b.write_text(json.dumps(_dense_run("NVIDIA H200", [])))
    with pytest.raises(SystemExit, match="different devices"):
        bd.merge([str(a), str(b)])


def test_fidelity_probe_fake_quantizes_exactly_the_plan_targets_with_the_expected_errors():
    """bench/fidelity_probe.py on TINY models: the plan's 14 Llama linears (not lm_head/embeddings) each get
    the e4m3 error of ~3.7% (int8 less), Gaussian noise of the same size gives the same cosine, quantizing
    nothing changes nothing; on gpt-oss the experts are targets and replaying the routing does not hurt."""
    import fidelity_probe as fp

    r = fp.probe_model("llama-3.1-8b", 2, ["fp8", "int8"], 64, 0, tiny=True)
    fp8, int8 = r["schemes"]["fp8"], r["schemes"]["int8"]
    assert len(fp8["targets"]) == 14 and all(n.startswith("model.layers.") for n in fp8["targets"])
    assert r["off"]["cosine"] == pytest.approx(1.0, abs=1e-5) and r["off"]["logit_rel_err"] == 0.0
    local = fp8["quant"]["local"]
    assert set(local) == set(fp8["targets"]) and all(0.02 <= v <= 0.06 for v in local.values())
    assert max(int8["quant"]["local"].values()) < min(local.values())
    assert abs(fp8["noise"]["cosine"] - fp8["quant"]["cosine"]) < 0.01 and fp8["quant"]["cosine"] < 1 - 1e-4
    assert fp8["quant"]["propagated"]["L0.attn.probs"] > 0  # eager attention: probabilities recorded
    moe = fp.probe_model("gpt-oss-20b-bf16", 2, ["fp8"], 64, 0, tiny=True)["schemes"]["fp8"]
    assert "model.layers.1.mlp.experts.down_proj" in moe["quant"]["local"]
    assert not any("router" in n for n in moe["targets"]) and set(moe["quant"]["changed_topk"]) == {0, 1}
    assert moe["quant_routing_replayed"]["cosine"] >= moe["quant"]["cosine"]


def test_bench_timing_skips_a_call_that_fails_and_says_why(capsys):
    """bench/timing.graph_us (bench_dense, bench_moe, dequant_probe): a candidate that raises is None, not a
    crash, and the reason is printed."""
    from bench.timing import graph_us

    def broken():
        raise RuntimeError("out of resource: shared memory")

    assert graph_us(broken) is None
    assert "ERR RuntimeError out of resource: shared memory" in capsys.readouterr().out


def test_fidelity_probe_refuses_what_it_does_not_emulate():
    """Activation keys beyond the row-wise ones, and plan targets the model lacks, are refused by name."""
    import torch

    import fidelity_probe as fp

    x = torch.randn(4, 256)
    assert torch.equal(fp.fake_quant_activation(x, "none"), x)
    with pytest.raises(ValueError, match="activation 'fp8_dynamic_group_128': only .* are emulated"):
        fp.fake_quant_activation(x, "fp8_dynamic_group_128")
    from quantc import hf

    model = hf.build_model("llama-3.1-8b", 1, tiny=True, dtype="float32")
    with pytest.raises(ValueError, match=r"plan targets not found in the model: \['model.layers.9.mlp.up_proj'\]"):
        fp.Probe(model, {"model.layers.9.mlp.up_proj": ("fp8_per_channel", "fp8_dynamic_per_token")})


def test_bench_dense_times_only_candidates_that_agree_with_the_default(capsys):
    """bench_dense.agrees: a candidate whose output is off, or that raises, is not timed, and says why."""
    import torch

    import bench_dense as bd

    want = torch.ones(4, 8)
    assert bd.agrees(lambda c: want * (1 + 1e-3), "cfg-a", want, "int8_gemm")
    assert not bd.agrees(lambda c: want * 1.5, "cfg-b", want, "int8_gemm")
    assert "MISMATCH int8_gemm cfg-b rel err 0.5: not timed" in capsys.readouterr().out

    def broken(c):
        raise RuntimeError("out of resource")

    assert not bd.agrees(broken, "cfg-c", want, "int8_gemm")
    assert "ERR int8_gemm cfg-c RuntimeError out of resource" in capsys.readouterr().out


def test_a_probe_candidate_that_fails_or_mismatches_is_reported_and_not_timed(capsys, monkeypatch):
    """bench/timing.checked_graph_us: a candidate that raises, or whose first output is off the reference
    by the tolerance, returns None with the reason printed; only a matching one reaches the timer."""
    import torch

    import timing

    timed = []
    monkeypatch.setattr(timing, "graph_us", lambda fn: timed.append(fn) or 12.5)
    want = torch.ones(4)

    def broken():
        raise RuntimeError("out of resources: shared memory")

    assert timing.checked_graph_us("cfg A", broken, want) is None
    assert "ERR cfg A RuntimeError out of resources" in capsys.readouterr().out
    assert timing.checked_graph_us("cfg B", lambda: [want * 1.1], want) is None
    assert "MISMATCH cfg B 0.1" in capsys.readouterr().out
    assert not timed
    good = lambda: [want * 1.01]  # noqa: E731
    assert timing.checked_graph_us("cfg C", good, want) == 12.5 and timed == [good]


def test_moe_roofline_bounds_a_gate_up_by_its_weight_bytes():
    """bench_moe's floor arithmetic: DeepSeek-V3's gate_up at 4096 tokens (256 experts, top-8, H = 7168,
    I = 2048: ~128 rows an expert) reads 15 GB of bf16 weights, so at 3.0 TB/s it cannot beat ~379 TFLOP/s,
    0.53 of a 720 TFLOP/s dense GEMM of the same FLOPs; Mixtral (1024 rows an expert) is bounded by the
    dense GEMM itself."""
    from bandwidth import moe_roofline

    def row(tokens, top_k, h, inter, experts, ours_us):
        flops = 2 * tokens * top_k * h * 2 * inter
        return flops, {"tokens": tokens, "top_k": top_k, "H": h, "I": inter, "active_experts": experts,
                       "dense_bf16_equal_flops_us": flops / 720e6, "gate_up_ours_bf16_table_us": ours_us}

    flops, ds = row(4096, 8, 7168, 2048, 256, 6516.0)
    out = moe_roofline(ds, flops, 3000.0)
    weights = 256 * 2 * 2048 * 7168 * 2
    assert out["dense_bf16_tflops"] == pytest.approx(720.0)
    assert out["gate_up_bf16_roofline_tflops"] == pytest.approx(379, abs=1)
    assert out["gate_up_bf16_roofline_tflops"] < flops / (weights / 3000e3) / 1e6  # activations count too
    assert out["roofline_over_dense"] == pytest.approx(0.53, abs=0.01)
    assert out["gate_up_ours_bf16_table_over_roofline"] == pytest.approx(flops / 6516.0 / 1e6 / 379, rel=0.01)
    assert "gate_up_ours_bf16_best_over_dense" not in out  # no best-tile time in the row
    flops, mx = row(4096, 2, 4096, 14336, 8, 3657.0)
    out = moe_roofline(mx, flops, 3000.0)
    assert out["roofline_over_dense"] == 1.0 and out["gate_up_ours_bf16_table_over_dense"] == pytest.approx(0.73, abs=0.01)


def test_bench_geomean_skips_unset_values_and_gpu_slug_names_the_table():
    """bench/timing's shared helpers: a candidate that did not run (None) leaves the geomean alone, none
    at all gives None; result files are named h200 or h100 by the device name."""
    from timing import geomean, gpu_slug

    assert geomean([2.0, None, 8.0]) == pytest.approx(4.0) and geomean([None]) is None and geomean([]) is None
    assert gpu_slug("NVIDIA H200") == "h200" and gpu_slug("NVIDIA H100 80GB HBM3") == "h100"


def test_matched_graph_us_times_only_a_candidate_that_runs_and_matches(capsys):
    """bench/timing.matched_graph_us (block_ws_probe, ws_probe): a candidate that raises or whose largest
    difference exceeds 2% of the reference's largest magnitude is not timed (None, reason printed); one
    that matches has its difference recorded and goes to graph_us."""
    import torch

    from bench.timing import matched_graph_us

    want = torch.full((4, 8), 2.0)
    row = {}

    def broken():
        raise RuntimeError("out of resource: shared memory")

    assert matched_graph_us(row, "gluon_a", broken, want) is None and row["gluon_a"] is None
    assert "ERR gluon_a RuntimeError out of resource: shared memory" in capsys.readouterr().out
    assert matched_graph_us(row, "gluon_b", lambda: want + 0.1, want) is None and row["gluon_b"] is None
    assert row["gluon_b_maxdiff"] == pytest.approx(0.1) and "MISMATCH gluon_b" in capsys.readouterr().out
    # within 2% (0.04 of 2.0): timed; graph_us has no GPU here, so its own failure is the None it gives
    matched_graph_us(row, "gluon_c", lambda: want + 0.03, want)
    assert row["gluon_c_maxdiff"] == pytest.approx(0.03) and "MISMATCH" not in capsys.readouterr().out


def test_env_set_sets_and_restores_a_variable(monkeypatch):
    import os

    from bench.timing import env_set

    monkeypatch.setenv("QUANTC_BLOCK_WS", "1")
    with env_set("QUANTC_BLOCK_WS", "0"):
        assert os.environ["QUANTC_BLOCK_WS"] == "0"
    assert os.environ["QUANTC_BLOCK_WS"] == "1"
    with env_set("QUANTC_BLOCK_WS", None):
        assert "QUANTC_BLOCK_WS" not in os.environ
    assert os.environ["QUANTC_BLOCK_WS"] == "1"
    monkeypatch.delenv("QUANTC_BLOCK_WS")
    with pytest.raises(KeyError):
        with env_set("QUANTC_BLOCK_WS", "0"):
            raise KeyError("inside")
    assert "QUANTC_BLOCK_WS" not in os.environ
