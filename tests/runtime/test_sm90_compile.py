"""The GPU build of the 4-bit weight-only kernels (wo_mma4, wo_planes), checked without a GPU: Triton compiles it for sm_90
(Hopper) with its bundled ptxas, so the inline PTX of the nibble decode is assembled for real. The
interpreter (every other runtime test) never sees that PTX. A subprocess, since the interpreter
switch is read when triton.jit runs."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, re, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from quantc.runtime.kernels import wo_mma4, wo_planes

    SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "gs_ptr": "*fp32",
           "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_wn": "i32",
           "stride_sn": "i32", "stride_om": "i32"}
    out = []
    for fmt, sfmt, group, zero, sdt, bm, bn, bk, split, extra in json.loads(sys.argv[1]):
        sig = dict(SIG, s_ptr=sdt)
        kernel = extra.pop("kernel", "mma4")
        warps = extra.pop("warps", 4)
        ce = dict(FMT=fmt, SFMT=sfmt, GROUP=group, HAS_ZERO=zero, HAS_GLOBAL=fmt == 2 and sfmt == 1,
                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, ASM=True, UPCAST=False, **extra)
        sig.update({k: "constexpr" for k in ce})
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(SIG) if a != "M"}
        fn = {"mma4": wo_mma4._wo_mma4_kernel, "planes": wo_planes._wo_planes_kernel,
              "persistent": wo_planes._wo_planes_persistent_kernel}[kernel]
        c = triton.compile(ASTSource(fn, sig, constexprs=ce, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 3})
        ptx = c.asm["ptx"]
        out.append({"lop3": len(re.findall(r"lop3\\.b32", ptx)), "bf16x2": len(re.findall(r"bf16x2", ptx)),
                    "local": len(re.findall(r"\\.local", ptx)), "mma": bool(re.search(r"mma|wgmma", ptx))})
    print(json.dumps(out))
""")

_MMA4 = {"SWAP": False}
_PLANES = {"kernel": "planes", "warps": 2, "FOLD": False, "ONE_ROW": False}
CASES = [  # fmt, sfmt, group, zero, scale dtype, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, kernel constexprs
    (1, 1, 128, False, "*bf16", 16, 64, 128, 4, _MMA4),                 # int4 g128 decode
    (1, 1, 128, False, "*bf16", 16, 64, 128, 1, {"SWAP": True}),        # swap-AB (weights as the MMA A)
    (1, 1, 32, True, "*bf16", 64, 128, 128, 1, _MMA4),                  # int4 g32 with zero points, prefill
    (2, 2, 32, False, "*u8", 16, 64, 256, 4, _MMA4),                    # mxfp4
    (2, 1, 16, False, "*fp8e4nv", 16, 64, 128, 1, _MMA4),               # nvfp4
    (1, 1, 128, False, "*bf16", 16, 32, 128, 4, dict(_PLANES, ONE_ROW=True)),  # planes: int4 at M = 1
    (1, 1, 64, True, "*bf16", 16, 64, 128, 1, _PLANES),                 # planes: int4 g64 zero points
    (2, 2, 32, False, "*u8", 16, 64, 128, 2, _PLANES),                  # planes: mxfp4
    (2, 1, 16, False, "*fp8e4nv", 16, 64, 128, 1, dict(_PLANES, FOLD=True, ONE_ROW=True)),  # nvfp4, folded
    (1, 1, 128, False, "*bf16", 16, 32, 128, 2, dict(_PLANES, kernel="persistent", NUM_STAGES=3)),  # flattened
]


@pytest.mark.timeout(300)
def test_wo_kernels_compile_for_hopper_with_the_ptx_decode():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.fail("triton's nvidia backend (ptxas) is part of the triton wheel quantc pins; it is missing")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(CASES)
    for case, r in zip(CASES, results):
        assert r["lop3"] >= 4, (case, r)      # the decode's lop3 made it into the kernel
        assert r["bf16x2"] >= 4, (case, r)    # and its bf16x2 FMAs
        assert r["mma"], (case, r)            # the product runs on the tensor cores
        assert r["local"] == 0, (case, r)     # no register spills to local memory


TMA_SCRIPT = textwrap.dedent("""
    import json, os, re
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from quantc.runtime.kernels import scaled_mm_tma

    SIG = {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": "*bf16", "sa_ptr": "*fp32", "sb_ptr": "*fp32", "bias_ptr": "*bf16",
           "M": "i32", "N": "i32", "K": "i32", "stride_sam": "i32", "stride_sak": "i32", "stride_sbn": "i32",
           "stride_sbk": "i32", "n_programs": "i32"}
    out = []
    for int8, a_mode, b_mode, dt in ((True, 2, 2, "*i8"), (False, 2, 2, "*fp8e4nv")):
        ce = dict(A_MODE=a_mode, B_MODE=b_mode, INT8=int8, HAS_BIAS=True, BLOCK_M=128, BLOCK_N=256, BLOCK_K=128,
                  GROUP_M=8, GROUP_K=128, GROUP_N=128)
        sig = dict(SIG, a_ptr=dt, b_ptr=dt, **{k: "constexpr" for k in ce})
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(SIG)
                 if a in ("a_ptr", "b_ptr", "c_ptr", "sa_ptr", "sb_ptr", "bias_ptr", "N", "K")}
        c = triton.compile(ASTSource(scaled_mm_tma._scaled_mm_tma_kernel, sig, constexprs=ce, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "num_stages": 3})
        ptx = c.asm["ptx"]
        out.append({"tma": len(re.findall(r"cp\\.async\\.bulk\\.tensor", ptx)), "wgmma": len(re.findall(r"wgmma\\.mma_async", ptx)),
                    "local": len(re.findall(r"\\.local", ptx)), "smem": c.metadata.shared})
    print(json.dumps(out))
""")


@pytest.mark.timeout(300)
def test_persistent_tma_kernel_compiles_to_tma_loads_and_wgmma():
    """The persistent W8A8 kernel's descriptors become TMA bulk-tensor copies feeding wgmma on sm_90,
    with a 128x256x128 three-stage tile inside the H100's 227 KB of shared memory and no spills."""
    proc = subprocess.run([sys.executable, "-c", TMA_SCRIPT], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert r["tma"] >= 2 and r["wgmma"] >= 1 and r["local"] == 0, r
        assert r["smem"] <= 227 * 1024, r


DEQUANT_SCRIPT = textwrap.dedent("""
    import json, os, re
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from quantc.runtime.kernels import wo_dequant

    SIG = {"w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16", "N": "i32",
           "K": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_on": "i32"}
    out = []
    for fmt, sfmt, group, zero, sdt in ((1, 1, 128, False, "*bf16"), (1, 1, 32, True, "*bf16"), (2, 2, 32, False, "*u8")):
        ce = dict(FMT=fmt, SFMT=sfmt, GROUP=group, HAS_ZERO=zero, HAS_GLOBAL=False, BLOCK_N=32, BLOCK_K=128, ASM=True)
        sig = dict(SIG, s_ptr=sdt, **{k: "constexpr" for k in ce})
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(SIG)}
        c = triton.compile(ASTSource(wo_dequant._dequant_kernel, sig, constexprs=ce, attrs=attrs),
                           target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})
        ptx = c.asm["ptx"]
        out.append({"lop3": len(re.findall(r"lop3\\.b32", ptx)), "local": len(re.findall(r"\\.local", ptx)),
                    "st": len(re.findall(r"st\\.global", ptx))})
    print(json.dumps(out))
""")


@pytest.mark.timeout(300)
def test_dequant_kernel_compiles_with_the_ptx_decode():
    proc = subprocess.run([sys.executable, "-c", DEQUANT_SCRIPT], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert r["lop3"] >= 1 and r["st"] >= 1 and r["local"] == 0, r
