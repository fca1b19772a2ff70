"""Issue 38: quality gates on each result, re-rolls with the next seed, and what records, report and Dagster show."""

import dataclasses
import logging
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch
import yaml
from dagster._core.definitions.partitions.context import partition_loading_context
from PIL import Image
from safetensors.torch import load_file, save_file

from random_diffusion_dagster.defs.metadata import QUALITY_CHECK
from random_diffusion_dagster.defs.out_of_date import current_planner, out_of_date
from random_diffusion_dagster.defs.partitions import images_partitions
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.engine.catalog import CatalogError, load_catalog, parse_catalog
from random_diffusion_dagster.engine.freshness import MeasuredRates, Planned
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.pipelines import PipelineCache
from random_diffusion_dagster.engine.plan import Planner
from random_diffusion_dagster.engine.quality import QualityGates, attempt_seed
from random_diffusion_dagster.engine.report import build_report, contact_sheet
from random_diffusion_dagster.engine.results import read_record
from random_diffusion_dagster.engine.runner import run_tasks
from random_diffusion_dagster.runtime.cli import _print_gate_failures

from helpers import FAST_DEFAULTS, make_image, result_file, source_paths, write_catalog
from test_assets import _diffuse_all, _materialize, _partition_metadata


@pytest.fixture
def source(tmp_path) -> Image.Image:
    return Image.open(make_image(tmp_path / "source.png", size=(64, 48))).convert("RGB")


def test_each_gate_fails_its_crafted_output_and_passes_the_others(source):
    """A black square, the source itself and noise, each judged by every gate on."""
    gates = QualityGates(not_blank=True, min_change=0.02, max_change=0.8, prompt_not_truncated=True)
    black = Image.new("RGB", source.size)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    shifted = Image.fromarray(np.clip(np.asarray(source, dtype=np.int16) + 40, 0, 255).astype(np.uint8))

    assert set(gates.judge(black, source, False)["failed"]) == {"not_blank", "max_change"}
    assert gates.judge(black, source, False)["contrast"] == 0
    copy = gates.judge(source, source, False)
    assert set(copy["failed"]) == {"min_change"} and copy["change"] == 0
    assert set(gates.judge(noise, source, False)["failed"]) == {"max_change"}
    assert gates.judge(shifted, source, False)["failed"] == {}  # changed, not blank, keeps the picture
    assert set(gates.judge(shifted, source, True)["failed"]) == {"prompt_not_truncated"}
    off = QualityGates(not_blank=False, min_change=None, max_change=None)
    assert all(off.judge(image, source, True)["failed"] == {} for image in (black, source, noise))


def test_a_truncated_prompt_is_not_rerolled_and_the_last_try_is_the_last():
    gates = QualityGates(prompt_not_truncated=True, tries=3)
    blank = {"failed": {"not_blank": "blank"}}
    assert gates.reroll_may_help(blank, 0) and gates.reroll_may_help(blank, 1)
    assert not gates.reroll_may_help(blank, 2)  # attempts 0, 1, 2: three tries
    assert not gates.reroll_may_help({"failed": {"prompt_not_truncated": "long"}}, 0)  # the next seed keeps the prompt
    assert [attempt_seed(2**32 - 2, attempt) for attempt in range(3)] == [2**32 - 2, 2**32 - 1, 0]


def test_catalog_gates_come_from_defaults_and_entries_key_by_key(tmp_path):
    document = {
        "defaults": {"quality": {"max_change": 0.8, "tries": 4}},
        "models": [
            {"name": "plain", "hub_id": "org/a"},
            {"name": "own", "hub_id": "org/b", "quality": {"min_change": False, "tries": 2}},
        ],
    }
    plain, own = parse_catalog(document, base_dir=tmp_path)
    assert plain.quality == QualityGates(max_change=0.8, tries=4)
    assert own.quality == QualityGates(min_change=None, max_change=0.8, tries=2)
    default = parse_catalog({"models": [{"name": "d", "hub_id": "org/a"}]}, base_dir=tmp_path)[0]
    assert default.quality == QualityGates()
    # Gates count in the settings only where they differ from the built-in ones: older results stay current.
    assert "quality" not in default.result_settings() and plain.result_settings()["quality"]["max_change"] == 0.8


@pytest.mark.parametrize(
    "quality, message",
    [
        ({"tries": 0}, r"model 'm': `quality.tries` must be a whole number from 1 to 16"),
        ({"tries": 2.5}, r"`quality.tries` must be a whole number"),
        ({"min_change": 1.5}, r"`quality.min_change` must be a number from 0 to 1 .* or false to turn it off"),
        ({"max_change": "0.8"}, r"`quality.max_change` must be a number"),
        ({"min_change": 0.5, "max_change": 0.3}, r"min_change` 0.5 is not below `quality.max_change` 0.3"),
        ({"not_blank": "yes"}, r"`quality.not_blank` must be true or false"),
        ({"blank": True}, r"`quality` has unknown keys \['blank'\]; the gates are \['not_blank'"),
        ([0.1], r"`quality` must be a mapping of gates"),
    ],
)
def test_bad_gates_are_refused_naming_the_entry_and_the_fix(tmp_path, quality, message):
    with pytest.raises(CatalogError, match=message):
        parse_catalog({"models": [{"name": "m", "hub_id": "org/a", "quality": quality}]}, base_dir=tmp_path)


def test_bad_default_gates_are_refused_naming_the_defaults(tmp_path):
    with pytest.raises(CatalogError, match=r"defaults: `quality.tries` must be"):
        parse_catalog({"defaults": {"quality": {"tries": 99}}, "models": [{"name": "m", "hub_id": "o/a"}]}, tmp_path)


def strict_safety_checker_model(models_dir: Path, target: Path, threshold: float = -0.12) -> Path:
    """tiny-sd15 whose real diffusers safety checker flags some of what it sees, and so blacks it out.

    The checker flags an image whose CLIP embedding's cosine with a concept embedding is above that concept's
    threshold; the demo's thresholds are 1 (never), these -0.12: this model's results on the project's images score
    -0.125 to -0.095, so some seeds come out black and others not.
    """
    shutil.copytree(models_dir / "tiny-sd15", target)
    weights_file = target / "safety_checker" / "model.safetensors"
    weights = load_file(weights_file)
    weights["concept_embeds_weights"] = torch.full_like(weights["concept_embeds_weights"], threshold)
    save_file(weights, weights_file, metadata={"format": "pt"})
    return target


def strict_catalog(project: dict, models_dir: Path, tries: int) -> dict:
    """The project with one model whose safety checker blacks out some results, and `tries` attempts per result.

    With these images and seeds every first attempt comes out black; the re-rolls pass at attempts 2, 3 and 6.
    """
    model = strict_safety_checker_model(models_dir, Path(project["models_file"]).parent / "tiny-sd15-strict")
    document = {
        "defaults": {**FAST_DEFAULTS, "safety_checker": True, "quality": {"tries": tries}},
        "models": [{"name": "strict", "path": str(model)}],
    }
    Path(project["models_file"]).write_text(yaml.safe_dump(document))
    return project


def _run(project, prompts=("a red fox", "an ice castle", "the sea at night")):
    planner = Planner(list(prompts), load_catalog(project["models_file"]), 0, project["output_dir"])
    tasks, unplanned = planner.plan(scan_folder(project["images_dir"]))
    assert not unplanned
    return tasks, run_tasks(tasks, PipelineCache(device="cpu"), batch_size=4, log=lambda line: None)


def test_black_images_from_the_safety_checker_are_rerolled_with_the_next_seed_until_they_pass(project, models_dir):
    strict_project = strict_catalog(project, models_dir, tries=6)
    tasks, summary = _run(strict_project)
    records = {r.task.key: read_record(r.task.output_path) for r in summary.results}
    assert all(r.status == "generated" for r in summary.results)
    assert sorted(record.attempt for record in records.values()) == [1, 2, 5]  # the black first attempts re-rolled
    drawn = {task.key: task.seed for task in tasks}
    for key, record in records.items():
        attempts = record.quality["attempts"]
        assert len(attempts) == record.attempt + 1  # every attempt is in the record
        assert [a["seed"] for a in attempts] == [attempt_seed(drawn[key], n) for n in range(len(attempts))]
        assert record.seed == attempts[-1]["seed"] and f"Seed: {record.seed}," in _parameters(strict_project, key)
        for failed in attempts[:-1]:  # each earlier attempt was the checker's black square
            assert failed["contrast"] == 0 and set(failed["failed"]) >= {"not_blank"}
    assert all(record.quality["passed"] and not record.quality["attempts"][-1]["failed"] for record in records.values())
    for record in records.values():  # the kept picture is the passing attempt's, not black
        with Image.open(Path(strict_project["output_dir"]) / record.output_file) as image:
            assert np.asarray(image.convert("L")).std() > 1

    again = {r.task.key: r for r in _run(strict_project)[1].results}
    assert all(result.status == "reused" for result in again.values())  # kept attempts are reused, not redone
    assert {key: result.record.attempt for key, result in again.items()} == {k: r.attempt for k, r in records.items()}


def test_a_gate_that_never_passes_stops_after_its_tries_keeps_the_last_and_the_report_lists_it(
    project, models_dir, capsys
):
    """min_change 0.99: the random-weight model's results (change ~0.9) are all "too close to the source"."""
    write_catalog(
        Path(project["models_file"]), models_dir, names=("tiny-sd15",), quality={"min_change": 0.99, "tries": 2}
    )
    for name, colour in (("orange.png", (220, 140, 20)), ("grey.png", (90, 90, 90))):  # red.png's size: one batch
        make_image(Path(project["images_dir"]) / name, color=colour)
    tasks, summary = _run(project)
    assert all(r.status == "generated" for r in summary.results)  # kept, not failed: the file is written
    assert sorted(summary.batches) == [1, 1, 1, 1, 3, 3]  # the three same-size images' second attempts batched too
    for result in summary.results:
        record = read_record(result.task.output_path)
        assert record.attempt == 1 and len(record.quality["attempts"]) == 2
        assert record.quality["passed"] is False
        assert record.quality_failure.startswith("failed min_change on all 2 attempt(s); last: too close to the source")
    report = build_report(project["output_dir"], source_paths(project["images_dir"]), project["images_dir"])
    assert sorted(report.quality_failures["key"]) == sorted(task.key for task in tasks)
    assert set(report.quality_failures["attempts"]) == {2}
    assert report.summary.set_index("model").loc["tiny-sd15", "gate_failures"] == 5
    assert report.failure_count == 0  # a result exists for every image: a gate failure is not a missing result
    # `random-diffusion plan` lists them, with how to draw one anew (a plain run keeps them: they are current).
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("images", sorted({task.key for task in tasks}))
        dataset = DatasetResource(**project)
        found = out_of_date(instance, dataset, current_planner(instance, dataset))
    assert sorted(found.gate_failures) == sorted(task.key for task in tasks)
    assert all(why.startswith("failed min_change on all 2 attempt(s)") for why in found.gate_failures.values())
    _print_gate_failures(found.gate_failures, shown=1)
    printed = capsys.readouterr().out.splitlines()
    shown = "Kept although they fail their quality gates: 5 images (`random-diffusion run --reroll KEY` draws one anew"
    assert printed[0].startswith(shown)
    assert printed[1].startswith("  ") and printed[2] == "  ...and 4 more"
    # What redoing them will cost counts their two attempts each (plan, the check and the edited file's figure).
    records = [read_record(result.task.output_path) for result in summary.results]
    with_tries, kept_only = MeasuredRates(), MeasuredRates()
    with_tries.add(records)
    kept_only.add([dataclasses.replace(r, quality=None) for r in records])
    planned = [Planned(r.model, 1000 * int(r.num_inference_steps * r.strength)) for r in records]  # seconds, not tenths
    doubled, single = with_tries.estimate(planned, 1).seconds, kept_only.estimate(planned, 1).seconds
    assert single > 10 and doubled == pytest.approx(2 * single, rel=0.01)
    record, path = report.records[0], result_file(project["images_dir"], project["output_dir"], report.records[0].key)
    marked = np.asarray(contact_sheet([(record, path)], project["images_dir"]))
    unmarked = np.asarray(contact_sheet([(dataclasses.replace(record, quality=None), path)], project["images_dir"]))
    assert (marked != unmarked).any(axis=2)[:, 2 * 128 + 20 :].sum() > 100  # its caption says it failed its gates


def test_max_change_fails_near_noise_results_and_tries_1_judges_without_rerolling(project, models_dir):
    """The random-weight model's results are close to noise (change ~0.9): max_change 0.5 fails every one."""
    write_catalog(
        Path(project["models_file"]), models_dir, names=("tiny-sd15",), quality={"max_change": 0.5, "tries": 1}
    )
    _tasks, summary = _run(project)
    assert summary.batches == [1, 1, 1]  # three sizes, no second attempt
    for result in summary.results:
        quality = read_record(result.task.output_path).quality
        assert [set(a["failed"]) for a in quality["attempts"]] == [{"max_change"}]
        assert quality["attempts"][0]["change"] > 0.5 and quality["gates"]["max_change"] == 0.5


def test_a_truncated_prompt_fails_its_gate_at_once(project, models_dir):
    write_catalog(
        Path(project["models_file"]), models_dir, names=("tiny-sd15",), quality={"prompt_not_truncated": True}
    )
    _tasks, summary = _run(project, prompts=(" ".join(["word"] * 100),))
    for result in summary.results:
        record = read_record(result.task.output_path)
        assert record.prompt_truncated and record.attempt == 0  # another seed keeps the prompt: no re-roll
        assert "prompt_not_truncated" in record.quality["attempts"][0]["failed"]


def _parameters(project, key) -> str:
    with Image.open(result_file(project["images_dir"], project["output_dir"], key)) as image:
        return image.info["parameters"]


def test_a_ranged_dagster_run_records_each_partitions_gates_as_its_own_check_result(instance, project, models_dir):
    """tries 4: two images pass after re-rolls, one stays black all four times (it would pass at the sixth)."""
    strict_catalog(project, models_dir, tries=4)
    keys, result = _diffuse_all(instance, project)
    assert result.success  # a result kept failing its gates does not fail the run: its check says so, and a warning
    logged = [entry.user_message for entry in instance.all_logs(result.run_id) if entry.level == logging.WARNING]
    assert [line for line in logged if "kept although" in line] == [
        "blue.webp: kept although it failed not_blank on all 4 attempt(s); last: blank or one colour (contrast 0.000, "
        "below 0.02)"
    ], logged
    check = dg.AssetCheckKey(dg.AssetKey("diffused_image"), QUALITY_CHECK)
    statuses = _check_statuses(instance, check)
    assert statuses == {"SUCCEEDED": ["green_photo.jpg-13be0805", "red.png"], "FAILED": ["blue.webp"]}

    failed = _check_executions(instance, check, "blue.webp")[0].evaluation
    assert not failed.passed and failed.partition == "blue.webp"
    assert failed.description.startswith("variant 0: failed not_blank on all 4 attempt(s)")
    rows = failed.metadata["attempt_table"].value.records
    assert [row.data["attempt"] for row in rows] == [1, 2, 3, 4] and [row.data["kept"] for row in rows][-1]
    assert all(row.data["failed_gates"] == "not_blank" and row.data["contrast"] == 0 for row in rows)
    passed = _check_executions(instance, check, "red.png")[0].evaluation
    seed = read_record(result_file(project["images_dir"], project["output_dir"], "red.png")).seed
    assert passed.passed and passed.description == f"passed on attempt 3 of 4 (seed {seed})"
    metadata = _partition_metadata(instance, "red.png")
    assert metadata["attempt"] == "3" and metadata["quality_gates"].startswith("passed on attempt 3 of 4")
    attempts = [(row.data["attempt"], row.data["failed_gates"]) for row in metadata["quality_attempts"].records]
    assert attempts == [(1, "not_blank"), (2, "not_blank"), (3, "none")]  # the materialization keeps every attempt

    report = _materialize(instance, project, ["diffusion_report"]).asset_materializations_for_node("diffusion_report")
    listed = report[0].metadata["failed_quality_gates"].value.records
    assert [(row.data["key"], row.data["attempts"]) for row in listed] == [("blue.webp", 4)]

    # The check's result aims at the partition's materialization: a rerun that reuses the results judges anew.
    keys, rerun = _diffuse_all(instance, project)
    assert rerun.success and len(_check_executions(instance, check, "red.png")) == 2
    assert _check_statuses(instance, check)["FAILED"] == ["blue.webp"]


def _check_statuses(instance, check) -> dict[str, list[str]]:
    """Each status's partitions as the UI reads them (AssetCheckState, behind GraphQL's partitionStatuses)."""
    with partition_loading_context(dynamic_partitions_store=instance):
        (state,) = instance.event_log_storage.get_asset_check_state([(check, images_partitions)]).values()
        subsets = state.subsets.items()
        return {
            status.value: sorted(subset.subset_value.get_partition_keys()) for status, subset in subsets if subset.size
        }


def _check_executions(instance, check, partition):
    return [
        execution
        for execution in instance.event_log_storage.get_asset_check_execution_history(check, limit=20)
        if execution.partition == partition and execution.evaluation is not None
    ]


CHECK_STATUS_QUERY = """
{
  assetNodeOrError(assetKey: {path: ["diffused_image"]}) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions inProgressPartitions }
            }
          }
        }
      }
    }
  }
}"""


PARTITION_DETAIL_QUERY = """
query($partition: String!) {
  assetCheckExecutions(
    assetKey: {path: ["diffused_image"]}, checkName: "quality_gates", partition: $partition, limit: 10
  ) { status evaluation { success partition description } }
}"""


def test_the_ui_reads_each_partitions_quality_check_over_graphql(instance, project, models_dir, tmp_path):
    """The webserver's GraphQL, on the project's own code location, as the asset's Checks tab asks for it."""
    from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

    strict_catalog(project, models_dir, tries=4)
    _diffuse_all(instance, project)
    location = tmp_path / "location.py"
    location.write_text("from random_diffusion_dagster.definitions import defs\n")
    with define_out_of_process_context(str(location), "defs", instance) as context, context:  # as a request does
        result = execute_dagster_graphql(context, CHECK_STATUS_QUERY)
        red = execute_dagster_graphql(context, PARTITION_DETAIL_QUERY, {"partition": "red.png"})
    assert not result.errors, result.errors
    checks = result.data["assetNodeOrError"]["assetChecksOrError"]["checks"]
    statuses = next(check["partitionStatuses"] for check in checks if check["name"] == QUALITY_CHECK)
    assert sorted(statuses["succeededPartitions"]) == ["green_photo.jpg-13be0805", "red.png"]
    assert statuses["failedPartitions"] == ["blue.webp"] and statuses["inProgressPartitions"] == []
    (execution,) = red.data["assetCheckExecutions"]  # the partition's own page: its result and why
    assert execution["evaluation"]["success"] and execution["evaluation"]["partition"] == "red.png"
    assert execution["evaluation"]["description"].startswith("passed on attempt 3 of 4")
