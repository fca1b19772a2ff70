"""Which prompt list is current: the rule a user can predict.

A submitted prompt list (`random-diffusion submit --prompt ...`, `run --prompt ...`, or
`prompt_list` run config) becomes the current prompt list until the prompts file changes
or another list is submitted. Runs without prompts of their own (the sensor, the catch-up
schedule, backfills, `random-diffusion run`) keep it, so the images made from it stay.
The `prompt_list` asset records each list with where it came from and who submitted it.
"""

from __future__ import annotations

import dataclasses
import getpass
import socket
from dataclasses import dataclass

import dagster as dg

from ..engine.plan import prompts_version
from ..engine.prompts import PromptListError, require_prompts
from ..engine.templates import PromptTemplates
from .resources import DatasetResource

SUBMITTED_BY_TAG = "random_diffusion/submitted_by"
PROMPT_LIST_KEY = dg.AssetKey("prompt_list")


def submission_tags() -> dict[str, str]:
    """Run tags naming who submitted a prompt list (shown on the run and on `prompt_list`)."""
    return {SUBMITTED_BY_TAG: f"{getpass.getuser()}@{socket.gethostname()}"}


@dataclass(frozen=True)
class PromptSet:
    prompts: list[str]
    source: str  # "file" or "submitted"
    file_prompts_version: str | None  # version of the prompts file's list when this list became current
    submitted_by: str | None = None
    submitted_in_run: str | None = None

    @property
    def version(self) -> str:
        return prompts_version(self.prompts)


def current_prompt_set(
    instance: dg.DagsterInstance,
    dataset: DatasetResource,
    submitted: list[str] | None = None,
    submitted_by: str | None = None,
    run_id: str | None = None,
    use_prompts_file: bool = False,
) -> PromptSet:
    """The submitted list if given; else the last submitted one while the file is unchanged; else the file."""
    if submitted is not None:
        try:
            file_prompts_version = prompts_version(dataset.prompts())
        except PromptListError:
            file_prompts_version = None  # a submission does not need a usable prompts file
        prompts = require_prompts(submitted, source="run config `prompt_list`")
        return PromptSet(prompts, "submitted", file_prompts_version, submitted_by, run_id)
    latest = None if use_prompts_file else latest_prompt_set(instance)
    try:
        file_prompts = dataset.prompts()
    except PromptListError:
        if latest is not None and latest.source == "submitted" and latest.file_prompts_version is None:
            return latest  # submitted while the file was unusable, and it still is: the file has not changed
        raise
    file_prompts_version = prompts_version(file_prompts)
    if latest is not None and latest.source == "submitted" and latest.file_prompts_version == file_prompts_version:
        return latest
    return PromptSet(file_prompts, "file", file_prompts_version)


def check_templates(prompt_set: PromptSet, dataset: DatasetResource) -> None:
    """Every line parsed and every wildcard found, so a broken template fails in one message naming the file's line
    (or the submitted prompt), before any image is planned."""
    if prompt_set.source == "file":
        lines = dataset.prompt_lines(prompt_set.prompts)
        PromptTemplates(prompt_set.prompts, dataset.wildcards_dir, dataset.prompts_file, lines)
    else:
        PromptTemplates(prompt_set.prompts, dataset.wildcards_dir, source="run config `prompt_list`")


def latest_prompt_set(instance: dg.DagsterInstance) -> PromptSet | None:
    """The prompt list the last `prompt_list` materialization recorded (read from Dagster, not a local file)."""
    event = instance.get_latest_materialization_event(PROMPT_LIST_KEY)
    if event is None or event.asset_materialization is None:
        return None
    recorded = event.asset_materialization.metadata.get("prompt_set")
    if recorded is None:
        return None
    fields = {f.name for f in dataclasses.fields(PromptSet)}
    return PromptSet(**{k: v for k, v in recorded.value.items() if k in fields})


def prompt_set_metadata(prompt_set: PromptSet) -> dict:
    metadata = {
        "count": len(prompt_set.prompts),
        "source": prompt_set.source,
        "prompts": dg.MetadataValue.md("\n".join(f"1. {p}" for p in prompt_set.prompts)),
        "prompt_set": dg.MetadataValue.json(dataclasses.asdict(prompt_set)),
    }
    if prompt_set.submitted_by:
        metadata["submitted_by"] = prompt_set.submitted_by
    if prompt_set.submitted_in_run:
        metadata["submitted_in_run"] = prompt_set.submitted_in_run
    return metadata
