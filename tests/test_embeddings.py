"""Textual-inversion entries in the random draw, on the tiny SD 1.5-style model and the tiny embeddings built for it
(demo/embeddings.py): a named token changes pixels and an unnamed one changes nothing, entries with and without
embeddings share one loaded base with no residue between them, A1111's `TI hashes` in the PNG, the embeddings in the
record, and named errors in the catalog and at load."""

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from random_diffusion_dagster.demo.embeddings import embedding_file
from random_diffusion_dagster.engine.catalog import CatalogError, load_catalog
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.pipelines import ModelLoadError, PipelineCache
from random_diffusion_dagster.engine.plan import Planner, snapshot_source
from random_diffusion_dagster.engine.results import PARAMETERS_CHUNK, read_record
from random_diffusion_dagster.engine.runner import run_tasks
from random_diffusion_dagster.engine.weighting import MultiVectorTokens

from helpers import FAST_DEFAULTS, assert_same_pixels, make_image

TOKEN = "<tiny-style>"
NAMED, UNNAMED = f"a {TOKEN} lighthouse", "a lighthouse"


def _catalog(path: Path, models_dir: Path, entries: list[dict]) -> Path:
    """`entries`, each on its `base` (tiny-sd15) with its `embeddings` as (embedding name, token) pairs written
    relative to the catalog."""
    models = []
    for entry in entries:
        written = {"name": entry["name"], "path": str(models_dir / entry.get("base", "tiny-sd15"))}
        written.update(entry.get("settings", {}))
        if entry.get("embeddings"):
            written["embeddings"] = [
                {"path": os.path.relpath(embedding_file(models_dir, name), path.parent), "token": token}
                for name, token in entry["embeddings"]
            ]
        models.append(written)
    path.write_text(yaml.safe_dump({"defaults": FAST_DEFAULTS, "models": models}))
    return path


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def _task(spec, prompt: str, source: Path, output_dir: Path, name: str):
    """The source's task with `spec` and `prompt` alone: the same seed whatever the spec and prompt."""
    return Planner([prompt], [spec], 0, str(output_dir)).task(
        name, str(source), snapshot_source(source), relative_path=name
    )


def _alone(task, folder: Path) -> np.ndarray:
    """The task's pixels made by a fresh cache: the base with only this entry's embeddings ever loaded."""
    alone = dataclasses.replace(task, output_path=str(folder / Path(task.output_path).name))
    assert run_tasks([alone], PipelineCache(device="cpu"), log=lambda m: None).results[0].status == "generated"
    return _pixels(alone.output_path)


def test_a_named_token_changes_pixels_an_unnamed_one_nothing_and_the_png_carries_ti_hashes(tmp_path, models_dir):
    plain, styled = load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [{"name": "plain"}, {"name": "styled", "embeddings": [("tiny-style", TOKEN)]}],
        )
    )
    source = make_image(tmp_path / "src.png", size=(64, 64))
    tasks = [
        _task(spec, prompt, source, tmp_path / "out", f"{spec.name}-{index}.png")
        for index, prompt in enumerate((NAMED, UNNAMED))
        for spec in (plain, styled)
    ]
    assert len({t.seed for t in tasks}) == 1
    cache = PipelineCache(device="cpu")
    summary = run_tasks(tasks, cache, log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * 4, [r.error for r in summary.results]
    assert cache.loads == 1 and cache.embedding_loads == 1
    plain_named, styled_named, plain_unnamed, styled_unnamed = (_pixels(t.output_path) for t in tasks)
    assert np.abs(styled_named - plain_named).mean() > 0.1  # the token reads the embedding's vectors
    assert np.array_equal(styled_unnamed, plain_unnamed)  # a prompt without the token: the base's pixels exactly

    digest = hashlib.sha256(embedding_file(models_dir, "tiny-style").read_bytes()).hexdigest()[:12]
    with Image.open(tasks[1].output_path) as image:
        settings_line = image.text[PARAMETERS_CHUNK].splitlines()[-1]
    assert settings_line.endswith(f'TI hashes: "{TOKEN}: {digest}"')
    assert read_record(tasks[1].output_path).embeddings == [{"token": TOKEN, "name": "tiny-style", "hash": digest}]
    with Image.open(tasks[3].output_path) as image:  # A1111 lists only the embeddings a prompt uses
        assert "TI hashes" not in image.text[PARAMETERS_CHUNK]
    assert read_record(tasks[3].output_path).embeddings == read_record(tasks[1].output_path).embeddings
    assert read_record(tasks[0].output_path).embeddings is None  # as in records written before embeddings existed


def test_entries_with_other_or_no_embeddings_share_one_base_and_each_image_equals_its_alone_pixels(
    tmp_path, models_dir
):
    """One token mapped to two files by two entries, an entry without embeddings whose prompt names the token (the
    prompt list is every entry's), and an entry on a second base (another scheduler) that shares the first's text
    encoder (byte-identical weights): no residue."""
    catalog = load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [
                {"name": "a-styled", "embeddings": [("tiny-style", TOKEN)]},
                {"name": "b-other-file", "embeddings": [("tiny-style-b", TOKEN), ("tiny-style", "<second>")]},
                {"name": "c-plain"},  # sorted last: it runs after the entries with embeddings, on the same base
                {
                    "name": "d-euler-styled",
                    "settings": {"scheduler": "EulerAncestralDiscreteScheduler"},
                    "embeddings": [("tiny-style-b", TOKEN)],
                },
            ],
        )
    )
    for index in range(4):
        make_image(tmp_path / "images" / f"img{index}.png", color=(40 * index, 200 - 30 * index, 90 + 20 * index))
    images = scan_folder(tmp_path / "images")
    prompts = [NAMED, f"a red fox, <second>, {TOKEN}"]
    for run_seed in range(200):  # every entry drawn, the plain one with a prompt that names the token
        tasks, _ = Planner(prompts, catalog, run_seed, str(tmp_path / "out"), variants=2).plan(images)
        if {t.model.name for t in tasks} == {s.name for s in catalog} and any(
            t.model.name == "c-plain" and TOKEN in t.prompt for t in tasks
        ):
            break
    cache = PipelineCache(device="cpu")
    summary = run_tasks(tasks, cache, batch_size=2, log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * 8, [r.error for r in summary.results]
    assert cache.loads == 2 and cache.embedding_loads == 3  # one base for the first three entries, one for the last
    assert cache.shared_components >= 1  # the second base took the first one's text encoder (and VAE, UNet)
    for task in tasks:
        assert_same_pixels(_alone(task, tmp_path / "alone"), _pixels(task.output_path), task.model.name)


def test_alternating_entries_on_one_base_reload_nothing_and_leave_the_base_tokenizer_alone(tmp_path, models_dir):
    plain, styled = load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [{"name": "plain"}, {"name": "styled", "embeddings": [("tiny-style", TOKEN)]}],
        )
    )
    cache = PipelineCache(device="cpu")
    pipeline, _ = cache.get(plain)
    base_tokenizer, vocabulary = pipeline.tokenizer, len(pipeline.tokenizer)
    for spec in (styled, plain, styled, plain):
        cache.get(spec)
        assert (pipeline.tokenizer is base_tokenizer) == (spec is plain)
    assert cache.loads == 1 and cache.embedding_loads == 1 and len(base_tokenizer) == vocabulary
    cache.get(styled)
    assert len(pipeline.tokenizer) == vocabulary + 2  # a two-vector embedding: `<tiny-style>` and `<tiny-style>_1`
    ids = pipeline.tokenizer(f"a {TOKEN}", add_special_tokens=False).input_ids
    second = pipeline.tokenizer.convert_tokens_to_ids(f"{TOKEN}_1")
    assert MultiVectorTokens(pipeline.tokenizer).expand_textual_inversion_token_ids_if_necessary(ids) == [*ids, second]

    # A second base (another scheduler) shares the text encoder: its entry rewrites the rows past the vocabulary with
    # the other file's vector, and the first entry's tokens are loaded again when it runs next.
    (euler,) = load_catalog(
        _catalog(
            tmp_path / "euler.yaml",
            models_dir,
            [
                {
                    "name": "euler",
                    "settings": {"scheduler": "EulerAncestralDiscreteScheduler"},
                    "embeddings": [("tiny-style-b", TOKEN)],
                }
            ],
        )
    )
    other, _ = cache.get(euler)
    assert other is not pipeline and other.text_encoder is pipeline.text_encoder and cache.loads == 2
    for spec, name in ((euler, "tiny-style-b"), (styled, "tiny-style")):
        active, _ = cache.get(spec)
        row = active.text_encoder.get_input_embeddings().weight[active.tokenizer.convert_tokens_to_ids(TOKEN)]
        assert torch.equal(row, load_file(embedding_file(models_dir, name))["emb_params"][0]), name
    assert cache.embedding_loads == 3


def test_an_embedding_for_another_base_fails_its_images_by_name_and_the_base_stays_clean(tmp_path, models_dir):
    wrong, plain = load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [
                {"name": "sd2-styled", "base": "tiny-sd2", "embeddings": [("tiny-style", TOKEN)]},
                {"name": "sd2", "base": "tiny-sd2"},
            ],
        )
    )
    source = make_image(tmp_path / "src.png", size=(64, 64))
    tasks = [_task(spec, NAMED, source, tmp_path / "out", f"{spec.name}.png") for spec in (wrong, plain)]
    cache = PipelineCache(device="cpu")
    failed, made = run_tasks(tasks, cache, log=lambda m: None).results
    assert failed.status == "failed" and "sd2-styled" in failed.error and "tiny-style.safetensors" in failed.error
    assert "made for another kind of model" in failed.error
    assert "not as wide as the text encoder's" in failed.error and "{" not in failed.error  # not diffusers' template
    assert made.status == "generated" and cache.loads == 1
    assert np.array_equal(_alone(tasks[1], tmp_path / "alone"), _pixels(tasks[1].output_path))


def test_an_embedding_token_that_the_vocabulary_has_fails_by_name(tmp_path, models_dir):
    (spec,) = load_catalog(
        _catalog(
            tmp_path / "models.yaml", models_dir, [{"name": "clash", "embeddings": [("tiny-style", "<|endoftext|>")]}]
        )
    )
    source = make_image(tmp_path / "src.png", size=(64, 64))
    (result,) = run_tasks(
        [_task(spec, NAMED, source, tmp_path / "out", "x.png")], PipelineCache(device="cpu"), log=lambda m: None
    ).results
    assert result.status == "failed" and "'<|endoftext|>' is already a token of this base's tokenizer" in result.error


def test_embeddings_are_in_the_entry_settings_only_when_given(tmp_path, models_dir):
    plain, styled = load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [{"name": "plain"}, {"name": "styled", "embeddings": [("tiny-style", TOKEN)]}],
        )
    )
    assert "embeddings" not in plain.result_settings()  # a plain entry's settings, as before embeddings existed
    assert styled.result_settings()["embeddings"] == (
        {"path": str(embedding_file(models_dir, "tiny-style")), "token": TOKEN},
    )
    (renamed,) = load_catalog(
        _catalog(tmp_path / "renamed.yaml", models_dir, [{"name": "styled", "embeddings": [("tiny-style", "<other>")]}])
    )
    assert renamed.result_settings() != styled.result_settings()  # a new token stales the entry's results


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        ([{"path": "embeddings/missing.safetensors", "token": "<x>"}], "(`embeddings` item 1) does not exist: fix its"),
        ([{"path": "embeddings/x.ckpt", "token": "<x>"}], "is not a .safetensors, .pt or .bin file"),
        (
            [{"path": "EMB"}],
            'needs `token`, the word prompts write to use the embedding: text without spaces, such as "<my-style>" '
            "(quoted); got None.",
        ),
        ([{"path": "EMB", "token": "my style"}], "needs `token`, the word prompts write to use the embedding"),
        (
            [{"path": "EMB", "token": "<My-Style>"}],
            "has capitals; the text encoder reads prompts in lower case: write it as '<my-style>'",
        ),
        ([{"path": "EMB", "token": "<x>"}, {"path": "EMB", "token": "<x>"}], "token '<x>' is given twice"),
        ([{"path": "EMB", "token": "<x>", "weight": 1}], "unknown keys ['weight']; an embedding has ['path', 'token']"),
        ([{"token": "<x>"}], "`embeddings` item 1 needs `path`"),
        ("EMB", "`embeddings` must be a list of embeddings"),
    ],
)
def test_bad_embedding_entries_fail_with_named_errors(tmp_path, models_dir, embeddings, message):
    real = str(embedding_file(models_dir, "tiny-style"))

    def fill(value):
        return real if value == "EMB" else value

    embeddings = (
        fill(embeddings) if isinstance(embeddings, str) else [{k: fill(v) for k, v in i.items()} for i in embeddings]
    )
    catalog = tmp_path / "models.yaml"
    entry = {"name": "sd15-style", "path": str(models_dir / "tiny-sd15"), "embeddings": embeddings}
    catalog.write_text(yaml.safe_dump({"models": [entry]}))
    with pytest.raises(CatalogError) as error:
        load_catalog(catalog)
    assert str(error.value).startswith(f"{catalog}: model 'sd15-style': ")
    assert message in str(error.value)


def test_weighted_prompts_read_the_embedding_and_families_without_one_clip_encoder_refuse_it(tmp_path, models_dir):
    plain, styled = load_catalog(
        _catalog(
            tmp_path / "models.yaml",
            models_dir,
            [
                {"name": "plain", "settings": {"prompt_weighting": True}},
                {"name": "styled", "settings": {"prompt_weighting": True}, "embeddings": [("tiny-style", TOKEN)]},
            ],
        )
    )
    source = make_image(tmp_path / "src.png", size=(64, 64))
    prompts = (f"a ({TOKEN}:1.2) lighthouse", "a (lighthouse:1.2)")
    tasks = [
        _task(s, p, source, tmp_path / "out", f"{s.name}-{i}.png")
        for i, p in enumerate(prompts)
        for s in (plain, styled)
    ]
    summary = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None)
    assert [r.status for r in summary.results] == ["generated"] * 4, [r.error for r in summary.results]
    plain_named, styled_named, plain_unnamed, styled_unnamed = (_pixels(t.output_path) for t in tasks)
    assert np.abs(styled_named - plain_named).mean() > 0.1 and np.array_equal(styled_unnamed, plain_unnamed)

    (sdxl,) = load_catalog(
        _catalog(
            tmp_path / "sdxl.yaml",
            models_dir,
            [{"name": "xl", "base": "tiny-sdxl", "embeddings": [("tiny-style", TOKEN)]}],
        )
    )
    with pytest.raises(ModelLoadError, match=r"Model 'xl' \(SDXL\) cannot take `embeddings`"):
        PipelineCache(device="cpu").get(sdxl)


def test_an_a1111_pt_embedding_loads_with_its_vectors(tmp_path, models_dir):
    vectors = load_file(embedding_file(models_dir, "tiny-style"))["emb_params"]
    pt = tmp_path / "embeddings" / "old-style.pt"
    pt.parent.mkdir()
    torch.save({"string_to_param": {"*": vectors}, "name": "old-style", "step": 1000}, pt)  # A1111's own .pt layout
    (spec,) = load_catalog(
        _catalog(tmp_path / "models.yaml", models_dir, [{"name": "styled", "embeddings": [("tiny-style", TOKEN)]}])
    )
    spec = dataclasses.replace(spec, embeddings=(dataclasses.replace(spec.embeddings[0], path=str(pt)),))
    pipeline, _ = PipelineCache(device="cpu").get(spec)
    table = pipeline.text_encoder.get_input_embeddings().weight
    rows = [pipeline.tokenizer.convert_tokens_to_ids(token) for token in (TOKEN, f"{TOKEN}_1")]
    assert torch.equal(table[rows], vectors)
