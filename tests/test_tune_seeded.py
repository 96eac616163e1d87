"""`quantc tune --space seeded`, compiler side (no torch): candidates transferred from tuned tables,
ranked by bucket then shape, pruned like the full space, deduplicated, capped, the default first; the
space's selection in ``search_space``, the CLI and bench/tune_plan.py, and each of their errors."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from quantc.emit import CONFIG_FIELDS, TABLE_FORMAT, shape_distance
from quantc.gpus import GPUS
from quantc.plan import M_MAX_LAST, KernelConfig
from quantc.tune import (SEEDED_MAX, SPACES, TuneJob, read_table_file, resolve_space, search_space, seeded_space,
                         shipped_tables)

ROOT = Path(__file__).resolve().parent.parent
H100 = GPUS["h100"]
FP8 = ("fp8_per_channel", "fp8_dynamic_per_token")
DEFAULT = KernelConfig(64, 64, 128, 8, 4, 4)


@pytest.fixture(autouse=True)
def _no_midm_seeds(monkeypatch, request):
    """The ranking tests below use 16- and 64-row fp8 jobs, which also get ``SMALLM_SEEDS`` / ``MIDM_SEEDS``
    after the default; they check the table-row logic alone (the seeds have a test of their own, ``*midm*``)."""
    if "midm" not in request.node.name:
        monkeypatch.setattr("quantc.tune.MIDM_SEEDS", ())
        monkeypatch.setattr("quantc.tune.SMALLM_SEEDS", ())


def _row(cfg: KernelConfig, n=4096, k=4096, m_max=64, kernel="fp8_scaled_gemm") -> dict:
    return {"kernel": kernel, "n": n, "k": k, "m_max": m_max, **dataclasses.asdict(cfg), "time_us": 1.0}


def _table(*rows) -> dict:
    return {"format": TABLE_FORMAT, "version": 1, "gpu": "h100", "defaults": {}, "entries": list(rows)}


def _job(n=4096, k=4096, m_max=64, m=None, kernel="fp8_scaled_gemm", keys=FP8) -> TuneJob:
    return TuneJob(kernel, n, k, *keys, m_max, m or m_max)


def _cfgs(count, bm=16):
    """``count`` distinct configs, feasible for a dense 4096 x 4096 job at M = 64 on an H100."""
    grid = [(bn, bk, w, st) for bn in (32, 64, 128) for bk in (64, 128) for w in (4, 8) for st in (2, 3, 4)]
    return [KernelConfig(bm, bn, bk, 8, w, st) for bn, bk, w, st in grid[:count]]


def test_seeds_rank_own_bucket_first_then_neighbours_then_nearer_shapes():
    a, b, c, d, e, f, g = _cfgs(7)
    table = _table(
        _row(f, m_max=1024),                   # two buckets away, same shape
        _row(e, n=8192, m_max=256),            # a neighbour bucket, shape distance 1
        _row(d, m_max=16),                     # a neighbour bucket, same shape
        _row(c, n=1024, k=1024),               # own bucket, distance 4
        _row(b, n=8192),                       # own bucket, distance 1
        _row(a),                               # own bucket, same shape
        _row(g, m_max=M_MAX_LAST))             # three buckets away
    assert seeded_space(_job(), H100, [table], DEFAULT) == [DEFAULT, a, b, c, d, e, f, g]
    assert seeded_space(_job(), H100, [table]) == [a, b, c, d, e, f, g]  # no default given: seeds only
    # the measure is the compiler's nearest-shape one
    assert shape_distance(4096, 4096, 8192, 4096) == 1 and shape_distance(4096, 4096, 1024, 1024) == 4


def test_a_bucket_between_the_tuned_ones_ranks_by_position():
    a, b, c = _cfgs(3)
    table = _table(_row(a, m_max=256), _row(b, m_max=16), _row(c, m_max=4))
    # M = 4 is not a tuned bucket: its own rows first, then the 16 bucket (same position), then 256
    assert seeded_space(_job(m_max=4, m=16), H100, [table]) == [c, b, a]


def test_the_first_table_wins_a_tie_and_duplicates_are_dropped():
    a, b, c = _cfgs(3)
    own, other = _table(_row(a), _row(c, m_max=16)), _table(_row(b), _row(a, n=8192), _row(c))
    assert seeded_space(_job(), H100, [own, other]) == [a, b, c]
    assert seeded_space(_job(), H100, [other, own]) == [b, c, a]
    # a seed equal to the default is the default, once, in front
    assert seeded_space(_job(), H100, [own, other], b) == [b, a, c]


def test_candidates_stop_at_the_cap_keeping_the_default_and_the_closest():
    seeds = _cfgs(SEEDED_MAX + 8)
    table = _table(*(_row(cfg, n=4096 << i % 4, m_max=64 if i < 6 else 16) for i, cfg in enumerate(seeds)))
    space = seeded_space(_job(), H100, [table], DEFAULT)
    assert len(space) == SEEDED_MAX and space[0] == DEFAULT
    assert set(seeds[:6]) <= set(space)  # every own-bucket seed made it
    assert len(seeded_space(_job(), H100, [table])) == SEEDED_MAX


def test_no_table_knows_the_kernel_leaves_just_the_default():
    assert seeded_space(_job(), H100, [], DEFAULT) == [DEFAULT]
    assert seeded_space(_job(), H100, [_table()], DEFAULT) == [DEFAULT]
    assert seeded_space(_job(), H100, [_table(_row(_cfgs(1)[0], kernel="int8_gemm"))], DEFAULT) == [DEFAULT]
    assert seeded_space(_job(), H100, []) == []


def test_sibling_kernels_seed_after_the_kernels_own_rows():
    """int8 weight-only runs the same scaled_mm path as fp8 weight-only: with no rows of its own it starts
    from fp8 weight-only's winners; its own rows, where they exist, rank before any sibling's. A kernel
    with no siblings (fp8_scaled_gemm) takes nothing from other ids."""
    from quantc.tune import SEED_SIBLINGS, TUNABLE

    assert all(k in TUNABLE and set(v) <= TUNABLE and k not in v for k, v in SEED_SIBLINGS.items())
    own, sib = _cfgs(2)
    keys = ("int8_per_channel", "none")
    job = _job(kernel="int8_weight_only_gemm", keys=keys)
    sibling_only = _table(_row(sib, kernel="fp8_weight_only_gemm"))
    assert seeded_space(job, H100, [sibling_only], DEFAULT) == [DEFAULT, sib]
    both = _table(_row(sib, kernel="fp8_weight_only_gemm"), _row(own, kernel="int8_weight_only_gemm", m_max=4096))
    assert seeded_space(job, H100, [both], DEFAULT) == [DEFAULT, own, sib]  # own row of a far bucket first
    assert seeded_space(_job(), H100, [_table(_row(sib, kernel="fp8_weight_only_gemm"))], DEFAULT) == [DEFAULT]


def test_infeasible_seeds_are_pruned_like_the_full_space():
    ok = KernelConfig(64, 128, 128, 8, 4, 3)
    # blocks larger than the padded problem: BLOCK_N 128 for N = 64, BLOCK_M 64 at M = 16
    assert seeded_space(_job(n=64), H100, [_table(_row(ok))]) == []
    assert seeded_space(_job(m_max=16), H100, [_table(_row(ok))]) == []
    # split-K: up to 64 rows (256 for the raw-sum W8A8 kernels), and every K slice at least one K tile
    split = dataclasses.replace(ok, block_m=16, split_k=4)
    assert seeded_space(_job(m_max=16), H100, [_table(_row(split))]) == [split]
    assert split in seeded_space(_job(m_max=256), H100, [_table(_row(split))])
    assert seeded_space(_job(m_max=1024, m=512), H100, [_table(_row(split))]) == []
    wo = ("fp8_per_channel", "none")
    assert seeded_space(_job(m_max=16, kernel="fp8_weight_only_gemm", keys=wo), H100,
                        [_table(_row(split, kernel="fp8_weight_only_gemm"))]) == [split]
    assert seeded_space(_job(m_max=256, kernel="fp8_weight_only_gemm", keys=wo), H100,
                        [_table(_row(split, kernel="fp8_weight_only_gemm"))]) == []
    assert seeded_space(_job(m_max=16, k=256), H100, [_table(_row(split, k=256))]) == []
    # a K tile must line up with the format's scale groups (fp8 block: 128)
    blk = ("fp8_block_128x128", "fp8_dynamic_group_128")
    odd = [dataclasses.replace(ok, block_k=bk) for bk in (64, 96, 128)]
    table = _table(*(_row(c, kernel="fp8_block_gemm") for c in odd))
    # (128 rows: above BLOCK_SMALLM_RANGE, so only the table's rows are seeds)
    assert seeded_space(_job(kernel="fp8_block_gemm", keys=blk, m_max=256, m=128), H100, [table]) == [odd[0], odd[2]]
    # shared memory: a tile that fits an H100 does not fit a GPU of 64 KB
    big = KernelConfig(64, 128, 128, 8, 8, 4)
    tight = dataclasses.replace(H100, smem_bytes=64 * 1024)
    assert seeded_space(_job(), H100, [_table(_row(big))]) == [big]
    assert seeded_space(_job(), tight, [_table(_row(big))]) == []
    # 128-row tiles of four warps at BLOCK_N 256 are skipped, as in the grid
    assert seeded_space(_job(m_max=1024), H100, [_table(_row(KernelConfig(128, 256, 64, 8, 4, 2), m_max=1024))]) == []
    # 4-bit decode: tiles of more than 256 weight elements a thread per K step spill
    w4 = ("int4_group_128", "none")
    spill, fine = KernelConfig(16, 128, 256, 8, 1, 3), KernelConfig(16, 64, 128, 8, 1, 3)
    table = _table(*(_row(c, m_max=1, kernel="int4_weight_only_gemm") for c in (spill, fine)))
    assert seeded_space(_job(m_max=1, kernel="int4_weight_only_gemm", keys=w4), H100, [table]) == [fine]


def test_seeds_from_the_full_grid_survive_exactly_where_the_full_space_keeps_them():
    grid = [KernelConfig(bm, bn, bk, 8, w, st, sk) for bm in (16, 128) for bn in (32, 256) for bk in (64, 256)
            for w in (4, 8) for st in (3, 5) for sk in (1, 8)]
    tight = dataclasses.replace(H100, smem_bytes=64 * 1024)
    for job, gpu in ((_job(), H100), (_job(n=64, k=64, m_max=1), H100), (_job(m_max=M_MAX_LAST, m=8192), H100),
                     (_job(k=14336, m_max=16), tight)):
        full = search_space(job, gpu)
        kept = [c for c in grid if seeded_space(job, gpu, [_table(_row(c, job.n, job.k, job.m_max))])]
        assert kept == [c for c in grid if c in full] and kept


MOE = dict(num_experts=8, top_k=2)


def _moe_job(role="down", block_m=0, kernel="moe_fp8", keys=FP8, n=2048, k=768, m=256):
    return TuneJob(kernel, n, k, *keys, m, m, **MOE, role=role, rows=n, block_m=block_m)


def test_a_moe_down_job_takes_its_gate_ups_block_m():
    seeds = [KernelConfig(64, 128, 64, 8, 4, 3), KernelConfig(16, 128, 64, 8, 4, 3), KernelConfig(16, 64, 64, 8, 8, 2)]
    table = _table(*(_row(c, 2048, 768, 256, "moe_fp8") for c in seeds))
    space = seeded_space(_moe_job(block_m=32), H100, [table])
    # the first two differ only in BLOCK_M: one candidate at 32
    assert space == [KernelConfig(32, 128, 64, 8, 4, 3), KernelConfig(32, 64, 64, 8, 8, 2)]
    assert seeded_space(_moe_job(), H100, [table]) == seeds  # no partner: BLOCK_M as seeded
    # the override is checked like any candidate: at BLOCK_M 128 with four warps BLOCK_N 256 is skipped
    wide = KernelConfig(16, 256, 64, 8, 4, 3)
    assert seeded_space(_moe_job(block_m=128), H100, [_table(_row(wide, 2048, 768, 256, "moe_fp8"))]) == []
    # the grouped GEMM has no split-K: a seed's is set to 1 (its GROUP_M is kept)
    odd = [KernelConfig(16, 128, 64, 4, 4, 3, 2), KernelConfig(16, 128, 64, 4, 4, 3, 1)]
    table = _table(*(_row(c, 2048, 768, 256, "moe_fp8") for c in odd))
    assert seeded_space(_moe_job(), H100, [table]) == [odd[1]]


def test_moe_seeds_follow_the_grouped_gemms_block_k_and_shared_memory_rules():
    # W8A8 per-channel at K = 2880 (22.5 x 128): whole-row scales take any BLOCK_K (the last tile masked);
    # 128-wide blocks and groups take no BLOCK_K past 128, which would straddle two of them
    rows = [_row(KernelConfig(16, 64, bk, 8, 4, 3), 256, 2880, 16, "moe_fp8") for bk in (64, 128)]
    assert [c.block_k for c in seeded_space(_moe_job(n=256, k=2880, m=16), H100, [_table(*rows)])] == [64, 128]
    block_keys = ("fp8_block_128x128", "fp8_dynamic_group_128")
    rows = [_row(KernelConfig(16, 64, bk, 8, 4, 2), 256, 2048, 16, "moe_fp8_block") for bk in (128, 256)]
    job = _moe_job(kernel="moe_fp8_block", keys=block_keys, n=256, k=2048, m=16)
    assert [c.block_k for c in seeded_space(job, H100, [_table(*rows)])] == [128]
    # gate_up reads two weight tiles a K step: fits the H100 as down, not as gate_up
    cfg = KernelConfig(128, 256, 128, 8, 8, 4)
    down = _moe_job(n=1536, k=2048, m=256)  # 256 x 2 / 8 = 64 rows an expert: no MOE_LARGE_SEEDS
    gate_up = dataclasses.replace(down, role="gate_up")
    table = _table(_row(cfg, 1536, 2048, 256, "moe_fp8"))
    assert seeded_space(down, H100, [table]) == [cfg] and seeded_space(gate_up, H100, [table]) == []
    # BLOCK_N past the padded output width is dropped, except the full grid's smallest (64)
    narrow = _moe_job(n=32, k=768, m=16)
    table = _table(*(_row(KernelConfig(16, bn, 64, 8, 4, 3), 32, 768, 16, "moe_fp8") for bn in (32, 64, 128)))
    assert [c.block_n for c in seeded_space(narrow, H100, [table])] == [32, 64]


def test_the_shipped_tables_seed_by_default_the_gpus_own_first():
    assert [t["gpu"] for t in shipped_tables(GPUS["h200"])] == ["h200", "h100"]
    assert [t["gpu"] for t in shipped_tables(GPUS["h100"])] == ["h100", "h200"]
    assert [t["gpu"] for t in shipped_tables(GPUS["a100"])] == ["h100", "h200"]  # no table of its own
    job = _job(n=4096, k=4096, m_max=16)
    space = seeded_space(job, GPUS["h200"], default=DEFAULT)
    assert space == seeded_space(job, GPUS["h200"], shipped_tables(GPUS["h200"]), DEFAULT)
    assert 2 < len(space) <= SEEDED_MAX and space[0] == DEFAULT
    h200_rows = [r for r in shipped_tables(GPUS["h200"])[0]["entries"]
                 if (r["kernel"], r["n"], r["k"], r["m_max"]) == ("fp8_scaled_gemm", 4096, 4096, 16)]
    assert h200_rows and space[1] == KernelConfig(**{f: h200_rows[0][f] for f in CONFIG_FIELDS})


def test_a_file_that_is_not_a_kernel_table_is_refused(tmp_path):
    for text in ('{"format": "something-else"}', "[1, 2]"):
        (tmp_path / "t.json").write_text(text)
        with pytest.raises(ValueError, match="is not a quantc kernel table"):
            read_table_file(tmp_path / "t.json")


def test_the_space_is_chosen_by_name_and_small_stays_an_alias():
    job = _job(n=64, k=64, m_max=16)
    table = _table(_row(KernelConfig(16, 32, 64, 8, 4, 3), 64, 64, 16))
    assert search_space(job, H100, space="seeded", tables=[table], default=DEFAULT) == seeded_space(job, H100, [table], DEFAULT)
    assert search_space(job, H100, small=True) == search_space(job, H100, space="small") != search_space(job, H100)
    assert SPACES == ("full", "small", "seeded") and resolve_space() == "full" and resolve_space("full", True) == "small"
    with pytest.raises(ValueError, match="unknown search space 'fast'; known: full, small, seeded"):
        search_space(job, H100, space="fast")
    with pytest.raises(ValueError, match="cannot be combined with space='seeded'"):
        search_space(job, H100, small=True, space="seeded")


def test_the_seeded_space_needs_no_torch():
    code = ("import sys; from quantc.gpus import GPUS; from quantc.tune import TuneJob, seeded_space; "
            "seeded_space(TuneJob('fp8_scaled_gemm', 4096, 4096, 'fp8_per_channel', 'fp8_dynamic_per_token', 16, 16), "
            "GPUS['h100']); assert not {'torch', 'triton', 'quantc.runtime'} & set(sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- the command line -------------------------------------------------------------------------------


def test_cli_tune_space_option_and_its_errors(tmp_path):
    from typer.testing import CliRunner

    from quantc import cli

    run = CliRunner().invoke
    help_ = run(cli.app, ["tune", "--space", "seeded", "--help"])
    assert help_.exit_code == 0 and "--space" in help_.output and "seeded" in help_.output
    bad = run(cli.app, ["tune", "--space", "fast", "--plan", str(tmp_path / "p.json")])
    text = " ".join(bad.output.replace("│", " ").split())  # rich boxes and wraps the message
    assert bad.exit_code == 2 and "Invalid value for '--space'" in text and "'full', 'small', 'seeded'" in text
    both = run(cli.app, ["tune", "--small", "--space", "seeded", "--plan", str(tmp_path / "p.json")])
    assert both.exit_code == 2 and "--small is --space small; it cannot be combined with --space seeded" in both.output


def test_tune_plan_script_space_errors(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import tune_plan
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for argv, message in ((["--space", "fast"], "invalid choice: 'fast'"),
                          (["--small", "--space", "seeded"], "--small is --space small")):
        monkeypatch.setattr(sys, "argv", ["tune_plan.py", "out", "plan.json", *argv])
        with pytest.raises(SystemExit) as exc:
            tune_plan.main()
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_moe_jobs_with_many_rows_an_expert_measure_the_large_tiles_after_the_default():
    """bench_moe measured 128-row tiles best at 4096 tokens on every MoE size; no table had them, so a
    seeded job whose experts average >= MOE_LARGE_ROWS rows tries them, pruned like any seed."""
    from quantc.tune import MOE_LARGE_ROWS, MOE_LARGE_SEEDS

    default = KernelConfig(64, 128, 64, 8, 8, 3)
    big = _moe_job(n=1536, k=2048, m=4096)  # 4096 x 2 / 8 experts = 1024 rows an expert
    space = seeded_space(big, H100, [_table()], default)
    assert space[0] == default and set(MOE_LARGE_SEEDS) <= set(space[1:1 + len(MOE_LARGE_SEEDS)])
    assert big.m * big.top_k // big.num_experts >= MOE_LARGE_ROWS
    few = dataclasses.replace(big, m=256, m_max=256)  # 64 rows an expert
    assert not set(MOE_LARGE_SEEDS) & set(seeded_space(few, H100, [_table()], default))
    down = dataclasses.replace(big, block_m=64)  # a down job keeps gate_up's BLOCK_M: the seeds take it
    assert all(c.block_m == 64 for c in seeded_space(down, H100, [_table()], default))


def test_decode_jobs_search_and_seed_the_gemv_only_where_scaled_mm_runs_it():
    from quantc.tune import GEMV_SEEDS, GEMV_VECS, gemv_space

    m1 = _job(n=4096, k=14336, m_max=1)
    space = search_space(m1, H100)
    gemv = [c for c in space if c.block_m < 16]
    assert gemv and {c.block_m for c in gemv} == {1}
    assert gemv == gemv_space(m1, H100)
    vecs = [c.block_n * c.block_k / (16 * 32 * c.num_warps) for c in gemv]
    assert min(vecs) == GEMV_VECS[0] and max(vecs) == GEMV_VECS[1]
    assert not any(c.block_n == 64 and c.block_k == 1024 and c.num_warps == 2 for c in gemv)  # 32 vectors a thread
    assert gemv_space(_job(n=4096, k=14336, m_max=16, m=4), H100) == gemv  # up to 4 rows: a program each
    block = gemv_space(_job(n=4096, k=14336, m_max=1, kernel="fp8_block_gemm",
                            keys=("fp8_block_128x128", "fp8_dynamic_group_128")), H100)
    assert block and {c.block_k for c in block} == {128}  # wider steps would run as 128: duplicates
    # not at 16 rows, not for the mx pair, nor in the small space
    assert not [c for c in search_space(_job(m_max=16), H100) if c.block_m < 16]
    mx = _job(m_max=1, kernel="mxfp8_gemm_emulated", keys=("mxfp8", "mxfp8"))
    assert not [c for c in search_space(mx, H100) if c.block_m < 16]
    assert not [c for c in search_space(m1, H100, small=True) if c.block_m < 16]
    # seeded: after the default, before any table row; pruned like the full space
    seeds = seeded_space(m1, H100, tables=[_table(_row(KernelConfig(16, 32, 128, 8, 4, 4), m_max=1))], default=DEFAULT)
    assert seeds[0] == DEFAULT and seeds[1:1 + len(GEMV_SEEDS)] == list(GEMV_SEEDS)
    assert seeds[1 + len(GEMV_SEEDS)] == KernelConfig(16, 32, 128, 8, 4, 4)
    assert not [c for c in seeded_space(_job(m_max=16), H100, tables=[], default=DEFAULT) if c.block_m < 16]
    # a GEMV row tuned at M = 1 does not seed a 16-row bucket, nor a 2-row GEMV config anything
    gemv_row = _row(GEMV_SEEDS[0], m_max=1)
    assert GEMV_SEEDS[0] not in seeded_space(_job(m_max=16), H100, tables=[_table(gemv_row)], default=DEFAULT)
    two_rows = dataclasses.replace(GEMV_SEEDS[0], block_m=2)
    assert two_rows not in seeded_space(m1, H100, tables=[_table(_row(two_rows, m_max=1))], default=DEFAULT)


def test_midm_jobs_of_the_raw_sum_kernels_measure_the_deep_k_seeds_after_the_default():
    """17-256-row fp8 / int8 W8A8 jobs try MIDM_SEEDS (256-512-deep K steps, measured best at M = 64 and 256
    by bench/midm_probe.py) right after the default, pruned like any seed: split-K up to 256 rows for these
    kernels (64 for the others), tiles no taller than the padded M. Other sizes and kernels do not get them."""
    from quantc.tune import MIDM_SEEDS

    table = _table(_row(KernelConfig(16, 32, 128, 8, 4, 4)))
    fit64 = [c for c in MIDM_SEEDS if c.block_m <= 64]  # a 128-row tile is taller than 64 rows
    assert 0 < len(fit64) < len(MIDM_SEEDS)
    m64 = seeded_space(_job(n=4096, k=14336), H100, [table], DEFAULT)
    assert m64[0] == DEFAULT and m64[1:1 + len(fit64)] == fit64
    assert m64[1 + len(fit64)] == KernelConfig(16, 32, 128, 8, 4, 4)  # the table row after them
    m256 = seeded_space(_job(n=4096, k=14336, m_max=256), H100, [table], DEFAULT)
    assert [c for c in m256 if c in MIDM_SEEDS] == list(MIDM_SEEDS)  # split ones included
    assert any(c.split_k > 1 and c.block_m == 128 for c in MIDM_SEEDS)
    m512 = seeded_space(_job(n=4096, k=14336, m_max=1024, m=512), H100, [_table(_row(
        KernelConfig(128, 128, 128, 8, 8, 4, 2), m_max=1024))], DEFAULT)
    assert all(c.split_k == 1 for c in m512)  # past 256 rows no split-K, a table row's neither
    m32 = seeded_space(_job(n=4096, k=14336, m_max=64, m=32), H100, [table], DEFAULT)
    assert not [c for c in m32[1:] if c.block_m > 32]  # seeds of 64-row tiles are taller than 32 padded rows
    int8 = seeded_space(_job(kernel="int8_gemm", keys=("int8_per_channel", "int8_dynamic_per_token")), H100, [], DEFAULT)
    assert int8[1:] == fit64
    for job in (_job(m_max=16), _job(m_max=1024, m=512),
                _job(kernel="fp8_block_gemm", keys=("fp8_block_128x128", "fp8_dynamic_group_128"))):
        assert not set(MIDM_SEEDS) & set(seeded_space(job, H100, [], DEFAULT)), job


def test_midm_small_jobs_of_5_to_16_rows_measure_the_16_row_deep_k_seeds():
    from quantc.tune import GEMV_SEEDS, MIDM_SEEDS, SMALLM_SEEDS

    m16 = seeded_space(_job(n=4096, k=14336, m_max=16), H100, [], DEFAULT)
    assert m16 == [DEFAULT, *SMALLM_SEEDS]
    assert seeded_space(_job(n=4096, k=14336, m_max=16, m=5), H100, [], DEFAULT) == m16
    m4 = seeded_space(_job(n=4096, k=14336, m_max=16, m=4), H100, [], DEFAULT)  # GEMV-sized: its seeds
    assert not set(SMALLM_SEEDS) & set(m4) and set(GEMV_SEEDS) & set(m4)
    assert not set(SMALLM_SEEDS) & set(seeded_space(_job(n=4096, k=14336), H100, [], DEFAULT))  # 64 rows
    assert not set(MIDM_SEEDS) & set(m16)
    block = _job(m_max=16, kernel="fp8_block_gemm", keys=("fp8_block_128x128", "fp8_dynamic_group_128"))
    assert not set(SMALLM_SEEDS) & set(seeded_space(block, H100, [], DEFAULT))


def test_fp8_block_jobs_of_5_to_64_rows_measure_the_split_k_seeds():
    from quantc.tune import BLOCK_SMALLM_SEEDS

    keys = ("fp8_block_128x128", "fp8_dynamic_group_128")
    m16 = seeded_space(_job(n=4096, k=14336, m_max=16, kernel="fp8_block_gemm", keys=keys), H100, [], DEFAULT)
    # 16 rows: every seed, the 64-row ones too (past the padded M, which the rowwise kernel's jobs keep)
    assert m16 == [DEFAULT, *BLOCK_SMALLM_SEEDS]
    m64 = seeded_space(_job(n=4096, k=14336, kernel="fp8_block_gemm", keys=keys), H100, [], DEFAULT)
    assert m64 == [DEFAULT, *BLOCK_SMALLM_SEEDS]
    assert {c.block_m for c in BLOCK_SMALLM_SEEDS} == {16, 64}
    # GEMV-sized jobs (at most GEMV_MAX_M rows) keep the padded-M cap: no 64-row tile in their full space
    gemv_sized = _job(n=4096, k=14336, m_max=16, m=4, kernel="fp8_block_gemm", keys=keys)
    assert max(c.block_m for c in search_space(gemv_sized, H100)) <= 16
    # 128 rows and up (the Gluon kernel's) and the rowwise kernel do not get them; nor a K too short to split
    for job in (_job(n=4096, k=14336, m_max=256, m=128, kernel="fp8_block_gemm", keys=keys),
                _job(n=4096, k=14336, m_max=16)):
        assert not set(BLOCK_SMALLM_SEEDS) & set(seeded_space(job, H100, [], DEFAULT)), job
    short = seeded_space(_job(n=4096, k=256, m_max=16, kernel="fp8_block_gemm", keys=keys), H100, [], DEFAULT)
    # K = 256: two 128-wide steps, so only the split of 2 remains (a slice holds at least one K step)
    assert short == [DEFAULT, KernelConfig(16, 64, 128, 8, 4, 4, 2), KernelConfig(64, 64, 128, 8, 4, 4, 2)]
