"""Scale-out through Celery with real parts: Redis broker, shared PostgreSQL, two worker processes.

The orchestration (workers, throwaway database, ranged runs) is benchmarks/celery_scaleout.py,
so the test exercises exactly what the benchmark measures.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from celery_scaleout import measure  # noqa: E402

pytestmark = pytest.mark.timeout(900)


def test_backfill_spreads_over_two_workers_and_materializes_each_partition_once(tmp_path, models_dir):
    # Steps long enough (40 x 0.5 denoising steps per image) that both runs' diffusion steps overlap.
    result = measure(
        workers=2, partitions=16, per_run=8, root=tmp_path / "celery", models_dir=models_dir, broker_db=9, steps=40
    )
    runs = result["runs"]
    assert len(runs) == 2 and {run["status"] for run in runs} == {"SUCCESS"}
    assert len({run["worker"] for run in runs}) == 2, runs  # each run's diffusion step on its own worker
    assert result["partitions_materialized"] == 16 and result["materializations_per_partition"] == [1]
    assert all(1 <= run["pipeline_loads"] <= 2 for run in runs)  # two models in the catalog: at most one load each
    assert all(seconds > 0 for seconds in result["busy_seconds_per_worker"].values())
