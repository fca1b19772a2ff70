"""`random-diffusion run`, the command behind `make run`, end to end in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent


def test_run_diffuses_every_image_and_writes_the_report(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RANDOM_DIFFUSION_IMAGES_DIR": project["images_dir"],
        "RANDOM_DIFFUSION_OUTPUT_DIR": project["output_dir"],
        "RANDOM_DIFFUSION_PROMPTS_FILE": project["prompts_file"],
        "RANDOM_DIFFUSION_MODELS_FILE": project["models_file"],
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "run", "--seed", "3", "--prompt", "a red kite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    outputs = Path(project["output_dir"])
    assert f"Outputs: {outputs}" in completed.stdout and "succeeded for 3 images" in completed.stdout
    assert " - dagster - " not in completed.stdout + completed.stderr  # the batch lines are in the run's log, not here
    assert len(list(outputs.glob("*.png"))) == 3
    summary = pd.read_csv(outputs / "report" / "summary.csv")
    assert summary["images"].sum() == 3 and (outputs / "report" / "contact_sheet.png").is_file()


def test_run_without_images_says_where_to_put_them(project, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "RANDOM_DIFFUSION_IMAGES_DIR": str(empty),
        "RANDOM_DIFFUSION_MODELS_FILE": project["models_file"],
        "RANDOM_DIFFUSION_PROMPTS_FILE": project["prompts_file"],
    }
    completed = subprocess.run(
        [str(BIN / "random-diffusion"), "run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 1 and "No images found" in completed.stderr
