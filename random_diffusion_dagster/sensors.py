"""`new_images_sensor`: registers images dropped into the folder as partitions and asks for their runs."""


import dagster as dg

from .engine.images import ImageLoadError, probe_image
from .partitions import images_partitions
from .resources import DatasetResource


@dg.sensor(
    name="new_images_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=["prompt_list", "model_catalog", "diffused_image"],
    description="Adds an `images` partition for each new image in the images folder and requests its run.",
)
def new_images_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> dg.SensorResult:
    known = set(context.instance.get_dynamic_partitions(images_partitions.name))
    new_keys = []
    for source in dataset.source_files():
        if source.partition_key in known:
            continue
        try:
            probe_image(source.path)
        except ImageLoadError as exc:
            context.log.info(f"Skipping {source.name}: {exc}")
            continue
        new_keys.append(source.partition_key)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=key, run_key=f"new:{key}") for key in new_keys],
        dynamic_partitions_requests=[images_partitions.build_add_request(new_keys)] if new_keys else [],
    )
