"""`quantc tune`, compiler side: which (kernel, N, K, M-bucket) to tune, the search space, shared-memory
pruning, and the kernel table it writes (``schemas/kernels.schema.json``). No torch here: measuring is
``quantc.runtime.tune``.

MoE entries (the grouped GEMMs of ``runtime.moe.QuantMoE``) are tuned too. Their M-buckets are live
token counts, the bound ``QuantMoE`` picks a config by; a job measures ``m`` tokens routed to ``top_k``
of ``num_experts`` experts (per rank). ``top_k`` comes from the model description when ``tune`` is given
one (``top_k_from_model``: ``num_experts_per_tok`` / ``experts_per_token`` of its config.json), else from
the plan's architecture (``DEFAULT_TOP_K``, the published configs' values), else ``FALLBACK_TOP_K``;
plans do not record it. The gate_up GEMM (activation fused) and the down GEMM are separate jobs; the
down GEMM runs with gate_up's BLOCK_M (both share one routing, padded to it), so a down job searches
the other fields only, at the BLOCK_M gate_up's row uses for that bucket.

Search spaces (``SPACES``): ``full``, the grids of ``search_space`` / ``moe_search_space`` (hundreds of
compiles a job; dense decode jobs of at most four rows add the CUDA-core GEMV's grid, ``gemv_space``; 4-bit
weight-only decode jobs on sm_90 where the runtime runs configs of its own, one row (its GEMV) and 2-8 rows of int4 g128,
mxfp4 and nvfp4 (int4 with zero points 2-16: its natural-layout MMA kernel), measure one candidate: nothing reads the
table there);
``small``, a handful, for tests and the CPU interpreter; ``seeded`` (``seeded_space``), transfer from
tables already tuned on other shapes. A seeded job's candidates are the configs that won for the same
kernel id in the given tables (by default the shipped ``kernels/`` tables, the target
GPU's own first; ``quantc.runtime.tune`` puts the table it is writing before them), ranked by
closeness: rows of the job's own M-bucket first, then the nearer buckets (by position in
``M_BUCKETS``), within that the nearer (N, K) by the compiler's nearest-shape measure
(``emit.shape_distance``), then table order. Each goes through the full space's feasibility pruning
(block sizes, split-K, K alignment, shared memory, the grouped GEMM's BLOCK_K rules); a MoE down job
takes its gate_up partner's BLOCK_M in place of the seed's, and split-K, which the grouped GEMM does
not have, is set to 1. Duplicates are dropped; the job's default
config comes first, unpruned (the runtime supplies it: it is chosen beside torch, and it is what the
module runs without a row), and the list stops at ``SEEDED_MAX``. After the kernel's own rows come those
of its ``SEED_SIBLINGS`` (a GEMV-capable decode job: ``GEMV_SEEDS`` before them), kernel ids launched by
the same Triton kernel with the same tile parameters
(int8 / fp8 weight-only: one ``scaled_mm`` path; mxfp8-activation fp4: the fp4 weight-only launch behind
an activation round trip; the grouped MoE ids: one ``moe_gemm`` kernel), so a kernel no table has rows
for yet still starts from measured winners. Where neither it nor a sibling is known, the default is the
only candidate.

The table is rewritten atomically after every finished (kernel, N, K, bucket), so an interrupted run
keeps what it finished and a rerun skips it (resume).
"""

from __future__ import annotations

import itertools
import json
from bisect import bisect_left
from dataclasses import dataclass, replace
from pathlib import Path

from .emit import CONFIG_FIELDS, TABLE_FORMAT, data_dir, element_bytes, shape_distance, tile_smem_bytes
from .gpus import Gpu
from .kernel_specs import KERNELS_BY_ID, own_config_rows
from .keys import ACTIVATION_KEYS, WEIGHT_KEYS
from .plan import M_MAX_LAST, KernelConfig, Plan, write_atomic

# the M-buckets tuned, and the M measured for each (the last bucket is measured at 8192)
M_BUCKETS: tuple[tuple[int, int], ...] = ((1, 1), (16, 16), (64, 64), (256, 256), (1024, 1024), (4096, 4096), (M_MAX_LAST, 8192))
SPACES = ("full", "small", "seeded")
SEEDED_MAX = 12  # candidates of a seeded job, its default included
# kernel id -> ids whose table rows seed it after its own (same Triton kernel and tile parameters)
SEED_SIBLINGS: dict[str, tuple[str, ...]] = {
    "int8_weight_only_gemm": ("fp8_weight_only_gemm",),
    "fp8_weight_only_gemm": ("int8_weight_only_gemm",),
    "mxfp4_mxfp8_gemm_emulated": ("fp4_weight_only_gemm",),
    "moe_bf16": ("moe_weight_only", "moe_int8"),
    "moe_fp8": ("moe_int8", "moe_fp8_block"),
    "moe_fp8_block": ("moe_fp8", "moe_int8"),
    "moe_int8": ("moe_fp8", "moe_fp8_block"),
    "moe_mxfp8_emulated": ("moe_mxfp4_mxfp8_emulated", "moe_weight_only"),
    "moe_mxfp4_mxfp8_emulated": ("moe_mxfp8_emulated", "moe_weight_only"),
}

# dense kernels whose launch takes a KernelConfig (torch-family kernels choose their own), and the
# grouped MoE GEMMs
DENSE_TUNABLE = {k for k, spec in KERNELS_BY_ID.items() if spec.family != "torch" and spec.layer_kinds == {"linear"} and spec.min_sm < 100}
MOE_TUNABLE = {k for k, spec in KERNELS_BY_ID.items() if spec.layer_kinds == {"moe"}}
TUNABLE = DENSE_TUNABLE | MOE_TUNABLE

# experts per token by architecture (num_experts_per_tok / experts_per_token of the published configs:
# DeepSeek-V2 6, DeepSeek-V3 8, Qwen3-30B-A3B and -235B-A22B 8, gpt-oss 4, Mixtral 2)
DEFAULT_TOP_K = {"DeepseekV2ForCausalLM": 6, "DeepseekV3ForCausalLM": 8, "Qwen3MoeForCausalLM": 8,
                 "GptOssForCausalLM": 4, "MixtralForCausalLM": 2}
FALLBACK_TOP_K = 8
TOP_K_FIELDS = ("num_experts_per_tok", "experts_per_token", "num_experts_per_token")
# leaf names of the modules whose table entry configures the gate_up GEMM (the rest: down)
GATE_UP_LEAVES = {"gate_up_proj", "gate_proj", "up_proj", "w1", "w3"}


@dataclass(frozen=True)
class TuneJob:
    kernel: str
    n: int
    k: int
    weight_key: str
    activation_key: str
    m_max: int
    m: int  # rows measured (dense), live tokens (MoE)
    # --- MoE jobs only (num_experts = 0: a dense job) ---
    num_experts: int = 0  # experts on one rank
    top_k: int = 1
    role: str = ""  # "gate_up" (activation fused, reads 2 x n_out weight rows) or "down"
    rows: int = 0  # rows of one expert's weight (gate_up: 2I, whatever the entry's n; down: n)
    act: str = "silu"  # gate_up's fused activation: silu or gpt_oss
    partner: tuple | None = None  # down: (kernel, n, k) of the gate_up entry whose BLOCK_M it runs with
    block_m: int = 0  # down: that BLOCK_M (0: searched)

    @property
    def key(self) -> tuple:
        return (self.kernel, self.n, self.k, self.m_max)

    @property
    def n_out(self) -> int:
        """Output columns of the GEMM (the kernel's N): I for gate_up, whose fused activation halves it."""
        return self.rows // 2 if self.role == "gate_up" else self.n


def jobs_from_plan(plan: Plan, buckets=M_BUCKETS, kernels: set[str] | None = None, top_k: int | None = None) -> list[TuneJob]:
    """One job per (kernel, per-rank N, K) of the plan and M-bucket, with the keys of a module using it.
    Dense jobs first, then MoE gate_up jobs, then MoE down jobs (which take gate_up's tuned BLOCK_M).
    ``top_k``: experts per token of a MoE model (default: by the plan's architecture, see the module doc)."""
    first: dict[str, object] = {}
    gate_up_entry: dict[str, str] = {}  # moe_block -> its gate_up entry id
    for m in plan.modules:
        if not m.kernel_entry:
            continue
        first.setdefault(m.kernel_entry, m)
        if m.kind == "moe_experts" and _leaf(m) in GATE_UP_LEAVES:
            gate_up_entry.setdefault(_block(m), m.kernel_entry)
            if _leaf(first[m.kernel_entry]) not in GATE_UP_LEAVES:  # one entry for both GEMMs: tune as gate_up
                first[m.kernel_entry] = m
    moe = None
    jobs = []
    for eid, m in sorted(first.items()):
        e = plan.kernels[eid]
        if e.kernel not in TUNABLE or (kernels and e.kernel not in kernels):
            continue
        for m_max, rows in buckets:
            job = TuneJob(e.kernel, e.n, e.k, m.weight, m.activation, m_max, rows)
            if e.kernel in MOE_TUNABLE:
                moe = moe or _MoeFacts(plan, top_k)
                job = moe.job(job, m, gate_up_entry.get(_block(m)))
            jobs.append(job)
    order = {"": 0, "gate_up": 1, "down": 2}
    return sorted(jobs, key=lambda j: order[j.role])  # stable: entry id and bucket order kept within a role


def _leaf(m) -> str:
    return m.name.rpartition(".")[2]


def _block(m) -> str:
    return m.moe_block or m.name.rpartition(".")[0]


class _MoeFacts:
    """What MoE jobs need from a plan: experts per rank, top_k, activation, gate_up entries' configs."""

    def __init__(self, plan: Plan, top_k: int | None):
        from .lower import experts_per_block  # the same count the plan's expert-parallel check uses

        self.plan = plan
        self.experts = experts_per_block(plan)
        arch = plan.model.get("architecture", "")
        self.top_k = top_k or DEFAULT_TOP_K.get(arch, FALLBACK_TOP_K)
        self.act = "gpt_oss" if arch == "GptOssForCausalLM" else "silu"
        t = plan.target
        self.ep_ranks = t.get("tensor_parallel", 1) if t.get("expert_parallel") else 1

    def job(self, job: TuneJob, m, partner: str | None) -> TuneJob:
        experts = max(1, self.experts.get(_block(m), m.num_experts) // self.ep_ranks)
        gate_up = _leaf(m) in GATE_UP_LEAVES
        # a fused gate_up tensor's entry has N = 2I; a per-expert gate_proj's has N = I
        rows = (job.n if m.num_experts > 1 else 2 * job.n) if gate_up else job.n
        extra = {}
        if not gate_up and partner is not None:
            pe = self.plan.kernels[partner]
            extra = {"partner": (pe.kernel, pe.n, pe.k), "block_m": pe.config_for(job.m).block_m}
        return replace(job, num_experts=experts, top_k=min(self.top_k, experts), role="gate_up" if gate_up else "down",
                       rows=rows, act=self.act, **extra)


def top_k_from_model(model) -> int | None:
    """Experts per token from a model description's config.json (a config, a directory holding one, or
    a safetensors file / index beside one); None when it does not say or cannot be read."""
    p = Path(str(model))
    path = p / "config.json" if p.is_dir() else p if p.name.endswith(".json") and not p.name.endswith(".index.json") \
        else p.parent / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data = {**data, **(data.get("text_config") if isinstance(data.get("text_config"), dict) else {})}
    for f in TOP_K_FIELDS:
        v = data.get(f)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def partner_block_m(job: TuneJob, table: dict) -> TuneJob:
    """A down job with the BLOCK_M of its gate_up entry's row for the same bucket in ``table`` (tuned in
    this run or an earlier one), else as planned."""
    if job.partner is None:
        return job
    for r in table.get("entries", []):
        if (r["kernel"], r["n"], r["k"]) == job.partner and r["m_max"] == job.m_max:
            return replace(job, block_m=int(r["block_m"]))
    return job


def smem_bytes(cfg: KernelConfig, weight_key: str, activation_key: str) -> int:
    """Shared memory a software-pipelined GEMM tile needs: ``stages`` copies of the A and B tiles."""
    return tile_smem_bytes(cfg, element_bytes(activation_key, "activation"), element_bytes(weight_key, "weight"))


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


# 4-bit weight-only GEMMs at decode: small one- and two-warp programs and deep split-K (bench/wo_probe.py:
# two-warp programs won on the H100; one-warp ones hold fewer registers, not timed yet)
DECODE_4BIT = ("int4_weight_only_gemm", "fp4_weight_only_gemm")


# dense ids ``scaled_mm`` can run as its CUDA-core decode GEMV (block_m = 1: runtime/kernels/scaled_gemv.py;
# not the mx pairs), the most rows a job may have to search it (a program per row), its grid and its seeds
GEMV_KERNELS = ("fp8_scaled_gemm", "fp8_block_gemm", "int8_gemm", "fp8_weight_only_gemm", "int8_weight_only_gemm")
GEMV_MAX_M = 4
# BLOCK_N, BLOCK_K, warps, stages (>= 2: a K step prefetched), split-K
GEMV_GRID = ((8, 16, 32, 64), (128, 256, 512, 1024), (2, 4, 8), (1, 2), (1, 2, 4, 8, 16))
# the winners of bench/gemv_probe.py on the H100 (bench/results/gemv_probe_h100.json, 7 shapes)
GEMV_SEEDS = (KernelConfig(1, 8, 256, 8, 4, 1, 1), KernelConfig(1, 8, 512, 8, 4, 1, 1),
              KernelConfig(1, 16, 256, 8, 4, 1, 8), KernelConfig(1, 8, 512, 8, 4, 1, 8),
              KernelConfig(1, 16, 1024, 8, 4, 1, 1), KernelConfig(1, 16, 512, 8, 4, 2, 1))
# a GEMV program's tile: at least one 16-byte vector a thread, at most 8 (registers for the loads in flight)
GEMV_VECS = (1, 8)

# Mid-size M (17-256 rows) of the raw-sum W8A8 GEMMs: 256-512-deep K steps, which no table row had (the
# tuned rows were 128 deep): bench/midm_probe.py on the H100 (bench/results/midm_probe_h100_wide.json,
# weights past L2) ran fp8 (4096, 14336) at M = 64 in 24.9 us against 36.8 for the table's 64 x 64 x 128
# (GemLite 24.7) and M = 256 in 35.3 against 43.3 (GemLite 35.0). A seeded job of those sizes measures
# them right after its default, pruned like any seed.
MIDM_KERNELS = ("fp8_scaled_gemm", "int8_gemm")
# The last two split K in two at up to 256 rows: (4096, 14336) at M = 256 has 64 128 x 128 or 128 64 x 128
# tiles on 132 SMs, where GemLite's kernel led int8 by 7% (bench/results/dense_h100_s11.json).
MIDM_SEEDS = (KernelConfig(64, 32, 512, 8, 4, 4, 1), KernelConfig(64, 64, 256, 8, 4, 4, 2),
              KernelConfig(64, 32, 256, 8, 4, 4, 2), KernelConfig(64, 128, 256, 8, 4, 4, 1),
              KernelConfig(64, 128, 256, 8, 8, 4, 1), KernelConfig(128, 64, 256, 8, 8, 4, 1),
              KernelConfig(128, 128, 128, 8, 8, 4, 2), KernelConfig(64, 128, 256, 8, 4, 4, 2))
MIDM_RANGE = (17, 256)
SPLIT_K_MAX_M = 64  # split-K candidates up to this many rows, and up to MIDM_RANGE's top for MIDM_KERNELS
# The same kernels at 5-16 rows (above the GEMV's, in one 16-row tile): 512-deep K steps with five stages,
# the tiles GemLite's shipped H100 table gives its A8W8 kernel at 16 rows on Runtime I's long-K shapes
# (the 64-row one it gives at 64 rows is MIDM_SEEDS' first, which won there), and deep-K neighbours
SMALLM_SEEDS = (KernelConfig(16, 32, 512, 8, 4, 5, 1), KernelConfig(16, 64, 512, 8, 4, 5, 1),
                KernelConfig(16, 32, 512, 8, 4, 4, 2), KernelConfig(16, 64, 256, 8, 4, 5, 1))
SMALLM_RANGE = (GEMV_MAX_M + 1, 16)
# fp8 128-block GEMMs of 5-64 rows (the tiled kernel: the Gluon one takes 128 rows and up): split-K tiles,
# which no tuned row had. bench/block_ws_probe.py on the H100 (block_ws_probe_h100_gemlite_smallm.json)
# ran (4096, 14336) at M = 16 in 26.9 us with 16 x 32 x 128, split 4, against 40.3 for 64 x 64 (GemLite
# 24.6), and (2048, 7168) in 8.8 against 14.6.
BLOCK_SMALLM_KERNELS = ("fp8_block_gemm",)
# At 33-64 rows the 64 x 64 tile won most shapes unsplit (block_ws_probe_h100_s10_a/b.json), with N / 64
# programs: 64 on the 4096-wide shapes; split 2-4 ways it fills the SMs (the 64-row seeds; they also won
# three 16-row shapes, the padded rows masked: block_ws_probe_h100_s10_smallm.json).
BLOCK_SMALLM_SEEDS = (KernelConfig(16, 64, 128, 8, 4, 4, 4), KernelConfig(16, 32, 128, 8, 4, 5, 4),
                      KernelConfig(16, 128, 128, 8, 4, 4, 4), KernelConfig(16, 32, 128, 8, 4, 5, 8),
                      KernelConfig(16, 64, 128, 8, 4, 4, 2), KernelConfig(64, 64, 128, 8, 4, 4, 2),
                      KernelConfig(64, 64, 128, 8, 4, 4, 4), KernelConfig(64, 32, 128, 8, 4, 4, 4))
BLOCK_SMALLM_RANGE = (GEMV_MAX_M + 1, 64)


def _gemv_job(job: TuneJob) -> bool:
    return job.kernel in GEMV_KERNELS and job.m <= GEMV_MAX_M and not job.num_experts


def gemv_space(job: TuneJob, gpu: Gpu) -> list[KernelConfig]:
    """GEMV candidates of a decode job (``_gemv_job``): the GEMV_GRID, pruned by ``_dense_ok``, and no
    K step wider than a scale group along K (the launcher would run it as the group's width: a duplicate)."""
    groups = [g for g in (WEIGHT_KEYS[job.weight_key].group_k, ACTIVATION_KEYS[job.activation_key].group_k) if g]
    widest = min(groups, default=None)
    configs = (KernelConfig(1, bn, bk, 8, w, st, sk) for bn, bk, w, st, sk in itertools.product(*GEMV_GRID)
               if widest is None or bk <= widest)
    return [cfg for cfg in configs if _dense_ok(job, gpu, cfg)]


def resolve_space(space: str = "full", small: bool = False) -> str:
    """The search space named by ``space`` (one of ``SPACES``), ``small=True`` being ``space="small"``."""
    if space not in SPACES:
        raise ValueError(f"unknown search space {space!r}; known: {', '.join(SPACES)}")
    if small and space not in ("full", "small"):
        raise ValueError(f"small=True is the small space; it cannot be combined with space={space!r}")
    return "small" if small else space


def search_space(job: TuneJob, gpu: Gpu, *, small: bool = False, space: str = "full", tables: list[dict] | None = None,
                 default: KernelConfig | None = None) -> list[KernelConfig]:
    """Candidate configs for one job in ``space`` (``SPACES``; ``small=True``: the small one), pruned
    before compiling: blocks no larger than the padded problem, split-K only for decode-sized M, and
    tiles that fit the GPU's shared memory. ``tables``, ``default``: the seeded space's (``seeded_space``)."""
    space = resolve_space(space, small)
    if _runtime_gemv(job, gpu) and default is not None:
        return [default]
    if space == "seeded":
        return seeded_space(job, gpu, tables, default)
    if job.num_experts:
        return moe_search_space(job, gpu, small=space == "small")
    if space == "small":
        grid = itertools.product((16, 32), (32, 64), (32, 64), (4,), (2, 3), (1, 2))
    elif _decode_4bit(job):
        grid = itertools.product((16,), (32, 64, 128), (128, 256), (1, 2, 4), (3, 4), (1, 2, 4, 6, 8, 12, 16, 24))
    else:
        grid = itertools.product((16, 32, 64, 128, 256), (32, 64, 128, 256), (64, 128, 256), (4, 8), (3, 4, 5), (1, 2, 4, 8))
    configs = (KernelConfig(bm, bn, bk, 8, warps, stages, split_k) for bm, bn, bk, warps, stages, split_k in grid)
    gemv = gemv_space(job, gpu) if _gemv_job(job) and space == "full" else []
    found = [cfg for cfg in configs if _dense_ok(job, gpu, cfg)] + gemv
    return found[:1] if _runtime_gemv(job, gpu) else found  # a row nobody reads there: one candidate


def _cap(x: int) -> int:
    """The padded problem size along one axis: the largest block worth a candidate."""
    return max(16, _pow2_at_least(x))


def _m_cap(job: TuneJob) -> int:
    """The largest BLOCK_M worth a dense candidate: the padded M, and for fp8 128-block jobs of up to 64
    rows 64 (a 64-row split-K tile beat the 16-row ones at 16 rows too on three of seven shapes:
    block_ws_probe_h100_s10_smallm.json)."""
    if job.kernel in BLOCK_SMALLM_KERNELS and BLOCK_SMALLM_RANGE[0] <= job.m <= BLOCK_SMALLM_RANGE[1]:
        return 64
    return _cap(job.m)


def _decode_4bit(job: TuneJob) -> bool:
    return job.kernel in DECODE_4BIT and job.m <= 16


def _runtime_gemv(job: TuneJob, gpu: Gpu) -> bool:
    """4-bit weight-only decode on sm_90 where the runtime runs a config of its own, whatever the table says
    (``kernel_specs.own_config_rows``): one row on its CUDA-core GEMV (``runtime/kernels/wo_gemv.py``), 2-8 rows of
    int4 g128, mxfp4 and nvfp4 (int4 with zero points 2-16) on the natural layout's MMA kernel
    (``runtime/kernels/wo_plane_mma.py``); int4 in smaller groups two rows on the GEMV."""
    return (job.kernel in DECODE_4BIT and gpu.sm == 90 and not job.num_experts
            and job.m_max <= own_config_rows(job.weight_key, job.k))


def _dense_ok(job: TuneJob, gpu: Gpu, cfg: KernelConfig) -> bool:
    """Whether a dense candidate survives pruning (the full space's rules, applied to seeds too)."""
    if cfg.block_m > _m_cap(job) or cfg.block_n > _cap(job.n) or cfg.block_k > _cap(job.k):
        return False
    if cfg.block_m < 16:  # the GEMV: only where scaled_mm runs it, 1-8 vectors of 16 weights a thread
        vecs = cfg.block_n * cfg.block_k / (16 * 32 * cfg.num_warps)
        if cfg.block_m != 1 or not _gemv_job(job) or not GEMV_VECS[0] <= vecs <= GEMV_VECS[1]:
            return False
    if _decode_4bit(job) and cfg.block_n * cfg.block_k > 256 * 32 * cfg.num_warps:
        return False  # over 256 weight elements a thread per K step spills (bench/kernel_sass.py)
    split_rows = MIDM_RANGE[1] if job.kernel in MIDM_KERNELS else SPLIT_K_MAX_M
    if cfg.split_k > 1 and (job.m > split_rows or job.k // cfg.split_k < cfg.block_k):
        return False
    k_multiple = KERNELS_BY_ID[job.kernel].k_multiple
    if k_multiple > 1 and cfg.block_k % min(k_multiple, 128) and k_multiple % cfg.block_k:
        return False  # a K-tile must line up with the format's scale groups
    if cfg.block_m >= 128 and cfg.num_warps == 4 and cfg.block_n >= 256:
        return False
    return smem_bytes(cfg, job.weight_key, job.activation_key) <= gpu.smem_bytes


def _w8a8(job: TuneJob) -> bool:
    """The grouped GEMM's raw fp8 x fp8 / int8 x int8 path (MX kernels round activations to bf16 values)."""
    return job.activation_key != "none" and KERNELS_BY_ID[job.kernel].family != "triton_emulated"


def moe_block_k_ok(job: TuneJob, bk: int) -> bool:
    """BLOCK_K values ``moe_gemm.grouped_gemm`` runs as given (it halves or raises others): on the W8A8
    path both scales must be constant over a K tile (BLOCK_K >= 32 dividing the weight's and the
    activation's group along K; per-channel / per-token scales allow any); 4-bit weights decode 16 bytes a row
    at least (BLOCK_K >= 32); others BLOCK_K >= 16."""
    w = WEIGHT_KEYS[job.weight_key]
    if _w8a8(job):
        a = ACTIVATION_KEYS[job.activation_key]
        # a scale over the whole row is constant over any tile (the last one masked); a group must be divided
        return bk >= 32 and (w.group_k is None or w.group_k % bk == 0) and (a.group_k is None or a.group_k % bk == 0)
    return bk >= (32 if not w.is_none and w.bits == 4 else 16)


def moe_smem_bytes(cfg: KernelConfig, job: TuneJob) -> int:
    """Shared memory of a grouped-GEMM tile: ``stages`` copies of the A tile and of the weight tiles
    (two for gate_up, whose fused activation reads gate and up rows). A is bf16 except on the W8A8 path."""
    a_bytes = element_bytes(job.activation_key, "activation") if _w8a8(job) else 2.0
    return tile_smem_bytes(cfg, a_bytes, element_bytes(job.weight_key, "weight"), 2 if job.role == "gate_up" else 1)


# BLOCK_M, BLOCK_N, BLOCK_K, warps, stages of the grouped GEMM's full and small spaces
MOE_GRID = ((16, 32, 64, 128), (64, 128, 256), (64, 128), (4, 8), (2, 3, 4))
MOE_GRID_SMALL = ((16, 32), (32, 64), (32, 64, 128), (4,), (2,))


def moe_search_space(job: TuneJob, gpu: Gpu, *, small: bool = False) -> list[KernelConfig]:
    """Candidates for a grouped MoE GEMM: BLOCK_M {16..128} (no larger than the tokens, the most one
    expert can get; a down job keeps gate_up's BLOCK_M), BLOCK_N {64, 128, 256} (no larger than the
    padded output width), BLOCK_K {64, 128} as the kernel runs it (``moe_block_k_ok``; a K smaller
    than every valid BLOCK_K keeps the smallest valid one), warps {4, 8}, stages {2, 3, 4}; tiles that
    overflow shared memory are pruned. ``small``: a handful, for the CPU interpreter."""
    bms, bns, bks, warps, stages = MOE_GRID_SMALL if small else MOE_GRID
    m_cap, n_cap, k_cap = _cap(job.m), _cap(job.n_out), _cap(job.k)
    bms = (job.block_m,) if job.block_m else tuple(b for b in bms if b <= m_cap)
    n_ok = tuple(b for b in bns if b <= n_cap) or (min(bns),)
    k_valid = [b for b in bks if moe_block_k_ok(job, b)]
    k_ok = tuple(b for b in k_valid if b <= k_cap) or tuple(k_valid[:1])
    configs = (KernelConfig(bm, bn, bk, 8, w, st) for bm, bn, bk, w, st in itertools.product(bms, n_ok, k_ok, warps, stages))
    return [cfg for cfg in configs if _moe_tile_ok(job, gpu, cfg)]


def _moe_tile_ok(job: TuneJob, gpu: Gpu, cfg: KernelConfig) -> bool:
    return not (cfg.block_m >= 128 and cfg.num_warps == 4 and cfg.block_n >= 256) and moe_smem_bytes(cfg, job) <= gpu.smem_bytes


def _moe_seed(job: TuneJob, gpu: Gpu, cfg: KernelConfig) -> KernelConfig | None:
    """A seed as the full grouped-GEMM space would prune it (None: infeasible): a down job's BLOCK_M
    replaced by gate_up's, blocks no larger than the padded problem (or than the full grid's smallest
    BLOCK_N / valid BLOCK_K, which it keeps where nothing smaller fits), BLOCK_K as the kernel runs it,
    tiles that fit shared memory."""
    # the grouped GEMM has no split-K: seeds differing only there are one candidate
    cfg = replace(cfg, block_m=job.block_m or cfg.block_m, split_k=1)
    _, bns, bks, _, _ = MOE_GRID
    n_cap = max(_cap(job.n_out), min(bns))
    k_cap = max([_cap(job.k), *[b for b in bks if moe_block_k_ok(job, b)][:1]])
    if (not job.block_m and cfg.block_m > _cap(job.m)) or cfg.block_n > n_cap or cfg.block_k > k_cap:
        return None
    if not moe_block_k_ok(job, cfg.block_k) or not _moe_tile_ok(job, gpu, cfg):
        return None
    return cfg


# --- the seeded space ------------------------------------------------------------------------------


# Grouped-GEMM tiles that bench/bench_moe.py measured best at 4096 tokens for all four MoE sizes, on the
# H100 and the H200 (bf16: 1.2-1.35x the 64-row default), which no table row had won yet: a seeded MoE
# job whose experts average at least MOE_LARGE_ROWS rows each measures them right after its default.
# The 128-deep one won the fp8 gate_up at 4096 tokens for all four on the H100 (1.06-1.22x the table
# row, bench/results/moe_h100_fp8_tiles.json). Its 4-stage and GROUP_M = 1 forms won the fp8 gate_up at 4096
# tokens for DeepSeek-V3 and gpt-oss-120b by 3-8% in one run (bench/results/moe_tile_probe_h100_s18.json: the
# kernel is bound by L2 throughput there, ~90% under ncu, so more bytes in flight and the row-major tile order
# pay); the last seed is the 64-deep (bf16) form of the 4-stage, GROUP_M = 1 tile
MOE_LARGE_SEEDS = (KernelConfig(128, 128, 64, 8, 8, 3), KernelConfig(128, 256, 64, 8, 8, 3),
                   KernelConfig(64, 256, 64, 8, 8, 3), KernelConfig(128, 128, 128, 8, 8, 3),
                   KernelConfig(128, 128, 128, 8, 8, 4), KernelConfig(128, 128, 128, 1, 8, 3),
                   KernelConfig(128, 128, 128, 1, 8, 4), KernelConfig(128, 128, 64, 1, 8, 4))
MOE_LARGE_ROWS = 128


def seeded_space(job: TuneJob, gpu: Gpu, tables: list[dict] | None = None,
                 default: KernelConfig | None = None) -> list[KernelConfig]:
    """Candidates transferred from tuned tables (the module doc has the rule): ``default`` first, then
    (MoE jobs with at least MOE_LARGE_ROWS rows an expert) ``MOE_LARGE_SEEDS``, (decode jobs) ``GEMV_SEEDS``,
    (raw-sum W8A8 jobs of 5-16 / 17-256 rows) ``SMALLM_SEEDS`` / ``MIDM_SEEDS``, (fp8 128-block jobs of 5-64
    rows) ``BLOCK_SMALLM_SEEDS``, then the feasible winners
    of ``job.kernel`` in ``tables`` (parsed kernel tables; default: the shipped ones,
    ``shipped_tables``), closest first, without duplicates, at most ``SEEDED_MAX`` in all."""
    tables = shipped_tables(gpu) if tables is None else tables
    kin = {job.kernel: 0, **{sib: i + 1 for i, sib in enumerate(SEED_SIBLINGS.get(job.kernel, ()))}}
    seeds = sorted((((kin[row["kernel"]],) + _closeness(job, row, i), _row_config(row))
                    for i, table in enumerate(tables) for row in table.get("entries", []) if row["kernel"] in kin),
                   key=lambda seed: seed[0])
    out = [default] if default is not None else []
    if job.num_experts and job.m * job.top_k >= MOE_LARGE_ROWS * job.num_experts:
        out += [c for c in (_moe_seed(job, gpu, c) for c in MOE_LARGE_SEEDS) if c is not None and c not in out]
    if _gemv_job(job):
        out += [c for c in GEMV_SEEDS if _dense_ok(job, gpu, c) and c not in out]
    for kernels, (lo, hi), by_rows in ((MIDM_KERNELS, SMALLM_RANGE, SMALLM_SEEDS), (MIDM_KERNELS, MIDM_RANGE, MIDM_SEEDS),
                                       (BLOCK_SMALLM_KERNELS, BLOCK_SMALLM_RANGE, BLOCK_SMALLM_SEEDS)):
        if job.kernel in kernels and lo <= job.m <= hi:
            out += [c for c in by_rows if _dense_ok(job, gpu, c) and c not in out]
    for _, cfg in seeds:
        if len(out) >= SEEDED_MAX:
            break
        cfg = _moe_seed(job, gpu, cfg) if job.num_experts else _dense_seed(job, gpu, cfg)
        if cfg is not None and cfg not in out:
            out.append(cfg)
    return out


def _dense_seed(job: TuneJob, gpu: Gpu, cfg: KernelConfig) -> KernelConfig | None:
    return cfg if _dense_ok(job, gpu, cfg) else None


_BOUNDS = tuple(m_max for m_max, _ in M_BUCKETS)


def _closeness(job: TuneJob, row: dict, table_index: int) -> tuple:
    """Sort key of a seed row for a job: own bucket, bucket distance, shape distance, table, shape, bucket."""
    n, k, m_max = int(row["n"]), int(row["k"]), int(row["m_max"])
    buckets_apart = abs(bisect_left(_BOUNDS, m_max) - bisect_left(_BOUNDS, job.m_max))
    return (m_max != job.m_max, buckets_apart, shape_distance(job.n, job.k, n, k), table_index, n, k, m_max)


def _row_config(row: dict) -> KernelConfig:
    return KernelConfig(**{f: int(row[f]) for f in CONFIG_FIELDS if f in row})


def shipped_tables(gpu: Gpu) -> list[dict]:
    """The kernel tables shipped under ``kernels/``: the GPU's own table first, then the others by name."""
    paths = sorted(data_dir("kernels").glob("*.json"), key=lambda p: (p.stem != gpu.table, p.stem))
    return [read_table_file(p) for p in paths]


# --- the table file --------------------------------------------------------------------------------


def read_table_file(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise ValueError(f"{path} exists and is not a quantc kernel table")
    return data


def read_or_new_table(path: Path, gpu: Gpu, meta: dict) -> dict:
    if path.is_file():
        return read_table_file(path)
    return {"format": TABLE_FORMAT, "version": 1, "gpu": gpu.name, **meta, "defaults": {}, "entries": []}


def finished(table: dict) -> set[tuple]:
    return {(r["kernel"], r["n"], r["k"], r["m_max"]) for r in table.get("entries", [])}


def add_entry(path: Path, table: dict, job: TuneJob, cfg: KernelConfig, time_us: float, default_time_us: float | None) -> None:
    row = {"kernel": job.kernel, "n": job.n, "k": job.k, "m_max": job.m_max,
           **{f: getattr(cfg, f) for f in CONFIG_FIELDS}, "time_us": round(time_us, 3)}
    if default_time_us is not None:
        row["default_time_us"] = round(default_time_us, 3)
    table["entries"] = [r for r in table["entries"] if (r["kernel"], r["n"], r["k"], r["m_max"]) != job.key] + [row]
    table["entries"].sort(key=lambda r: (r["kernel"], r["n"], r["k"], r["m_max"]))
    write_atomic(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
