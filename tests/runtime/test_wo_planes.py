"""The nibble-plane 4-bit GEMM (wo_planes) under the interpreter against the plain-torch reference:
every format, group sizes below and above the tile, zero points, M = 1 / 16 / 17, split-K."""

import pytest
import torch

from quantc.runtime import quantize as qz
from quantc.runtime.kernels import wo_format as wf
from quantc.runtime.kernels import wo_gemm as wg
from quantc.runtime.kernels import wo_mma4
from quantc.runtime.kernels import wo_planes as wp

TOL = 1e-2


def _rel_err(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


@pytest.mark.parametrize("key", ["int4_group_32", "int4_group_64_asym", "int4_group_128", "int4_group_128_asym",
                                 "mxfp4", "nvfp4"])
def test_planes_match_reference(key):
    torch.manual_seed(7)
    n, k = 40, 256
    w = wf.quantize(torch.randn(n, k), key)
    for m in (1, 17):
        x = torch.randn(m, k).bfloat16()
        out = wp.launch_planes(x, w, wg.WoConfig(16, 32, 128))
        assert out.shape == (m, n) and out.dtype == torch.bfloat16
        assert _rel_err(out, wg.reference(x, w)) < TOL, (key, m)


@pytest.mark.parametrize("cfg", [wg.WoConfig(16, 16, 256, split_k=2), wg.WoConfig(16, 64, 128, split_k=3)])
def test_planes_split_k_and_wide_tiles(cfg):
    torch.manual_seed(8)
    n, k = 72, 768
    for key in ("int4_group_128", "mxfp4"):
        w = wf.quantize(torch.randn(n, k), key)
        x = torch.randn(16, k).bfloat16()
        assert _rel_err(wp.launch_planes(x, w, cfg), wg.reference(x, w)) < TOL
    ws, cnt = wo_mma4.split_workspace(x.device, 0, 0)
    assert ws.abs().max().item() == 0 and cnt.abs().max().item() == 0


@pytest.mark.parametrize("zero", [False, True])
def test_planes_every_int4_code_through_the_identity(zero):
    """x = I picks single elements: each plane must land on its own k (8c + j), every code, exactly
    up to one bf16 rounding of code x scale."""
    n, k = 16, 128
    codes = ((torch.arange(k) * 7 + torch.arange(n)[:, None]) % 16).to(torch.uint8)
    t = {"weight_packed": qz.pack_nibbles(codes),
         "weight_scale": torch.linspace(0.5, 2, n).bfloat16().reshape(n, 1).contiguous()}
    key = "int4_group_128_asym" if zero else "int4_group_128"
    if zero:
        t["weight_zero_point"] = torch.arange(n, dtype=torch.uint8).reshape(n, 1)
    w = wf.from_tensors(key, t, n, k)
    exact = qz.dequantize_weight(t, key)
    got = wp.launch_planes(torch.eye(k, dtype=torch.bfloat16), w, wg.WoConfig(16, 16, 128)).float().T
    assert ((got - exact).abs() <= exact.abs() * 2.0 ** -7).all()


def test_planes_mxfp4_identity_is_exact():
    n, k = 64, 128
    codes = ((torch.arange(k) + 3 * torch.arange(n)[:, None]) % 16).to(torch.uint8)
    scale = (torch.arange(n * 4, dtype=torch.int32).reshape(n, 4) % 200 + 20).to(torch.uint8)
    w = wf.from_tensors("mxfp4", {"weight_packed": qz.pack_nibbles(codes), "weight_scale": scale}, n, k)
    want = (qz.e2m1_to_float(codes) * qz.e8m0_to_float(scale).repeat_interleave(32, 1)).bfloat16().float()
    got = wp.launch_planes(torch.eye(k, dtype=torch.bfloat16), w, wg.WoConfig(16, 64, 128)).float().T
    assert torch.equal(got, want)


@pytest.mark.parametrize("fold", [False, True])
def test_nvfp4_every_e4m3_scale_with_and_without_folding(fold):
    """FOLD moves the decode's 2**126 into the scales (x 2**62) and the sums (x 2**64): the identity
    product stays exact for every finite e4m3 scale, subnormals included."""
    byte = torch.tensor([b for b in range(256) if b & 0x7F != 0x7F], dtype=torch.int32).to(torch.uint8)
    n, k = byte.numel(), 128
    codes = ((torch.arange(k) + torch.arange(n)[:, None]) % 16).to(torch.uint8)
    scale = byte.view(torch.float8_e4m3fn).reshape(n, 1).expand(n, k // 16).contiguous()
    t = {"weight_packed": qz.pack_nibbles(codes), "weight_scale": scale, "weight_scale_2": torch.tensor(0.5)}
    w = wf.from_tensors("nvfp4", t, n, k)
    assert wp.fold_ok(w) and not wp.fold_ok(wf.quantize(torch.randn(8, 64), "mxfp4"))
    want = (qz.e2m1_to_float(codes) * scale.float().repeat_interleave(16, 1) * 0.5).bfloat16().float()
    got = wp.launch_planes(torch.eye(k, dtype=torch.bfloat16), w, wg.WoConfig(16, 32, 128), fold=fold).float().T
    assert torch.equal(got, want)


def test_launcher_routes_decode_to_planes_and_the_rest_to_mma4(monkeypatch):
    """int4 at M <= 16 and every format at M = 1 run the planes kernel, fp4 at 2..16 rows and all
    prefill run mma4; both give the reference's result."""
    seen = []
    real_planes, real_mma4 = wg.launch_planes, wg.launch_mma4
    monkeypatch.setattr(wg, "launch_planes", lambda x, w, c: seen.append(("planes", x.shape[0])) or real_planes(x, w, c))
    monkeypatch.setattr(wg, "launch_mma4", lambda x, w, c: seen.append(("mma4", x.shape[0])) or real_mma4(x, w, c))
    torch.manual_seed(9)
    for key in ("int4_group_128", "mxfp4"):
        w = wf.quantize(torch.randn(32, 256), key)
        for m in (1, 5, 17):
            seen.clear()
            x = torch.randn(m, 256).bfloat16()
            cfg = wg.default_config(m, 32, 256, int4=key.startswith("int4"))
            assert _rel_err(wg.launch(x, w, cfg), wg.reference(x, w)) < TOL
            want = "planes" if m == 1 or (m <= 16 and key.startswith("int4")) else "mma4"
            assert seen == [(want, m)], (key, m, seen)


def test_decode_defaults_and_candidates_follow_the_kernel():
    one = wg.default_config(1, 28672, 4096)
    assert (one.block_n, one.block_k, one.num_warps, one.num_stages, one.split_k) == (32, 128, 2, 4, 1)
    short_n = wg.default_config(1, 4096, 14336)
    assert short_n.split_k == 5  # 128 tiles of 32 rows, about four programs per SM on 132 SMs
    assert wg.default_config(8, 4096, 4096, int4=True).num_warps == 2
    assert wg.default_config(8, 4096, 4096).num_warps == 4  # fp4 at 2..16 rows: mma4 tiles
    assert all(c.num_warps == 2 or c.block_n >= 128 for c in wg.candidates(1, 4096, 4096))
    both = wg.candidates(8, 4096, 4096)
    assert {c.block_k for c in both} >= {128, 256, 512}
    assert {c.block_k for c in wg.candidates(8, 4096, 4096, int4=True)} == {128}
    assert 128 not in {c.block_k for c in wg.candidates(8, 4096, 4096, int4=False)}


def test_k_that_is_not_a_multiple_of_128_runs_mma4(monkeypatch):
    """gpt-oss has K = 2880: the planes kernel's 16-deep planes need K % 128 == 0, so M = 1 goes to
    mma4 there (and the planes launcher refuses such K with the reason)."""
    torch.manual_seed(11)
    w = wf.quantize(torch.randn(32, 2880), "mxfp4")
    x = torch.randn(1, 2880).bfloat16()
    assert not wg.uses_planes(1, w.fmt, 2880) and wg.uses_planes(1, w.fmt, 3072)
    seen = []
    real = wg.launch_mma4
    monkeypatch.setattr(wg, "launch_mma4", lambda x, w, c: seen.append("mma4") or real(x, w, c))
    assert _rel_err(wg.launch(x, w, wg.default_config(1, 32, 2880)), wg.reference(x, w)) < TOL
    assert seen == ["mma4"]
    with pytest.raises(ValueError, match="multiple of 128, got K = 2880"):
        wp.launch_planes(x, w, wg.default_config(1, 32, 2880))


@pytest.mark.parametrize("key", ["int4_group_128", "int4_group_64_asym", "mxfp4", "nvfp4"])
def test_persistent_planes_walk_every_item_once(key):
    """The persistent variant (a few programs striding over (N tile, K slice) items; 4 programs under
    the interpreter, so the loop wraps) gives the one-program-per-item result, including a last K
    slice shorter than the others (K = 640: 5 tiles in slices of 2) and a ragged last N tile."""
    torch.manual_seed(12)
    n, k = 72, 640
    w = wf.quantize(torch.randn(n, k), key)
    for m in (1, 7):
        x = torch.randn(m, k).bfloat16()
        cfg = wg.WoConfig(16, 16, 128, num_warps=2, num_stages=3, split_k=3)
        got = wp.launch_planes(x, w, cfg, persistent=True)
        assert _rel_err(got, wg.reference(x, w)) < TOL, (key, m)
        assert torch.allclose(got.float(), wp.launch_planes(x, w, cfg).float(), rtol=1e-2, atol=1e-2)
    ws, cnt = wo_mma4.split_workspace(x.device, 0, 0)
    assert ws.abs().max().item() == 0 and cnt.abs().max().item() == 0
    with pytest.raises(ValueError, match="M <= 16 rows, got M = 17"):
        wp.launch_planes(torch.randn(17, k).bfloat16(), w, cfg, persistent=True)


def test_persistent_planes_refuse_a_triton_that_cannot_compile_them(monkeypatch):
    """triton 3.6 (the GPU image) rejects the flattened loop at compile time: the launcher says so
    before launching instead of failing inside the compiler (the interpreter runs it on any version)."""
    assert not wp.persistent_compiles("3.6.0") and wp.persistent_compiles("3.9.0") and wp.persistent_compiles("4.0.1")
    monkeypatch.setattr(wp, "persistent_compiles", lambda version=None: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # read at decoration time by triton: only our check sees it
    w = wf.quantize(torch.randn(32, 256), "int4_group_128")
    with pytest.raises(RuntimeError, match="needs triton >= 3.9 on a GPU"):
        wp.launch_planes(torch.randn(1, 256).bfloat16(), w, wg.WoConfig(16, 32, 128), persistent=True)


def test_int4_zero_point_bias_fold_at_m1_matches_the_per_element_subtraction():
    """M = 1, codes with zero points, one scale group a tile: the decode leaves 128 + c and the tile takes
    (zero + 128) * sum(x) off its fp32 sums. With x far from zero mean (sum(x) large, so the fold
    subtracts a large number) it matches the per-element subtraction and the reference; symmetric codes
    and 16-row tiles keep the per-element path (the same output with the switch either way)."""
    torch.manual_seed(11)
    n, k = 48, 512
    w = wf.quantize(torch.randn(n, k), "int4_group_128_asym")
    x = (torch.randn(1, k) + 4.0).bfloat16()
    cfg = wg.WoConfig(16, 16, 128, split_k=2)
    folded = wp.launch_planes(x, w, cfg).float()
    plain = wp.launch_planes(x, w, cfg, bias_fold=False).float()
    ref = wg.reference(x, w)
    assert _rel_err(folded, ref) < TOL and _rel_err(plain, ref) < TOL
    assert _rel_err(folded, plain) < 1e-2
    sym = wf.quantize(torch.randn(n, k), "int4_group_128")
    assert torch.equal(wp.launch_planes(x, sym, cfg), wp.launch_planes(x, sym, cfg, bias_fold=False))
    x16 = (torch.randn(16, k) + 4.0).bfloat16()
    assert torch.equal(wp.launch_planes(x16, w, cfg), wp.launch_planes(x16, w, cfg, bias_fold=False))
