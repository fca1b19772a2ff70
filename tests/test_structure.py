"""Structure the rest relies on: the engine stays Dagster-free, run splitting lives in one function."""

import subprocess
import sys

import pytest

from random_diffusion_dagster.defs.run_ranges import partition_ranges


def test_importing_the_engine_imports_no_dagster():
    code = (
        "import sys, pkgutil, importlib, random_diffusion_dagster.engine as e;"
        "[importlib.import_module(f'random_diffusion_dagster.engine.{m.name}')"
        " for m in pkgutil.iter_modules(e.__path__)];"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


KEYS = [f"k{i}" for i in range(10)]


def _spans(ranges):
    return [(r.first, r.last, len(r.keys)) for r in ranges]


def test_ranges_hold_only_wanted_keys_unless_gaps_may_be_bridged():
    wanted = ["k1", "k2", "k5", "k9"]
    assert _spans(partition_ranges(KEYS, wanted, 32)) == [("k1", "k2", 2), ("k5", "k5", 1), ("k9", "k9", 1)]
    assert _spans(partition_ranges(KEYS, wanted, 32, bridge_gaps=True)) == [("k1", "k9", 9)]
    assert _spans(partition_ranges(KEYS, wanted, 4, bridge_gaps=True)) == [
        ("k1", "k2", 2),
        ("k5", "k5", 1),
        ("k9", "k9", 1),
    ]


def test_ranges_respect_the_per_run_limit():
    assert _spans(partition_ranges(KEYS, KEYS, 4)) == [("k0", "k3", 4), ("k4", "k7", 4), ("k8", "k9", 2)]
    assert partition_ranges(KEYS, [], 4) == []
    with pytest.raises(ValueError, match="at least 1"):
        partition_ranges(KEYS, KEYS, -1)
