"""bench/peers_gemlite.py on the CPU: a missing or broken GemLite is a value with a reason, never a crash."""

import os
import subprocess
import sys

import pytest

from bench import peers_gemlite as PG

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.fixture
def fresh(monkeypatch):
    """A clean import state: no cached gemlite module or error, no gemlite in sys.modules."""
    monkeypatch.setattr(PG, "_loaded", {})
    for name in [m for m in sys.modules if m == "gemlite" or m.startswith("gemlite.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return monkeypatch


def fake_gemlite(root, init: str, helper: str = "") -> str:
    pkg = root / "gemlite"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(init)
    (pkg / "helper.py").write_text(helper)
    return str(root)


def test_source_dir_is_env_then_carried_folder(fresh, tmp_path):
    fresh.setenv("GEMLITE_SRC", str(tmp_path))
    assert PG.source_dir() == str(tmp_path)
    fresh.delenv("GEMLITE_SRC")
    fresh.setattr(PG, "CARRIED", str(tmp_path / "none"))
    assert PG.source_dir() is None
    fake_gemlite(tmp_path, "")
    fresh.setattr(PG, "CARRIED", str(tmp_path))
    assert PG.source_dir() == str(tmp_path)


def test_env_folder_without_gemlite_is_a_setup_error(fresh, tmp_path):
    fresh.setenv("GEMLITE_SRC", str(tmp_path))
    peer = PG.build("int4_group_128", n=256, k=256)
    assert peer.module is None and peer.kernel is None
    assert peer.error == f"GemLite absent: no gemlite/ under {tmp_path} (run shared/tools/gemlite-src.sh, carry .whl)"
    assert PG.version() is None


def test_not_installed_and_not_carried(fresh, tmp_path):
    fresh.delenv("GEMLITE_SRC", raising=False)
    fresh.setattr(PG, "CARRIED", str(tmp_path / "none"))
    fresh.setattr(sys, "path", [p for p in sys.path if "gemlite" not in p])
    peer = PG.build("fp8_per_channel", n=128, k=256)
    assert peer.error.startswith("GemLite absent: not installed and no .whl/gemlite_src")
    assert (peer.n, peer.k) == (128, 256)


def test_import_failure_is_reported_not_raised(fresh, tmp_path):
    # GemLite's core queries the CUDA device at import; on a CPU host that raises
    fresh.setenv("GEMLITE_SRC", fake_gemlite(tmp_path, "raise AssertionError('Torch not compiled with CUDA enabled')"))
    peer = PG.build("int8_per_channel", n=128, k=256)
    assert peer.error == "GemLite import failed: AssertionError: Torch not compiled with CUDA enabled"
    # cached: a second build gives the same reason without importing again
    assert PG.build("fp8_per_channel", n=128, k=256).error == peer.error


def test_missing_dependency_is_named(fresh, tmp_path):
    fresh.setenv("GEMLITE_SRC", fake_gemlite(tmp_path, "", helper="import tqdm_not_here_xyz\n"))
    assert PG.build("int4_group_128", n=128, k=256).error == "GemLite import failed: missing module 'tqdm_not_here_xyz'"


def test_config_table_must_load(fresh, tmp_path):
    init = "__version__ = '0'\ndef load_config(path, print_error=True):\n    return False\n"
    fresh.setenv("GEMLITE_SRC", fake_gemlite(tmp_path, init))
    err = PG.build("int4_group_128", n=128, k=256).error
    assert err.startswith("GemLite config table not loadable: ") and err.endswith("h100.json")


def test_format_gemlite_lacks(fresh):
    peer = PG.build("mxfp4", n=128, k=256)
    assert peer.error == "GemLite has no peer for mxfp4 (it has fp8_per_channel, int8_per_channel, int4_group_128, fp8_block_128x128)"


def test_import_is_lazy():
    # the benches import it at top level: neither GemLite nor torch is imported until a peer is built
    code = "import sys, bench.peers_gemlite; print('torch' in sys.modules, 'gemlite' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_rel_err():
    import torch

    ref = torch.tensor([[3.0, 4.0]])
    assert PG.rel_err(ref.to(torch.bfloat16), ref) == 0.0
    assert PG.rel_err(torch.tensor([[3.0, 4.5]]), ref) == pytest.approx(0.1)


FAKE_INIT = "__version__ = '0'\nfrom . import core\ndef load_config(path, print_error=True):\n    return True\n"
FAKE_CORE = """import enum
class DType(enum.Enum):
    FP16 = 1
    BF16 = 2
    FP8e4 = 3
def is_mx_dtype(d):
    return False
def get_matmul_type(m, w_nbits, is_mx):
    return "GEMM"
class _Gemm:
    @staticmethod
    def forward(*args, **kwargs):
        CALLS.append(("forward", args, kwargs))
        return "out"
GEMLITE_TRITON_MAPPING = {"GEMM": _Gemm}
CALLS = []
"""
FAKE_HELPER = """from .core import CALLS
class Layer:
    def get_meta_args(self):
        return [0, 8, 0, 0, 0, 3, 0, 7]
    def get_tensor_args(self):
        return ["W", "scales", "zeros", "bias"]
    def __call__(self, x):
        return "module"
class A8W8_fp8_dynamic:
    def __init__(self, device, dtype, block_quant=False):
        CALLS.append(("init", device, str(dtype), block_quant))
    def from_weights(self, weight, scales=None):
        CALLS.append(("from_weights", tuple(weight.shape), tuple(scales.shape), str(scales.dtype)))
        return Layer()
"""


def test_fp8_block_peer_is_gemlites_block_quant_layer_on_our_tensors(fresh, tmp_path):
    """The fp8 128-block peer: A8W8_fp8_dynamic(block_quant=True) from quantc's weight and its
    (N/128, K/128) fp32 block scales, and a kernel floor fed our (xq, per-block scales) as GemLite's
    own forward passes them (a fake GemLite records the calls: no GPU here)."""
    import torch

    fresh.setenv("GEMLITE_SRC", fake_gemlite(tmp_path, FAKE_INIT, FAKE_HELPER))
    (tmp_path / "gemlite" / "core.py").write_text(FAKE_CORE)
    fresh.setattr(torch.cuda, "current_device", lambda: 0)
    w = torch.zeros(256, 384, dtype=torch.float8_e4m3fn)
    s = torch.ones(2, 3, dtype=torch.bfloat16)
    peer = PG.build("fp8_block_128x128", w, s)
    assert peer.error is None and (peer.n, peer.k) == (256, 384)
    core = sys.modules["gemlite.core"]
    assert core.CALLS[:2] == [("init", "cuda:0", "torch.bfloat16", True),
                              ("from_weights", (256, 384), (2, 3), "torch.float32")]
    xq, sx = torch.zeros(4, 384, dtype=torch.float8_e4m3fn), torch.ones(4, 3)
    assert peer.kernel(xq, sx) == "out"
    _, args, kwargs = core.CALLS[-1]
    assert args[0] is xq and args[1:4] == ("W", "scales", "zeros") and args[4] is sx
    assert kwargs == {"meta_scale": 0.0}
