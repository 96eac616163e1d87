"""The shipped kernel tables and compiled plans conform to their schemas in schemas/."""

import json
from pathlib import Path

import jsonschema
import pytest

from quantc.emit import data_dir, read_table
from quantc.kernel_specs import KERNELS_BY_ID

ROOT = Path(__file__).resolve().parent.parent


def _schema(name):
    return json.loads((data_dir("schemas") / f"{name}.schema.json").read_text())


@pytest.mark.parametrize("table", sorted((ROOT / "kernels").glob("*.json")), ids=lambda p: p.name)
def test_shipped_tables_conform(table):
    data = json.loads(table.read_text())
    jsonschema.Draft202012Validator(_schema("kernels")).validate(data)
    parsed = read_table(table)
    for kernel in parsed.defaults:
        assert kernel in KERNELS_BY_ID
    for buckets in list(parsed.defaults.values()) + list(parsed.entries.values()):
        m_maxes = [m for m, _ in buckets]
        assert m_maxes == sorted(m_maxes) and m_maxes[-1] == 2**31 - 1


def test_kernel_schema_rejects_unknown_kernel():
    bad = {"format": "quantc-kernels", "version": 1, "gpu": "h100", "defaults": {}, "entries": [
        {"kernel": "no_such_kernel", "n": 1, "k": 1, "m_max": 1, "block_m": 16, "block_n": 16, "block_k": 16}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(_schema("kernels")).validate(bad)


def test_compiled_plan_conforms():
    from tests.test_plan_format import _plan

    jsonschema.Draft202012Validator(_schema("plan")).validate(json.loads(_plan().to_json()))
