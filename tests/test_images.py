import io
import re

import pytest
from PIL import Image

from random_diffusion_dagster.engine.images import (
    ImageLoadError,
    load_rgb,
    partition_key_for,
    prepare_model_input,
    scan_folder,
)

DAGSTER_UNSAFE = re.compile(r"\.\.\.|[|,\[\]\x00-\x1f/\\]")


@pytest.mark.parametrize(
    "name",
    [
        "a b.png",
        "weird|name.jpg",
        "x...y.png",
        "[1],2.png",
        "тест фото.jpg",
        "日本.png",
        "tab\there.png",
        "." * 5 + "x.png",
        "n" * 300 + ".png",
    ],
)
def test_partition_keys_are_dagster_safe_and_bounded(name):
    key = partition_key_for(name)
    assert not DAGSTER_UNSAFE.search(key)
    assert 0 < len(key) <= 120
    assert partition_key_for(name) == key  # stable


def test_safe_names_are_kept_as_they_are():
    assert partition_key_for("cat-01_final.jpg") == "cat-01_final.jpg"


def test_names_that_sanitise_alike_get_distinct_keys():
    names = ["a b.png", "a|b.png", "a_b.png", "a,b.png", "a b.jpg"]
    keys = [partition_key_for(n) for n in names]
    assert len(set(keys)) == len(names)


def test_large_image_is_downscaled_for_the_model():
    model_input = prepare_model_input(Image.new("RGB", (3072, 2048)), 512)
    assert model_input.size == (512, 341) and model_input.image.size == (512, 344)


def _save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_every_mode_loads_as_rgb(tmp_path):
    files = [
        _save(Image.new("RGBA", (20, 10), (255, 0, 0, 0)), tmp_path / "alpha.png"),
        _save(Image.new("P", (20, 10)), tmp_path / "palette.png"),
        _save(Image.new("CMYK", (20, 10), (0, 255, 0, 0)), tmp_path / "cmyk.jpg"),
        _save(Image.new("I;16", (20, 10), 40000), tmp_path / "sixteen.png"),
        _save(Image.new("L", (20, 10), 128), tmp_path / "gray.png"),
    ]
    for path in files:
        image = load_rgb(path)
        assert image.mode == "RGB" and image.size == (20, 10), path
    # Transparent pixels become white, not black; 16-bit gray is scaled, not clipped.
    assert load_rgb(tmp_path / "alpha.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_rgb(tmp_path / "sixteen.png").getpixel((0, 0))[0] == 40000 // 256


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(path).size == (20, 40)


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    full = io.BytesIO()
    Image.new("RGB", (200, 200), "blue").save(full, format="PNG")
    truncated = tmp_path / "half.png"
    truncated.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    for path in (text, truncated):
        with pytest.raises(ImageLoadError, match=re.escape(path.name)):
            load_rgb(path)
    # Runs decode the bytes they read and hashed: the error names the file, not Pillow's <_io.BytesIO object at ...>.
    with pytest.raises(ImageLoadError) as refused:
        load_rgb(io.BytesIO(text.read_bytes()), name=str(text))
    assert str(refused.value) == f"{text} cannot be decoded (truncated or not an image): cannot identify image file"


def test_oversized_image_is_refused_with_the_limit(tmp_path):
    path = _save(Image.new("RGB", (300, 300)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="big.png is 300x300.*89,999-pixel limit"):
        load_rgb(path, max_pixels=89_999)


def test_scan_skips_hidden_files_and_folders(tmp_path):
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"xy")
    assert [(f.name, f.size) for f in scan_folder(tmp_path)] == [("a.png", 2), ("b.png", 1)]


RATIOS = [(1, 1), (4, 3), (16, 9), (3, 1), (6, 1), (10, 1)]


@pytest.mark.parametrize("resolution", [64, 128, 512])
@pytest.mark.parametrize("ratio", RATIOS + [(b, a) for a, b in RATIOS if a != b], ids=lambda r: f"{r[0]}x{r[1]}")
def test_outputs_keep_the_source_aspect_ratio(ratio, resolution):
    k = 2000 // max(ratio)
    source = Image.new("RGB", (ratio[0] * k, ratio[1] * k), "red")
    model_input = prepare_model_input(source, resolution)
    width, height = model_input.image.size
    assert width % 8 == 0 and height % 8 == 0
    assert max(width, height) <= max(resolution, 320) + 7
    result = Image.new("RGB", model_input.image.size, "blue")  # what a pipeline returns: the input's size
    restored = model_input.restore(result)
    assert restored.size == model_input.size
    source_aspect, restored_aspect = ratio[0] / ratio[1], restored.width / restored.height
    assert abs(restored_aspect / source_aspect - 1) <= 0.02, (source.size, model_input.image.size, restored.size)


def test_a_panorama_is_not_squashed_to_multiples_of_eight():
    model_input = prepare_model_input(Image.new("RGB", (6000, 1000)), 128)
    assert model_input.size == model_input.image.size == (192, 32)  # the short side kept at 32 px
    assert model_input.restore(model_input.image).size == (192, 32)
    model_input = prepare_model_input(Image.new("RGB", (6000, 1000)), 512)
    assert model_input.size == (512, 85) and model_input.image.size == (512, 88)  # padded to 88, not squashed
    assert model_input.content_box == (0, 0, 512, 85) and model_input.restore(model_input.image).size == (512, 85)


def test_padding_repeats_the_edges_and_restore_crops_it_off():
    source = Image.new("RGB", (203, 61), "white")
    source.paste((255, 0, 0), (202, 0, 203, 61))  # last column red
    source.paste((0, 0, 255), (0, 60, 203, 61))  # last row blue
    model_input = prepare_model_input(source, 203)
    assert model_input.size == (203, 61) and model_input.image.size == (208, 64)
    assert model_input.image.crop(model_input.content_box).tobytes() == source.tobytes()
    assert model_input.image.getpixel((207, 5)) == (255, 0, 0)
    assert model_input.image.getpixel((5, 63)) == (0, 0, 255)
    assert model_input.restore(model_input.image).tobytes() == source.tobytes()


def test_restore_accepts_a_result_at_another_scale():
    model_input = prepare_model_input(Image.new("RGB", (300, 100)), 64)
    doubled = model_input.image.resize((model_input.image.width * 2, model_input.image.height * 2))
    assert model_input.restore(doubled).size == model_input.size
