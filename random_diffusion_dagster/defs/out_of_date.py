"""Which images are out of date, and the runs that redo them: one rule for the `results_up_to_date` check, the
catch-up schedule and the catch-up on change (RANDOM_DIFFUSION_CATCH_UP)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dagster as dg

from ..engine.freshness import (
    CATALOG_CHANGED,
    PROMPT_CHANGED,
    UNPLANNABLE,
    Estimate,
    Judgement,
    MeasuredRates,
    Planned,
    judge,
)
from ..engine.granularity import Granularity
from ..engine.images import SourceFile
from ..engine.plan import Planner
from ..engine.results import ResultListing
from .asset_keys import DIFFUSED_IMAGE_KEY, MODEL_CATALOG_KEY, PROMPT_LIST_KEY
from .draws import DRAWN_FROM_TAGS, drawn_from, latest_materializations
from .partitions import images_partitions
from .prompt_sets import check_templates, current_prompt_set
from .resources import DatasetResource
from .run_ranges import partition_ranges

NOT_RECORDED = "on disk but not recorded in Dagster"  # a run reuses the file and records it
ESTIMATE_TAG = "random_diffusion/estimated_gpu_seconds"  # on catch-up runs: what the edit said it would cost
INPUT_DATA_VERSION_TAG_PREFIX = "dagster/input_data_version"  # dagster._core.definitions.data_version


@dataclass(frozen=True)
class OutOfDate:
    """Today's partitions, and why each image that needs work needs it (engine.freshness's reasons). With image
    partitions an image's key is its partition's; a folder or shard partition runs when one of its images needs to."""

    keys: list[str]  # every current partition, in insertion order
    reasons: dict[str, str]  # image key -> why, for each image that needs a run
    recorded: frozenset[str]  # the partitions Dagster has recorded as materialized
    to_make: dict[str, list[Planned]]  # image key -> each result its run would make (model and steps, where known)
    rates: MeasuredRates  # measured on the results read
    expected_steps: float  # denoising steps of a result whose model is drawn only when it runs: the catalog's mean
    judged: dict[str, Judgement]  # image key -> its judgement, for each image read (draws.record_judged_draws)
    granularity: Granularity
    # How many images the partitions hold: those read in a whole pass (a partition left from another granularity,
    # before the sensor replaces it, holds none); in a pass over some (`only`) one per image partition, and None for
    # folders or shards, whose other images were not listed.
    images: int | None

    def estimate(self, keys: Iterable[str] | None = None) -> Estimate:
        """What redoing these images (default: all that need work) will take, at the measured rates."""
        chosen = self.reasons if keys is None else keys
        to_make = [planned for key in chosen for planned in self.to_make.get(key, [])]
        return self.rates.estimate(to_make, self.expected_steps)

    @property
    def gate_failures(self) -> dict[str, str]:
        """key -> why a result of it was kept although it fails its model's quality gates."""
        failing = {key: [r.quality_failure for r in j.made if r.quality_failure] for key, j in self.judged.items()}
        return {key: reasons[0] for key, reasons in failing.items() if reasons}

    def made_before(self) -> dict[str, str]:
        """The images of recorded partitions among them: results Dagster shows as made that are stale or gone
        (never-made ones are Dagster's own "missing")."""
        partition_of = self.granularity.partition_of
        return {key: why for key, why in self.reasons.items() if partition_of(key) in self.recorded}

    def run_requests(self, run_key: Callable[[str], str], job_name: str | None = None) -> list[dg.RunRequest]:
        """Ranged `diffuse_images` runs covering the partitions that need work (`run_key` of each range's first
        key), each tagged with its estimated GPU time; a current one inside a range is reused, not remade (bridging
        it makes fewer runs)."""
        requests = []
        images = self.granularity.group(self.reasons)  # partition -> its images that need work
        for span in partition_ranges(self.keys, images, bridge_gaps=True):
            seconds = self.estimate(key for partition in span.keys for key in images.get(partition, [])).seconds
            tags = span.tags | ({ESTIMATE_TAG: f"{seconds:.1f}"} if seconds is not None else {})
            requests.append(dg.RunRequest(run_key=run_key(span.first), job_name=job_name, tags=tags))
        return requests


def summary(reasons: dict[str, str], total: int | None) -> str:
    """`3 of 5 images are out of date (prompt changed: 2, model catalog changed: 1)` (without `of 5` where the total
    is unknown)."""
    why = ", ".join(f"{reason}: {count}" for reason, count in reason_counts(reasons))
    of = "" if total is None else f" of {total}"
    noun = "image is" if len(reasons) == 1 and total is None else "images are"
    return f"{len(reasons)}{of} {noun} out of date" + (f" ({why})" if why else "")


def reason_counts(reasons: dict[str, str]) -> list[tuple[str, int]]:
    """How many images give each reason, most first; an image that cannot be planned counts under UNPLANNABLE
    (its own message is listed with its key)."""
    return Counter(UNPLANNABLE if why.startswith(UNPLANNABLE) else why for why in reasons.values()).most_common()


def current_planner(instance: dg.DagsterInstance, dataset: DatasetResource) -> Planner:
    """The planner a run would use now: the current prompt list (a submitted one stays current) and catalog. A
    prompt list or catalog a run would refuse raises its one-line error (a ValueError) here, for the whole lot."""
    prompt_set = current_prompt_set(instance, dataset)
    check_templates(prompt_set, dataset)
    return dataset.planner(prompt_set.prompts, dataset.catalog())


def out_of_date(
    instance: dg.DagsterInstance,
    dataset: DatasetResource,
    planner: Planner,
    only: Iterable[str] | None = None,
    log=None,
    files: list[SourceFile] | None = None,
) -> OutOfDate:
    """Why each image of the partitions (of `only`, else all) must be made again against today's prompts, catalog,
    seed and sources: a stat per source, a PNG header read per result. A source that vanished since the scan is
    skipped with a warning on `log`: the sensor removes its partition. `files`: the partitions' files where the
    caller has them already (dataset.files_for of the same partitions), so the folder is not listed twice."""
    partition_of = dataset.granularity.partition_of
    keys = instance.get_dynamic_partitions(images_partitions.name)
    if only is not None:
        only = set(only)
    wanted = keys if only is None else [key for key in keys if key in only]
    if files is None:
        files, _gone = dataset.files_for(wanted)
    recorded = instance.get_materialized_partitions(DIFFUSED_IMAGE_KEY)
    reasons, to_make, judgements, rates = {}, {}, {}, MeasuredRates()
    listing = ResultListing.of(planner.output_dir)
    for source in files:
        try:
            judged = judge(planner, source, listing)
        except OSError as exc:
            if log is not None:
                log.warning(f"Skipping {source.name}: {exc}")
            continue
        rates.add(judged.made)
        judgements[source.partition_key] = judged
        reason = judged.reason
        if reason is None and partition_of(source.partition_key) not in recorded:
            reason = NOT_RECORDED
        if reason:
            reasons[source.partition_key] = reason
            to_make[source.partition_key] = judged.to_make
    redrawn = [key for key, why in reasons.items() if why in REDRAWN and partition_of(key) in recorded]
    for key, why in _which_input_changed(instance, planner, redrawn, partition_of).items():
        reasons[key] = why
    catalog = planner.catalog
    expected = sum(m.weight * m.denoising_steps for m in catalog) / sum(m.weight for m in catalog)
    images = len(judgements) if only is None else len(keys) if dataset.granularity.per_image else None
    return OutOfDate(
        keys, reasons, frozenset(recorded), to_make, rates, expected, judgements, dataset.granularity, images
    )


# engine.freshness judges from the result alone; a redraw after a prompts edit may change the model drawn too.
REDRAWN = {PROMPT_CHANGED, CATALOG_CHANGED}
INPUT_VERSIONS = {PROMPT_CHANGED: PROMPT_LIST_KEY, CATALOG_CHANGED: MODEL_CATALOG_KEY}  # why -> what changed


def _which_input_changed(
    instance: dg.DagsterInstance, planner: Planner, keys: list[str], partition_of: Callable[[str], str]
) -> dict[str, str]:
    """For results redrawn since they were made (image keys): whether the prompt list or the catalog changed, read
    from the versions their partitions' latest materializations were drawn from (draws.DRAWN_FROM_TAGS; Dagster's
    provenance tags on results made before image_draw existed); a query for their events, one per 10,000 records."""
    if not keys:
        return {}
    partitions = sorted({partition_of(key) for key in keys})
    records = latest_materializations(instance, DIFFUSED_IMAGE_KEY, partitions)
    now = drawn_from(planner)
    changed = {}
    for partition, record in records.items():
        tags = record.asset_materialization.tags or {}
        for why, asset in INPUT_VERSIONS.items():
            made_from = tags.get(DRAWN_FROM_TAGS[asset], tags.get(f"{INPUT_DATA_VERSION_TAG_PREFIX}/{asset.path[-1]}"))
            if made_from is not None and made_from != now[asset]:
                changed[partition] = why
                break
    return {key: changed[partition_of(key)] for key in keys if partition_of(key) in changed}
