"""Prompt templates, wildcards, A1111 lines and emphasis, weighted models: random the way users write it."""

import hashlib
import random
import re
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import torch
from PIL import Image

from random_diffusion_dagster.defs.assets import model_catalog, prompt_list
from random_diffusion_dagster.defs.resources import DatasetResource
from random_diffusion_dagster.engine.catalog import load_catalog, parse_catalog
from random_diffusion_dagster.engine.images import scan_folder
from random_diffusion_dagster.engine.pipelines import PipelineCache, load_pipeline
from random_diffusion_dagster.engine.plan import Planner, SourceSnapshot, choose
from random_diffusion_dagster.engine.prompts import PromptListError
from random_diffusion_dagster.engine.runner import run_tasks
from random_diffusion_dagster.engine.templates import PromptTemplates
from random_diffusion_dagster.engine.weighting import parse_attention, weighted_embeddings

from helpers import write_catalog

HASHES = [f"{i:064x}" for i in range(4000)]


@pytest.fixture
def wildcards(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "animals.txt").write_text("fox\nowl\n__colors__ cat\n")
    (folder / "colors.txt").write_text("red\nblue\n")
    (folder / "empty.txt").write_text("")
    (folder / "broken.txt").write_text("a {broken\n")
    (folder / "escape.txt").write_text("caf\x1b\n")
    return folder


def _models(tmp_path, weights=(1, 1, 1, 1)):
    entries = [{"name": f"m{i}", "path": f"m{i}", "weight": w} for i, w in enumerate(weights)]
    return parse_catalog({"models": entries}, base_dir=tmp_path)


def _planner(tmp_path, lines, wildcards=None, weights=(1, 1)):
    return Planner(lines, _models(tmp_path, weights), 0, str(tmp_path / "out"), str(wildcards) if wildcards else None)


def test_a_template_resolves_the_same_per_image_and_seed_and_differs_across_images(tmp_path, wildcards):
    planner = _planner(tmp_path, ["a {red|green|blue|gold} __animals__ at {dawn|dusk}"], wildcards)
    first = [planner.task("k", "/src", SourceSnapshot(h, 1, 1)).prompt for h in HASHES[:40]]
    again = [planner.task("k", "/src", SourceSnapshot(h, 1, 1)).prompt for h in HASHES[:40]]
    assert first == again and len(set(first)) > 10
    rerolled = Planner(planner.prompts, planner.catalog, 7, planner.output_dir, planner.wildcards_dir)
    assert (
        sum(
            a != rerolled.task("k", "/src", SourceSnapshot(h, 1, 1)).prompt
            for a, h in zip(first, HASHES[:40], strict=True)
        )
        > 20
    )
    assert not any("{" in p or "__" in p for p in first)
    assert any(p.endswith("cat at dawn") or p.endswith("cat at dusk") for p in first)  # nested wildcard


def test_a_template_resolves_to_what_dynamic_prompts_generates_from_the_same_seed(wildcards):
    """Templates are parsed once, not per image; an image's prompt stays what Dynamic Prompts' generator gives."""
    from dynamicprompts.generators import RandomPromptGenerator
    from dynamicprompts.wildcards import WildcardManager

    shipped = Path(__file__).resolve().parent.parent / "data" / "prompts.txt"
    lines = [line for line in shipped.read_text().splitlines() if line.strip() and not line.startswith("#")]
    lines = [line for line in lines if "__" not in line]  # the shipped wildcards are in data/, these in `wildcards`
    lines += ["{3::common|1::rare} {2$$a|b|c|d}", "{1-2$$ and $$x|y|z} __animals__", "{~one|two|three}"]
    templates = PromptTemplates(lines, wildcards)
    manager = WildcardManager(wildcards)
    for index, line in enumerate(lines):
        for seed in (0, 1, 7, 2**31 + 5, 2**32 - 1):
            expected = RandomPromptGenerator(wildcard_manager=manager, seed=seed).generate(line, 1)[0]
            assert templates.resolve(index, seed).prompt == expected, (line, seed)


def test_weighted_variants_follow_their_weights(tmp_path):
    templates = PromptTemplates(["{3::common|1::rare}"])
    counts = Counter(templates.resolve(0, seed).prompt for seed in range(4000))
    assert abs(counts["common"] / 4000 - 0.75) < 0.03


def test_weighted_models_follow_their_weights_and_equal_weights_draw_as_before(tmp_path):
    weighted = _models(tmp_path, (3, 1, 1, 1))
    counts = Counter(choose(h, 0, ["p"], weighted)[1].name for h in HASHES)
    assert abs(counts["m0"] / len(HASHES) - 0.5) < 0.03 and abs(counts["m1"] / len(HASHES) - 1 / 6) < 0.03
    equal = _models(tmp_path)
    prompts = [f"prompt {i}" for i in range(7)]
    for h in HASHES[:200]:  # the draw before weights and templates existed
        rng = random.Random(int.from_bytes(hashlib.sha256(f"{h}:0".encode()).digest()[:8], "big"))
        expected = (rng.choice(prompts), rng.choice(equal), rng.randrange(2**32))
        assert choose(h, 0, prompts, equal) == expected


def test_plain_lines_are_used_exactly_as_written(tmp_path):
    lines = ["a fox, (big:1.2), 50% off [sale] -- C++ $$ || done"]
    task = _planner(tmp_path, lines).task("k", "/src", SourceSnapshot("ab", 1, 1))
    assert task.prompt == lines[0] and task.line_negative_prompt is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a {red|green", "prompt 1: 'a {red|green' is not a valid template"),
        ("a __missing__", "wildcard __missing__ has no values"),
        ("a __empty__", "wildcard __empty__ has no values"),
        ("--prompt 'a fox' --steps 20", "unknown option '--steps'"),
        ("--negative_prompt 'blurry'", "no --prompt"),
        ("--prompt 'a fox", "close the quote"),
        ("--prompt 'a fox' --prompt 'an owl'", "--prompt is given twice; keep one"),
        # A1111 reads such a line as all prompt: the option would be drawn as words of it.
        ('{red|green} sea --negative_prompt "blurry"', "--negative_prompt inside the prompt"),
        # These parse, but failed (or came out empty) only when an image drew them: every image of the run failed.
        ("{0::a|0::b}", "prompt 1: '{0::a|0::b}' cannot be drawn"),
        ("{|}", "prompt 1: '{|}' can draw an empty prompt: give every choice text"),
        ("a cat #1 fan, {red|blue}", "has a '#', which starts a comment in a template"),
        ("a __broken__", "wildcard __broken__ has the value 'a {broken', not a valid template"),
        ("a __../secret__", "wildcard __../secret__ has '..' in its name"),
        ("a __escape__", r"wildcard __escape__, value 'caf\\x1b': control character '\\x1b' at column 4"),
        # A mistyped image word is a one-choice brace to Dynamic Prompts: every prompt would say "Label".
        ("a {Label} in the snow", "prompt 1: 'a {Label} in the snow' has {Label}, which is no image word"),
        (
            "--prompt 'a {label}' --negative_prompt 'a { captions }'",
            "has { captions }, which is no image word, so it would not be filled in: write {caption}",
        ),
    ],
)
def test_broken_lines_name_the_prompt_and_the_fix(wildcards, line, message):
    with pytest.raises(PromptListError, match=message.replace("[", r"\[").replace("{", r"\{").replace("|", r"\|")):
        PromptTemplates(["fine", line] if "prompt 1" not in message else [line], wildcards, "prompts.txt")


def test_a_word_merely_like_an_image_word_stays_a_one_choice_brace():
    assert PromptTemplates(["a {system} on a {table}, {steps}"]).resolve(0, 0).prompt == "a system on a table, steps"


def test_a_missing_wildcards_folder_is_named(tmp_path):
    with pytest.raises(PromptListError, match="wildcards folder .* does not exist.*RANDOM_DIFFUSION_WILDCARDS_DIR"):
        PromptTemplates(["a __animals__"], tmp_path / "nowhere")


def test_a_broken_template_fails_prompt_list_before_any_image(project, tmp_path):
    Path(project["prompts_file"]).write_text("# my prompts\na fine prompt\n\na {broken\n")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [prompt_list, model_catalog],
            instance=instance,
            raise_on_error=False,
            resources={"dataset": DatasetResource(**project, wildcards_dir=str(tmp_path / "wc"))},
        )
    assert not result.success
    error = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "prompts.txt, line 4: 'a {broken' is not a valid template" in error  # the file's line, comments counted


def test_a_line_negative_prompt_reaches_the_pipeline_and_the_png(project):
    planner = Planner(
        ['--prompt "a red fox" --negative_prompt "blurry, dark"'],
        load_catalog(project["models_file"]),
        0,
        project["output_dir"],
    )
    tasks, _ = planner.plan(scan_folder(project["images_dir"]))
    results = run_tasks(tasks, PipelineCache(device="cpu"), log=lambda m: None).results
    assert all(r.status == "generated" for r in results)
    with Image.open(results[0].task.output_path) as image:
        assert image.text["parameters"].startswith("a red fox\nNegative prompt: blurry, dark\n")
    assert results[0].record.negative_prompt == "blurry, dark" and results[0].record.prompt == "a red fox"
    # The negative prompt changes the pixels: the same image without it differs.
    plain = Planner(["a red fox"], planner.catalog, 0, project["output_dir"] + "-plain").plan(
        scan_folder(project["images_dir"])
    )[0]
    other = run_tasks(plain, PipelineCache(device="cpu"), log=lambda m: None).results
    import numpy as np

    assert (
        np.abs(
            np.asarray(Image.open(other[0].task.output_path), dtype=int)
            - np.asarray(Image.open(results[0].task.output_path), dtype=int)
        ).max()
        > 0
    )


def test_emphasis_changes_the_embedding_and_leaves_unweighted_prompts_alone(models_dir, tmp_path):
    spec = load_catalog(write_catalog(tmp_path / "c.yaml", models_dir, names=("tiny-sd15",)))[0]
    pipeline = load_pipeline(spec, "cpu")
    with torch.inference_mode():
        embeds = weighted_embeddings(pipeline, ["a red fox", "a (red:1.5) fox"], ["", ""])["prompt_embeds"]
        ids = pipeline.tokenizer(["a red fox"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        plain = pipeline.text_encoder(ids)[0]
    assert torch.allclose(embeds[0], plain[0], atol=1e-6)
    assert (embeds[1] - embeds[0]).abs().max() > 1e-3
    assert parse_attention("a (red:1.5) fox [dim]") == [("a ", 1.0), ("red", 1.5), (" fox ", 1.0), ("dim", 1 / 1.1)]


def test_weighted_prompts_run_in_batches_with_a_correct_truncation_flag(project, models_dir, tmp_path):
    catalog = load_catalog(write_catalog(tmp_path / "w.yaml", models_dir, names=("tiny-sd15",), prompt_weighting=True))
    # The demo tokenizer reads one token per character: 10 x "(ab:1.2) " is 90 tokens as written, 30 without marks.
    lines = ["(ab:1.2) " * 10, "a (red:1.4) fox", "a " + " ".join(["fox"] * 90)]
    results = []
    for index, line in enumerate(lines):
        planner = Planner([line], catalog, 0, f"{project['output_dir']}-{index}")
        tasks, _ = planner.plan(scan_folder(project["images_dir"]))
        results.append(run_tasks(tasks, PipelineCache(device="cpu"), batch_size=4, log=lambda m: None).results)
    assert all(r.status == "generated" for batch in results for r in batch)
    assert [batch[0].record.prompt_truncated for batch in results] == [False, False, True]
    # The PNG says whether the brackets were emphasis: A1111 applies it unless its parameters say `Emphasis: None`.
    plain = load_catalog(write_catalog(tmp_path / "p.yaml", models_dir, names=("tiny-sd15",)))
    tasks, _ = Planner([lines[1]], plain, 0, f"{project['output_dir']}-plain").plan(scan_folder(project["images_dir"]))
    (read_as_written, *_) = run_tasks(tasks, PipelineCache(device="cpu"), batch_size=4, log=lambda m: None).results
    for result, weighted in ((results[1][0], True), (read_as_written, False)):
        assert result.record.prompt_weighting is weighted
        with Image.open(result.task.output_path) as image:
            assert ("Emphasis: None" in image.text["parameters"]) is not weighted


def test_a_long_prompt_is_flagged_without_the_libraries_notices(project, models_dir, tmp_path, caplog):
    """The flag (and the step's one-line warning) say it; diffusers and transformers printed the cut-off text
    per call and per tokenizer, on every console."""
    catalog = load_catalog(write_catalog(tmp_path / "w.yaml", models_dir, names=("tiny-sd15", "tiny-sd2")))
    planner = Planner(["a very detailed photograph of a cat " * 30], catalog, 0, project["output_dir"])
    tasks, _ = planner.plan(scan_folder(project["images_dir"]))
    results = run_tasks(tasks, PipelineCache(device="cpu"), batch_size=4, log=lambda m: None).results
    assert {task.model.name for task in tasks} == {"tiny-sd15", "tiny-sd2"}
    assert all(r.status == "generated" and r.record.prompt_truncated for r in results)
    printed = caplog.text  # what reached any handler: the console's, the Dagster run log's
    assert "truncated because CLIP" not in printed and "Token indices sequence length" not in printed


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{" * 2000 + "a" + "}" * 2000, "nests braces 2000 deep (at most 20): flatten the template"),
        ("{400$$" + "|".join(["x" * 50] * 400) + "}", "can draw a prompt of 20,399 characters (at most 10,000)"),
    ],
    ids=["2000-deep", "runaway-expansion"],
)
def test_templates_too_deep_or_too_big_are_named_before_the_parser_recurses(template, message):
    with pytest.raises(PromptListError, match=re.escape(message)):
        PromptTemplates([template])


def test_wildcards_nesting_too_deep_are_named(tmp_path):
    for level in range(25):
        (tmp_path / f"w{level}.txt").write_text(f"__w{level + 1}__\n")
    (tmp_path / "w25.txt").write_text("end\n")
    with pytest.raises(PromptListError, match=r"wildcards nest more than 20 deep \(w0 -> w1 .*: let fewer"):
        PromptTemplates(["a __w0__"], wildcards_dir=tmp_path)
