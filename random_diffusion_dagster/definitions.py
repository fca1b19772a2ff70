"""The project's one Definitions object."""

import dagster as dg

from .assets import (
    comparison_report,
    diffused_image,
    diffusion_report,
    model_catalog,
    model_comparison,
    prompt_list,
    source_images,
)
from .checks import results_readable_on_disk
from .file_versions import IMAGE_FILES, MODELS_FILE, PROMPTS_FILE, input_files_sensor
from .jobs import compare_models_job, diffuse_images_job
from .resources import DatasetResource, DiffusionEngineResource
from .schedules import catch_up_schedule
from .sensors import new_images_sensor
from .settings import CELERY_POLL_SECONDS, celery_settings, celery_urls, executor_choice, step_storage_location
from .step_storage import SharedStepStorage

# Declarative automation (the report's condition) needs a sensor; Dagster's default one starts stopped.
automation_sensor = dg.AutomationConditionSensorDefinition(
    name="report_automation_sensor",
    target=dg.AssetSelection.assets("diffusion_report"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Refreshes diffusion_report after new diffused images (its automation condition), at most once a "
    "minute and without waiting for every partition.",
)


def _executor() -> dg.ExecutorDefinition:
    """Where steps run (RANDOM_DIFFUSION_EXECUTOR): inside the run's own process by default, a process per
    step (`multiprocess`), `celery` workers, or `k8s` Jobs, one per step, so only the diffusion step asks for a GPU.

    In process by default: on one box a step process per step repeats the imports and definition loading
    (about 5 s per run here, benchmarks/results/README.md) and runs nothing in parallel that matters, as the
    diffusion step is the run. A killed run still loses nothing (results are written atomically, one by one).
    """
    choice = executor_choice()
    if choice in ("", "in_process"):
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "celery":
        import dagster_celery.core_execution_loop
        from dagster_celery import celery_executor

        # The run's loop sleeps TICK_SECONDS between looks at its steps' results; dagster-celery has no setting.
        dagster_celery.core_execution_loop.TICK_SECONDS = CELERY_POLL_SECONDS
        broker, backend = celery_urls()
        return celery_executor.configured(
            {
                "broker": broker,
                "backend": backend,
                "config_source": celery_settings(),
            }
        )
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise AssertionError(f"unhandled executor {choice!r}")  # executor_choice() admits only the names above


def _resources() -> dict:
    """The dataset and engine, plus step storage every worker reaches when RANDOM_DIFFUSION_STEP_STORAGE is set
    (required with celery and k8s); unset, step values stay in Dagster's local storage under DAGSTER_HOME."""
    resources = {"dataset": DatasetResource(), "engine": DiffusionEngineResource()}
    location = step_storage_location()
    if location:
        resources["io_manager"] = SharedStepStorage(base_dir=location)
    return resources


defs = dg.Definitions(
    assets=[
        PROMPTS_FILE,
        MODELS_FILE,
        IMAGE_FILES,
        source_images,
        prompt_list,
        model_catalog,
        diffused_image,
        diffusion_report,
        model_comparison,
        comparison_report,
    ],
    asset_checks=[results_readable_on_disk],
    jobs=[diffuse_images_job, compare_models_job],
    schedules=[catch_up_schedule],
    sensors=[new_images_sensor, input_files_sensor, automation_sensor],
    resources=_resources(),
    executor=_executor(),
)
