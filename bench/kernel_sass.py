"""Compile the 4-bit weight-only kernel for Hopper (sm_90) on a machine without a GPU and show what
its main loop executes: the SASS instruction mix per K step and whether the decoded weight tile is
staged through shared memory (``local_alloc`` of the tile + ``LDSM``, a barrier per step) or handed
to the tensor cores from registers. Triton's bundled ptxas/nvdisasm do the work, so this runs here,
in CI containers, anywhere; use it to choose tiles before spending GPU time.

    python bench/kernel_sass.py                       # a default set of decode tiles, every format
    python bench/kernel_sass.py --fmt int4 --bn 64 128 --bk 128 256 --warps 4 8

Per line: format, BLOCK_M x BLOCK_N x BLOCK_K, warps, split, loop instructions per weight element
per thread, integer-pipe share, tensor-core instructions, and "smem" when the tile takes the detour.

    python bench/kernel_sass.py --kernel planes --fmt int4 --bn 32 64 --bk 128 --warps 2   # wo_planes
    ONE_ROW=1 python bench/kernel_sass.py --kernel planes ...   # the M = 1 variant (x loaded once)
    BIAS_FOLD=0 python bench/kernel_sass.py --kernel planes ... # int4 with the per-element bias FMAs
    python bench/kernel_sass.py --kernel frag --fmt int4 int4_asym --bk 64 128 --warps 4   # wo_frag (bk: 64 x sub-steps)
    python bench/kernel_sass.py --kernel gemv --fmt int4 --tiles 4x4x4x4   # wo_gemv (ROWSxLANES_NxWARPSxWARPS_K)
    XR=2 python bench/kernel_sass.py --kernel gemv ...                 # the several-row GEMV, 2 rows a program
    python bench/kernel_sass.py --kernel pmma --fmt int4 mxfp4 --tiles 4x8 4x16  # wo_plane_mma (WARPSxTOKENS;
                                                                                 # GROUPED=1: its MoE launch)
    python bench/kernel_sass.py --kernel fgemv --fmt int4 --tiles 1x4x1x4  # wo_frag_gemv (RTxRSxWARPS_TxWARPS_S)
    python bench/kernel_sass.py --kernel persistent ...          # the persistent planes variant (its
                                                                 # flattened loop also counts the epilogue)

What it showed (triton 3.9 here, 3.6 on the GPU image): in ``wo_mma4`` mxfp4 and nvfp4 keep the decoded
tile in registers, int4 (bf16 scales) stages it through shared memory (a barrier per K step): Triton
cannot carry the MMA operand layout back through the join/reshape of the eight nibbles. ``wo_planes``
has no reshape and keeps every format in registers at 2.5-3.0 (int4) and 4.2-4.6 (e2m1) instructions
per element; on the H100 it runs int4 decode 1.35-1.6x faster (bench/results/wo_h100.json).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compile for real
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from quantc.runtime.kernels import wo_mma4, wo_planes  # noqa: E402

KERNEL = "mma4"  # --kernel
TOKENS = int(os.environ.get("TOKENS", "16"))  # frag: tokens a program (16, 32, 64)
ONE_ROW = os.environ.get("ONE_ROW") == "1"  # planes kernel at M = 1
BIAS_FOLD = os.environ.get("BIAS_FOLD", "1") == "1"
XR = int(os.environ.get("XR", "1"))  # gemv: activation rows a program (> 1: the several-row kernel)  # planes kernel: int4 bias off the fp32 sums (0: per element)

SIG = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16",
       "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32",
       "stride_wn": "i32", "stride_sn": "i32", "stride_om": "i32"}
# format -> (FMT, SFMT, GROUP, HAS_ZERO, scale pointer type, HAS_GLOBAL)
FORMATS = {"int4": (1, 1, 128, False, "*bf16", False), "int4_asym": (1, 1, 128, True, "*bf16", False),
           "int4_g32": (1, 1, 32, False, "*bf16", False), "mxfp4": (2, 2, 32, False, "*u8", False),
           "nvfp4": (2, 1, 16, False, "*fp8e4nv", True)}
INT_PIPE = ("LOP3", "PRMT", "SHF", "ISETP", "SEL", "IADD3", "LEA", "SHL")
NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


def compile_frag(fmt: str, bk: int, split: int, warps: int):
    """``wo_frag``'s Gluon kernel (int4 only): WARPS x 16 rows a program, a step of bk / 64 sub-steps."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from quantc.runtime.kernels import wo_frag

    sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "out_ptr": "*bf16", "ws_ptr": "*fp32",
           "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_sn": "i32",
           "M_TILES": "i32"}
    ce = dict(GROUP=128, HAS_ZERO=fmt == "int4_asym", WARPS=warps, SPLIT_K=split, SUB=bk // 64, TOK=TOKENS)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig) if name not in ("M", "N", "M_TILES")}
    return triton.compile(GluonASTSource(wo_frag._frag_kernel, dict(sig, **{k: "constexpr" for k in ce}), ce, attrs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def compile_gemv(fmt: str, tile: tuple[int, ...], split: int):
    """The one-row GEMVs: ``wo_gemv``'s on the plane layout (tile ROWS x LANES_N x WARPS x WARPS_K) or
    ``wo_frag_gemv``'s on fragment order (tile RT x RS x WARPS_T x WARPS_S). Returns (compiled, elements a thread
    decodes a loop iteration, warps)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from quantc.runtime.kernels import wo_frag_gemv, wo_gemv

    f, sfmt, group, zero, sdt, glob = FORMATS[fmt]
    if KERNEL == "pmma":  # tile: WARPSxTOKENS, int4 only
        from quantc.runtime.kernels import wo_plane_mma

        warps, tok = tile
        sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": sdt, "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16",
               "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32",
               "stride_wn": "i32", "stride_sn": "i32", "M_TILES": "i32", "ids_ptr": "*i32", "bexp_ptr": "*i32",
               "E": "i32", "A_DIV": "i32", "stride_we": "i32", "stride_se": "i32"}
        ce = dict(GROUP=group, HAS_ZERO=zero, WARPS=warps, SPLIT_K=split, TOK=tok, SUB=2,
                  FMT={1: 1, 2: 2}[f] if fmt != "nvfp4" else 3, HAS_GLOBAL=glob, RT=1, X_AHEAD=False,
                  GROUPED=os.environ.get("GROUPED") == "1")
        fn, elems = wo_plane_mma._plane_mma_kernel, 128  # a lane's 8 words a 128-deep step, two steps a loop
    elif KERNEL == "fgemv":
        rt, rs, wt, ws = tile
        sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*bf16", "z_ptr": "*u8", "out_ptr": "*bf16",
               "ws_ptr": "*fp32", "cnt_ptr": "*i32", "N": "i32", "K": "i32", "stride_sn": "i32"}
        ce = dict(GROUP=group, HAS_ZERO=zero, RT=rt, RS=rs, WARPS_T=wt, WARPS_S=ws, SPLIT_K=split)
        fn, warps, elems = wo_frag_gemv._frag_gemv_kernel, wt * ws, rt * rs * 32
    else:
        rows, lanes_n, warps, warps_k = tile
        sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": sdt, "z_ptr": "*u8", "gs_ptr": "*fp32", "out_ptr": "*bf16",
               "ws_ptr": "*fp32", "cnt_ptr": "*i32", "e_ptr": "*i64", "N": "i32", "K": "i32", "stride_wn": "i32",
               "stride_sn": "i32", "P": "i32", "A_DIV": "i32", "stride_xm": "i32", "stride_we": "i32",
               "stride_se": "i32", "M": "i32"}
        ce = dict(GROUP=group, HAS_ZERO=zero, ROWS=rows, LANES_N=lanes_n, SPLIT_K=split, WARPS=warps, WARPS_K=warps_k,
                  PREFETCH=int(os.environ.get("PREFETCH", "1")), FMT={1: 1, 2: 2}[f] if fmt != "nvfp4" else 3, HAS_GLOBAL=glob, X_VEC=True,
                  GROUPED=False, PRMT=f == 2 and os.environ.get("QUANTC_E2M1_DECODE") != "shifts",
                  CHAIN=os.environ.get("CHAIN", "1") == "1", EVEN_N=os.environ.get("EVEN_N", "1") == "1",
                  SPLIT_X=os.environ.get("SPLIT_X") == "1")
        fn, elems = wo_gemv._wo_gemv_gluon_kernel, rows * 32
        if XR > 1:  # the several-row kernel: its own signature, no prefetch / X_VEC / GROUPED switches
            sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": sdt, "z_ptr": "*u8", "gs_ptr": "*fp32",
                   "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
                   "stride_wn": "i32", "stride_sn": "i32", "stride_xm": "i32"}
            for name in ("PREFETCH", "X_VEC", "GROUPED", "CHAIN", "EVEN_N", "SPLIT_X"):
                ce.pop(name)
            ce["XR"] = XR
            fn = wo_gemv._wo_gemv_rows_gluon_kernel
    # the pointers, K and the row strides 16-divisible, as Triton specializes them at a launch on real shapes (without
    # the strides' attribute each 16-byte word load compiles to four 4-byte ones)
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig)
             if name in ("x_ptr", "w_ptr", "K", "stride_wn", "stride_sn", "stride_xm")}
    if KERNEL == "pmma":  # its row and activation strides 16-aligned too, as Triton specializes them at a launch
        warps = tile[0]
        attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(sig)
                 if name not in ("M", "N", "M_TILES", "E", "A_DIV")}
    c = triton.compile(GluonASTSource(fn, dict(sig, **{k: "constexpr" for k in ce}), ce, attrs),
                       target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    return c, elems, warps


def compile_kernel(fmt: str, bm: int, bn: int, bk: int, split: int, warps: int, stages: int):
    if KERNEL == "frag":
        return compile_frag(fmt, bk, split, warps)
    f, sfmt, group, zero, sdt, glob = FORMATS[fmt]
    constexprs = dict(FMT=f, SFMT=sfmt, GROUP=group, HAS_ZERO=zero, HAS_GLOBAL=glob, BLOCK_M=bm, BLOCK_N=bn,
                      BLOCK_K=bk, SPLIT_K=split, ASM=True, UPCAST=False)
    if KERNEL == "mma4":
        constexprs["SWAP"] = False
    else:
        constexprs.update(FOLD=f == 2 and sfmt != 2, ONE_ROW=ONE_ROW, BIAS_FOLD=BIAS_FOLD)
    if KERNEL == "persistent":
        constexprs["NUM_STAGES"] = stages
    sig = dict(SIG, s_ptr=sdt, **{k: "constexpr" for k in constexprs})
    # the launcher's arguments are 16-aligned (Triton specializes them so at run time); M is not
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(SIG) if name != "M"}
    fn = {"mma4": wo_mma4._wo_mma4_kernel, "planes": wo_planes._wo_planes_kernel,
          "persistent": wo_planes._wo_planes_persistent_kernel}[KERNEL]
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def main_loop(sass: str) -> list[str]:
    """The instructions of the longest backward-branch loop (the K loop)."""
    lines = sass.splitlines()
    best: list[str] = []
    for i, line in enumerate(lines):
        target = re.search(r"BRA\s+`?\(?\.L_x_(\d+)", line)
        if not target:
            continue
        start = next((j for j, x in enumerate(lines) if x.startswith(f".L_x_{target.group(1)}:")), None)
        if start is not None and start < i:
            body = [x for x in lines[start:i + 1] if re.match(r"\s+/\*[0-9a-f]+\*/", x)]
            best = max(best, body, key=len)
    return best


def report_gemv(fmt: str, tile: tuple[int, ...], split: int) -> str:
    """``report`` for the GEMVs: loop instructions per weight element a thread."""
    try:
        c, elems, warps = compile_gemv(fmt, tile, split)
    except Exception as exc:
        return f"{fmt:9s} {KERNEL} {'x'.join(map(str, tile))}: does not compile ({type(exc).__name__}: {str(exc)[:120]})"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"quantc_{KERNEL}_{fmt}_{'x'.join(map(str, tile))}.cubin"
    path.write_bytes(c.asm["cubin"])
    sass = subprocess.run([str(NVDISASM), "-c", str(path)], capture_output=True, text=True).stdout
    ops = collections.Counter(re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)",
                                         "\n".join(main_loop(sass)), re.M))
    total = sum(ops.values())
    spills = len(re.findall(r"\bSTL\b|\bLDL\b", sass))
    return (f"{fmt:9s} {KERNEL} {'x'.join(map(str, tile))} w{warps} split{split}: {total / elems:5.2f} instr/elem "
            f"({total} a loop iteration, {elems:.0f} elements a thread)" + (f", {spills} spill instructions" if spills else ""))


def report(fmt: str, bm: int, bn: int, bk: int, split: int, warps: int, stages: int) -> str:
    try:
        c = compile_kernel(fmt, bm, bn, bk, split, warps, stages)
    except Exception as exc:  # a tile the compiler refuses: say so, keep going
        return f"{fmt:9s} {bm}x{bn}x{bk} w{warps} s{stages} split{split}: does not compile ({type(exc).__name__})"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"quantc_{fmt}_{bm}_{bn}_{bk}_{warps}.cubin"
    path.write_bytes(c.asm["cubin"])
    sass = subprocess.run([str(NVDISASM), "-c", str(path)], capture_output=True, text=True).stdout
    body = main_loop(sass)
    ops = collections.Counter(re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)",
                                         "\n".join(body), re.M))
    if KERNEL == "frag":
        bn = 16 * warps  # its tile: 16 rows a warp
    elems = bn * bk / (warps * 32)  # weight elements a thread decodes per K step
    total = sum(ops.values())
    ints = sum(v for k, v in ops.items() if k.startswith(INT_PIPE))
    mma = sum(v for k, v in ops.items() if "MMA" in k)
    smem = bool(re.search(r"local_alloc %w", c.asm["ttgir"]))
    spills = len(re.findall(r"\bSTL\b|\bLDL\b", sass))
    return (f"{fmt:9s} {bm}x{bn}x{bk} w{warps} s{stages} split{split}: {total / elems:5.2f} instr/elem "
            f"({ints / max(total, 1):4.0%} integer pipe), {mma} MMA, tile via {'smem' if smem else 'registers'}"
            + (f", {spills} spill instructions" if spills else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fmt", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--bm", nargs="+", type=int, default=[16])
    p.add_argument("--bn", nargs="+", type=int, default=[32, 64, 128])
    p.add_argument("--bk", nargs="+", type=int, default=[128, 256])
    p.add_argument("--warps", nargs="+", type=int, default=[4])
    p.add_argument("--stages", nargs="+", type=int, default=[3])
    p.add_argument("--split", type=int, default=1)
    p.add_argument("--kernel", choices=("mma4", "planes", "persistent", "frag", "gemv", "fgemv", "pmma"), default="mma4")
    p.add_argument("--tiles", nargs="+", default=["4x4x4x4", "8x2x4x4"],
                   help="gemv: ROWSxLANES_NxWARPSxWARPS_K; fgemv: RTxRSxWARPS_TxWARPS_S; pmma: WARPSxTOKENS")
    a = p.parse_args()
    global KERNEL
    KERNEL = a.kernel
    if KERNEL in ("gemv", "fgemv", "pmma"):
        for fmt, tile in itertools.product(a.fmt, a.tiles):
            print(report_gemv(fmt, tuple(int(v) for v in tile.split("x")), a.split), flush=True)
        return
    for fmt, bm, bn, bk, warps, stages in itertools.product(a.fmt, a.bm, a.bn, a.bk, a.warps, a.stages):
        print(report(fmt, bm, bn, bk, a.split, warps, stages), flush=True)


if __name__ == "__main__":
    main()
