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
                    "fma_bf16x2": len(re.findall(r"fma\\.rn\\.bf16x2", ptx)),
                    "local": len(re.findall(r"\\.local", ptx)), "mma": bool(re.search(r"mma|wgmma", ptx))})
    print(json.dumps(out))
""")

_MMA4 = {"SWAP": False}
_PLANES = {"kernel": "planes", "warps": 2, "FOLD": False, "ONE_ROW": False, "BIAS_FOLD": True}
CASES = [  # fmt, sfmt, group, zero, scale dtype, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, kernel constexprs
    (1, 1, 128, False, "*bf16", 16, 64, 128, 4, _MMA4),                 # int4 g128 decode
    (1, 1, 128, False, "*bf16", 16, 64, 128, 1, {"SWAP": True}),        # swap-AB (weights as the MMA A)
    (1, 1, 32, True, "*bf16", 64, 128, 128, 1, _MMA4),                  # int4 g32 with zero points, prefill
    (2, 2, 32, False, "*u8", 16, 64, 256, 4, _MMA4),                    # mxfp4
    (2, 1, 16, False, "*fp8e4nv", 16, 64, 128, 1, _MMA4),               # nvfp4
    (1, 1, 128, False, "*bf16", 16, 32, 128, 4, dict(_PLANES, ONE_ROW=True)),  # planes: int4 at M = 1
    (1, 1, 128, True, "*bf16", 16, 64, 128, 1, dict(_PLANES, ONE_ROW=True)),  # zero points, bias folded
    (1, 1, 128, True, "*bf16", 16, 64, 128, 1, _PLANES),                # 16 rows: not folded
    (1, 1, 128, True, "*bf16", 16, 64, 128, 1, dict(_PLANES, ONE_ROW=True, BIAS_FOLD=False)),  # not folded
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
        fmt, group, bk, extra = case[0], case[2], case[7], case[9]
        assert r["lop3"] >= 4, (case, r)      # the decode's lop3 made it into the kernel
        assert r["bf16x2"] >= 4, (case, r)    # the decode's bf16x2 registers
        if fmt == 1 and case[3] and group % bk == 0 and extra.get("ONE_ROW") and extra.get("BIAS_FOLD"):
            assert r["fma_bf16x2"] == 0, (case, r)  # codes in one group a tile: bias off the fp32 sums
        elif fmt == 1:
            assert r["fma_bf16x2"] >= 8, (case, r)  # the per-element bias subtraction
        assert r["mma"], (case, r)            # the product runs on the tensor cores
        assert r["local"] == 0, (case, r)     # no register spills to local memory


PTX_OF = textwrap.dedent("""
    import json, os, re
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def ptx_of(fn, sig, ce, warps, stages, aligned):
        full = dict(sig, **{k: "constexpr" for k in ce})
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(sig) if a in aligned}
        c = triton.compile(ASTSource(fn, full, constexprs=ce, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps, "num_stages": stages})
        return c.asm["ptx"], c.metadata.shared

    def count(ptx, pattern):
        return len(re.findall(pattern, ptx))

    # the grouped MoE GEMM's runtime arguments (4-bit words, bf16 scales: override per case)
    MOE_SIG = {"a_ptr": "*bf16", "as_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8",
               "gs_ptr": "*fp32", "bias_ptr": "*bf16", "topw_ptr": "*fp32", "out_ptr": "*bf16",
               "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32", "total_ptr": "*i32", "N": "i32", "K": "i32",
               "num_pairs": "i32", "stride_am": "i32", "stride_asm": "i32", "stride_we": "i32", "stride_wn": "i32",
               "stride_se": "i32", "stride_sn": "i32", "stride_be": "i32", "stride_om": "i32"}
""")


def _compiled(body: str) -> list[dict]:
    """Compile in a fresh interpreter (no TRITON_INTERPRET): ``PTX_OF`` + ``body``, whose last output line
    is JSON."""
    proc = subprocess.run([sys.executable, "-c", PTX_OF + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_persistent_tma_kernel_compiles_to_tma_loads_and_wgmma():
    """The persistent W8A8 kernel's descriptors become TMA bulk-tensor copies feeding wgmma on sm_90,
    with a 128x256x128 three-stage tile inside the H100's 227 KB of shared memory and no spills."""
    results = _compiled("""
        from quantc.runtime.kernels import scaled_mm_tma
        sig = {"a_ptr": "*i8", "b_ptr": "*i8", "c_ptr": "*bf16", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
               "bias_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "stride_sam": "i32", "stride_sak": "i32",
               "stride_sbn": "i32", "stride_sbk": "i32", "n_programs": "i32"}
        out = []
        for int8, dt in ((True, "*i8"), (False, "*fp8e4nv")):
            ce = dict(A_MODE=2, B_MODE=2, INT8=int8, HAS_BIAS=True, BLOCK_M=128, BLOCK_N=256, BLOCK_K=128,
                      GROUP_M=8, GROUP_K=128, GROUP_N=128)
            ptx, smem = ptx_of(scaled_mm_tma._scaled_mm_tma_kernel, dict(sig, a_ptr=dt, b_ptr=dt), ce, 8, 3,
                               ("a_ptr", "b_ptr", "c_ptr", "sa_ptr", "sb_ptr", "bias_ptr", "N", "K"))
            out.append({"tma": count(ptx, r"cp\.async\.bulk\.tensor"), "wgmma": count(ptx, r"wgmma\.mma_async"),
                        "local": count(ptx, r"\.local"), "smem": smem})
        print(json.dumps(out))
    """)
    for r in results:
        assert r["tma"] >= 2 and r["wgmma"] >= 1 and r["local"] == 0, r
        assert r["smem"] <= 227 * 1024, r


@pytest.mark.timeout(300)
def test_dequant_kernel_compiles_with_the_ptx_decode():
    results = _compiled("""
        from quantc.runtime.kernels import wo_dequant
        sig = {"w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16", "N": "i32",
               "K": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_on": "i32", "GS_ROWS": "i32"}
        out = []
        # int4 (with and without zero points), mxfp4, and nvfp4 with a global scale per GS_ROWS rows (experts)
        for fmt, sfmt, group, zero, sdt, glob in ((1, 1, 128, False, "*bf16", False), (1, 1, 32, True, "*bf16", False),
                                                  (2, 2, 32, False, "*u8", False), (2, 1, 16, False, "*fp8e4nv", True)):
            ce = dict(FMT=fmt, SFMT=sfmt, GROUP=group, HAS_ZERO=zero, HAS_GLOBAL=glob, BLOCK_N=32, BLOCK_K=128, ASM=True)
            ptx, _ = ptx_of(wo_dequant._dequant_kernel, dict(sig, s_ptr=sdt), ce, 4, 1, tuple(sig))
            out.append({"lop3": count(ptx, r"lop3\.b32"), "local": count(ptx, r"\.local"), "st": count(ptx, r"st\.global")})
        print(json.dumps(out))
    """)
    for r in results:
        assert r["lop3"] >= 1 and r["st"] >= 1 and r["local"] == 0, r


@pytest.mark.timeout(300)
def test_moe_grouped_gemm_with_nibble_planes_compiles_for_hopper():
    results = _compiled("""
        from quantc.runtime.kernels import moe_gemm
        sig = MOE_SIG
        out = []
        for fmt, sfmt, group, sdt in ((1, 1, 128, "*bf16"), (2, 2, 32, "*u8")):
            ce = dict(A_DIV=8, FMT=fmt, SFMT=sfmt, PACK=8, GROUP=group, ROW_BLOCK=1, HAS_ZERO=False, HAS_GLOBAL=False,
                      A_QUANT=0, A_GROUP=0, ACT=1, HAS_BIAS=False, MUL_TOPW=False, ALPHA=1.702, LIMIT=7.0,
                      BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, UPCAST=False, NIBBLES=False, ASM=True, GROUP_M=8,
                      PLANES=True, PLANE_FMT=1 if fmt == 1 else 2, RAW=False, EVEN_K=False)
            ptx, _ = ptx_of(moe_gemm._moe_gemm_kernel, dict(sig, s_ptr=sdt), ce, 4, 3,
                            tuple(a for a in sig if a != "num_pairs"))
            out.append({"prmt": count(ptx, r"prmt\.b32"), "mma": count(ptx, r"mma") > 0, "local": count(ptx, r"\.local")})
        print(json.dumps(out))
    """)
    for r in results:
        assert r["prmt"] >= 4 and r["mma"] and r["local"] == 0, r


@pytest.mark.timeout(300)
def test_moe_grouped_gemm_raw_sums_compile_to_wgmma_chains():
    """Scales constant over K (RAW): bf16, fp8 and int8 grouped GEMMs accumulate on the tensor cores
    (wgmma at 64-row blocks) with no spills, gate and up accumulators alike."""
    results = _compiled("""
        from quantc.runtime.kernels import moe_gemm
        sig = dict(MOE_SIG, as_ptr="*fp32", w_ptr="*bf16", s_ptr="*fp32")
        out = []
        # fp8 twice: with the K term of the load masks (QUANTC_MOE_EVEN_K=0) and without (the default)
        for a_quant, dt, fmt, sfmt, even_k in ((0, "*bf16", 0, 0, False), (1, "*fp8e4nv", 4, 1, False),
                                               (1, "*fp8e4nv", 4, 1, True), (2, "*i8", 5, 1, False)):
            ce = dict(A_DIV=8, FMT=fmt, SFMT=sfmt, PACK=1, GROUP=4096, ROW_BLOCK=1, HAS_ZERO=False, HAS_GLOBAL=False,
                      A_QUANT=a_quant, A_GROUP=4096, ACT=1, HAS_BIAS=False, MUL_TOPW=False, ALPHA=1.702, LIMIT=7.0,
                      BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, UPCAST=False, NIBBLES=False, ASM=True, GROUP_M=8,
                      PLANES=False, PLANE_FMT=1, RAW=True, EVEN_K=even_k)
            ptx, _ = ptx_of(moe_gemm._moe_gemm_kernel, dict(sig, a_ptr=dt, w_ptr=dt), ce, 8, 3,
                            tuple(a for a in sig if a != "num_pairs"))
            out.append({"wgmma": count(ptx, r"wgmma\\.mma_async"), "local": count(ptx, r"\\.local")})
        print(json.dumps(out))
    """)
    for r in results:
        assert r["wgmma"] >= 2 and r["local"] == 0, r


@pytest.mark.timeout(300)
def test_decode_gemv_compiles_to_wide_loads_in_registers():
    """The decode GEMV's K loop streams weight rows as 16-byte vector loads (8-bit weights, K contiguous)
    and sums them where they were loaded: no shared memory, no shuffles, no barrier, no MMA, no spills,
    for W8A8 fp8 / int8, block-scaled fp8 (one scale a step, or one a row) and weight-only, each with and
    without the prefetch of the next step."""
    results = _compiled("""
        from quantc.runtime.kernels import scaled_gemv
        sig = {"a_ptr": "*fp8e4nv", "b_ptr": "*fp8e4nv", "c_ptr": "*bf16", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
               "bias_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
               "stride_am": "i32", "stride_bn": "i32", "stride_cm": "i32",
               "stride_cn": "i32", "stride_sam": "i32", "stride_sak": "i32", "stride_sbn": "i32", "stride_sbk": "i32"}
        cases = [  # a dtype, b dtype, A mode, B mode, prefetch, int8, BLOCK_N, BLOCK_K, split
            ("*fp8e4nv", "*fp8e4nv", 2, 2, False, False, 16, 512, 4),
            ("*fp8e4nv", "*fp8e4nv", 2, 2, True, False, 16, 512, 4),
            ("*i8", "*i8", 2, 2, False, True, 16, 512, 4),
            ("*i8", "*i8", 2, 2, True, True, 8, 512, 1),
            ("*fp8e4nv", "*fp8e4nv", 3, 3, False, False, 32, 128, 1),
            ("*fp8e4nv", "*fp8e4nv", 3, 3, True, False, 256, 128, 2),
            ("*bf16", "*fp8e4nv", 0, 2, False, False, 16, 512, 2),
            ("*bf16", "*fp8e4nv", 0, 2, True, False, 16, 512, 2),
        ]
        out = []
        for adt, bdt, am, bmode, prefetch, int8, bn, bk, split in cases:
            ce = dict(A_MODE=am, B_MODE=bmode, PREFETCH=prefetch, INT8=int8, GROUP_K=128, GROUP_N=128, HAS_BIAS=False,
                      BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, EVICT="evict_first")
            ptx, smem = ptx_of(scaled_gemv._gemv_kernel, dict(sig, a_ptr=adt, b_ptr=bdt,
                               ws_ptr="*i32" if int8 else "*fp32"), ce, 4, 1,
                               ("a_ptr", "b_ptr", "c_ptr", "ws_ptr", "K", "stride_am", "stride_bn", "stride_cm"))
            loop = re.split(r"\\n\\$L__BB", ptx[ptx.index("Inner Loop Header"):])[0]  # the K loop's block
            out.append({"v4": count(loop, r"ld\.global[\w.:]*\.v4\.b32"), "evict": count(loop, r"evict_first"), "shared": count(loop, r"\.shared"),
                        "shfl": count(loop, r"shfl"), "bar": count(loop, r"bar\.sync"), "local": count(ptx, r"\.local"),
                        "mma": count(ptx, r"mma"), "case": [am, bmode, prefetch, int8, bn, bk]})
        print(json.dumps(out))
    """)
    for r in results:
        assert r["v4"] >= 1 and r["shared"] == 0 and r["shfl"] == 0 and r["bar"] == 0, r
        assert r["local"] == 0 and r["mma"] == 0 and r["evict"] >= 1, r


@pytest.mark.timeout(300)
def test_activation_quantizers_take_the_hardware_e4m3_cast_on_the_gpu():
    """With HW (every CUDA launch, ``common.hw_cast``) the fp8 quantizers round with the sm_90
    ``cvt.rn.satfinite.e4m3x2.f32`` and none of the explicit rounding's integer steps; without it (the
    interpreter's path) they keep them. int8 has no e4m3 cast either way. With FMA (``common.fma_div``)
    no element takes a div.rn: one reciprocal a row, four FMAs an element."""
    results = _compiled("""
        from quantc.runtime.kernels import act_quant
        sig = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "src_ptr": "*fp32", "K": "i32",
               "stride_xm": "i32", "stride_qm": "i32", "stride_sm": "i32"}
        out = []
        for hw, int8, mx, group, fma in ((True, False, False, 4096, False), (False, False, False, 4096, False),
                                         (True, False, True, 32, False), (True, True, False, 4096, False),
                                         (True, False, False, 4096, True), (True, True, False, 4096, True)):
            ce = dict(GROUP=group, GROUPS=1 if group == 4096 else 64, GBLOCK=group, SRC=0, INT8=int8, MX=mx, HW=hw,
                      FMA=fma)
            s = dict(sig, q_ptr="*i8" if int8 else "*fp8e4nv", s_ptr="*u8" if mx else "*fp32")
            ptx, _ = ptx_of(act_quant._quant_tile_kernel, s, ce, 8, 1, ("x_ptr", "q_ptr", "K"))
            out.append({"hw": hw, "int8": int8, "cvt": count(ptx, r"cvt\\.rn\\.satfinite\\.e4m3x2\\.f32"),
                        "round_bits": count(ptx, r"and\\.b32\\s+%r\\d+, %r\\d+, -2147483648"),
                        "div": count(ptx, r"div\\.rn\\.f32"), "fma": count(ptx, r"fma\\.rn\\.f32")})
        print(json.dumps(out))
    """)
    hw_fp8, explicit, hw_mx, hw_int8, fma_fp8, fma_int8 = results
    assert hw_fp8["cvt"] >= 1 and hw_fp8["round_bits"] == 0, hw_fp8
    assert hw_mx["cvt"] >= 1 and hw_mx["round_bits"] == 0, hw_mx
    assert explicit["round_bits"] >= 1, explicit
    assert hw_int8["cvt"] == 0, hw_int8
    # 16 elements a thread: div.rn for each of them, or (FMA) for the row's reciprocal (and its scale) only
    assert hw_fp8["div"] >= 16 and hw_int8["div"] >= 16, (hw_fp8, hw_int8)
    for r in (fma_fp8, fma_int8):
        assert r["div"] <= 2 and r["fma"] >= 4 * 16, r

