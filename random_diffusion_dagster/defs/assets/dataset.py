"""`augmented_dataset`: every current result as a Hugging Face ImageFolder dataset (engine/dataset.py)."""

import dagster as dg
from pydantic import Field

from ...engine.captions import Captions
from ...engine.dataset import METADATA_FILE, export_image_folder, split_word_names
from ...engine.freshness import NO_RESULT, Judgement
from ...engine.images import SourceFile
from ...engine.prompts import PromptListError
from ...engine.results import ResultListing, read_failure, read_result, relative_result_path, result_location
from ..asset_keys import DIFFUSED_IMAGE_KEY
from ..metadata import table
from ..out_of_date import NOT_RECORDED, current_planner, out_of_date, reason_counts
from ..partitions import images_partitions
from ..resources import DatasetResource


class AugmentedDatasetConfig(dg.Config):
    include_sources: bool = Field(
        default=False, description="Put each source image beside its results (kind: source), as augmentation wants."
    )


@dg.asset(
    deps=[DIFFUSED_IMAGE_KEY],
    group_name="diffusion",
    kinds={"parquet"},
    description="The results as a dataset: Hugging Face's ImageFolder layout with a metadata.jsonl (label, caption, "
    "prompt, model, seed, ...) that `datasets.load_dataset('imagefolder', data_dir=...)` loads, and manifest.parquet "
    "with the same rows (RANDOM_DIFFUSION_DATASET_DIR).",
)
def augmented_dataset(
    context: dg.AssetExecutionContext, config: AugmentedDatasetConfig, dataset: DatasetResource
) -> dg.MaterializeResult:
    keys = context.instance.get_dynamic_partitions(images_partitions.name)
    results, missing, failed = [], 0, 0
    variants = dataset.result_variants()  # once: it may read the catalog
    files, _gone = dataset.files_for(keys)
    sources = dataset.source_paths(keys, files)
    judged, stale = _judged(context, dataset, files)
    for key, source_path in sources.items():
        # the results its last run failed (all, where it failed before any was planned): what is on disk for them is
        # an older draw's; its other results are current
        failure = read_failure(dataset.output_dir, key)
        left_out = set(failure.variants or range(variants)) if failure else set()
        failed += bool(left_out)
        made = {record.variant: record for record in judged[key].made} if key in judged else None  # read once
        for variant in sorted(set(range(variants)) - left_out):
            record = (
                made.get(variant) if made is not None else read_result(dataset.output_dir, key, source_path, variant)
            )
            if record is None:
                missing += 1
            else:
                results.append((record, result_location(dataset.output_dir, key, source_path, variant)))
    if missing:
        context.log.warning(f"{missing} results of {len(keys)} images are not made yet; the dataset leaves them out.")
    if beyond := _more_variants_on_disk(dataset, sources, variants):
        context.log.warning(
            f"{len(beyond)} images have more results in the output folder than this run's {variants} per image "
            f"(e.g. {beyond[0]}): the dataset has {variants} per image. To export them all, run with the count they "
            "were made with (`random-diffusion run --dataset --variants K`), or keep it in the catalog "
            "(`defaults: {variants: K}`) or RANDOM_DIFFUSION_VARIANTS."
        )
    if failed:
        context.log.warning(
            f"{failed} images failed their last run, in some or all of their results (the report lists why): what is "
            "on disk for those results is out of date, so the dataset leaves them out."
        )
    exported_stale = sum(record.key in stale for record, _location in results)
    if exported_stale:
        exported = {record.key for record, _location in results}
        why = ", ".join(f"{reason}: {n}" for reason, n in reason_counts({k: stale[k] for k in stale if k in exported}))
        context.log.warning(
            f"{exported_stale} exported results are out of date (images: {why}): each row keeps the prompt and model "
            "that made it; redo them first (catch_up_schedule, or `random-diffusion run`) for today's draws."
        )
    rows = export_image_folder(
        results,
        dataset.images_dir,
        dataset.output_dir,
        dataset.dataset_dir,
        config.include_sources,
        _captions_now(context, files),
    )
    if misread := split_word_names(rows):
        context.log.warning(
            f"{len(misread)} of the dataset's files have a folder or file name that `datasets` reads as a split's "
            f"(e.g. {misread[0]}): load_dataset('imagefolder') would split the dataset by those names and leave the "
            "metadata columns out. Rename them, or keep every image under a split folder of the images folder "
            "(train/, test/, validation/), which the dataset then keeps as its splits."
        )
    labels = sorted({row.label for row in rows if row.label})
    context.log.info(f"Wrote {len(rows)} images ({len(labels)} labels) to {dataset.dataset_dir}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(dataset.dataset_dir),
            "images": len(rows),
            "results": len(results),
            "results_missing": missing,
            "images_failed": failed,
            "results_out_of_date": exported_stale,
            "labels": table(
                [{"label": label, "images": sum(r.label == label for r in rows)} for label in labels],
                {"label": "string", "images": "int"},
            ),
            "load_with": dg.MetadataValue.md(
                f"```python\nfrom datasets import load_dataset\n"
                f"load_dataset('imagefolder', data_dir={str(dataset.dataset_dir)!r})\n```\n"
                f"Rows and provenance: `{METADATA_FILE}`, `manifest.parquet`."
            ),
        }
    )


def _more_variants_on_disk(dataset: DatasetResource, sources: dict[str, str | None], variants: int) -> list[str]:
    """The results past this run's count in a local output folder (`cat/001~v1.png` where variants is 1): made by a
    run with more variants, and left out of the dataset unless the count is given again. Not looked for in object
    stores, where it would cost a request per image."""
    listing = ResultListing.of(dataset.output_dir)
    if listing is None:
        return []
    found = []
    for key, source_path in sources.items():
        name = relative_result_path(dataset.output_dir, result_location(dataset.output_dir, key, source_path, variants))
        if listing.may_hold(name) and read_result(dataset.output_dir, key, source_path, variants):
            found.append(name)
    return found


def _captions_now(context: dg.AssetExecutionContext, files: list[SourceFile]) -> dict[str, str | None]:
    """Each source file's caption as it is now, for the dataset's caption column: an edited caption the prompts do not
    read leaves the results current, and training code wants the caption the image has, not the one it had. One that
    cannot be read keeps its record's caption, and the log says why."""
    captions, found = Captions(), {}
    for file in files:
        try:
            found[file.relative_path] = captions.caption_for(file)
        except PromptListError as exc:
            context.log.warning(f"{exc} Its rows keep the caption {file.relative_path}'s results were made with.")
    return found


def _judged(
    context: dg.AssetExecutionContext, dataset: DatasetResource, files: list[SourceFile]
) -> tuple[dict[str, Judgement], dict[str, str]]:
    """(image key -> its judgement, with its results' records as read; image key -> why its results on disk are
    not today's draw: results_up_to_date's rule), for every partition's `files`. Neither where the prompts or catalog
    cannot be read (their runs name the problem): the records are then read one by one."""
    try:
        planner = current_planner(context.instance, dataset)
        found = out_of_date(context.instance, dataset, planner, log=context.log, files=files)
    except (ValueError, OSError) as exc:
        context.log.warning(f"Cannot tell which results are out of date: {exc}")
        return {}, {}
    stale = {key: why for key, why in found.reasons.items() if why not in (NO_RESULT, NOT_RECORDED)}
    return found.judged, stale
