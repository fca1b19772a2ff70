"""`diffused_image`: one img2img result per source image, many partitions per run, and `image_draw`, the draw it
was made from."""

import contextlib
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from ...engine.captions import Captions, image_version
from ...engine.catalog import ModelSpec
from ...engine.images import SourceFile, image_problem
from ...engine.plan import ImageTask
from ...engine.results import FailureRecord, write_failure
from ...settings import max_partitions_per_run
from ..asset_keys import DIFFUSED_IMAGE_KEY, IMAGE_DRAW_KEY, MODEL_CATALOG_KEY, PROMPT_LIST_KEY
from ..draws import by_image, drawn_from_tags, record_draws
from ..metadata import QUALITY_CHECK, PartitionRecorder, recorded_already, run_figures
from ..partitions import images_partitions
from ..pools import GPU_POOL
from ..resources import DatasetResource, DiffusionEngineResource
from ..source_versions import IMAGE_FILES, image_file_version, report_what_was_read, version_event

# Celery routes this step to GPU workers; Kubernetes gives its pod one GPU on a GPU node.
GPU_STEP_TAGS = {
    "dagster-celery/queue": "gpu",
    "dagster-k8s/config": {
        "container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
        "pod_spec_config": {
            "node_selector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    },
}


# What the UI shows on the asset's node (kind icons/tags): the work is diffusers pipelines on torch.
DIFFUSION_KINDS = {"pytorch", "diffusers"}


class DiffusedImageConfig(dg.Config):
    reroll: list[str] = Field(
        default=[],
        description="Results to draw anew (prompt, model, seed): an image's partition key or its path under the "
        "images folder for all its variants, or `key~vN` for one variant. The new draw is kept: later runs reuse it.",
    )


IMAGE_DRAW = dg.AssetSpec(
    IMAGE_DRAW_KEY,
    deps=[PROMPT_LIST_KEY, MODEL_CATALOG_KEY],
    partitions_def=images_partitions,
    group_name="diffusion",
    description="Each image's draw from the prompt list and the catalog: prompt, model (with its settings) and seed "
    "of each result, versioned so that editing one prompt line or catalog entry changes only the images that drew "
    "it. Recorded by the diffusion step, and by results_up_to_date after an edit.",
)


@dg.multi_asset(
    name="diffused_image",
    specs=[
        IMAGE_DRAW,
        dg.AssetSpec(
            DIFFUSED_IMAGE_KEY,
            deps=[IMAGE_DRAW_KEY, IMAGE_FILES.key],
            partitions_def=images_partitions,
            kinds=DIFFUSION_KINDS,
            group_name="diffusion",
            description="One img2img result per source image in the output folder: `coffee.jpg` -> `coffee.png`, "
            "other names keep their extension (`coffee.webp` -> `coffee.webp.png`).",
        ),
    ],
    ins={"prompt_list": dg.AssetIn(PROMPT_LIST_KEY), "model_catalog": dg.AssetIn(MODEL_CATALOG_KEY)},
    # Not subsettable: a result's provenance names its draw's record, and the draw needs this run's prompt_list.
    can_subset=False,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=max_partitions_per_run()),
    pool=GPU_POOL,
    op_tags=GPU_STEP_TAGS,
    check_specs=[
        dg.AssetCheckSpec(
            QUALITY_CHECK,
            asset=DIFFUSED_IMAGE_KEY,
            partitions_def=images_partitions,
            description="Per partition: each result passed its model's quality gates (not blank, changed from its "
            "source, not too far from it, prompt not truncated; the catalog's `quality:`), re-rolled with the next "
            "seed up to `tries` times; a failed one is kept with the reason and every attempt.",
        )
    ],
)
def diffused_image(
    context: dg.AssetExecutionContext,
    config: DiffusedImageConfig,
    dataset: DatasetResource,
    engine: DiffusionEngineResource,
    prompt_list: list[str],
    model_catalog: list[ModelSpec],
) -> Iterator[dg.MaterializeResult]:
    granularity = dataset.granularity
    read, missing = dataset.files_for(context.partition_keys)
    files = read if granularity.per_image else _images_only(context, read)
    planner = dataset.planner(prompt_list, model_catalog, _rerolls(context, config.reroll, files, dataset))
    tasks, unreadable = planner.plan(files)
    # The bytes this run read: each partition's provenance names that content.
    pairs = planner.pair_folders
    images = {t.key: t for t in tasks}  # one per image, not variant
    versions = {
        key: image_version(t.source.sha256[:16], t.caption, pairs.versions(t.source_path, t.source_file))
        for key, t in images.items()
    }
    if not granularity.per_image:  # a folder is versioned by every file it holds, as image_file and the sensor do
        captions = Captions()
        versions |= {
            f.partition_key: image_file_version(f, captions, pairs) for f in read if f.partition_key not in versions
        }
    events = [version_event(IMAGE_FILES, v, partition=p) for p, v in granularity.partition_versions(versions).items()]
    report_what_was_read(context, events)
    # First: each result's provenance names its draw's record.
    record_draws(context.get_step_execution_context(), planner, granularity, by_image(tasks), every=True)
    _diffuse(context, engine, tasks, drawn_from_tags(planner), missing, unreadable, dataset)
    yield from recorded_already(context)


def _rerolls(
    context: dg.AssetExecutionContext, names: list[str], files: list[SourceFile], dataset: DatasetResource
) -> frozenset[str]:
    """The results `reroll` names, as `key` (all its variants) or `key~vN`: an image by its partition key or by its
    path under the images folder (as `compare` takes it). A name that is none of this run's images, or a variant the
    run does not make, is left alone, and the run's log says so: a re-roll that does nothing is never silent."""
    if not names:
        return frozenset()  # most runs: the catalog is not read again for the variant count
    by_path = {file.relative_path: file.partition_key for file in files}
    keys, variants = set(by_path.values()), dataset.result_variants()
    chosen, elsewhere, beyond = set(), [], []
    for name in names:
        if name in keys or name in by_path:  # a key may itself hold "~v"
            chosen.add(by_path.get(name, name))
            continue
        image, _, variant = name.rpartition("~v")
        image = by_path.get(image, image)
        if image not in keys:
            elsewhere.append(name)
        elif not variant.isdigit() or int(variant) >= variants:
            beyond.append(name)
        else:
            chosen.add(f"{image}~v{int(variant)}")
    if elsewhere:
        context.log.warning(
            f"reroll names {elsewhere}, which are not among this run's images (name each by its partition key or its "
            "path under the images folder): left alone."
        )
    if beyond:
        context.log.warning(
            f"reroll names {beyond}, but this run makes {variants} result(s) per image (~v0 to ~v{variants - 1}): "
            "left alone. Run with more variants (`--variants`, or the dataset resource's `variants`) to make or "
            "re-roll them."
        )
    return frozenset(chosen)


def _images_only(context: dg.AssetExecutionContext, files: list[SourceFile]) -> list[SourceFile]:
    """A folder or shard partition's files that are images; the others are named in the log and left out, as the
    sensor leaves them out of image partitions."""
    images = []
    for file in files:
        if problem := image_problem(file.path):
            context.log.warning(f"Skipping {file.relative_path}: {problem}")
        else:
            images.append(file)
    return images


def _diffuse(
    context: dg.AssetExecutionContext,
    engine: DiffusionEngineResource,
    tasks: list[ImageTask],
    tags: dict[str, str],
    missing: dict[str, str],
    unplanned: dict[str, str],
    dataset: DatasetResource,
) -> None:
    """Make the results, recording each partition as its images are written; fails naming every image that failed
    (or could not be planned, or is gone) once the rest are saved."""
    recorder = PartitionRecorder(context, tasks, tags, dataset.granularity, dataset.output_dir)
    try:
        summary = engine.run(tasks, context.log.info, finished=recorder)
    finally:  # also when stopped part way (Ctrl-C, a terminated run): every image on disk is recorded
        recorder.finish()
    for key, error in unplanned.items():
        # As the engine keeps one for an image that failed: an older result of it is not current (report, dataset).
        # An output folder that cannot take it fails the run below all the same, naming the image.
        with contextlib.suppress(OSError):
            write_failure(dataset.output_dir, FailureRecord(key, None, error))

    finished = [r for r in summary.results if r.status != "failed"]
    for result in finished:
        if result.record.prompt_truncated:
            context.log.warning(
                f"{result.task.key}: prompt longer than the text encoder reads; only its start was used"
            )
        if result.record.quality_failure and result.status != "reused":
            context.log.warning(f"{result.task.key}: kept although it {result.record.quality_failure}")
    failures = {r.task.key: r.error for r in summary.with_status("failed")} | missing | unplanned
    context.instance.add_run_tags(context.run.run_id, run_figures(summary, failures))
    if failures:
        images = {t.key for t in tasks} | set(missing) | set(unplanned)
        lines = [f"- {e}" if k in unplanned else f"- {k}: {e}" for k, e in failures.items()]  # those name their image
        kept = f"; the {len(finished)} finished are saved and recorded, and a rerun reuses them" if finished else ""
        raise dg.Failure(description=f"{len(failures)} of {len(images)} images failed{kept}:\n" + "\n".join(lines))
