"""Intake that one file cannot stop, partition keys that cannot collide, names that fit, aspect that survives."""

import io
import os
import random
import re
import unicodedata

import pytest
from PIL import Image

from random_diffusion_dagster import settings
from random_diffusion_dagster.engine import images
from random_diffusion_dagster.engine.images import partition_key_for, scan_folder
from random_diffusion_dagster.engine.output_location import write_bytes_atomic
from random_diffusion_dagster.engine.results import (
    FailureRecord,
    output_file_name,
    result_path,
    variant_file_name,
    write_failure,
)

DAGSTER_UNSAFE = re.compile(r"\.\.\.|[|,\[\]\x00-\x1f\x7f/\\]")
FILESYSTEM_NAME_LIMIT = 255  # bytes, ext4/xfs/btrfs/APFS; eCryptfs allows 143


def _touch(path, data=b"x"):
    path.write_bytes(data)
    return path


def _skipped(scan):
    return {entry.name: entry.reason for entry in scan.skipped}


# --- 1. intake -----------------------------------------------------------------------------------


def test_symlink_loop_does_not_stop_the_scan(tmp_path):
    _touch(tmp_path / "good.png")
    os.symlink("loop_b.png", tmp_path / "loop_a.png")
    os.symlink("loop_a.png", tmp_path / "loop_b.png")
    os.symlink("self.png", tmp_path / "self.png")
    assert [f.name for f in scan_folder(tmp_path)] == ["good.png"]


def test_skipped_entries_say_why(tmp_path):
    _touch(tmp_path / "good.png")
    _touch(tmp_path / "real.png")
    os.symlink("real.png", tmp_path / "link_to_real.png")
    os.symlink("self.png", tmp_path / "self.png")
    os.symlink("gone.png", tmp_path / "dangling.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder").mkdir()
    os.symlink("folder", tmp_path / "link_to_folder")
    _touch(tmp_path / ".hidden.png")
    os.symlink(".nowhere", tmp_path / ".hidden_dangling")

    scan = images.scan_images(tmp_path)

    assert [f.name for f in scan.files] == ["good.png", "link_to_real.png", "real.png"]
    reasons = _skipped(scan)
    # A symlinked folder is named (not followed); real folders are scanned; hidden files are silent.
    assert sorted(reasons) == ["dangling.png", "link_to_folder", "pipe.png", "self.png"]
    assert "symlink loop" in reasons["self.png"]
    assert "dangling symlink" in reasons["dangling.png"] and "gone.png" in reasons["dangling.png"]
    assert "not a regular file" in reasons["pipe.png"]
    assert scan.files == scan_folder(tmp_path)


def test_unreadable_file_is_skipped_not_fatal(tmp_path, monkeypatch):
    _touch(tmp_path / "good.png")
    locked = _touch(tmp_path / "locked.png")
    locked.chmod(0)
    if os.access(locked, os.R_OK):
        # Root reads whatever the mode says, so chmod 000 cannot make the condition here; deny it
        # through os.access, which is what scan_images asks, so the handling is still exercised.
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: os.fspath(p) != str(locked) and real_access(p, mode))
    scan = images.scan_images(tmp_path)
    assert [f.name for f in scan.files] == ["good.png"]
    assert "no permission to read" in _skipped(scan)["locked.png"]


def test_a_file_given_as_the_images_folder_is_named_as_such(tmp_path):
    not_a_folder = _touch(tmp_path / "images")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder: point RANDOM_DIFFUSION_IMAGES_DIR at"):
        scan_folder(not_a_folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "absent")


def test_names_that_are_not_utf8_get_clean_keys(tmp_path):
    os.close(os.open(os.fsencode(tmp_path) + b"/caf\xe9 \xff.png", os.O_CREAT | os.O_WRONLY))
    _touch(tmp_path / "caf_.png")
    scan = images.scan_images(tmp_path)
    assert not scan.skipped and len(scan.files) == 2
    keys = [f.partition_key for f in scan.files]
    assert len(set(keys)) == 2
    for key in keys:
        key.encode("utf-8")  # no surrogate escapes left in a key
        assert not DAGSTER_UNSAFE.search(key)


def test_a_residual_key_collision_is_reported_not_raised(tmp_path, monkeypatch):
    for name in ("b.png", "a.png", "c.png"):
        _touch(tmp_path / name)
    monkeypatch.setattr(
        images, "partition_key_for", lambda name, folder="": "same" if name in ("a.png", "b.png") else name
    )
    scan = images.scan_images(tmp_path)
    assert [f.name for f in scan.files] == ["a.png", "c.png"]
    reason = _skipped(scan)["b.png"]
    assert "a.png" in reason and "b.png" in reason and "same" in reason


# --- 2. keys -------------------------------------------------------------------------------------


def _adversarial_names():
    nfc = unicodedata.normalize("NFC", "café.png")
    nfd = unicodedata.normalize("NFD", "café.png")
    long_prefix = "p" * 120
    names = [
        "a b.jpg",
        "a_b.jpg-5e30dffb",
        "a_b.jpg",
        "a|b.jpg",
        "a,b.jpg",
        "a[b].jpg",
        "a...b.jpg",
        "a..b.jpg",
        "a.b.jpg",
        "_a_b.jpg",
        "a_b.jpg_",
        "a_b.jpg.",
        nfc,
        nfd,
        "Red.png",
        "red.png",
        "RED.PNG",
        "ReD.png",
        "x-deadbeef",
        "x-DEADBEEF",
        "x-deadbeef-00000000",
        "x",
        "image",
        "...",
        "___",
        "---",
        "-",
        "tab\there.png",
        "new\nline.png",
        "日本.png",
        "日本 .png",
        "тест фото.jpg",
        "тест_фото.jpg",
        long_prefix + "1.png",
        long_prefix + "2.png",
        long_prefix + ".png",
        long_prefix,
        "p" * 300,
        "日" * 80 + ".png",
        "日" * 81 + ".png",
        "caf\udce9.png",
        "caf\udcff.png",
        "caf_.png",
    ]
    rng = random.Random(7)
    alphabet = "ab_-. |,[]éeé\u0301日\x01"
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    names = list(dict.fromkeys(names))
    # Names that equal other names' keys, twice over: a file may be named like any key.
    for _ in range(2):
        names = list(dict.fromkeys(names + [partition_key_for(n) for n in names]))
    return names


def test_partition_keys_are_injective_over_adversarial_names():
    names = _adversarial_names()
    keys = {}
    for name in names:
        key = partition_key_for(name)
        assert key not in keys, f"{name!r} and {keys.get(key)!r} share the key {key!r}"
        keys[key] = name
    assert len(keys) == len(names) > 3000


def test_partition_keys_are_safe_file_and_dagster_names():
    for name in _adversarial_names():
        key = partition_key_for(name)
        assert key == partition_key_for(name)  # stable
        assert key not in ("", ".", "..") and not DAGSTER_UNSAFE.search(key), (name, key)
        assert len(key.encode("utf-8")) <= images.MAX_KEY_BYTES, (name, key)


def test_ordinary_names_keep_their_keys():
    for name in ("red.png", "blue.webp", "coffee.jpg", "cat-01_final.jpg", "日本.png", "тест.jpg", "x" * 116 + ".png"):
        assert partition_key_for(name) == name
    # Keys of names that were already hashed do not move either (outputs and partitions stay put).
    assert partition_key_for("a b.jpg") == "a_b.jpg-5e30dffb"
    assert partition_key_for("green photo.jpg") == "green_photo.jpg-13be0805"


def test_a_name_shaped_like_a_hashed_key_does_not_take_that_key(tmp_path):
    _touch(tmp_path / "a b.jpg")
    _touch(tmp_path / "a_b.jpg-5e30dffb")
    scan = images.scan_images(tmp_path)
    assert not scan.skipped
    keys = {f.name: f.partition_key for f in scan.files}
    assert keys["a b.jpg"] == "a_b.jpg-5e30dffb"
    assert re.fullmatch(r"a_b\.jpg-5e30dffb-[0-9a-f]{8}", keys["a_b.jpg-5e30dffb"])


def test_adversarial_files_in_one_folder_all_become_partitions(tmp_path):
    names = [n for n in _adversarial_names() if "/" not in n and "\x00" not in n and n not in (".", "..")]
    names = [n for n in names if not n.startswith(".") and len(os.fsencode(n)) <= FILESYSTEM_NAME_LIMIT]
    for name in names:
        _touch(tmp_path / name)
    present = {os.fsdecode(n) for n in os.listdir(os.fsencode(tmp_path))}  # NFC/NFD pairs may fold on some filesystems
    scan = images.scan_images(tmp_path)
    assert not scan.skipped
    assert {f.name for f in scan.files} == present and len(present) > 1000
    assert len({f.partition_key for f in scan.files}) == len(scan.files)


# --- 3. names that fit ---------------------------------------------------------------------------


def _mixed_script_name(target_bytes):
    pieces, name = "aé日😀ж", ""
    while len((name + pieces[len(name) % 5] + ".jpg").encode()) <= target_bytes:
        name += pieces[len(name) % 5]
    return name + ".jpg"


@pytest.mark.parametrize(
    "name",
    ["日" * 80 + ".png", _mixed_script_name(250), _mixed_script_name(255), "é" * 125 + ".jpg", "b" * 251 + ".png"],
    ids=["80-cjk", "250-bytes-mixed", "255-bytes-mixed", "250-bytes-accents", "255-bytes-ascii"],
)
def test_output_and_failure_names_fit_the_filesystem(tmp_path, name):
    source_dir, out = tmp_path / "images", tmp_path / "out"
    source_dir.mkdir()
    _touch(source_dir / name)
    (source,) = scan_folder(source_dir)
    key, result = source.partition_key, output_file_name(source.relative_path)
    # The names written for a result, its last variant and a failure record, with the atomic writer's temporary
    # names.
    last_variant = variant_file_name(result, settings.MAX_VARIANTS - 1)
    (out / ".failures").mkdir(parents=True)
    for file_name in (f".{result}.abcdefgh.tmp", result, f".{last_variant}.abcdefgh.tmp", last_variant):
        _touch(out / file_name)
    for file_name in (f".{key}.json.abcdefgh.tmp", f"{key}.json"):
        _touch(out / ".failures" / file_name)
    assert len(f".{last_variant}.abcdefgh.tmp".encode()) <= 143  # even eCryptfs holds the longest of them
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    write_bytes_atomic(result_path(out, source.relative_path), png.getvalue())
    write_failure(out, FailureRecord(key, "m", "error"))
    assert (out / result).is_file() and (out / ".failures" / f"{key}.json").is_file()
    assert len(key.encode()) <= images.MAX_KEY_BYTES
