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
        ({"models": []}, "empty"),
        ({"models": [{"name": "x", "path": "p", "config": "c"}]}, "`config` only applies to `single_file`"),
        ({"models": [{"name": "x", "single_file": "f", "safety_checker": True}]}, "carry no safety checker"),
        ({"model": []}, "models:"),
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
    with pytest.raises(ModelLoadError, match=r"Model 'm'.*does not exist.*data/models"):
        load_pipeline(_spec(tmp_path, path="absent"), "cpu")


def test_folder_without_model_index_is_not_a_diffusers_folder(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers folder"):
        load_pipeline(_spec(tmp_path, path="weights"), "cpu")


def test_missing_single_file_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match="checkpoint file does not exist"):
        load_pipeline(_spec(tmp_path, single_file="x.safetensors"), "cpu")


def test_single_file_config_folder_must_be_a_diffusers_folder(tmp_path):
    (tmp_path / "configs" / "sd15").mkdir(parents=True)
    with pytest.raises(CatalogError, match="no model_index.json"):
        _spec(tmp_path, single_file="x.safetensors", config="configs/sd15")
    (tmp_path / "configs" / "sd15" / "model_index.json").write_text("{}")
    assert _spec(tmp_path, single_file="x.safetensors", config="configs/sd15").config == str(tmp_path / "configs" / "sd15")
    assert _spec(tmp_path, single_file="x.safetensors", config="org/repo").config == "org/repo"  # a hub id


@pytest.mark.parametrize("config", [None, "nobody/no-such-config"])
def test_single_file_without_usable_config_offline_says_to_set_config(tmp_path, monkeypatch, models_dir, config):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    checkpoint = models_dir / "tiny-sd15-single-file" / "tiny-sd15.safetensors"
    with pytest.raises(ModelLoadError, match=r"Model 'm' \(single_file: .*\).*Set `config:` to a local diffusers folder"):
        load_pipeline(_spec(tmp_path, single_file=str(checkpoint), config=config), "cpu")


def test_uncached_hub_id_while_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError, match=r"Model 'm' \(hub_id: nobody/no-such-model\).*not in the local cache"):
        load_pipeline(_spec(tmp_path, hub_id="nobody/no-such-model"), "cpu")


def test_unknown_scheduler_names_the_model(tmp_path, models_dir):
    spec = _spec(tmp_path, path=str(models_dir / "tiny-sd15"), scheduler="WarpDriveScheduler")
    with pytest.raises(ModelLoadError, match="Model 'm': unknown scheduler 'WarpDriveScheduler'"):
        load_pipeline(spec, "cpu")


def test_corrupt_weights_name_the_model(tmp_path, models_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models_dir / "tiny-sd15", broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"Model 'm' \(path: .*broken\) failed to load"):
        load_pipeline(_spec(tmp_path, path="broken"), "cpu")


def test_a_pipeline_type_without_img2img_says_so(tmp_path):
    import diffusers

    diffusers.DDPMPipeline(unet=diffusers.UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                                      down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2),
                           scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ModelLoadError, match=r"Model 'm'.*no image-to-image form"):
        load_pipeline(_spec(tmp_path, path="ddpm"), "cpu")
