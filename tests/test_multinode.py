"""Two Celery "machines" that share only Redis, PostgreSQL and declared shared storage.

Each worker has its own DAGSTER_HOME, working directory, TMPDIR and CUDA_VISIBLE_DEVICES; box A
consumes the `dagster` queue (prompt_list, model_catalog), box B the `gpu` queue (diffused_image),
so the step values must cross machines. The orchestration is benchmarks/celery_scaleout.py.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from celery_scaleout import multinode  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def test_steps_on_two_machines_hand_values_over_shared_step_storage(tmp_path, models_dir):
    result = multinode(tmp_path, models_dir, broker_db=3, step_storage="shared", images=3, steps=4)
    run = result["run"]
    assert result["exit_code"] == 0 and run["status"] == "SUCCESS", result["output"]
    workers = run["step_workers"]
    assert workers["prompt_list"] == workers["model_catalog"] != workers["diffused_image"], workers
    assert workers["prompt_list"].startswith("box-a") and workers["diffused_image"].startswith("box-b")
    assert len(result["result_files"]) == 3
    # the values lay in the shared folder only, never under a machine's own DAGSTER_HOME or TMPDIR
    assert result["step_value_files"] == {
        "shared": ["shared/step-values/model_catalog.pickle", "shared/step-values/prompt_list.pickle"],
        "launcher": [],
        "box-a": [],
        "box-b": [],
    }


def test_machines_with_their_own_step_storage_fail_naming_the_value_and_the_variable(tmp_path, models_dir):
    result = multinode(tmp_path, models_dir, broker_db=5, step_storage="per-machine", images=2, steps=4)
    run = result["run"]
    assert result["exit_code"] != 0 and run["status"] == "FAILURE"
    error = run["failures"]["diffused_image"]
    assert "written by step" in error and "not found at" in error and "box-b" in error, error
    assert "do not share step storage; set RANDOM_DIFFUSION_STEP_STORAGE" in error
    assert result["result_files"] == []


def test_celery_without_step_storage_refuses_to_start_a_run_naming_the_variable(tmp_path, models_dir):
    result = multinode(tmp_path, models_dir, broker_db=5, step_storage="unset", images=1)
    assert result["exit_code"] != 0
    assert "RANDOM_DIFFUSION_EXECUTOR=celery" in result["output"]
    assert "set RANDOM_DIFFUSION_STEP_STORAGE to a folder or fsspec URL every worker reaches" in result["output"]
