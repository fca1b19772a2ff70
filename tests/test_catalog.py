import pytest

from random_diffusion_dagster.engine.catalog import CatalogError, find_model, load_catalog, parse_catalog
from random_diffusion_dagster.engine.pipelines import ModelLoadError, load_pipeline


def test_defaults_fill_entries_and_relative_paths_resolve_against_the_catalog(tmp_path):
    (tmp_path / "catalog.yaml").write_text(
        "defaults: {resolution: 64, num_inference_steps: 8}\n"
        "models:\n"
        "  - {name: a, path: models/a}\n"
        "  - {name: b, hub_id: org/model, resolution: 512, scheduler: DDIMScheduler}\n"
    )
    a, b = load_catalog(tmp_path / "catalog.yaml")
    assert a.source == str(tmp_path / "models" / "a") and a.resolution == 64 and a.strength == 0.75
    assert b.source_kind == "hub_id" and b.source == "org/model" and b.resolution == 512
    assert b.scheduler == "DDIMScheduler" and b.num_inference_steps == 8


@pytest.mark.parametrize(
    "document, message",
    [
        ({"models": [{"name": "x"}]}, "exactly one of"),
        ({"models": [{"name": "x", "path": "p", "hub_id": "h"}]}, "exactly one of"),
        ({"models": [{"name": "x", "path": "p", "stregth": 0.5}]}, r"unknown settings \['stregth'\]"),
        ({"models": [{"name": "x", "path": "p", "num_inference_steps": 2, "strength": 0.3}]}, "no denoising step"),
        ({"models": [{"name": "x", "path": "p", "resolution": 100}]}, "multiple of 8"),
        ({"models": [{"name": "x", "path": "p"}, {"name": "x", "path": "q"}]}, "unique"),
        ({"models": [{"name": "  ", "path": "p"}]}, "every model needs a `name`"),
        ({"models": [{"name": "x", "hub_id": "../models/sd15"}]}, r"`hub_id` '\.\./models/sd15' is a path; .*`path:`"),
        ({"models": [{"name": "x", "hub_id": "https://civitai.com/m/1"}]}, "is a web address; .*`single_file:`"),
        (
            {"models": [{"name": "x", "path": "p", "scheduler": "DPM++ 2M Karras"}]},
            r"`scheduler: DPM\+\+ 2M Karras` is A1111's sampler name; diffusers takes the class: write "
            r"DPMSolverMultistepScheduler \(Karras sigmas are no catalog setting",
        ),
        (
            {"defaults": {"scheduler": "Euler"}, "models": [{"name": "x", "path": "p"}]},
            r"^catalog: defaults: .*write EulerDiscreteScheduler or FlowMatchEulerDiscreteScheduler\.$",
        ),
        ({"models": []}, "empty"),
        ({"models": [{"name": "x", "path": "p", "config": "c"}]}, "`config` only applies to `single_file`"),
        ({"models": [{"name": "x", "single_file": "f", "safety_checker": True}]}, "carry no safety checker"),
        ({"model": []}, r"unknown top-level keys \['model'\]; a catalog has \['defaults', 'models'\]"),
        ({"models": None}, "`models:` is missing or has no entries"),
        (
            {"models": [{"name": "x", "path": "p", "negative_prompt": "blurry" * 2000}]},
            "`negative_prompt`: 12,000 chara",
        ),
        ({"models": [{"name": "x", "path": "p", "negative_prompt": "blurry\x1b"}]}, r"control character '\\x1b'"),
        ({"models": {"name": "x"}}, "`models:` must be a list of entries"),
    ],
)
def test_bad_catalogs_are_refused_with_the_reason(tmp_path, document, message):
    with pytest.raises(CatalogError, match=message):
        parse_catalog(document, base_dir=tmp_path)


def test_unknown_model_name_lists_the_known_ones(tmp_path):
    catalog = parse_catalog({"models": [{"name": "a", "path": "a"}]}, base_dir=tmp_path)
    with pytest.raises(CatalogError, match=r"Unknown model 'b'.*\['a'\]"):
        find_model(catalog, "b")


def test_missing_catalog_file_names_the_variable(tmp_path):
    with pytest.raises(CatalogError, match="RANDOM_DIFFUSION_MODELS_FILE"):
        load_catalog(tmp_path / "nope.yaml")


def _spec(tmp_path, **entry):
    return parse_catalog({"models": [{"name": "m", **entry}]}, base_dir=tmp_path)[0]


def test_missing_folder_says_how_to_restore_the_demo_models(tmp_path):
    from random_diffusion_dagster.engine.pipelines import SHIPPED_MODELS

    with pytest.raises(ModelLoadError, match=r"Model 'm'.*does not exist.*`git checkout data/models` restores them"):
        load_pipeline(_spec(tmp_path, path=str(SHIPPED_MODELS / "tiny-sd99")), "cpu")
    for elsewhere in ("absent", "models/tiny-sd15"):  # a user's own folder, even one named like the demo's
        with pytest.raises(ModelLoadError, match=r"does not exist\. Fix `path` in the catalog") as other:
            load_pipeline(_spec(tmp_path, path=elsewhere), "cpu")
        assert "git checkout" not in str(other.value)  # not a demo model: restoring them would not help


def test_folder_without_model_index_is_not_a_diffusers_folder(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers folder"):
        load_pipeline(_spec(tmp_path, path="weights"), "cpu")


@pytest.mark.parametrize(
    "index, message",
    [
        ("{}", r"model_index\.json has no _class_name: the folder is not a diffusers pipeline written by save_pretr"),
        ('{"unet": ["diffusers", "UNet2DConditionModel"]}', r"model_index\.json has no _class_name"),
        ("[1, 2]", r"model_index\.json has no _class_name"),
        ('{"_class_name": ', r"model_index\.json is not valid JSON \(line 1"),
        ("\udcff", r"model_index\.json is not valid JSON"),
    ],
)
def test_model_index_without_a_pipeline_class_names_model_folder_and_fix(tmp_path, models_dir, index, message):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models_dir / "tiny-sd15", broken)
    (broken / "model_index.json").write_bytes(index.encode("utf-8", "surrogateescape"))
    with pytest.raises(ModelLoadError, match=rf"Model 'm' \(path: .*broken\): {message}"):
        load_pipeline(_spec(tmp_path, path="broken"), "cpu")


def test_missing_single_file_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint file does not exist"):
        load_pipeline(_spec(tmp_path, single_file="x.safetensors"), "cpu")


def test_single_file_config_folder_must_be_a_diffusers_folder(tmp_path):
    (tmp_path / "configs" / "sd15").mkdir(parents=True)
    with pytest.raises(CatalogError, match="no model_index.json"):
        _spec(tmp_path, single_file="x.safetensors", config="configs/sd15")
    (tmp_path / "configs" / "sd15" / "model_index.json").write_text("{}")
    assert _spec(tmp_path, single_file="x.safetensors", config="configs/sd15").config == str(
        tmp_path / "configs" / "sd15"
    )
    assert _spec(tmp_path, single_file="x.safetensors", config="org/repo").config == "org/repo"  # a hub id


@pytest.mark.parametrize("config", [None, "nobody/no-such-config"])
def test_single_file_without_usable_config_offline_says_to_set_config(tmp_path, monkeypatch, models_dir, config):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    checkpoint = models_dir / "tiny-sd15-single-file" / "tiny-sd15.safetensors"
    with pytest.raises(
        ModelLoadError, match=r"Model 'm' \(single_file: .*\).*Set `config:` to a local diffusers folder"
    ):
        load_pipeline(_spec(tmp_path, single_file=str(checkpoint), config=config), "cpu")


def test_uncached_hub_id_while_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match=r"Model 'm' \(hub_id: nobody/no-such-model\).*not in the local cache"):
        load_pipeline(_spec(tmp_path, hub_id="nobody/no-such-model"), "cpu")


def test_unknown_scheduler_names_the_model_and_the_schedulers_that_fit_it(tmp_path, models_dir):
    spec = _spec(tmp_path, path=str(models_dir / "tiny-sd15"), scheduler="WarpDriveScheduler")
    with pytest.raises(ModelLoadError, match="Model 'm': unknown scheduler 'WarpDriveScheduler'") as raised:
        load_pipeline(spec, "cpu")
    fits = str(raised.value).split("these fit the model: ")[1]
    assert "EulerDiscreteScheduler" in fits and "DPMSolverMultistepScheduler" in fits
    assert "AmusedScheduler" not in fits  # a scheduler of another kind of model is not offered


def test_corrupt_weights_name_the_model(tmp_path, models_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models_dir / "tiny-sd15", broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"Model 'm' \(path: .*broken\) failed to load"):
        load_pipeline(_spec(tmp_path, path="broken"), "cpu")


def test_a_pipeline_type_without_img2img_says_so(tmp_path):
    import diffusers

    diffusers.DDPMPipeline(
        unet=diffusers.UNet2DModel(
            sample_size=8,
            block_out_channels=(8, 8),
            norm_num_groups=4,
            down_block_types=("DownBlock2D",) * 2,
            up_block_types=("UpBlock2D",) * 2,
        ),
        scheduler=diffusers.DDPMScheduler(),
    ).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ModelLoadError, match=r"Model 'm'.*no image-to-image form"):
        load_pipeline(_spec(tmp_path, path="ddpm"), "cpu")


def _entry(**settings):
    return {"models": [{"name": "x", "path": "p", **settings}]}


@pytest.mark.parametrize(
    "document, message",
    [
        (_entry(resolution=float("inf")), r"model 'x': `resolution` must be a whole number .*; got inf"),
        (_entry(num_inference_steps=float("nan")), r"model 'x': `num_inference_steps` must be a whole number"),
        (_entry(num_inference_steps="many"), r"`num_inference_steps` must be a whole number .*; got 'many'"),
        (_entry(guidance_scale="high"), r"`guidance_scale` must be a number from 0 to 100; got 'high'"),
        (_entry(strength=[0.5]), r"`strength` must be a number .*; got \[0\.5\]"),
        (_entry(resolution={"w": 64}), r"`resolution` must be a whole number"),
        (_entry(resolution=True), r"`resolution` must be a whole number"),
        (_entry(guidance_scale=1e30), r"`guidance_scale` must be a number from 0 to 100; got 1e\+30"),
        (_entry(guidance_scale=-100), r"`guidance_scale` must be a number from 0 to 100; got -100"),
        (_entry(guidance_scale=float("nan")), r"`guidance_scale` must be a number from 0 to 100; got nan"),
        (_entry(num_inference_steps=1e9), r"`num_inference_steps` must be a whole number from 1 to 1000"),
        (_entry(num_inference_steps=12.5), r"`num_inference_steps` must be a whole number"),
        (_entry(resolution=8192), r"`resolution` must be a whole number from 8 to 4096"),
        (_entry(strength=0), r"`strength` must be a number above 0 and at most 1; got 0"),
        (_entry(safety_checker="false"), r"`safety_checker` must be true or false .*; got 'false'"),
        (_entry(scheduler=5), r"`scheduler` must be text; got 5"),
        (_entry(variant=["fp16"]), r"`variant` must be text; got \['fp16'\]"),
        (_entry(negative_prompt=3), r"`negative_prompt` must be text; got 3"),
        (_entry(dtype=16), r"`dtype` must be one of"),
        (_entry(quantize="int4"), r"model 'x': `quantize` must be one of \('int8', 'fp8'\); got 'int4'"),
        (
            _entry(quantize="int8", loras=[{"path": "style.safetensors", "weight": 0.8}]),
            r"model 'x': `quantize: int8` and `loras` cannot go together .*: remove `quantize` from this entry",
        ),
        (
            {
                "defaults": {"quantize": "int8"},
                "models": [{"name": "x", "path": "p", "loras": [{"path": "s.safetensors"}]}],
            },
            r"`quantize: int8` and `loras` .*: set `quantize: null` on this entry \(it comes from `defaults:`\)",
        ),
        (_entry(description=["a", "b"]), r"`description` must be text"),
        ({"models": [{"name": "x", "hub_id": 123}]}, r"model 'x': `hub_id` must be text; got 123"),
        ({"models": [{"name": 1.5, "path": "p"}]}, r"`name` must be text; got 1\.5 .*quote it: name: '1\.5'"),
        ({"models": [{"name": True, "path": "p"}]}, r"`name` must be text; got True .*quote it"),
        (
            {"models": [{"name": list(range(10**5)), "path": "p"}]},
            r"`name` must be text; got \[0, 1, 2, 3, 4, 5, \.\.\.\]\.$",
        ),
        ({"defaults": [1, 2], "models": [{"name": "x", "path": "p"}]}, r"`defaults` must be a mapping"),
        (
            {"defaults": {"guidance_scale": "high"}, "models": [{"name": "x", "path": "p"}]},
            r"catalog: defaults: `guidance_scale` must be a number",
        ),
        (
            {"default": {"resolution": 64}, "models": [{"name": "x", "path": "p"}]},
            r"unknown top-level keys \['default'\]; a catalog has \['defaults', 'models'\]",
        ),
    ],
)
def test_wrong_values_name_the_entry_the_setting_and_the_expected_type(tmp_path, document, message):
    with pytest.raises(CatalogError, match=message):
        parse_catalog(document, base_dir=tmp_path)


def test_integral_floats_are_whole_numbers(tmp_path):
    spec = parse_catalog(
        _entry(num_inference_steps=50.0, resolution=64.0, guidance_scale=7, strength=1), base_dir=tmp_path
    )[0]
    assert (spec.num_inference_steps, spec.resolution) == (50, 64) and type(spec.num_inference_steps) is int
    assert (spec.guidance_scale, spec.strength) == (7.0, 1.0) and type(spec.guidance_scale) is float


@pytest.mark.parametrize(
    "yaml_value, message",
    [
        ("guidance_scale: .inf", r"`guidance_scale` must be a number from 0 to 100; got inf"),
        ("num_inference_steps: .nan", r"`num_inference_steps` must be a whole number"),
        # YAML 1.1 reads 1e9 as text and 1.0e+9 as a number
        ("num_inference_steps: 1e9", r"`num_inference_steps` must be .*; got '1e9'\. Write the number without quotes"),
        ("num_inference_steps: 1.0e+9", r"`num_inference_steps` must be .* from 1 to 1000; got 1000000000\.0"),
        ("safety_checker: 'false'", r"`safety_checker` must be true or false"),
    ],
)
def test_yaml_values_are_refused_naming_the_file(tmp_path, yaml_value, message):
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - name: x\n    path: p\n    {yaml_value}\n")
    with pytest.raises(CatalogError, match=rf"models\.yaml: model 'x': {message}"):
        load_catalog(path)


def test_unquoted_numeric_name_in_yaml_says_to_quote_it(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {name: 1.10, path: p}\n")  # YAML reads 1.10 as the number 1.1
    with pytest.raises(CatalogError, match=r"`name` must be text; got 1\.1 .*quote it"):
        load_catalog(path)
    path.write_text("models:\n  - {name: '1.10', path: p}\n")
    assert load_catalog(path)[0].name == "1.10"


def billion_laughs(depth: int = 9) -> str:
    """The classic YAML alias bomb: `depth` levels of nine aliases each, 9**depth strings when expanded."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, depth):
        lines.append(f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    lines.append(f"models: [*a{depth - 1}]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 500
    with pytest.raises(CatalogError, match=r"bomb\.yaml holds more than 1,000,000 values once its aliases") as caught:
        load_catalog(path)
    assert len(str(caught.value)) < 500


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("models: &m [*m]\n")
    with pytest.raises(CatalogError, match=r"loop\.yaml: .*refers to itself"):
        load_catalog(path)


def test_a_few_aliases_for_shared_settings_still_work(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - &base {name: a, path: a, resolution: 64, num_inference_steps: 8}\n"
        "  - {<<: *base, name: b, path: b}\n"
    )
    a, b = load_catalog(path)
    assert (b.name, b.resolution, b.num_inference_steps) == ("b", 64, 8)


def test_a_setting_written_twice_in_an_entry_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: x\n    path: p\n    strength: 0.3\n    strength: 0.9\n")
    with pytest.raises(CatalogError, match=r"models\.yaml, line 5: `strength` is set twice in one mapping"):
        load_catalog(path)


def test_oversized_catalog_file_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("models: [{name: x, path: p}]\n" + "# padding\n" * 120_000)
    with pytest.raises(CatalogError, match=r"huge\.yaml is 1,2\d\d,\d{3} bytes; a catalog may have at most 1,048,576"):
        load_catalog(path)


def test_non_utf8_catalog_names_the_file(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_bytes(b"models:\n  - {name: caf\xe9, path: p}\n")
    with pytest.raises(CatalogError, match=r"models\.yaml is not valid YAML.*UTF-8"):
        load_catalog(path)


def test_utf16_catalog_with_byte_order_mark_loads(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_bytes("models:\n  - {name: café, path: p}\n".encode("utf-16"))
    assert load_catalog(path)[0].name == "café"


def test_error_messages_show_at_most_a_short_excerpt_of_a_bad_entry(tmp_path):
    with pytest.raises(CatalogError, match="every model needs a `name`") as caught:
        parse_catalog({"models": [{"path": "p", "description": "x" * 100_000}]}, base_dir=tmp_path)
    assert len(str(caught.value)) < 400
    with pytest.raises(CatalogError, match="`resolution` must be") as caught:
        parse_catalog(
            {"models": [{"name": "n" * 5000, "path": "p", "resolution": list(range(10_000))}]}, base_dir=tmp_path
        )
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize("catalog", ["data/models.yaml", "data/catalogs/stable-diffusion.yaml"])
def test_shipped_catalogs_load(catalog):
    from pathlib import Path

    specs = load_catalog(Path(__file__).parent.parent / catalog)
    assert len(specs) >= 5 and len({s.name for s in specs}) == len(specs)


@pytest.mark.parametrize(
    "document, message",
    [
        (_entry(hub_id=123), r"model 'x': `hub_id` must be text; got 123 .*quote it: hub_id: '123'\.$"),
        (_entry(resolution=12, strength="x"), r"`resolution` must be a whole number from 8 to 4096, a multiple of 8"),
        (_entry(weight=0), r"model 'x': `weight` must be a number above 0 and at most 1e\+06; got 0\.$"),
        (_entry(dtype="fp8"), r"`dtype` must be one of \('auto', 'float16', 'bfloat16', 'float32'\); got 'fp8'\.$"),
        (
            _entry(stregth=1, **{"1": 2}),
            r"model 'x': unknown settings \['1', 'stregth'\] \(stregth: write strength\); known keys are \['config', ",
        ),
        (
            _entry(lora="a.safetensors"),
            r"unknown settings \['lora'\] \(lora: write loras: \[\{path: \.\.\., weight: \.\.\.\}\]\); known keys are "
            r"\[.*'loras', .*'path', .*\]\.$",
        ),
        # A1111's names, as people carry them over: each with what this catalog has instead, or that it has none.
        (
            _entry(steps=20, cfg_scale=7, clip_skip=2),
            r"unknown settings \['cfg_scale', 'clip_skip', 'steps'\] \(cfg_scale: write guidance_scale; clip_skip: not "
            r"a setting here: the model's text encoder runs whole; steps: write num_inference_steps\); known keys",
        ),
        (
            {"defaults": {"varients": 2}, "models": [{"name": "x", "path": "p"}]},
            r"^catalog: defaults: unknown settings \['varients'\] \(varients: write variants\); known keys are "
            r"\[.*'variants'",
        ),
        ({"models": [{"name": 7, "path": "p", "resolution": 12}]}, r"model 7: `name` must be text; got 7 "),
        ({"models": [{"name": "x", "path": "p", "single_file": "f"}]}, r"model 'x': it must name exactly one of"),
        (
            {"defaults": {"negative_prompt": "a\x07"}, "models": [{"name": "x", "path": "p"}]},
            r"^catalog: defaults: `negative_prompt`: control character '\\x07' at column 2",
        ),
        (
            {"defaults": {"num_inference_steps": 4, "strength": 0.2}, "models": [{"name": "x", "path": "p"}]},
            r"^catalog: model 'x': num_inference_steps \(4\) x strength \(0\.2\) gives no denoising step",
        ),
    ],
)
def test_validation_errors_are_one_line_in_the_catalogs_own_words(tmp_path, document, message):
    with pytest.raises(CatalogError, match=message) as caught:
        parse_catalog(document, base_dir=tmp_path)
    text = str(caught.value)
    assert "\n" not in text and "Input should" not in text and "pydantic" not in text
    assert caught.value.__cause__ is None  # pydantic's own report is not chained on


def test_defaults_apply_unless_an_entry_overrides_them_even_with_null(tmp_path):
    document = {
        "defaults": {"scheduler": "DDIMScheduler", "negative_prompt": "blurry", "dtype": "float16"},
        "models": [
            {"name": "a", "path": "a"},
            {"name": "b", "hub_id": "o/b", "scheduler": None, "negative_prompt": None},
        ],
    }
    a, b = parse_catalog(document, base_dir=tmp_path)
    assert (a.scheduler, a.negative_prompt, a.dtype) == ("DDIMScheduler", "blurry", "float16")
    assert (b.scheduler, b.negative_prompt, b.dtype) == (None, "", "float16")
    assert hash(a) != hash(b) and a == parse_catalog(document, base_dir=tmp_path)[0]  # ModelSpecs are dict keys


@pytest.mark.parametrize(
    "yaml_value, message",
    [
        ("description: 2024-02-30", r"YAML cannot convert a value \(day is out of range for month\): fix or quote it"),
        (f"resolution: {'9' * 5000}", r"YAML cannot convert a value \(Exceeds the limit \(4300 digits\)"),
    ],
)
def test_yaml_values_python_cannot_convert_are_catalog_errors(tmp_path, yaml_value, message):
    path = tmp_path / "models.yaml"
    path.write_text(f"models:\n  - name: x\n    path: p\n    {yaml_value}\n")
    with pytest.raises(CatalogError, match=rf"models\.yaml: {message}"):
        load_catalog(path)


def test_a_float16_entry_on_the_cpu_loads_without_diffusers_notice_that_it_will_fail(tmp_path, models_dir):
    """Recent torch runs float16 on the CPU (slowly): diffusers' notice at every move, that running will fail, is
    not shown."""
    import logging

    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    logger.addHandler(handler)
    try:
        pipeline = load_pipeline(_spec(tmp_path, path=str(models_dir / "tiny-sd15"), dtype="float16"), "cpu")
    finally:
        logger.removeHandler(handler)
    assert str(pipeline.unet.dtype) == "torch.float16" and not [m for m in said if "cannot run with `cpu`" in m]


def test_a_catalog_indented_with_tabs_says_to_indent_with_spaces(tmp_path):
    catalog = tmp_path / "models.yaml"
    catalog.write_text("models:\n\t- name: sd15\n\t  path: p\n")
    with pytest.raises(CatalogError, match=r"line 2, column 1\. Indent with spaces: YAML takes no tabs\.$"):
        load_catalog(catalog)
