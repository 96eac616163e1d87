"""MoE blocks under tensor and expert parallelism on the CPU: two gloo processes (spawned once for every
case), Triton under the interpreter. Each rank applies the tp=2 plan to the same full-size tiny
transformers model, keeps only its part of every experts module and sums the partial outputs through
torch.distributed; the logits must match the tp=1 plan, and each rank keeps about half the expert bytes."""

import os
import sys

import pytest
import torch
import torch.multiprocessing as mp

import quantc

# (model, moe scheme, linear scheme, expert_parallel): tensor mode splits every expert along I, expert
# mode splits the experts; the dense layers follow parallel.py's rules
CASES = [
    ("qwen3-30b-a3b", "fp8_per_channel", "fp8_per_channel", False),
    ("qwen3-30b-a3b", "int8", "int8", True),
    ("gpt-oss-20b", "mxfp4", "none", False),  # weight-only, gate/up interleaved in the checkpoint, biases
    ("gpt-oss-20b", "fp8_per_channel", "none", True),
    ("per-expert", "int8", "int8", False),  # a ModuleList of expert MLPs, run by the block's own loop
]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = """quantc: 1
linear: {linear}
moe: {scheme}
target: {{tensor_parallel: {tp}, expert_parallel: {ep}}}
"""


def _model(name):
    if name == "per-expert":
        sys.path.insert(0, ROOT)
        from tests.runtime.test_moe import _tiny_moe

        return _tiny_moe()
    from quantc.hf import build_model

    return build_model(name, layers=1, tiny=True)


def _case_id(case):
    return f"{case[0]}-{case[1]}-{case[2]}-{'ep' if case[3] else 'tp'}"


def _plan(tmp, case, tp):
    name, scheme, linear, ep = case
    path = os.path.join(tmp, f"{_case_id(case)}_{tp}.yaml")
    with open(path, "w") as f:
        f.write(CONFIG.format(linear=linear, scheme=scheme, tp=tp, ep=str(ep).lower()))
    return quantc.compile(path, _model(name))


def _expert_bytes(model):
    from quantc.runtime.hf_moe import QuantExperts
    from quantc.runtime.moe_apply import QuantExpertList

    return sum(t.numel() * t.element_size() for m in model.modules() if isinstance(m, (QuantExperts, QuantExpertList))
               for t in m.buffers() if t is not None)


def _inputs():
    torch.manual_seed(1)
    return {"ids": torch.randint(0, 64, (1, 7)), "x": torch.randn(5, 128).bfloat16()}


def _run(model, inputs):
    with torch.no_grad():
        if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
            return model(inputs["ids"]).logits.float()
        return model(inputs["x"]).float()


def _rank(rank, world, tmp, ids):
    import quantc.runtime
    from tests.runtime.gloo import gloo_rank

    with gloo_rank(rank, world, tmp):
        results = {}
        for case in CASES:
            plan = quantc.load_plan(os.path.join(tmp, f"plan_{_case_id(case)}.json"))
            model = _model(case[0])
            quantc.runtime.apply(model, plan, rank=rank, world=world, progress=False)
            results[_case_id(case)] = {"out": _run(model, ids), "bytes": _expert_bytes(model)}
        torch.save(results, os.path.join(tmp, f"out_{rank}.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """tp=1 references (exact bf16 and the tp=1 plan) and both ranks' tp=2 results of every case."""
    import quantc.runtime

    os.environ["TRITON_INTERPRET"] = "1"
    tmp = str(tmp_path_factory.mktemp("tp_moe"))
    ids = _inputs()
    ref = {}
    for case in CASES:
        exact = _run(_model(case[0]), ids)
        single = _model(case[0])
        quantc.runtime.apply(single, _plan(tmp, case, 1), progress=False)
        ref[_case_id(case)] = {"exact": exact, "tp1": _run(single, ids), "bytes": _expert_bytes(single)}
        _plan(tmp, case, 2).save(os.path.join(tmp, f"plan_{_case_id(case)}.json"))
    mp.start_processes(_rank, args=(2, tmp, ids), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(os.path.join(tmp, f"out_{r}.pt")) for r in range(2)]
    return ref, ranks


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_moe_tp2_matches_tp1(runs, case):
    ref, ranks = runs
    r, (got0, got1) = ref[_case_id(case)], (x[_case_id(case)] for x in ranks)
    want, exact = r["tp1"], r["exact"]
    assert torch.equal(got0["out"], got1["out"])  # the reduction leaves every rank the same result
    rel = float((got0["out"] - want).norm() / want.norm())
    err_tp1 = float((want - exact).norm() / exact.norm())
    err_tp2 = float((got0["out"] - exact).norm() / exact.norm())
    if case[2] == "none" and (case[1] == "mxfp4" or case[3]):
        # MoE weight-only, or whole experts per rank (dense layers unquantized): the same codes and
        # activation scales as tp=1; only the order of summation differs
        assert rel < 1e-2, rel
    else:
        # dynamic per-token scales of the experts' down GEMM (tensor mode) and of row-parallel dense
        # layers come from each rank's slice of K, as in any tensor-parallel engine: quantization
        # noise, no more
        assert rel < 6e-2, rel
        assert err_tp2 < 1.3 * err_tp1 + 1e-3, (err_tp1, err_tp2)
    for got in (got0, got1):  # each rank keeps about half of the experts' bytes
        assert 0.45 < got["bytes"] / r["bytes"] < 0.56, (got["bytes"], r["bytes"])


def test_expert_shard_slices_gate_and_up_alike():
    from quantc.runtime.kernels import wo_format as wf
    from quantc.runtime.parallel import ExpertShard

    e, inter, h = 4, 64, 32
    w13 = torch.randn(e, 2 * inter, h).bfloat16()
    w2 = torch.randn(e, h, inter).bfloat16()
    b13, b2 = torch.randn(e, 2 * inter), torch.randn(e, h)
    s1 = ExpertShard("tensor", 1, 2)
    g, d, gb, db = s1.bf16(w13, w2, b13, b2)
    assert torch.equal(g, torch.cat([w13[:, 32:64], w13[:, 96:128]], 1))  # gate rows 32..63 and the same up rows
    assert torch.equal(d, w2[..., 32:64]) and torch.equal(gb, torch.cat([b13[:, 32:64], b13[:, 96:]], 1))
    assert db is None and ExpertShard("tensor", 0, 2).bf16(w13, w2, b13, b2)[3] is b2  # down bias added once
    # quantized tensors are cut with their scales: the shard of the codes equals the codes of the shard
    q = s1.weights(wf.quantize(w13, "int4_group_32"), wf.quantize(w2, "int4_group_32"), None, None)
    assert torch.equal(wf.dequantize(q[0]), wf.dequantize(wf.quantize(g, "int4_group_32")))
    assert torch.equal(wf.dequantize(q[1]), wf.dequantize(wf.quantize(d, "int4_group_32")))
    ep = ExpertShard("expert", 1, 2).weights(wf.quantize(w13, "nvfp4"), wf.quantize(w2, "nvfp4"), b13, b2)
    assert ep[0].num_experts == 2 and torch.equal(wf.dequantize(ep[0]), wf.dequantize(wf.quantize(w13, "nvfp4"))[2:])
    assert torch.equal(ep[3], b2[2:])


def test_expert_shard_refuses_cut_blocks_and_uneven_experts():
    from quantc.runtime.kernels import wo_format as wf
    from quantc.runtime.parallel import ExpertShard

    w13, w2 = torch.randn(3, 256, 128).bfloat16(), torch.randn(3, 128, 128).bfloat16()
    with pytest.raises(ValueError, match=r"expert width I/2 = 64 cuts a quantization block \(128\)"):
        ExpertShard("tensor", 0, 2).weights(wf.quantize(w13, "fp8_block_128x128"),
                                            wf.quantize(w2, "fp8_block_128x128"), None, None)
    with pytest.raises(ValueError, match="3 experts do not split evenly over 2 ranks"):
        ExpertShard("expert", 0, 2).bf16(w13, w2, None, None)
