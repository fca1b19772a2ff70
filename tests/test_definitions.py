"""The code location: one Definitions object that loads fast, without torch or diffusers."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from random_diffusion_dagster.definitions import defs

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_definitions_validate_and_expose_the_public_asset_keys():
    with dg.instance_for_test():  # Dagster's load context reads state from the current instance
        dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "source_images",
        "prompt_list",
        "model_catalog",
        "image_draw",  # each image's draw from those two, versioned per image
        "diffused_image",
        "diffusion_report",
        "model_comparison",
        "comparison_report",
        "augmented_dataset",
        "prompts_file",
        "models_file",
        "image_file",
    }  # the observed files results are made from
    assert defs.resolve_sensor_def("new_images_sensor") and defs.resolve_schedule_def("catch_up_schedule")


def test_every_sensor_and_schedule_says_in_the_ui_what_it_does():
    automations = [*defs.sensors, *defs.schedules]
    assert automations and [a.name for a in automations if not (a.description or "").strip()] == []
    assert [a.name for a in automations if "`" in a.description] == []  # the sensor pages show descriptions as text


def test_loading_definitions_imports_no_torch_diffusers_transformers_or_pandas():
    # Every run process, sensor tick and code server loads the definitions: pandas alone costs ~0.3 s there.
    code = (
        "import sys, random_diffusion_dagster.definitions, random_diffusion_dagster.defs.automation.new_images_sensor, "
        "random_diffusion_dagster.defs.automation.catch_up_schedule;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'pandas')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


@pytest.mark.parametrize(("value", "expected"), [(None, 30), ("12", 12)])
def test_the_new_images_sensor_looks_every_30_s_unless_the_environment_says_otherwise(value, expected):
    code = (
        "from random_diffusion_dagster.definitions import defs;"
        "print(defs.resolve_sensor_def('new_images_sensor').minimum_interval_seconds)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RANDOM_DIFFUSION_SENSOR_INTERVAL_SECONDS"}  # conftest's 5
    env.update({"RANDOM_DIFFUSION_SENSOR_INTERVAL_SECONDS": value} if value else {})
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert output.strip() == str(expected)


def test_dagster_cli_validates_the_workspace():
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_compile_settings_come_from_the_environment_for_sensor_and_schedule_runs(monkeypatch):
    from random_diffusion_dagster.defs.resources import DiffusionEngineResource
    from random_diffusion_dagster.engine.pipelines import Speedups

    assert DiffusionEngineResource(device="cpu").pipelines().speedups == Speedups()
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE", "unet, vae")
    assert DiffusionEngineResource(device="cpu").pipelines().speedups == Speedups(compile_unet=True, compile_vae=True)
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE", "vae")
    engine = DiffusionEngineResource(device="cpu")
    assert (engine.compile_unet, engine.compile_vae) == (False, True)
    assert DiffusionEngineResource(device="cpu", compile_vae=False).compile_vae is False  # run config wins
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE", "unet,decoder")
    with pytest.raises(ValueError, match=r"RANDOM_DIFFUSION_COMPILE names \['decoder'\].*'unet,vae'"):
        DiffusionEngineResource(device="cpu")
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE", "unet")
    assert DiffusionEngineResource(device="cpu").pipelines().speedups.ahead_of_time  # packages unless told
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME", "0")
    assert DiffusionEngineResource(device="cpu").pipelines().speedups == Speedups(
        compile_unet=True, ahead_of_time=False
    )
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME", "later")
    with pytest.raises(ValueError, match=r"RANDOM_DIFFUSION_COMPILE_AHEAD_OF_TIME='later': set it to 1 or 0"):
        DiffusionEngineResource(device="cpu")


def test_a_worker_that_keeps_pipelines_on_a_cuda_gpu_compiles_by_default_with_the_cache_in_the_instance_folder(
    monkeypatch, tmp_path, environ
):
    """The rule is decided from the device's name: no CUDA device exists here, so no pipeline is made on one."""
    from random_diffusion_dagster.defs.resources import DiffusionEngineResource
    from random_diffusion_dagster.engine.pipelines import Speedups

    monkeypatch.delenv("RANDOM_DIFFUSION_COMPILE", raising=False)
    warm = DiffusionEngineResource(keep_loaded=True)
    assert warm.speedups_on("cuda:1") == Speedups(compile_unet=True, compile_vae=True)
    assert warm.speedups_on("cpu") == warm.speedups_on("mps") == Speedups()  # compiling there would not pay
    assert DiffusionEngineResource(keep_loaded=False).speedups_on("cuda") == Speedups()  # a run process per run
    assert DiffusionEngineResource(keep_loaded=True, compile_vae=False).speedups_on("cuda") == Speedups(
        compile_unet=True
    )
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE", "none")
    assert DiffusionEngineResource(keep_loaded=True).speedups_on("cuda") == Speedups()
    monkeypatch.setenv("RANDOM_DIFFUSION_COMPILE", "vae")
    assert DiffusionEngineResource(keep_loaded=True).speedups_on("cuda") == Speedups(compile_vae=True)

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    monkeypatch.delenv("RANDOM_DIFFUSION_COMPILE")
    DiffusionEngineResource(device="cpu").pipelines()  # nothing compiled: torch's own default
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert DiffusionEngineResource(device="cpu", compile_vae=True).pipelines().speedups.compile_vae
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path.resolve() / ".dagster" / "torch-compile-cache")
