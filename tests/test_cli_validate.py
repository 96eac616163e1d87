"""Golden tests of what `quantc validate` prints: one folder per case under tests/golden/validate/
with the config file(s), `args`, the expected `stdout` and `exit_code`. QUANTC_REGEN_GOLDEN=1
rewrites the expectations."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN = os.path.join(HERE, "golden", "validate")
CASES = sorted(os.listdir(GOLDEN))
REGEN = os.environ.get("QUANTC_REGEN_GOLDEN") == "1"


def run_cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", "from quantc.cli import main; main()", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("case", CASES)
def test_golden(case):
    folder = os.path.join(GOLDEN, case)
    with open(os.path.join(folder, "args")) as fh:
        args = ["validate", *fh.read().split()]
    proc = run_cli(args, folder)
    assert "Traceback" not in proc.stderr
    if REGEN:
        with open(os.path.join(folder, "stdout"), "w") as fh:
            fh.write(proc.stdout)
        with open(os.path.join(folder, "exit_code"), "w") as fh:
            fh.write(f"{proc.returncode}\n")
    with open(os.path.join(folder, "stdout")) as fh:
        assert proc.stdout == fh.read()
    with open(os.path.join(folder, "exit_code")) as fh:
        assert proc.returncode == int(fh.read())
    if proc.returncode == 2:
        assert "Error:" in proc.stderr  # typer's own usage message


def test_exit_codes_cover_all_three():
    codes = set()
    for case in CASES:
        with open(os.path.join(GOLDEN, case, "exit_code")) as fh:
            codes.add(int(fh.read()))
    assert codes == {0, 1, 2}


def test_json_output_is_machine_readable():
    proc = run_cli(["validate", "--format", "json", "config.yaml"],
                   os.path.join(GOLDEN, "format_json"))
    (d,) = json.loads(proc.stdout)
    assert d["code"] == "QC111" and d["line"] == 3 and d["col"] == 5 and d["path"] == "rules[0]"


def test_schema_command():
    proc = run_cli(["schema"], ROOT)
    assert proc.returncode == 0 and json.loads(proc.stdout)["$id"].endswith("quantc.schema.json")
    assert run_cli(["schema", "bogus"], ROOT).returncode == 2


def test_schema_command_missing_schema(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from quantc import cli, schema

    monkeypatch.setattr(schema, "schema_path", lambda name: None)
    result = CliRunner().invoke(cli.app, ["schema", "kernels"])
    assert result.exit_code == 1 and "the kernels schema is not installed" in result.output


def test_slow_path_matches_fast_path():
    """The typer command and the fast path print the same thing."""
    from typer.testing import CliRunner

    from quantc import cli

    folder = os.path.join(GOLDEN, "errors_yaml")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(cli.app, ["validate", "config.yaml"])
    finally:
        os.chdir(cwd)
    with open(os.path.join(folder, "stdout")) as fh:
        assert result.output == fh.read() and result.exit_code == 1
