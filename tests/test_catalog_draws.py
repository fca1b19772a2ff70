"""What the catalog draws per result: a strength range, and `defaults: {variants: K}` results per image."""

import hashlib
import random
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from random_diffusion_dagster import settings
from random_diffusion_dagster.defs.assets import augmented_dataset
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.engine.catalog import (
    CatalogError,
    StrengthRange,
    catalog_variants,
    load_catalog,
    parse_catalog,
)
from random_diffusion_dagster.engine.images import scan_images
from random_diffusion_dagster.engine.plan import ImageTask, Planner, SourceSnapshot, catalog_version, choose
from random_diffusion_dagster.engine.results import read_record

from helpers import FAST_DEFAULTS, make_image
from test_assets import ALL_ASSETS, _diffuse_all, _resources


def _catalog_file(path: Path, models_dir: Path | None = None, entry: dict | None = None, **defaults) -> Path:
    model = {"name": "tiny-sd15", "path": str(models_dir / "tiny-sd15") if models_dir else "tiny-sd15"}
    path.write_text(yaml.safe_dump({"defaults": {**FAST_DEFAULTS, **defaults}, "models": [{**model, **(entry or {})}]}))
    return path


def _sha(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()


def _two_models(**defaults):
    """Model b twice as likely as a: the weighted draw (rng.choices), not only rng.choice."""
    document = {"defaults": defaults, "models": [{"name": "a", "path": "a"}, {"name": "b", "path": "b", "weight": 2}]}
    return parse_catalog(document, base_dir=Path("/base"))


# Computed with the code before strength ranges existed (the commit 49776fe): choose() over the same inputs.
OLD_DRAWS = {
    "plain": [
        ("x", "a", 0.75, 3785038416),
        ("x", "b", 0.75, 2078020111),
        ("y", "b", 0.75, 299364805),
        ("z", "a", 0.75, 3022635570),
        ("y", "b", 0.75, 1997135451),
        ("z", "b", 0.75, 495676907),
    ],
    "list": [
        ("x", "a", 0.5, 1888602888),
        ("x", "b", 0.5, 3868721204),
        ("y", "b", 0.3, 3889416147),
        ("z", "a", 0.7, 3953352183),
        ("y", "b", 0.5, 457286951),
        ("z", "b", 0.7, 3474290616),
    ],
}
OLD_VERSIONS = {"plain": "46d602eac5a116f7", "list": "9e453fe1953ef442"}
OLD_LIST_FINGERPRINT = "910cbc4668901035e07741003cd664c449a8eb3be8f6d0a5644252c9c39dd931"


@pytest.mark.parametrize("kind, defaults", [("plain", {}), ("list", {"strengths": [0.3, 0.5, 0.7]})])
def test_catalogs_without_a_range_draw_exactly_as_before(kind, defaults):
    models = _two_models(**defaults)
    drawn = []
    for number in range(6):
        prompt, model, seed = choose(_sha(number), 7, ["x", "y", "z"], models, variant=number % 3, roll=number // 4)
        assert model.strengths is None  # the task's model says the strength its result used
        drawn.append((prompt, model.name, model.strength, seed))
    assert drawn == OLD_DRAWS[kind]
    assert catalog_version(models) == OLD_VERSIONS[kind]  # existing results' catalog stays current


def test_a_list_results_fingerprint_is_unchanged():
    models = parse_catalog(
        {"defaults": {"strengths": [0.3, 0.5, 0.7]}, "models": [{"name": "a", "path": "a"}]}, base_dir=Path("/base")
    )
    prompt, model, seed = choose(_sha(0), 7, ["x"], models, variant=1)
    task = ImageTask(
        key="k",
        source_path="/s",
        source=SourceSnapshot(_sha(0), 1, 1),
        prompt=prompt,
        model=model,
        seed=seed,
        run_seed=7,
        output_path="/o",
        variant=1,
    )
    assert (model.strength, seed, task.fingerprint) == (0.7, 1102181481, OLD_LIST_FINGERPRINT)


def test_a_range_draws_rounded_strengths_within_it_reproducibly(tmp_path):
    catalog = load_catalog(_catalog_file(tmp_path / "models.yaml", strengths={"min": 0.3, "max": 0.7}))
    assert catalog[0].strengths == StrengthRange(0.3, 0.7)
    drawn = {}
    for number in range(10):
        for variant in range(4):
            _prompt, model, _seed = choose(_sha(number), 0, ["p"], catalog, variant)
            assert (
                model.strengths is None and 0.3 <= model.strength <= 0.7 and model.strength == round(model.strength, 2)
            )
            drawn[number, variant] = model.strength
    assert len(set(drawn.values())) > 10  # draws differ across images and variants
    assert len({drawn[0, v] for v in range(4)}) > 1 and len({drawn[n, 0] for n in range(10)}) > 1

    images = tmp_path / "images"
    make_image(images / "a.png", color=(200, 40, 40))
    make_image(images / "b.png", color=(40, 40, 200))
    files = scan_images(images).files

    def plan():  # a fresh planner each time: nothing cached
        fresh = load_catalog(tmp_path / "models.yaml")
        tasks, unplanned = Planner(["p"], fresh, 5, str(tmp_path / "out"), variants=3).plan(files)
        assert not unplanned and len(tasks) == 6
        return [(t.key, t.variant, t.model.strength, t.seed, t.fingerprint) for t in tasks]

    first = plan()
    assert all(0.3 <= strength <= 0.7 for _k, _v, strength, _s, _f in first)
    assert len({strength for _k, _v, strength, _s, _f in first}) > 1
    assert plan() == first


def test_a_range_is_a_result_setting_and_its_min_bounds_the_denoising_steps(tmp_path):
    ranged = parse_catalog(
        {"defaults": {"strengths": {"min": 0.3, "max": 0.7}}, "models": [{"name": "a", "path": "a"}]},
        base_dir=tmp_path,
    )[0]
    assert ranged.result_settings()["strengths"] == {"low": 0.3, "high": 0.7}
    wider = parse_catalog(
        {"models": [{"name": "a", "path": "a", "strengths": {"min": 0.2, "max": 0.7}}]}, base_dir=tmp_path
    )
    assert catalog_version([ranged]) != catalog_version(wider)
    assert "strengths" not in parse_catalog({"models": [{"name": "a", "path": "a"}]}, tmp_path)[0].result_settings()
    # An entry may replace the defaults' range with a list, and a list with a range.
    mixed = parse_catalog(
        {
            "defaults": {"strengths": {"min": 0.3, "max": 0.7}},
            "models": [{"name": "a", "path": "a", "strengths": [0.4]}, {"name": "b", "path": "b"}],
        },
        base_dir=tmp_path,
    )
    assert [m.strengths for m in mixed] == [(0.4,), StrengthRange(0.3, 0.7)]
    entry = {"name": "x", "path": "p", "num_inference_steps": 4}
    with pytest.raises(CatalogError, match=r"model 'x': num_inference_steps \(4\) x strength \(0\.2\) gives no"):
        parse_catalog({"models": [{**entry, "strengths": {"min": 0.2, "max": 1}}]}, base_dir=tmp_path)
    assert parse_catalog({"models": [{**entry, "strengths": {"min": 0.25, "max": 1}}]}, base_dir=tmp_path)
    # A narrow range: rounding never leaves it.
    narrow = StrengthRange(0.335, 0.337)
    assert {narrow.draw(random.Random(n)) for n in range(50)} <= {0.335, 0.337}


@pytest.mark.parametrize(
    "strengths, message",
    [
        ({"min": 0.7, "max": 0.3}, r"`strengths` range has min 0\.7 above max 0\.3: swap them, such as \{min: 0\.3"),
        ({"min": 0, "max": 0.5}, r"`strengths` must be .* or a range with both bounds above 0 and at most 1, such as"),
        ({"min": 0.2, "max": 1.5}, r"`strengths` must be .*; got \{'max': 1\.5, 'min': 0\.2\}"),
        ({"min": 0.2, "max": "0.5"}, r"`strengths` must be .* such as \{min: 0\.3, max: 0\.7\}"),
        ({"min": 0.2}, r"`strengths` as a range takes exactly `min` and `max`.*\(`max` missing\)"),
        (
            {"min": 0.2, "max": 0.5, "step": 0.1},
            r"`strengths` as a range takes exactly `min` and `max`.*\(unknown keys \['step'\]\)",
        ),
        (
            {"low": 0.2, "high": 0.5},
            r"`strengths` as a range .* \(`min` and `max` missing\)\. For a list of strengths to pick from",
        ),
    ],
)
def test_a_bad_range_names_the_file_the_entry_and_the_fix(tmp_path, strengths, message):
    path = _catalog_file(tmp_path / "models.yaml", entry={"strengths": strengths})
    with pytest.raises(
        CatalogError, match=rf"^{re.escape(str(tmp_path / 'models.yaml'))}: model 'tiny-sd15': {message}"
    ):
        load_catalog(path)
    path = _catalog_file(tmp_path / "models.yaml", strengths=strengths)
    with pytest.raises(CatalogError, match=rf"^{re.escape(str(tmp_path / 'models.yaml'))}: defaults: {message}"):
        load_catalog(path)


def test_a_two_item_list_stays_two_values(tmp_path):
    catalog = load_catalog(_catalog_file(tmp_path / "models.yaml", strengths=[0.3, 0.7]))
    assert catalog[0].strengths == (0.3, 0.7)
    assert {choose(_sha(n), 0, ["p"], catalog)[1].strength for n in range(20)} == {0.3, 0.7}


def test_variants_are_the_catalogs_only_under_defaults(tmp_path):
    path = tmp_path / "models.yaml"
    assert catalog_variants(_catalog_file(path)) is None
    assert catalog_variants(_catalog_file(path, variants=3)) == 3
    assert load_catalog(path)[0].name == "tiny-sd15"  # load_catalog returns the models, as before
    bad = [(0, "from 1 to 64; got 0"), (65, "got 65"), ("3", "got '3'. Write the number"), (1.5, "got 1.5")]
    for value, expected in bad:
        with pytest.raises(
            CatalogError, match=rf"^{re.escape(str(path))}: defaults: `variants` must be a whole number from 1 to 64"
        ):
            catalog_variants(_catalog_file(path, variants=value))
        with pytest.raises(CatalogError, match=expected):
            catalog_variants(_catalog_file(path, variants=value))
    with pytest.raises(
        CatalogError,
        match=rf"^{re.escape(str(path))}: model 'tiny-sd15': `variants` applies to the whole catalog, not one model: "
        r"move it under `defaults:`, such as `defaults: \{variants: 3\}`",
    ):
        load_catalog(_catalog_file(path, entry={"variants": 3}))
    path.write_text(yaml.safe_dump({"variants": 3, "models": [{"name": "x", "path": "x"}]}))
    with pytest.raises(CatalogError, match=r"unknown top-level keys \['variants'\].* go under `defaults:`"):
        load_catalog(path)


def test_the_runs_count_comes_before_the_environment_before_the_catalog(tmp_path, models_dir, environ):
    images = tmp_path / "images"
    make_image(images / "a.png")
    files = scan_images(images).files
    folders = {"images_dir": str(images), "output_dir": str(tmp_path / "out"), "prompts_file": "unused", "seed": 0}

    def planned(catalog_defaults: dict, **resource) -> int:
        models_file = _catalog_file(tmp_path / "models.yaml", models_dir, **catalog_defaults)
        dataset = DatasetResource(**folders, models_file=str(models_file), **resource)
        tasks, _ = dataset.planner(["p"], dataset.catalog()).plan(files)
        assert len(tasks) == dataset.result_variants()
        return len(tasks)

    environ.pop("RANDOM_DIFFUSION_VARIANTS", None)
    assert settings.variants() is None
    assert planned({}) == 1
    assert planned({"variants": 3}) == 3
    assert planned({"variants": 3}, variants=2) == 2  # the run's own (run config, run --variants)
    environ["RANDOM_DIFFUSION_VARIANTS"] = "4"
    assert planned({"variants": 3}) == 4
    assert planned({"variants": 3}, variants=1) == 1


def test_catalog_variants_make_that_many_results_per_image_and_the_dataset_holds_them(tmp_path, models_dir, environ):
    environ.pop("RANDOM_DIFFUSION_VARIANTS", None)
    images, outputs = tmp_path / "images", tmp_path / "outputs"
    make_image(images / "a.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    models_file = _catalog_file(tmp_path / "models.yaml", models_dir, variants=3, strengths={"min": 0.5, "max": 1})
    project = {"images_dir": str(images), "output_dir": str(outputs), "prompts_file": str(prompts), "seed": 0}
    project["models_file"] = str(models_file)
    with dg.instance_for_test() as instance:
        _keys, result = _diffuse_all(instance, project)
        assert result.success
        tags = instance.get_run_by_id(result.run_id).tags
        assert (tags["random_diffusion/generated"], tags["random_diffusion/reused"]) == ("3", "0")
        records = [read_record(path) for path in sorted(outputs.rglob("*.png"))]
        records = [record for record in records if record is not None]
        assert sorted(record.variant for record in records) == [0, 1, 2]
        assert all(0.5 <= record.strength <= 1 for record in records)
        _keys, again = _diffuse_all(instance, project, variants=1)  # the run's own count: variant 0 only, reused
        tags = instance.get_run_by_id(again.run_id).tags
        assert (tags["random_diffusion/generated"], tags["random_diffusion/reused"]) == ("0", "1")
        export = dg.materialize(
            [*ALL_ASSETS, augmented_dataset],
            selection=["augmented_dataset"],
            instance=instance,
            resources=_resources(project, dataset_dir=str(tmp_path / "augmented")),
            raise_on_error=False,
        )
        assert export.success
        exported = export.asset_materializations_for_node("augmented_dataset")[0].metadata
        assert (exported["results"].value, exported["results_missing"].value) == (3, 0)
