"""`dg` (dagster-dg-cli), the CLI Dagster now points users at, on this project.

`dg dev` runs for real from a copy of the project root (its pyproject.toml, dagster.yaml and
workspace.yaml, the package linked in), as the README says to start it: the UI answers, the instance
is the one dagster.yaml describes (queued runs, the `gpu` pool, history under ./.dagster), and the
terminal tells the user nothing wrong.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from random_diffusion_dagster.runtime.remote import Deployment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from test_deployment import _free_port, _reachable  # noqa: E402

from local_services import project_env, stop_process_groups, wait_for  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DG = Path(sys.executable).parent / "dg"

pytestmark = pytest.mark.timeout(300)

INSTANCE_QUERY = """
query {
  instance { runQueuingSupported poolConfig { poolGranularity defaultPoolLimit } info }
  repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } }
}"""
# What Dagster prints when it is started the wrong way for this project.
WRONG_ADVICE = (
    "dg dev' instead",
    "temporary directory",
    "set the environment variable DAGSTER_HOME",
    "will not be used",
)


def _dg(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(DG), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def quiet_home(tmp_path):
    """The README's setting: the project's environment active (as `. .venv/bin/activate` sets it)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {**os.environ, "DAGSTER_HOME": str(home), "VIRTUAL_ENV": str(DG.parent.parent)}


def test_dg_check_and_list_load_the_project_definitions(quiet_home):
    check = _dg("check", "defs", cwd=PROJECT_ROOT, env=quiet_home)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    assert "does not match" not in check.stdout + check.stderr  # dg's warning when another environment is active
    listed = _dg("list", "defs", "--json", cwd=PROJECT_ROOT, env=quiet_home)
    assert listed.returncode == 0, listed.stderr
    defs = json.loads(listed.stdout)
    assert {"source_images", "diffused_image", "diffusion_report"} <= {asset["asset_key"] for asset in defs["assets"]}
    assert {"new_images_sensor", "report_automation_sensor"} <= {sensor["name"] for sensor in defs["sensors"]}


@pytest.fixture
def dg_project(tmp_path):
    """A project root like the real one: its config files, the package linked in, no history yet."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("pyproject.toml", "dagster.yaml", "workspace.yaml"):
        (root / name).write_text((PROJECT_ROOT / name).read_text())
    (root / "random_diffusion_dagster").symlink_to(PROJECT_ROOT / "random_diffusion_dagster")
    (root / "images").mkdir()  # empty: the sensor has nothing to run
    (root / "prompts.txt").write_text("a lighthouse\n")
    return root


def test_dg_dev_serves_the_project_on_its_own_instance(dg_project):
    root = dg_project
    # The README's command, `DAGSTER_HOME=$PWD dg dev`, from the project root.
    env = {**os.environ, **project_env(root, root)}
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root.parent / "dg-dev.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(DG), "dev", "-p", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _reachable(url), 180, "the webserver started by `dg dev`")
        answer = wait_for(
            lambda: (data := Deployment(url).query(INSTANCE_QUERY, {}))["repositoriesOrError"].get("nodes") and data,
            120,
            "the code location to load",
        )
        instance = answer["instance"]
        assert instance["runQueuingSupported"] is True
        assert instance["poolConfig"] == {"poolGranularity": "run", "defaultPoolLimit": 1}
        assert "QueuedRunCoordinator" in instance["info"] and "max_retries: 1" in instance["info"]
        assert [node["location"]["name"] for node in answer["repositoriesOrError"]["nodes"]] == [
            "random_diffusion_dagster"
        ]
        # History in ./.dagster, as dagster.yaml says; no throwaway home beside it.
        wait_for(
            lambda: (root / ".dagster" / "storage" / "history" / "runs.db").is_file(),
            60,
            "the run storage in ./.dagster",
        )
        assert not list(root.glob(".tmp_dagster_home_*"))
        output = log_path.read_text()
        assert "Serving dagster-webserver on " + url in output
        assert not [advice for advice in WRONG_ADVICE if advice in output], output
    finally:
        stop_process_groups([process])
