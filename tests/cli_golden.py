"""Run ``quantc`` in-process exactly as the console script does (``quantc.cli.main``), and compare
its output with golden files. Used by the plan/explain/compile golden tests.

A golden case is a folder holding ``args`` (one command line, split like a shell would; ``{case}``
stands for the folder's path relative to the repository root and ``{tmp}`` for a scratch folder),
any config files the command reads, and the expected ``stdout``, ``stderr`` and ``exit_code``.
Commands run from the repository root, so every path they print is relative and the goldens are
machine-independent. ``QUANTC_REGEN_GOLDEN=1`` rewrites the expectations.
"""

from __future__ import annotations

import difflib
import io
import os
import shlex
import sys
import types
from contextlib import redirect_stderr, redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GOLDEN = os.path.join(HERE, "golden")
REGEN = os.environ.get("QUANTC_REGEN_GOLDEN") == "1"


def run_quantc(args: list[str], cwd: str = ROOT) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``quantc ARGS`` run in ``cwd``, without a subprocess."""
    from quantc import cli

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd, old_main = sys.argv, os.getcwd(), sys.modules["__main__"]
    sys.argv = ["quantc", *args]
    # click names the program after ``python -m <package>`` when run that way (as pytest is): a
    # stand-in __main__ makes usage messages say ``quantc`` as the console script does
    sys.modules["__main__"] = types.ModuleType("__main__")
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
        sys.modules["__main__"] = old_main
        os.chdir(old_cwd)
    return code, out.getvalue(), err.getvalue()


def case_args(folder: str, tmp: str) -> list[str]:
    with open(os.path.join(folder, "args"), encoding="utf-8") as fh:
        line = fh.read().strip()
    rel = os.path.relpath(folder, ROOT)
    return [a.replace("{case}", rel).replace("{tmp}", tmp) for a in shlex.split(line)]


def check_file(path: str, actual: str) -> None:
    """Compare ``actual`` with the golden file at ``path`` (or write it under QUANTC_REGEN_GOLDEN=1)."""
    if REGEN:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(actual)
    with open(path, encoding="utf-8") as fh:
        expected = fh.read()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "expected", "actual"))
        raise AssertionError(f"{os.path.relpath(path, ROOT)} differs (QUANTC_REGEN_GOLDEN=1 rewrites it):\n{diff[:6000]}")


def run_case(folder: str, tmp: str) -> tuple[int, str, str]:
    """Run one golden case folder and check stdout, stderr and the exit code."""
    code, out, err = run_quantc(case_args(folder, tmp))
    out, err = out.replace(tmp, "{tmp}"), err.replace(tmp, "{tmp}")
    assert "Traceback" not in err + out
    check_file(os.path.join(folder, "stdout"), out)
    check_file(os.path.join(folder, "stderr"), err)
    check_file(os.path.join(folder, "exit_code"), f"{code}\n")
    return code, out, err


def case_folders(*parts: str) -> list[str]:
    base = os.path.join(GOLDEN, *parts)
    if not os.path.isdir(base):
        return []
    return sorted(d for d in os.listdir(base) if os.path.isfile(os.path.join(base, d, "args")))
