"""The launchers' host-side helpers: grid arithmetic equal to triton's constexpr functions it replaces
(those cost ~4 us a Python call; a launch made nine), and the environment reader the switches use."""

import os

import triton

from quantc.runtime.kernels.common import cdiv, env, next_pow2


def test_cdiv_and_next_pow2_match_triton():
    for a in list(range(0, 70)) + [2**31 - 1, 2**31, 3 * 2**20 + 7]:
        assert next_pow2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 16, 32, 128, 4096):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)


def test_env_reads_what_os_environ_holds_after_every_change(monkeypatch):
    name = "QUANTC_TEST_SWITCH_\u00e9"  # a non-ASCII name: the store's keys are encoded
    monkeypatch.delenv(name, raising=False)
    assert env(name) is None and env(name, "1") == "1"
    monkeypatch.setenv(name, "0")
    assert env(name, "1") == "0" == os.environ.get(name)
    os.environ[name] = "caf\u00e9"
    assert env(name) == "caf\u00e9"
    monkeypatch.delenv(name)
    assert env(name, "d") == "d"


def test_env_falls_back_to_a_plain_mapping(monkeypatch):
    # an os.environ replaced by something other than CPython's os._Environ (no encoded store to read)
    monkeypatch.setattr(os, "environ", {"QUANTC_TEST_PLAIN": "7"})
    assert env("QUANTC_TEST_PLAIN") == "7" and env("QUANTC_TEST_MISSING", "d") == "d"
