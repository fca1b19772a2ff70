"""Which images need work: a result that is missing, or stale against today's inputs.

Cheap enough for a schedule tick: a stat per source and a PNG header read per result,
with no image decoding; only sources whose size or mtime moved are hashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .images import SourceFile
from .pairs import PairError
from .plan import ImageTask, Planner, SourceSnapshot, snapshot_source
from .prompts import PromptListError
from .results import ResultListing, ResultRecord, read_result

# Why a result must be made again, as the asset check and the catch-up log count them.
NO_RESULT = "no result on disk"
SOURCE_CHANGED = "source image changed"
PROMPT_CHANGED = "prompt changed"
CATALOG_CHANGED = "model catalog changed"
SEED_CHANGED = "run seed changed"
PAIR_CHANGED = "mask or control image changed"  # engine/pairs.py: a pair's bytes, its model and prompt the same
UNPLANNABLE = "cannot be planned"  # followed by why (a word a template needs and the image lacks)


@dataclass(frozen=True)
class Planned:
    """A result to make: its model and denoising steps, or None for each where they are known only when it runs
    (no result to redraw from, or a replaced source)."""

    model: str | None = None
    steps: int | None = None


@dataclass(frozen=True)
class Judgement:
    """One image judged against today's inputs."""

    reason: str | None  # why its results must be (re)made; None: current
    to_make: list[Planned]  # each result a run would make now
    made: list[ResultRecord]  # its results on disk: their measured timings give the rates of estimate_seconds
    planned: list[ImageTask] = field(default_factory=list)  # today's draw of each result, where it was planned


def judge(planner: Planner, source: SourceFile, listing: ResultListing | None = None) -> Judgement:
    """Whether this image's results (all `planner.variants` of them) must be (re)made, why, and with which models.
    `listing`, for passes over many images, answers "no result" from a listing of the output folder."""
    if listing and not listing.may_have_result(source.partition_key, source.relative_path, planner.variants):
        return Judgement(NO_RESULT, [Planned()] * planner.variants, [])
    found = [
        read_result(planner.output_dir, source.partition_key, source.relative_path, variant)
        for variant in range(planner.variants)
    ]
    made = [record for record in found if record is not None]
    if not made:
        return Judgement(NO_RESULT, [Planned()] * len(found), made)
    first = made[0]
    snapshot = SourceSnapshot(first.source_sha256, source.size, source.mtime_ns)
    if (first.source_bytes, first.source_mtime_ns) != (source.size, source.mtime_ns):
        snapshot = snapshot_source(source.path)  # touched or replaced: only the content can tell
        if snapshot.sha256 != first.source_sha256:
            return Judgement(SOURCE_CHANGED, [Planned()] * len(found), made)
    try:
        words = planner.words_for(source)
        tasks = [
            planner.task(
                source.partition_key, source.path, snapshot, words, source.relative_path, variant, r.roll if r else 0
            )
            for variant, r in enumerate(found)
        ]
    except (PromptListError, PairError) as exc:  # its run names the missing word or pair for this image
        return Judgement(f"{UNPLANNABLE}: {exc}", [], made)
    changed = [
        (task, r) for task, r in zip(tasks, found, strict=True) if r is None or task.fingerprint != r.fingerprint
    ]
    if not changed:
        return Judgement(None, [], made, tasks)
    stale = [(task, record) for task, record in changed if record is not None]
    to_make = [Planned(task.model.name, task.model.denoising_steps) for task, _ in changed]
    return Judgement(_what_changed(*stale[0]) if stale else NO_RESULT, to_make, made, tasks)


@dataclass(frozen=True)
class Estimate:
    """What making some results will take, at the rates measured on the results already made."""

    results: int
    seconds: float | None  # None: nothing made yet, so nothing measured
    unmeasured: list[str]  # models to use that made nothing yet: counted at the mean of all

    def words(self) -> str:
        """`about 12 min of GPU time for 40 results` (or why there is no figure)."""
        if self.seconds is None:
            return f"{_results(self.results)}; no figure yet: no result has been made to measure"
        minutes = self.seconds / 60
        figure = (
            f"about {minutes:.0f} min"
            if minutes >= 2
            else f"about {self.seconds:.0f} s"
            if self.seconds >= 10
            else f"about {self.seconds:.1f} s"
            if self.seconds >= 0.05
            else "under 0.1 s"  # tiny models on a CPU: not "about 0.0 s"
        )
        guessed = f" ({', '.join(self.unmeasured)} not measured yet: counted at the mean)" if self.unmeasured else ""
        return f"{figure} of GPU time for {_results(self.results)}{guessed}"


def _results(count: int) -> str:
    return f"{count} result{'' if count == 1 else 's'}"


class MeasuredRates:
    """Inference seconds per denoising step by model, from the results' records: img2img time grows with
    int(steps x strength), so an edit of either is priced right. Model loads are left out: a big run shares them
    among its images (and the first run's were colder)."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}  # model -> [inference seconds, denoising steps, results, attempts]

    def add(self, records: list[ResultRecord]) -> None:
        for record in records:
            total = self.totals.setdefault(record.model, [0.0, 0, 0, 0])
            total[0] += record.inference_seconds  # the kept attempt's
            total[1] += max(1, int(record.num_inference_steps * record.strength))
            total[2] += 1
            total[3] += len(record.quality["attempts"]) if record.quality else 1  # quality gates' re-rolls

    def estimate(self, to_make: list[Planned], expected_steps: float) -> Estimate:
        """The time to make these results; a model not measured yet counts at the mean rate of all, a result whose
        model is known only when it runs at `expected_steps` (the catalog's mean)."""
        if not self.totals:
            return Estimate(len(to_make), None, [])
        # Seconds per denoising step of a result, its re-rolls included: a model whose results needed two attempts
        # on average costs twice its step time.
        per_step = {model: seconds / steps * tries / n for model, (seconds, steps, n, tries) in self.totals.items()}
        seconds_all, steps_all, n_all, tries_all = (sum(column) for column in zip(*self.totals.values(), strict=True))
        mean_step = seconds_all / steps_all * tries_all / n_all
        unmeasured = sorted({p.model for p in to_make if p.model is not None and p.model not in per_step})
        seconds = sum(per_step.get(p.model, mean_step) * (p.steps or expected_steps) for p in to_make)
        return Estimate(len(to_make), round(seconds, 1), unmeasured)


def _what_changed(task: ImageTask, record: ResultRecord) -> str:
    """The first input that differs, in the order the draw uses them: a prompts edit redraws the prompt, a catalog
    edit the model or its settings, a new run seed everything."""
    if task.run_seed != record.run_seed:
        return SEED_CHANGED
    if task.prompt != record.prompt or task.negative_prompt != record.negative_prompt:
        return PROMPT_CHANGED
    # The same roles (a pair now found or now missing is a role run without, `if_unpaired: run_without`, on one
    # side), other files: an edited, added or removed mask or control image. Other roles: the entry's settings.
    roles = {pair.role for pair in task.pairs} | set(task.unpaired)
    read = {pair.role: pair.sha256 for pair in task.pairs if not pair.computed}
    recorded = {row["role"]: row["sha256"] for row in record.pairs or [] if "sha256" in row}
    same_roles = roles == {row["role"] for row in record.pairs or []}
    if task.model.name == record.model and same_roles and read != recorded:
        return PAIR_CHANGED
    return CATALOG_CHANGED  # same prompt: the model drawn, or its settings (steps, strength, adapters...)
