"""QuantMoE: a whole MoE block (router, routed experts, optional shared experts) on quantc's kernels.

``apply`` swaps it in for a model's MoE block; it can also be built directly from expert weights.
forward(hidden (.., H)) -> (.., H) bf16:

1. router logits = hidden @ router_weight.T (bf16 linear, never quantized), routed by one of
   ``kernels.moe_routing.ROUTERS`` (softmax_topk / deepseek_v3 / gpt_oss);
2. (token, slot) pairs sorted by expert and padded per expert to BLOCK_M;
3. grouped gate_up GEMM with the activation fused (SiLU-and-mul or gpt-oss's clamped SwiGLU);
4. grouped down GEMM, each row scaled by its routing weight; rows summed back per token;
5. shared experts (plain modules, e.g. QuantLinear MLPs) added.

Activation quantization by kernel id: W8A8 ids quantize each GEMM's input per row / per 1x128 group
(``kernels.act_quant``); the MX ids round it to mxfp8 (emulated on sm_90); the others take bf16.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import moe_gemm as mg
from .kernels import wo_format as wf
from .kernels import wo_gemv
from .kernels.common import env, on_sm90, smem_optin
from .kernels.moe_routing import ROUTERS, align_by_expert
from .kernels.wo_gemm import WoConfig
from .kernels.wo_gemv import gemv_config, gemv_weight_ok, grid_sms
from .tables import bucket_lookup, default_buckets, pick

MOE_KERNELS = {"moe_bf16", "moe_fp8", "moe_fp8_block", "moe_int8", "moe_weight_only",
               "moe_mxfp4_mxfp8_emulated", "moe_mxfp8_emulated"}
_MX_KERNELS = {"moe_mxfp4_mxfp8_emulated", "moe_mxfp8_emulated"}
_WS_KERNELS = {"moe_bf16", "moe_fp8", "moe_int8"}  # kernel ids the Gluon grouped GEMM may run (mg.ws_block_m)
_DEQUANT_KERNELS = {"moe_weight_only", "moe_mxfp4_mxfp8_emulated"}  # bf16 activations x 4-bit experts
_FIELDS = ("data", "scale", "zeros", "global_scale")


def uses_moe_gemv(w13: wf.WoWeight, w2: wf.WoWeight, num_pairs: int) -> bool:
    """Whether 4-bit experts with bf16 activations run on the grouped GEMV (``wo_gemv.launch_moe_gemv``), where
    both stacks suit it (K a multiple of 64; gpt-oss's 2880 takes 64-deep steps): on an sm_90 GPU while the (token,
    expert) pairs are no more than the experts (about one pair an expert, where each pair reading its expert's
    bytes once is the least traffic: bench/results/moe_h100_s20_gemv.json, Qwen3-30B-A3B and DeepSeek-V3 at 1 and
    16 tokens, 1.3-2x the grouped GEMM's layer; moe_h100_s21.json, gpt-oss-120b at 1 token, 83.7 -> 50.2 us).
    QUANTC_MOE_GEMV=1 takes every count up to QUANTC_MOE_GEMV_MAX_PAIRS (default 256) on any device, the
    interpreter included; 0 turns it off. ``uses_moe_plane_mma`` is asked first (it takes pairs = experts >= 32)."""
    switch = env("QUANTC_MOE_GEMV")
    if switch == "0" or num_pairs > int(env("QUANTC_MOE_GEMV_MAX_PAIRS") or 256):
        return False
    if not (w13.pack == 8 and w2.pack == 8 and gemv_weight_ok(w13, 64) and gemv_weight_ok(w2, 64)):
        return False
    if switch == "1":
        return True
    return on_sm90(w13.data.device) and num_pairs <= w13.data.shape[0]


def uses_moe_plane_mma(w13: wf.WoWeight, w2: wf.WoWeight, num_pairs: int) -> bool:
    """Whether 4-bit experts with bf16 activations run both GEMMs on the natural layout's MMA kernel
    (``wo_plane_mma.launch_plane_mma_grouped``: routing blocks of 8-64 pairs of one expert, each expert's bytes read
    once for all its pairs), where both stacks suit it (K a multiple of 128, or of 64 for fp4 when forced; int4 in
    groups of 128, mxfp4, nvfp4):
    on an sm_90 GPU from max(32, experts) (token, expert) pairs, below which the GEMV's one read an expert a pair is
    less traffic, up to PLANE_MMA_MAX_PAIRS_AN_EXPERT pairs an expert on average, beyond which the grouped GEMM's
    wide tiles win. bench/results/moe_wo_probe_h200_s22.json (mxfp4): Qwen3-30B-A3B 16 / 64 / 256 tokens 121 ->
    102, 367 -> 164, 452 -> 391 us; DeepSeek-V3 64 / 256 tokens 5204 -> 2003, 6197 -> 3251; Mixtral-8x7B 16 / 64
    tokens 537 -> 371, 797 -> 748; at 256 tokens (64 pairs an expert) Mixtral's grouped GEMM kept it (1819 against
    2325); at 1-4 tokens the GEMV led (Qwen3 20 against 26 us). QUANTC_MOE_PLANE_MMA=1 takes every count on any
    device (the interpreter included), 0 none."""
    from .kernels.wo_plane_mma import plane_mma_stack_ok

    switch = env("QUANTC_MOE_PLANE_MMA")
    if switch == "0" or not (plane_mma_stack_ok(w13) and plane_mma_stack_ok(w2)):
        return False
    if switch == "1":
        return True
    experts = w13.data.shape[0]
    # (a K ending in a half step, gpt-oss's 2880, runs on it forced only: untimed)
    return (on_sm90(w13.data.device) and w13.k % 128 == 0 and w2.k % 128 == 0
            and max(32, experts) <= num_pairs <= PLANE_MMA_MAX_PAIRS_AN_EXPERT * experts)


PLANE_MMA_MAX_PAIRS_AN_EXPERT = 16  # (measured: 16 won 1.16x, Qwen3 at 256 tokens; 64 lost 0.78x, Mixtral)


def default_config(tokens: int, top_k: int, kernel: str = "moe_bf16") -> WoConfig:
    """The grouped GEMM's config without a plan table entry (``tables.default_buckets``)."""
    return pick(*bucket_lookup(default_buckets(kernel, top_k=top_k)), tokens)


def _fit_down_tile(cfg: WoConfig, w2, device: torch.device) -> WoConfig:
    """``cfg`` with fewer stages, then narrower tiles, until its pipelined A and B tiles fit the device's
    shared memory (``emit.fit_smem``, as the compiler fits configs not tuned for a GPU)."""
    from ..emit import fit_smem

    if device.type != "cuda":  # the interpreter has no shared memory to fit
        return cfg
    limit = smem_optin(device)
    operand = 2 if w2.fmt == wf.BF16 else 1
    return fit_smem(cfg, limit, operand, operand, 1)


def _pair_weights(topk_weights: torch.Tensor) -> torch.Tensor:
    """(T, k) router weights -> (T * k,) contiguous, fp32 / bf16 / fp16 as they come (the down GEMM's
    epilogue converts them to fp32, exactly: no conversion kernel for transformers' bf16 weights)."""
    flat = topk_weights.reshape(-1).contiguous()
    return flat if flat.dtype in (torch.float32, torch.bfloat16, torch.float16) else flat.float()


class QuantMoE(nn.Module):
    def __init__(self, kernel: str, gate_up: wf.WoWeight, down: wf.WoWeight, router_weight: torch.Tensor, *,
                 top_k: int, router: str = "softmax_topk", router_args: dict | None = None,
                 activation: str = "silu", act_key: str = "none", gate_up_bias: torch.Tensor | None = None,
                 down_bias: torch.Tensor | None = None, router_bias: torch.Tensor | None = None,
                 correction_bias: torch.Tensor | None = None, shared_experts: nn.Module | None = None,
                 configs=None, tables=None):
        super().__init__()
        if kernel not in MOE_KERNELS:
            raise ValueError(f"unknown MoE kernel {kernel!r}; known: {', '.join(sorted(MOE_KERNELS))}")
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; known: {', '.join(sorted(ROUTERS))}")
        if activation not in ("silu", "gpt_oss"):
            raise ValueError(f"unknown MoE activation {activation!r}; known: gpt_oss, silu")
        if gate_up.n != 2 * down.k or gate_up.k != down.n:
            raise ValueError(f"expert shapes do not chain: gate_up (N={gate_up.n}, K={gate_up.k}) needs "
                             f"N = 2 x down's K ({down.k}) and K = down's N ({down.n})")
        if mg.A_QUANT.get(act_key, (None,))[0] is None and act_key != "mxfp8":
            raise ValueError(f"activation key {act_key!r} has no MoE path")
        self.kernel, self.top_k, self.router, self.router_args = kernel, top_k, router, dict(router_args or {})
        self.activation, self.act_key = activation, act_key
        self.num_experts, self.hidden, self.inter = gate_up.num_experts, gate_up.k, down.k
        self._meta = {}
        for name, w in (("w13", gate_up), ("w2", down)):
            self._meta[name] = (w.fmt, w.n, w.k, w.sfmt, w.group, w.row_block)
            for f in _FIELDS:
                self.register_buffer(f"{name}_{f}", getattr(w, f))
        self.register_buffer("router_weight", router_weight)  # kept in its dtype (DeepSeek-V3's is fp32)
        for name, t in (("router_bias", router_bias), ("b13", gate_up_bias), ("b2", down_bias),
                        ("correction_bias", correction_bias)):
            self.register_buffer(name, t)
        self.shared_experts = shared_experts
        self.configs = configs  # callable tokens -> (cfg gate_up, cfg down), or None for the tables
        # (gate_up buckets, down buckets): the plan's KernelTableEntry buckets, picked per live token count;
        # None (for both or one of them): tables.default_buckets of the kernel
        self.tables = tuple(None if b is None else bucket_lookup(b) for b in (tables or (None, None)))
        self._configs_failed = False  # a plan config failed here: the default configs from then on
        # tensor/expert parallelism (``distribute``): this rank's first expert and the block's expert
        # count, and the world whose partial outputs are summed
        self.first_expert, self.total_experts, self.world, self.group = 0, self.num_experts, 1, None

    def distribute(self, first_expert: int, total_experts: int, world: int, group=None) -> "QuantMoE":
        """Mark the weights as this rank's part (``parallel.ExpertShard``): expert ids are global, local
        experts are [first_expert, first_expert + num_experts), and ``experts`` all-reduces its output."""
        self.first_expert, self.total_experts, self.world, self.group = first_expert, total_experts, world, group
        return self

    def kernel_configs(self, tokens: int, top_k: int) -> tuple[WoConfig, WoConfig]:
        """(gate_up config, down config) for ``tokens`` live tokens routed to ``top_k`` experts each."""
        if self.configs is not None and not self._configs_failed:
            return self.configs(tokens)
        return tuple(default_config(tokens, top_k, self.kernel) if t is None or self._configs_failed else pick(*t, tokens)
                     for t in self.tables)

    def _weight(self, name: str) -> wf.WoWeight:
        fmt, n, k, sfmt, group, rb = self._meta[name]
        buffers = self._buffers  # what getattr finds for a buffer, without nn.Module.__getattr__'s lookups
        t = [buffers[f"{name}_{f}"] for f in _FIELDS]
        return wf.WoWeight(fmt, n, k, t[0], t[1], sfmt, group, rb, t[2], t[3])

    def route(self, x: torch.Tensor):
        w = self.router_weight
        logits = F.linear(x.to(w.dtype), w, None if self.router_bias is None else self.router_bias.to(w.dtype))
        args = dict(self.router_args)
        if self.router == "deepseek_v3":
            args["correction_bias"] = self.correction_bias
        return ROUTERS[self.router](logits, self.top_k, **args)

    def _act_in(self, a: torch.Tensor):
        """(operand, scale, A_QUANT code, group) for a GEMM input."""
        if self.kernel in _MX_KERNELS:
            from .kernels.wo_mx import qdq_mxfp8

            return qdq_mxfp8(a), None, 0, 0
        code, group = mg.A_QUANT[self.act_key]
        if code == 0:
            return a, None, 0, 0
        from .kernels.act_quant import quantize_activation_op

        q, s = quantize_activation_op(a, self.act_key)
        s = s.reshape(-1, 1).expand(a.shape[0], 1) if s.numel() == 1 else s.reshape(a.shape[0], -1)
        return q, s, code, group

    def experts(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """(T, H) bf16 through the experts ``topk_ids`` (T, k) names, weighted by ``topk_weights``; k may
        differ from ``top_k`` (a per-expert call routes every token to one expert, k = 1). A plan's config
        that fails to run here (out of shared memory on another GPU, a Triton that refuses it) hands this
        module to the kernel's default configs from then on, with one warning, as ``QuantLinear`` does."""
        planned = not self._configs_failed and (self.configs is not None or any(t is not None for t in self.tables))
        if not planned:
            return self._experts(x, topk_weights, topk_ids)
        try:
            return self._experts(x, topk_weights, topk_ids)
        except Exception as exc:
            self._configs_failed = True
            warnings.warn(f"quantc: MoE kernel {self.kernel} failed with the plan's configs ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); using its default configs from now on", RuntimeWarning, stacklevel=2)
        return self._experts(x, topk_weights, topk_ids)

    def _experts(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        t, top_k = topk_ids.shape
        if self.kernel == "moe_weight_only" and self.num_experts == self.total_experts:
            if uses_moe_plane_mma(self._weight("w13"), self._weight("w2"), t * top_k):
                return self._experts_plane_mma(x, topk_weights, topk_ids)
            if uses_moe_gemv(self._weight("w13"), self._weight("w2"), t * top_k):
                return self._experts_gemv(x, topk_weights, topk_ids)
        c13, c2 = self.kernel_configs(t, top_k)
        ws_rows = 0
        if self.kernel in _WS_KERNELS and self.num_experts == self.total_experts:
            code, group = mg.A_QUANT[self.act_key]
            # (the weights as a generator: built only where the switch is on)
            ws_rows = mg.ws_block_m(x.device, (self._weight(n) for n in ("w13", "w2")), code, group,
                                    self.num_experts, t * top_k)
            if ws_rows:  # the Gluon kernel's routing blocks
                c13 = WoConfig(ws_rows, c13.block_n, c13.block_k, num_warps=c13.num_warps, num_stages=c13.num_stages)
        # at 64-row blocks the gate_up stays on the Triton kernel (the table's tile at that BLOCK_M), which
        # streams the experts faster there; the down GEMM takes the Gluon one (mg.ws_block_m)
        ws_up, ws_down = ws_rows == 128, mg.ws_down(ws_rows)
        # 4-bit experts at many tokens: dequantized to bf16 first, on the bf16 kernel's default tiles
        dequant = (self.kernel in _DEQUANT_KERNELS and
                   mg.dequant_experts((self._weight(n) for n in ("w13", "w2")), 0, self.num_experts, t * top_k))
        if dequant:
            c13 = c2 = default_config(t, top_k, "moe_bf16")
        local = None
        if self.num_experts != self.total_experts:  # expert parallel: other ranks' experts count zero here
            ids = topk_ids.to(torch.int64) - self.first_expert
            local = (ids >= 0) & (ids < self.num_experts)
            topk_ids = torch.where(local, ids, self.num_experts)  # a sentinel expert, sorted last
            sorted_ids, block_expert, _ = align_by_expert(topk_ids, self.num_experts + 1, c13.block_m)
            counts = torch.bincount(topk_ids.reshape(-1), minlength=self.num_experts + 1)[:-1]
            total = ((counts + c13.block_m - 1) // c13.block_m * c13.block_m).sum().reshape(1).to(torch.int32)
        else:
            sorted_ids, block_expert, total = align_by_expert(topk_ids, self.num_experts, c13.block_m)
        routing = (sorted_ids, block_expert, total, t * top_k)
        a, sa, code, group = self._act_in(x)
        h = mg.grouped_gemm(a, sa, self._weight("w13"), routing, a_div=top_k, act=self.activation,
                            a_quant=code, a_group=group, cfg=c13, bias=self.b13, ws=ws_up, dequant=dequant)
        if local is not None:  # rows of foreign pairs were never written; keep them out of activation scales
            h = torch.where(local.reshape(-1, 1), h, torch.zeros((), dtype=h.dtype, device=h.device))
        a, sa, code, group = self._act_in(h)
        # both GEMMs share the routing, padded to gate_up's BLOCK_M
        c2 = WoConfig(c13.block_m, c2.block_n, c2.block_k, num_warps=c2.num_warps, num_stages=c2.num_stages)
        if ws_up and not ws_down:  # the down GEMM's table tile at the Gluon gate_up's 128-row blocks: fitted
            c2 = _fit_down_tile(c2, self._weight("w2"), x.device)
        y = mg.grouped_gemm(a, sa, self._weight("w2"), routing, a_div=1, act="none", a_quant=code, a_group=group,
                            cfg=c2, bias=self.b2, topk_weights=_pair_weights(topk_weights),
                            ws=ws_down, dequant=dequant)
        y = y.view(t, top_k, -1)
        if local is not None:
            y = torch.where(local.unsqueeze(-1), y, torch.zeros((), dtype=y.dtype, device=y.device))
        return self._combine(y)

    def _experts_gemv(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """Decode on the 4-bit GEMV (``uses_moe_gemv``): every (token, slot) pair a GEMV row through its expert,
        no sort or padding."""
        ids = topk_ids.reshape(-1).contiguous()
        sms = grid_sms(x.device)
        return self._experts_by_pairs(x, topk_weights, topk_ids, lambda a, w, a_div: wo_gemv.launch_moe_gemv(
            a, w, ids, a_div, *gemv_config(ids.numel() * w.n, w.k, sms, grouped=True)))

    def _experts_plane_mma(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """``uses_moe_plane_mma``: the pairs sorted into routing blocks of one expert (``align_by_expert``), both
        GEMMs on the grouped MMA kernel."""
        from .kernels.wo_plane_mma import launch_plane_mma_grouped, moe_tokens

        pairs = topk_ids.numel()
        tok = moe_tokens(pairs, self.num_experts)
        sorted_ids, block_expert, _ = align_by_expert(topk_ids, self.num_experts, tok)
        return self._experts_by_pairs(x.to(torch.bfloat16).contiguous(), topk_weights, topk_ids, lambda a, w, a_div:
                                      launch_plane_mma_grouped(a, w, sorted_ids, block_expert, pairs, a_div, tok))

    def _experts_by_pairs(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, gemm):
        """Both GEMMs through ``gemm(a, weight, a_div)`` -> rows of the (token, slot) pairs (row p from a[p // a_div]),
        the grouped GEMM's epilogue (biases, activation, routing weights) in one elementwise launch after each
        (``moe_gemm.pair_rows``)."""
        t, top_k = topk_ids.shape
        ids = topk_ids.reshape(-1).contiguous()
        h = gemm(x, self._weight("w13"), top_k)
        a = mg.pair_rows(h, ids, self.activation, bias=self.b13)
        y = gemm(a, self._weight("w2"), 1)
        y = mg.pair_rows(y, ids, "none", bias=self.b2, topk_weights=_pair_weights(topk_weights))
        return self._combine(y.view(t, top_k, -1))

    def _combine(self, y: torch.Tensor) -> torch.Tensor:
        """(T, k, H) weighted expert rows -> (T, H): summed per token, across expert-parallel ranks too."""
        # the k weighted rows of a token summed in one kernel with an fp32 accumulator (no fp32 copy of y: at
        # 4096 tokens and top-8 that copy moved ~0.5 GB, ~0.2 ms on the H100); bf16 out where no all-reduce
        # follows (one rounding either way), fp32 across expert-parallel ranks
        if self.world == 1:
            return y.sum(1)
        import torch.distributed as dist

        out = y.sum(1, dtype=torch.float32)
        dist.all_reduce(out, group=self.group)
        return out.to(torch.bfloat16)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
        w, ids = self.route(x)
        out = self.experts(x, w, ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.reshape(shape)


def from_hf_block(block: nn.Module, kernel: str, weight_key: str = "none", act_key: str = "none",
                  configs=None) -> QuantMoE:
    """A QuantMoE from a Hugging Face (transformers >= 5) MoE block, duck-typed (no transformers import):

    - gpt-oss ``GptOssMLP``: ``router`` (weight, bias, top_k), ``experts.gate_up_proj`` (E, H, 2I) with
      gate/up interleaved along 2I and biases; ``down_proj`` (E, I, H); clamped SwiGLU;
    - Mixtral / Qwen3-MoE / DeepSeek-V3: ``gate`` (weight, top_k; ``norm_topk_prob``; DeepSeek's
      ``e_score_correction_bias``, ``num_group``, ``topk_group``, ``routed_scaling_factor``),
      ``experts.gate_up_proj`` (E, 2I, H) as [gate; up], ``down_proj`` (E, H, I); SiLU; DeepSeek's
      ``shared_experts`` module is kept as it is.
    The experts' bf16 weights are quantized to ``weight_key`` with quantc's reference quantizers.
    """
    ex = block.experts
    with torch.no_grad():
        if hasattr(block, "router"):  # gpt-oss
            r = block.router
            i2 = ex.gate_up_proj.shape[-1]
            rows = torch.cat([torch.arange(0, i2, 2), torch.arange(1, i2, 2)]).to(ex.gate_up_proj.device)
            w13 = ex.gate_up_proj.transpose(1, 2)[:, rows]
            b13 = ex.gate_up_proj_bias[:, rows]
            w2, b2 = ex.down_proj.transpose(1, 2), ex.down_proj_bias
            kw = dict(router="gpt_oss", activation="gpt_oss", router_bias=r.bias.detach(),
                      gate_up_bias=b13.to(torch.bfloat16), down_bias=b2.to(torch.bfloat16))
        else:
            r = block.gate
            w13, w2 = ex.gate_up_proj, ex.down_proj
            if hasattr(r, "e_score_correction_bias"):
                kw = dict(router="deepseek_v3", correction_bias=r.e_score_correction_bias.detach().float(),
                          router_args=dict(n_group=r.num_group, topk_group=r.topk_group,
                                           routed_scaling_factor=r.routed_scaling_factor,
                                           renormalize=bool(r.norm_topk_prob)),
                          shared_experts=getattr(block, "shared_experts", None))
            else:
                kw = dict(router="softmax_topk", router_args=dict(renormalize=bool(getattr(r, "norm_topk_prob", True))))
        gate_up = wf.quantize(w13.detach().to(torch.bfloat16).contiguous(), weight_key)
        down = wf.quantize(w2.detach().to(torch.bfloat16).contiguous(), weight_key)
    return QuantMoE(kernel, gate_up, down, r.weight.detach(), top_k=r.top_k, act_key=act_key, configs=configs, **kw)
