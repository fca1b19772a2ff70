"""What a finished image is: its typed record, where it lives, and how the record travels in the PNG.

The record is the only way a result's fields travel: the runner builds it, the PNG
carries it (AUTOMATIC1111 `parameters` text plus the full record as JSON), and the
Dagster layer, the report and the freshness check read it back from there.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field

from PIL import Image, PngImagePlugin
from upath import UPath

from .output_location import is_local, location, rename_atomic, write_bytes_atomic

PARAMETERS_CHUNK = "parameters"  # AUTOMATIC1111's key, read by most image tools
RECORD_CHUNK = "random_diffusion"  # the full machine-readable record, as JSON
FAILURES_DIR = ".failures"


def _partition(measurement: bool = False, **kwargs):
    """A field that is also shown as per-partition metadata in Dagster; measurements are what its Plots tab draws."""
    return field(metadata={"partition_metadata": True, "measurement": measurement}, **kwargs)


@dataclass(frozen=True)
class ResultRecord:
    """How one result image was made, as stored in its PNG. Fields a partition shows are marked."""

    key: str
    prompt: str = _partition()
    model: str = _partition()
    seed: int = _partition()
    strength: float = _partition()
    num_inference_steps: int = _partition()
    guidance_scale: float = _partition()
    source_size: str = _partition()
    output_size: str = _partition()
    # A batch's load and inference time, shared equally by its images.
    pipeline_load_seconds: float = _partition(measurement=True)
    inference_seconds: float = _partition(measurement=True)
    total_seconds: float = _partition(measurement=True)
    vram_peak_allocated_mb: float | None = _partition(measurement=True)  # None on devices without GPU memory
    vram_peak_reserved_mb: float | None = _partition(measurement=True)
    rss_peak_mb: float = _partition(measurement=True)
    device: str = _partition()
    scheduler: str = _partition()
    batch_size: int = _partition()
    fallback: str = _partition()
    safety_checker: str = _partition()
    fingerprint: str = _partition()  # last of the required ones: a partition page opens on the prompt, not a hash
    prompt_truncated: bool | None = _partition(default=None)  # absent in records written before it existed
    prompt_template: str | None = _partition(default=None)  # the prompt list's line, when it was a template
    negative_prompt: str = ""
    model_source: str = ""
    model_hash: str | None = None  # AUTOMATIC1111's short hash of the weights (None for hub ids)
    dtype: str = ""
    run_seed: int = 0
    source_file: str = ""  # relative to the images folder: records carry no local paths
    variant: int = 0  # which of the image's results: 0 is the one a single-result run makes
    roll: int = 0  # how often this variant was re-rolled (Planner.rerolls): its draw depends on it
    label: str = ""  # the source's class folder
    caption: str | None = None  # the source's caption, if it has one
    source_sha256: str = ""
    # With the fingerprint these let a schedule see a stale result without hashing the source.
    source_bytes: int | None = None
    source_mtime_ns: int | None = None
    model_input_size: str = ""
    output_file: str = ""  # relative to the output folder, as written (a result adopted from its legacy name keeps it)
    created_at: str = ""

    def partition_metadata(self) -> dict:
        """The fields a Dagster partition shows, skipping those an older record lacks."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("partition_metadata") and getattr(self, f.name) is not None
        }

    @classmethod
    def measurements(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.metadata.get("measurement")}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> ResultRecord | None:
        """The record in `raw`, or None if it is not one (unknown keys from newer versions are ignored)."""
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not data.get("key") or not data.get("fingerprint"):
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{name: value for name, value in data.items() if name in known})
        except TypeError:  # a field this version requires is missing: treat as not ours, so it is redone
            return None


@dataclass(frozen=True)
class FailureRecord:
    """Why an image has no current result; kept beside the outputs for the report."""

    key: str
    model: str | None
    error: str
    source_path: str = ""


def output_file_name(key: str) -> str:
    """The result's file name for a partition key: the one place the naming rule lives.

    - A key `<stem>.jpg` whose stem has no dot drops the `.jpg`: `coffee.jpg` -> `coffee.png`, and the camera
      spelling keeps its case: `IMG_0042.JPG` -> `IMG_0042.PNG`.
    - Any other key with a dot keeps its whole name: `coffee.png` -> `coffee.png.png`, `coffee.webp` ->
      `coffee.webp.png`, `coffee.jpeg` -> `coffee.jpeg.png`, `photo.2024.jpg` -> `photo.2024.jpg.png`,
      `a_b.jpg-5e30dffb` (the key of `a b.jpg`) -> `a_b.jpg-5e30dffb.png`.
    - A key without a dot (a file with no extension) gets an empty extension: `coffee` -> `coffee..png`.

    Decided by the key alone, so a result's name never changes when other files come or go, and no two keys
    share a name: the first group's names hold exactly one dot; the second's hold two or more and never `..`
    (partition_key_for never makes a key with `..` or ending in `.`); only the third's hold `..`. Within each
    group the key is read back from the name (`.JPG` and `.jpg` differ by case, as their keys do; a folder that
    ignores case cannot hold both sources). Only `.jpg` is shortened: shortening a second extension too would
    give `coffee.jpg` and `coffee.jpeg` one name. Keys are themselves unique per file name (partition_key_for),
    so `coffee.jpg`, `coffee.png` and `coffee.webp` in one folder write `coffee.png`, `coffee.png.png` and
    `coffee.webp.png`. Results of older versions are named `<key>.png` (legacy_output_path_for);
    adopt_legacy_result moves them to these names.
    """
    folders, _, key = key.rpartition("/")  # a file in a subfolder: its result in the same subfolder
    stem, dot, extension = key.rpartition(".")
    if dot and stem and "." not in stem and extension in _SHORT_EXTENSIONS:
        name = stem + _SHORT_EXTENSIONS[extension]
    else:
        name = f"{key}.png" if dot else f"{key}..png"
    return f"{folders}/{name}" if folders else name


_SHORT_EXTENSIONS = {"jpg": ".png", "JPG": ".PNG"}


def _checked_folder(output_dir: str | os.PathLike, key: str) -> UPath:
    """The output folder, once the key is known not to lead out of it (a `/` only between subfolders' keys)."""
    parts = key.split("/")
    if any(not part or part in (".", "..") or "\\" in part or "\x00" in part for part in parts):
        raise ValueError(f"Partition key {key!r} would write outside {output_dir}; refusing.")
    directory = location(output_dir)
    return directory.resolve() if is_local(directory) else directory


def output_path_for(output_dir: str | os.PathLike, key: str) -> UPath:
    """`<output_dir>/<output_file_name(key)>` (a local path or a URL), refusing keys that could leave it."""
    return _checked_folder(output_dir, key) / output_file_name(key)


def variant_file_name(key: str, variant: int) -> str:
    """The name of the key's variant `variant`: variant 0 is the result (output_file_name), variant 2 of
    `cat/001.jpg` is `cat/001~v2.png` (no key holds `~`, so no other result has that name)."""
    name = output_file_name(key)  # ends in .png, or .PNG for a .JPG: the variant keeps that case
    return name if variant == 0 else f"{name[:-4]}~v{variant}{name[-4:]}"


def variant_path_for(output_dir: str | os.PathLike, key: str, variant: int) -> UPath:
    """`<output_dir>/<variant_file_name>`, refusing keys that could leave it."""
    return _checked_folder(output_dir, key) / variant_file_name(key, variant)


def legacy_output_path_for(output_dir: str | os.PathLike, key: str) -> UPath:
    """`<output_dir>/<key>.png`: where results were written before output_file_name (e.g. `coffee.jpg.png`); a file
    in a subfolder has no legacy name (its key is newer than that rule)."""
    if "/" in key:
        return output_path_for(output_dir, key)
    return _checked_folder(output_dir, key) / f"{key}.png"


def adopt_legacy_result(output_dir: str | os.PathLike, key: str) -> None:
    """Move the key's result from its legacy name `<key>.png` to output_path_for, if one is there: the one place
    results of older versions are renamed, so they are reused, never redone.

    Only a file whose record names this key moves; a current-named file that already holds this key's
    result wins, and the legacy file is left as it is. A dotless key's legacy name (`coffee.png`) is the
    current name of `coffee.jpg`: when `coffee.jpg`'s legacy result moves in, a legacy result of `coffee`
    found there moves to `coffee..png` first. Failure records keep their names (`.failures/<key>.json`).
    """
    path = output_path_for(output_dir, key)
    legacy = legacy_output_path_for(output_dir, key)
    if legacy == path or not legacy.exists():
        return
    legacy_record = read_record(legacy)
    if legacy_record is None or legacy_record.key != key:
        return  # not this key's result (e.g. `coffee.png` holds the result of `coffee.jpg` now)
    current = read_record(path)
    if current is not None and current.key == key:
        return
    if current is not None and _is_legacy_name(output_dir, current.key, path):
        adopt_legacy_result(output_dir, current.key)  # a legacy result of another key sits where this one goes
    try:
        rename_atomic(legacy, path)
    except FileNotFoundError:
        pass  # another process moved it first


def read_result(output_dir: str | os.PathLike, key: str) -> ResultRecord | None:
    """The record of the key's result, or None if it has none: how the schedule, the report and the asset check see
    what exists (a result under its legacy name is adopted first)."""
    adopt_legacy_result(output_dir, key)
    return read_record(output_path_for(output_dir, key))


def _is_legacy_name(output_dir: str | os.PathLike, key: str, path: UPath) -> bool:
    try:
        return legacy_output_path_for(output_dir, key) == path
    except ValueError:  # a record naming a key no result of ours could have
        return False


def failure_path(output_dir: str | os.PathLike, key: str) -> UPath:
    return location(output_dir) / FAILURES_DIR / f"{key}.json"


def write_result_png(image: Image.Image, path: str | os.PathLike, parameters: str, record: ResultRecord) -> None:
    """Write a PNG carrying its generation parameters, via a temporary file and a rename."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_CHUNK, parameters)
    info.add_itxt(RECORD_CHUNK, record.to_json())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    write_bytes_atomic(path, buffer.getvalue())


def read_record(path: str | os.PathLike) -> ResultRecord | None:
    """The record embedded in a result PNG, or None if the file is missing, not ours, truncated or corrupted.

    write_result_png puts the record before the pixels, so it is read without decoding them, and every chunk's
    checksum (the pixels' too) is checked instead: a fraction of a decode (benchmarks/record_read.py), which the
    reuse check, the asset check, staleness and the report pay once per image.
    """
    try:
        with location(path).open("rb") as handle, Image.open(handle) as image:
            raw = image.info.get(RECORD_CHUNK) if image.format == "PNG" else None
            if raw is not None:
                image.verify()  # raises on a truncated file or a checksum that does not match
            elif hasattr(image, "text"):
                raw = image.text.get(RECORD_CHUNK)  # after the pixels (another tool rewrote it): decodes them
    except (OSError, SyntaxError, ValueError):
        return None
    return None if raw is None else ResultRecord.from_json(raw)


def write_failure(output_dir: str | os.PathLike, failure: FailureRecord) -> None:
    payload = json.dumps(dataclasses.asdict(failure), indent=2).encode()
    write_bytes_atomic(failure_path(output_dir, failure.key), payload)


def read_failure(output_dir: str | os.PathLike, key: str) -> FailureRecord | None:
    path = failure_path(output_dir, key)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    known = {f.name for f in dataclasses.fields(FailureRecord)}
    return FailureRecord(**{name: value for name, value in data.items() if name in known})


def clear_failure(output_dir: str | os.PathLike, key: str) -> None:
    failure_path(output_dir, key).unlink(missing_ok=True)


# diffusers scheduler class -> the sampler name AUTOMATIC1111 writes (and A1111-reading tools expect).
A1111_SAMPLERS = {
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "UniPCMultistepScheduler": "UniPC",
    "DEISMultistepScheduler": "DEIS",
    "LCMScheduler": "LCM",
}


def a1111_sampler(scheduler_class: str, karras_sigmas: bool = False) -> str:
    """A1111's name for a diffusers scheduler; unknown ones keep their class name."""
    name = A1111_SAMPLERS.get(scheduler_class, scheduler_class)
    return f"{name} Karras" if karras_sigmas and name in A1111_SAMPLERS.values() else name


def a1111_parameters(prompt: str, negative_prompt: str, settings: dict) -> str:
    """The `parameters` text AUTOMATIC1111 writes: prompt, negative prompt, one line of `Key: value`."""

    def quote(value) -> str:
        text = str(value)
        return json.dumps(text) if any(c in text for c in ",:\n") else text

    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)
