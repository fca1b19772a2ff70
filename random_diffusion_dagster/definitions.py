"""The project's one Definitions object."""

import os

import dagster as dg

from .assets import diffused_image, diffusion_report, model_catalog, prompt_list, source_images
from .checks import results_readable_on_disk
from .jobs import diffuse_images_job
from .observations import IMAGE_FILES, MODELS_FILE, PROMPTS_FILE, input_files_sensor
from .resources import DatasetResource, DiffusionEngineResource
from .schedules import catch_up_schedule
from .sensors import new_images_sensor

# Declarative automation (the report's condition) needs a sensor; Dagster's default one starts stopped.
automation_sensor = dg.AutomationConditionSensorDefinition(
    name="report_automation_sensor",
    target=dg.AssetSelection.assets("diffusion_report"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
)


def _executor() -> dg.ExecutorDefinition:
    """Where steps run (RANDOM_DIFFUSION_EXECUTOR): inside the run's own process by default, a process per
    step (`multiprocess`), `celery` workers, or `k8s` Jobs, one per step, so only the diffusion step asks for a GPU.

    In process by default: on one box a step process per step repeats the imports and definition loading
    (about 5 s per run here, benchmarks/results/README.md) and runs nothing in parallel that matters, as the
    diffusion step is the run. A killed run still loses nothing (results are written atomically, one by one).
    """
    choice = os.environ.get("RANDOM_DIFFUSION_EXECUTOR", "").lower()
    if choice in ("", "in_process"):
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": {"env": "RANDOM_DIFFUSION_CELERY_BROKER"},
                "backend": {"env": "RANDOM_DIFFUSION_CELERY_BACKEND"},
                # as in deploy/celery/celery.yaml: busy workers reserve no further step
                "config_source": {"task_acks_late": True},
            }
        )
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(
        f"RANDOM_DIFFUSION_EXECUTOR={choice!r}: use in_process (the default), multiprocess, celery or k8s."
    )


defs = dg.Definitions(
    assets=[PROMPTS_FILE, MODELS_FILE, IMAGE_FILES, source_images, prompt_list, model_catalog, diffused_image,
            diffusion_report],
    asset_checks=[results_readable_on_disk],
    jobs=[diffuse_images_job],
    schedules=[catch_up_schedule],
    sensors=[new_images_sensor, input_files_sensor, automation_sensor],
    resources={"dataset": DatasetResource(), "engine": DiffusionEngineResource()},
    executor=_executor(),
)
