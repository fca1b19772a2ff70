"""What a finished image is: its typed record, where it lives, and how the record travels in the PNG.

The record is the only way a result's fields travel: the runner builds it, the PNG
carries it (AUTOMATIC1111 `parameters` text plus the full record as JSON), and the
Dagster layer, the report and the freshness check read it back from there.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin
from upath import UPath

from .images import MAX_KEY_BYTES, is_utf8, partition_key_for
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
    # Whether the model read only the start of the prompt, per family (families.prompt_truncated): a CLIP tokenizer
    # over 77 tokens for SD 1.x/2.x and SDXL; T5 over max_sequence_length for SD3 and Flux.1, whose CLIP reads
    # 77 tokens by design. None in records written before it existed.
    prompt_truncated: bool | None = _partition(default=None)
    prompt_template: str | None = _partition(default=None)  # the prompt list's line, when it was a template
    # Which try at the model's quality gates was kept (0: the draw's own seed; `seed` is the kept attempt's). None in
    # records written before gates existed.
    attempt: int | None = _partition(default=None)
    # The gates and every attempt's measures and failed gates (quality.verdict): {"passed", "reason", "gates",
    # "attempts": [{"attempt", "seed", "contrast", "change", "prompt_truncated", "failed": {gate: reason}}]}.
    quality: dict | None = None
    negative_prompt: str = ""
    model_source: str = ""
    model_hash: str | None = None  # AUTOMATIC1111's short hash of the weights (None for hub ids)
    # The entry's LoRA adapters on the base, each {"name", "weight", "hash"} (A1111's `Lora hashes` value); None
    # for an entry without adapters, and in records written before they existed.
    loras: list[dict] | None = None
    # The entry's textual-inversion embeddings, each {"token", "name", "hash"} (A1111's `TI hashes` value); None for
    # an entry without, and in records written before they existed.
    embeddings: list[dict] | None = None
    # What ran beside the source (engine/pairs.py): each {"role": "mask" or a control type, "file" (its name; a computed
    # control's path relative to the result's folder), "sha256"} with a ControlNet's {"controlnet", "scale"}, and
    # {"role", "run_without": true} for a pair the image lacked; None without pairs.
    pairs: list[dict] | None = None
    dtype: str = ""
    # Whether A1111 emphasis such as `(word:1.3)` was applied (the entry's `prompt_weighting`, through compel) or the
    # text reached the encoders as written; None in records written before it was kept.
    prompt_weighting: bool | None = None
    # The entry's lossy `quantize` ("int8", "fp8"); None without it (and in older records), so not shown then.
    quantize: str | None = _partition(default=None)
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
    output_file: str = ""  # the result's file name, as written (a result adopted from its legacy name keeps it)
    created_at: str = ""

    def partition_metadata(self) -> dict:
        """The fields a Dagster partition shows, skipping those an older record lacks."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("partition_metadata") and getattr(self, f.name) is not None
        }

    @property
    def quality_failure(self) -> str | None:
        """Why the kept result fails its quality gates after every attempt, or None (passed, or made before gates)."""
        return None if self.quality is None or self.quality["passed"] else self.quality["reason"]

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
    variants: tuple[int, ...] = ()  # which of its results failed; () for all (or a record written before this field)


def output_file_name(source_path: str) -> str:
    """The result's path under the output folder for a source's path under the images folder: the one place the
    naming rule lives. The source's own folders and name are kept, spaces, Unicode and case included; only the
    extension changes.

    - A name `<stem>.jpg` whose stem has no dot drops the `.jpg`: `cat/IMG 0042 (copy).jpg` ->
      `cat/IMG 0042 (copy).png`, and the camera spelling keeps its case: `IMG_0042.JPG` -> `IMG_0042.PNG`.
    - Any other name with a dot keeps its whole name: `coffee.png` -> `coffee.png.png`, `coffee.jpeg` ->
      `coffee.jpeg.png`, `photo.2024.jpg` -> `photo.2024.jpg.png`.
    - A name without a dot gets an empty extension: `coffee` -> `coffee..png`.
    - A folder or name no result can carry as it is (one holding `~`, which marks variants, or ending in `.`, a
      name too long for a file name with its extension, bytes that are not UTF-8, control characters or `\\`)
      is replaced by its partition key and a `~`: `x~v2.jpg` -> `x_v2.jpg-<8 hex>~.png`, `a\\b/c.jpg` ->
      `a_b-<8 hex>~/c.png`.

    Decided by the path alone, so a result's name never changes when other files come or go, and no two sources
    share one, part by part: a kept part holds no `~`, a replaced one always does, and keys differ where names
    do. Within a folder, kept names of the first kind hold one dot, the second's two or more and never end in
    `..png` (no kept name ends in `.`), the third's exactly two ending in `..png`; each is read back from its
    result. A variant's `~v2` (variant_file_name) never meets a kept name either. Only `.jpg` is shortened:
    shortening a second extension too would give `coffee.jpg` and `coffee.jpeg` one name. Results of older
    versions are named by their partition key (keyed_result_name); adopt_earlier_result moves them here.
    """
    *folders, name = parts = source_path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{source_path!r} is not a path under the images folder; refusing to name a result for it.")
    kept = [part if _keeps(part) else partition_key_for(part) + KEY_NAMED for part in folders]
    # Bound as keys are, so a variant's `~v64` and the atomic writer's `.<name>.XXXXXXXX.tmp` fit 143 bytes too.
    if _keeps(name) and len(_png_name(name).encode("utf-8")) <= MAX_KEY_BYTES:
        return "/".join([*kept, _png_name(name)])
    return "/".join([*kept, f"{partition_key_for(name)}{KEY_NAMED}.png"])


KEY_NAMED = "~"  # ends a folder or stem named by its key: no kept name holds it
_SHORT_EXTENSIONS = {"jpg": ".png", "JPG": ".PNG"}


def _png_name(name: str) -> str:
    stem, dot, extension = name.rpartition(".")
    if dot and stem and "." not in stem and extension in _SHORT_EXTENSIONS:
        return stem + _SHORT_EXTENSIONS[extension]
    return f"{name}.png" if dot else f"{name}..png"


def _keeps(part: str) -> bool:
    """Whether a result path can hold this folder or file name as it is, on any file system or object store."""
    return not part.endswith(".") and not _NEVER_KEPT.search(part) and is_utf8(part)


_NEVER_KEPT = re.compile(r"[\x00-\x1f\x7f\\~]")  # control characters, `\`, and KEY_NAMED (`~`)


def keyed_result_name(key: str) -> str:
    """Where earlier versions named the key's result (`harbour_at_dusk.jpg-f9e295aa.png` for
    `harbour at dusk.jpg`); for a key that is its file's own name, output_file_name gives the same."""
    *folders, name = key.split("/")
    return "/".join([*folders, _png_name(name)])


def path_inside(folder: str | os.PathLike, relative: str) -> UPath:
    """`<folder>/<relative>` (a local path or a URL), refusing a `relative` (a result name or a key) that could
    lead out of it."""
    if any(part in ("", ".", "..") or "\\" in part or "\x00" in part for part in relative.split("/")):
        raise ValueError(f"{relative!r} would write outside {folder}; refusing.")
    return _folder_location(folder) / relative


def relative_result_path(output_dir: str | os.PathLike, output_path: str | os.PathLike) -> str:
    """A result's path under the output folder (`cat/001.png`), from the path path_inside gave it."""
    return str(output_path).removeprefix(str(_folder_location(output_dir))).lstrip("/")


def _folder_location(folder: str | os.PathLike) -> UPath:
    """The output folder as results are placed in it; a local one resolved once per process (a pass over a million
    images asks for it for each)."""
    return _resolved(os.fspath(folder)) if isinstance(folder, (str, Path)) else _placed(location(folder))


@functools.lru_cache(maxsize=64)
def _resolved(folder: str) -> UPath:
    return _placed(location(folder))


def _placed(directory: UPath) -> UPath:
    return directory.resolve() if is_local(directory) else directory


def variant_file_name(name: str, variant: int) -> str:
    """Variant `variant` of the result named `name`: variant 0 is the result itself, variant 2 of `cat/001.png`
    is `cat/001~v2.png` (its case kept: `IMG_7~v2.PNG`)."""
    return name if variant == 0 else f"{name[:-4]}~v{variant}{name[-4:]}"


def result_path(output_dir: str | os.PathLike, source_path: str, variant: int = 0) -> UPath:
    """Where the source's `variant`-th result lives: `<output_dir>/<output_file_name(source_path)>` (a local
    path or a URL)."""
    return path_inside(output_dir, variant_file_name(output_file_name(source_path), variant))


def keyed_result_path(output_dir: str | os.PathLike, key: str, variant: int = 0) -> UPath:
    """Where the key's result was written before results kept their source's name (keyed_result_name), and
    where it is looked for when its source is gone."""
    return path_inside(output_dir, variant_file_name(keyed_result_name(key), variant))


def _earlier_paths(output_dir: str | os.PathLike, key: str, variant: int) -> list[UPath]:
    """Where earlier versions wrote the key's `variant`-th result: by its key, and first of all `<key>.png`."""
    paths = [keyed_result_path(output_dir, key, variant)]
    if variant == 0 and "/" not in key:
        paths.append(path_inside(output_dir, f"{key}.png"))
    return paths


def adopt_earlier_result(output_dir: str | os.PathLike, source_path: str, variant: int = 0, _depth: int = 0) -> UPath:
    """The source's result path (result_path), after moving its result there from a name an earlier version gave
    it, if one is there: the one place results of older versions are renamed, so they are reused, never redone.

    Only a file whose record names this key and variant moves; a file at the new name that already holds it
    wins, and the earlier file is left as it is, as is a file there the project did not write. Where another
    source's result sits at the new name under a name an earlier version gave it (`coffee.png` was the result of
    `coffee`; it is `coffee.jpg`'s name now), it moves to its own new name first, whether or not this source has
    an earlier result. Failure records keep their names (`.failures/<key>.json`).
    """
    path = result_path(output_dir, source_path, variant)
    folders, _, name = source_path.rpartition("/")
    key = partition_key_for(name, folders)
    current = read_record(path)
    if current is not None and (current.key, current.variant) == (key, variant):
        return path
    if current is not None and not _move_aside(output_dir, current, path, _depth):
        return path  # another image's result stays there; the run names it
    if current is None and path.exists():
        return path  # a file the project did not write: never replaced; the run names it
    for earlier in _earlier_paths(output_dir, key, variant):
        if earlier == path or not earlier.exists():
            continue
        record = read_record(earlier)
        if record is not None and (record.key, record.variant) == (key, variant):
            try:
                rename_atomic(earlier, path)
            except FileNotFoundError:
                pass  # another process moved it first
            return path
    return path


def _move_aside(output_dir: str | os.PathLike, record: ResultRecord, path: UPath, depth: int) -> bool:
    """Move the result at `path` (whose record is `record`) to its own name, if an earlier version put it there;
    whether `path` is free now."""
    try:
        if depth >= 4 or not record.source_file or path not in _earlier_paths(output_dir, record.key, record.variant):
            return False
        adopt_earlier_result(output_dir, record.source_file, record.variant, depth + 1)
    except ValueError:  # a record naming a key or file no result of ours could have
        return False
    return not path.exists()


class ResultListing:
    """The names the local output folder holds, each folder listed once when first asked: a pass over a million
    images tells those with no result from a listing per folder instead of several lookups per image. A snapshot:
    a result written after its folder was listed reads as missing (its run then reuses it)."""

    KEPT_FOLDERS = 8  # passes go folder by folder: only the last few listings are kept

    def __init__(self, output_dir: str | os.PathLike):
        self._root = os.fspath(_folder_location(output_dir))
        self._folders: dict[str, frozenset[str] | None] = {}

    def may_hold(self, relative: str) -> bool:
        """False only when `relative`'s folder was listed (or is missing) without that name."""
        folder, _, name = relative.rpartition("/")
        if folder not in self._folders:
            if len(self._folders) >= self.KEPT_FOLDERS:
                del self._folders[next(iter(self._folders))]
            try:
                self._folders[folder] = frozenset(os.listdir(os.path.join(self._root, folder)))
            except FileNotFoundError:
                self._folders[folder] = frozenset()
            except OSError:
                self._folders[folder] = None  # cannot tell: look the file up as usual
        names = self._folders[folder]
        return names is None or name in names

    def may_have_result(self, key: str, source_path: str, variants: int) -> bool:
        """Whether any of the source's results may be in the folder, under its name or one an earlier version gave."""
        names = [output_file_name(source_path), keyed_result_name(key)]
        candidates = [variant_file_name(name, variant) for name in names for variant in range(variants)]
        if "/" not in key:
            candidates.append(f"{key}.png")
        return any(self.may_hold(name) for name in candidates)

    @staticmethod
    def of(output_dir: str | os.PathLike) -> ResultListing | None:
        """A listing of a local output folder; None for object stores (each result is looked up there)."""
        return ResultListing(output_dir) if is_local(location(output_dir)) else None


def result_location(output_dir: str | os.PathLike, key: str, source_path: str | None, variant: int = 0) -> UPath:
    """Where the key's `variant`-th result is: under its source's name (result_path), or under its key where the
    source is gone (`source_path` None) and its name cannot be known."""
    if source_path is None:
        return keyed_result_path(output_dir, key, variant)
    return result_path(output_dir, source_path, variant)


def read_result(
    output_dir: str | os.PathLike, key: str, source_path: str | None = None, variant: int = 0
) -> ResultRecord | None:
    """The record of the key's `variant`-th result (at result_location), or None if it has none: how the
    schedule, the report, the asset check and the dataset see what exists. A result under a name an earlier
    version gave it is adopted first."""
    if source_path is None:
        path = keyed_result_path(output_dir, key, variant)  # as result_location has it
    else:
        record = read_record(result_path(output_dir, source_path, variant))
        if record is not None and (record.key, record.variant) == (key, variant):
            return record  # where it belongs, as nearly every result is: read once
        path = adopt_earlier_result(output_dir, source_path, variant)  # result_location's, once adopted there
    record = read_record(path)
    return record if record is not None and (record.key, record.variant) == (key, variant) else None


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
    failure = FailureRecord(**{name: value for name, value in data.items() if name in known})
    return dataclasses.replace(failure, variants=tuple(failure.variants))  # a JSON list


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
    "FlowMatchEulerDiscreteScheduler": "Euler",  # as Forge writes it for SD3 and Flux.1
    "FlowMatchHeunDiscreteScheduler": "Heun",
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
