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
    assert peer.error == "GemLite has no peer for mxfp4 (it has fp8_per_channel, int8_per_channel, int4_group_128)"


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
