"""Image I/O: finding source images, naming their partitions, loading, resizing, writing results."""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import io
import operator
import os
import re
import stat
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageDraw, ImageOps

from .output_location import location

# Keys name failure records (`.failures/<key>.json`) and results whose source name cannot be kept
# (results.output_file_name: `<key>~.png`, its variants `<key>~~v64.png`); the atomic writer's temporary file adds at
# most 14 bytes (`.<name>.XXXXXXXX.tmp`): 120 bytes keeps every one within 143 bytes (eCryptfs; ext4, APFS, NTFS allow
# 255), and keeps the keys of existing deployments' ASCII names, which were bound at 120 characters. Kept result names
# are bound alike.
MAX_KEY_BYTES = 120
HASH_DIGITS = 8
_HASHED_KEY = re.compile(rf"-[0-9a-f]{{{HASH_DIGITS}}}\Z")
_PLAIN_CHARACTERS = re.compile(r"[A-Za-z0-9_.\-]+")  # with _is_plain: names partition_key_for keeps as they are
# Pillow's decompression-bomb threshold (89.5 Mpx): Pillow only warns above it; we refuse.
MAX_SOURCE_PIXELS = Image.MAX_IMAGE_PIXELS
TOO_LARGE = "too large"  # probe_image's format for files Pillow refuses to even open as bombs


class ImageLoadError(ValueError):
    """A source image cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class SourceFile:
    """A file in the images folder, identified by what a directory scan gives cheaply."""

    name: str
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int = 0  # inode change time: moved by any write, rename, link, chmod; no program can set it back
    folder: str = ""  # its folder under the images folder, "/"-separated ("cat", "cat/kitten"); "" at the top

    @functools.cached_property
    def partition_key(self) -> str:  # cached: sensors ask for it several times per file per tick
        return partition_key_for(self.name, self.folder)

    @property
    def relative_path(self) -> str:
        """Its path under the images folder: `cat/001.jpg`, or `001.jpg` at the top."""
        return f"{self.folder}/{self.name}" if self.folder else self.name

    @property
    def label(self) -> str:
        return label_of(self.relative_path)


# The words `datasets` reads as split names in a path (datasets.data_files.SPLIT_KEYWORDS): a folder named so is a
# split (`train/<label>/...`), as in Hugging Face's ImageFolder layout.
SPLIT_WORDS = ("train", "training", "validation", "valid", "dev", "val", "test", "testing", "eval", "evaluation")


def split_of(relative_path: str) -> str | None:
    """The split an image's path puts it in (`train/cat/001.jpg`: "train"), or None: its first folder, where that is
    named as a split."""
    first, slash, _rest = relative_path.partition("/")
    return first if slash and first in SPLIT_WORDS else None


def label_of(relative_path: str) -> str:
    """An image's class in the ImageFolder layout (`<label>/...`, or `<split>/<label>/...`): its first folder under
    the images folder, after a split folder; "" for an image with none."""
    folders = relative_path.split("/")[:-1]
    if folders and split_of(relative_path):
        folders = folders[1:]
    return folders[0] if folders else ""


def partition_key_for(file_name: str, folder: str = "") -> str:
    """A Dagster-safe, file-name-safe, stable partition key for a file name; distinct names get distinct keys.

    A file in a subfolder gets the keys of its folders and its name joined by `/` (`cat/001.jpg`): a key made
    for one name never holds a `/`, so distinct paths keep distinct keys, each part bounded as a top-level key is,
    and a file at the top keeps the key it always had.

    A name that is already safe (letters, digits, `_`, `-`, single inner dots), at most MAX_KEY_BYTES in
    UTF-8 and not shaped like a hashed key (`...-<8 hex>`) is its own key, so ordinary names keep theirs.
    Any other name becomes `<sanitized prefix>-<sha1 of the exact name, 8 hex>`, cut on a character
    boundary to fit MAX_KEY_BYTES. Why no two names share a key: a kept key never ends like a hashed one;
    two kept keys are their own names; two hashed keys end in the hashes of their names, and also share
    their sanitized prefix, so only names that sanitize alike AND whose sha1 prefixes collide could meet
    (scan_images reports that case instead of failing). 8 digits keep the keys of already hashed names.
    """
    if folder:
        return "/".join(partition_key_for(part) for part in [*folder.split("/"), file_name])
    if _is_plain(file_name):
        return file_name  # what the rules below keep, found without them: a scan asks for a million keys
    normalized = unicodedata.normalize("NFC", file_name)
    safe = re.sub(r"[^\w.\-]", "_", normalized, flags=re.UNICODE)
    safe = re.sub(r"\.{2,}", ".", safe).strip("._") or "image"
    if safe == file_name and len(safe.encode("utf-8")) <= MAX_KEY_BYTES and not _HASHED_KEY.search(safe):
        return safe
    digest = hashlib.sha1(file_name.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]
    return f"{_cut_utf8(safe, MAX_KEY_BYTES - HASH_DIGITS - 1)}-{digest}"


def _is_plain(name: str) -> bool:
    """ASCII letters, digits, `-`, `_` and single inner dots, neither starting nor ending with `.` or `_`, short
    enough and not shaped like a hashed key."""
    return (
        len(name) <= MAX_KEY_BYTES
        and _PLAIN_CHARACTERS.fullmatch(name) is not None
        and name[0] not in "._"
        and name[-1] not in "._"
        and ".." not in name
        and not _HASHED_KEY.search(name)
    )


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 is at most `max_bytes`, never splitting a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of the images folder that is not used, and why, for logs and metadata."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class FolderScan:
    """What one scan of the images folder found: usable files (sorted by name) and the entries it skipped."""

    files: list[SourceFile]
    skipped: list[SkippedEntry]
    unscanned_folders: list[str] = field(default_factory=list)  # subfolders a scan without `recursive` left out


def scan_images(folder: str | Path, recursive: bool = True) -> FolderScan:
    """Every visible regular file in `folder` and, with `recursive`, in its subfolders; one bad entry is skipped
    with its reason, never raised.

    Hidden files are ignored silently. Hidden folders, symlinked folders (not followed, so the scan cannot loop
    or leave the images folder), folders nested past MAX_FOLDER_DEPTH, symlink loops, dangling symlinks, unreadable
    files, FIFOs/sockets/devices (reading one would block or make no sense) and a name whose key another name
    already holds are listed in `skipped`. Caption files (`<stem>.txt` beside an image, `metadata.jsonl`,
    `metadata.csv`) are captions, not images: left out silently. Only a missing, unlistable or non-folder `folder`
    raises: then nothing can be scanned and the message says what to fix. No file is read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if folder.is_file():
            raise NotADirectoryError(
                f"Images folder {folder} is a file, not a folder: point RANDOM_DIFFUSION_IMAGES_DIR at the "
                "folder that holds the images."
            )
        raise FileNotFoundError(
            f"Images folder {folder} does not exist: create it and put images in it, "
            "or point RANDOM_DIFFUSION_IMAGES_DIR at one."
        )
    try:
        entries = _listing(folder)
    except PermissionError as exc:
        raise PermissionError(
            f"Images folder {folder} cannot be listed ({exc.strerror}): give the user running Dagster read "
            "and execute permission on it."
        ) from exc
    scan = FolderScan([], [])
    _scan_entries(entries, "", recursive, scan, owners={})
    return scan


def scan_one_folder(folder: str | Path, relative: str) -> list[SourceFile] | None:
    """The usable files directly in one folder of the tree (`relative`, `/`-separated; "" for the top), as
    scan_images finds them there, without scanning the rest; None when scan_images would not reach it by that path
    (a name a partition key changes, a hidden, reserved or symlinked folder, too deep), so the caller scans it all."""
    parts = relative.split("/") if relative else []
    if len(parts) > MAX_FOLDER_DEPTH or not all(map(_is_plain, parts)) or (parts and parts[0] in RESERVED_FOLDERS):
        return None
    path = Path(folder)
    for part in parts:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    try:
        entries = _listing(path)
    except OSError:
        return None
    scan = FolderScan([], [])
    _scan_entries(entries, relative, False, scan, owners={})
    return scan.files


MAX_FOLDER_DEPTH = 16  # deeper trees are a mistake (a copy inside itself), not a dataset
CAPTION_FILES = ("metadata.jsonl", "metadata.csv")  # Hugging Face ImageFolder's captions; `<stem>.txt` beside each


def _listing(folder: str | Path) -> list[os.DirEntry]:
    with os.scandir(folder) as listing:
        return sorted(listing, key=operator.attrgetter("name"))


def _scan_entries(
    entries: list[os.DirEntry], relative: str, recursive: bool, scan: FolderScan, owners: dict[str, str]
) -> None:
    """Add the usable files among one folder's entries to `scan` (its subfolders' after its own, in name order)."""
    subfolders = []
    folder_key = "/".join(partition_key_for(part) for part in relative.split("/")) if relative else ""  # once
    sidecars = any(_sidecar_of(entry.name) for entry in entries)
    stems = {_stem(entry.name) for entry in entries if not _sidecar_of(entry.name)} if sidecars else set()
    for entry in entries:
        shown = f"{relative}/{entry.name}" if relative else entry.name
        try:
            info = os.stat(entry.path)
        except OSError as exc:
            reason = _stat_problem(entry, exc)
            if reason and not entry.name.startswith("."):
                scan.skipped.append(SkippedEntry(shown, reason))
            continue
        if stat.S_ISDIR(info.st_mode):
            if recursive:
                subfolders.append((entry, shown))
            elif not entry.name.startswith("."):
                scan.unscanned_folders.append(shown)
            continue
        if entry.name.startswith(".") or entry.name in CAPTION_FILES:
            continue
        if sidecars and (owner := _sidecar_of(entry.name)) is not None:
            if owner in stems:
                continue  # `<stem>.txt` or `<stem>.mask.png` beside an image: its caption or its mask
            if not entry.name.endswith(".txt"):  # a caption left alone is named where it is read as an image
                why = f"a mask beside no image named {owner}.*: not taken for a source; remove it, or rename it"
                scan.skipped.append(SkippedEntry(shown, why))
                continue
        problem = _file_problem(entry, info)
        if problem:
            scan.skipped.append(SkippedEntry(shown, problem))
            continue
        source = SourceFile(entry.name, entry.path, info.st_size, info.st_mtime_ns, info.st_ctime_ns, relative)
        key = f"{folder_key}/{partition_key_for(entry.name)}" if folder_key else partition_key_for(entry.name)
        source.__dict__["partition_key"] = key  # the cached property's value, as partition_key_for(name, folder) is
        if key in owners:
            scan.skipped.append(
                SkippedEntry(
                    shown,
                    f"{shown!r} and {owners[key]!r} have the same partition "
                    f"key {key!r}, which {owners[key]!r} keeps: rename one of the two",
                )
            )
            continue
        owners[key] = shown
        scan.files.append(source)
    for entry, shown in subfolders:
        reason = _folder_problem(entry, shown)
        if reason:
            scan.skipped.append(SkippedEntry(shown, reason))
            continue
        try:
            listing = _listing(entry.path)
        except OSError as exc:
            scan.skipped.append(
                SkippedEntry(shown, f"folder cannot be listed ({exc.strerror or exc}); fix its permissions")
            )
            continue
        _scan_entries(listing, shown, recursive, scan, owners)


def _stem(name: str) -> str:
    """`Path(name).stem`, without building a Path: a scan asks for one per file."""
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


MASK_MARK = ".mask"  # `<stem>.mask.png` beside an image is its inpainting mask (engine/pairs.py)


def _sidecar_of(name: str) -> str | None:
    """The stem of the image a file beside it belongs to: `a.txt` (its caption, as engine/captions.py reads them)
    and `a.mask.png` (its mask) belong to `a.<ext>`; None for other names."""
    if name.endswith(".txt"):
        return _stem(name)
    stem = _stem(name)
    return stem[: -len(MASK_MARK)] if stem.endswith(MASK_MARK) and len(stem) > len(MASK_MARK) else None


# Folders the output folder keeps for itself: a top-level images folder of that name would mirror into them.
RESERVED_FOLDERS = ("report", "comparisons")


def _folder_problem(entry: os.DirEntry, shown: str) -> str | None:
    """Why a subfolder is not scanned, or None."""
    if entry.name.startswith("."):
        return "hidden folder: not scanned; move its images to a visible folder to use them"
    if not is_utf8(entry.name):
        return "folder name is not valid UTF-8: not scanned; rename it"
    if shown in RESERVED_FOLDERS:
        return (
            f"the output folder keeps its {shown}/ there, so images in a top-level {shown}/ folder would write over "
            "it: not scanned; rename the folder"
        )
    if entry.is_symlink():
        return (
            "symlinked folder: not followed, so the scan can neither loop nor leave the images folder; move or copy "
            "its images in, or point RANDOM_DIFFUSION_IMAGES_DIR at its target"
        )
    if shown.count("/") + 1 > MAX_FOLDER_DEPTH:
        return f"more than {MAX_FOLDER_DEPTH} folders deep: not scanned; move its images nearer the images folder"
    return None


def readable(name: str) -> str:
    """A file name as text for prompts and datasets: bytes that are not UTF-8 (the OS hands them over as
    surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir gives undecodable bytes as surrogates
        return False
    return True


def _file_problem(entry: os.DirEntry, info: os.stat_result) -> str | None:
    """Why a file cannot be an image source, or None."""
    if not stat.S_ISREG(info.st_mode):
        return (
            f"not a regular file ({_file_kind(info.st_mode)}): only regular files can be images; move it out of the "
            "images folder"
        )
    if info.st_mode & 0o444 != 0o444 and not os.access(entry.path, os.R_OK):  # readable by all: no second call
        return "no permission to read it: give the user running Dagster read permission on it (chmod a+r)"
    return None


def _stat_problem(entry: os.DirEntry, exc: OSError) -> str | None:
    """Why an entry cannot be followed, or None when it vanished during the scan (nothing to report)."""
    if exc.errno == errno.ELOOP:
        return "symlink loop: following its links leads back to itself; fix or remove the link"
    if exc.errno == errno.ENOENT:
        if not entry.is_symlink():
            return None
        try:
            target = os.readlink(entry.path)
        except OSError:
            target = "?"
        return f"dangling symlink: it points to {target}, which does not exist; fix or remove the link"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no permission to look at it: give the user running Dagster access to it and its folder"
    return f"cannot be looked at ({exc.strerror or exc}); fix or remove it"


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def scan_folder(folder: str | Path, recursive: bool = True) -> list[SourceFile]:
    """The usable files of scan_images(folder); see scan_images for what is skipped and why."""
    return scan_images(folder, recursive).files


def probe_image(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) from the header, whatever the extension; ImageLoadError for non-images.

    A decompression bomb is an image (it gets a partition, whose run explains the limit),
    reported as format TOO_LARGE with size (0, 0).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.format or "unknown", image.size
    except Image.DecompressionBombError:
        return TOO_LARGE, (0, 0)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path} is not an image Pillow can read: {exc}") from exc


def image_problem(path: str | Path) -> str | None:
    """Why the file is not an image Pillow can read, or None: what keeps a file out of the images partitions."""
    try:
        probe_image(path)
    except ImageLoadError as exc:
        return str(exc)
    return None


def quick_image_problem(path: str | Path) -> str | None:
    """image_problem, trusting a suffix Pillow knows (`.jpg`, `.png`, ...) without reading the file: for passes over
    every file of a huge folder. A file whose suffix lies is found out by the run that reads it."""
    suffix = str(path).rpartition(".")[2]
    return None if "/" not in suffix and f".{suffix.lower()}" in _image_suffixes() else image_problem(path)


def is_image_file(path: str | Path) -> bool:
    return quick_image_problem(path) is None


@functools.cache
def _image_suffixes() -> frozenset[str]:
    return frozenset(Image.registered_extensions())


EXIF_ORIENTATION = 0x0112
SIDEWAYS = (5, 6, 7, 8)  # orientations that turn the picture a quarter: its width and height swap when shown


def shown_size(image: Image.Image) -> tuple[int, int]:
    """An opened image's size as shown (upright, as load_rgb turns it), from its header alone."""
    return image.size[::-1] if image.getexif().get(EXIF_ORIENTATION) in SIDEWAYS else image.size


def load_rgb(
    path: str | Path | BinaryIO, max_pixels: int = MAX_SOURCE_PIXELS, min_side: int | None = None, name: str = ""
) -> Image.Image:
    """Load a source image upright and as RGB, whatever its mode, frames or EXIF orientation.

    With `min_side`, a JPEG is decoded at the smallest scale (1/2 to 1/8) that keeps both
    sides at least that long: a 50-megapixel photo costs a fraction of its full decode.
    `path` may be a file object already read into memory; `name` then names it in errors.
    """
    label = name or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageLoadError(
                        f"{label} is {width}x{height} ({width * height:,} pixels), above the "
                        f"{max_pixels:,}-pixel limit for source images (a decompression-bomb guard): "
                        "downscale it first."
                    )
                image.seek(0)  # first frame of an animation
                if min_side and image.format == "JPEG":
                    image.draft("RGB", _draft_size(image.size, min_side))
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses twice its own limit before we can measure
        raise ImageLoadError(
            f"{label} is far above the {max_pixels:,}-pixel limit for source images (a decompression-bomb guard): "
            "downscale it first."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).replace(f" {path!r}", "")  # Pillow names a file object by its repr: <_io.BytesIO ...>
        raise ImageLoadError(f"{label} cannot be decoded (truncated or not an image): {reason}") from exc


def _draft_size(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The size to ask JPEG draft mode for: the image scaled so its shorter side is min_side."""
    scale = min_side / min(size)
    return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping to white.
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


# Rounding a side of n pixels moves the aspect by up to 0.5/n: a short side of 32 keeps it within ~2%.
MIN_SHORT_SIDE = 32
# How far a thin image's long side may grow past `resolution` to keep that short side: 10:1 at 32 px.
MAX_GROWN_LONG_SIDE = 10 * MIN_SHORT_SIDE


def content_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The aspect-preserving size an image is generated at: the longer side `resolution`, sides not rounded
    to any multiple; a thin image keeps its short side at MIN_SHORT_SIDE by growing the long side up to
    MAX_GROWN_LONG_SIDE, so aspect ratios up to 10:1 survive within 2% at any resolution.
    """
    width, height = size
    long_side, short_side = max(width, height), min(width, height)
    scale = resolution / long_side
    if short_side * scale < MIN_SHORT_SIDE:
        scale = min(MIN_SHORT_SIDE / short_side, max(resolution, MAX_GROWN_LONG_SIDE) / long_side)
    return max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))


@dataclass(frozen=True)
class ModelInput:
    """What a pipeline is given for one source, and what it takes to undo the padding on its result.

    `image` has sides that are multiples of the VAE factor (8): the source resized to its aspect-preserving
    size (content_size) sits at the top left, and the strips right of and below it repeat its last column
    and row, so the model sees no hard border. `content_box` (left, top, right, bottom) is where the
    source lies in `image`; `restore(result)` crops the pipeline's result back to it.
    """

    image: Image.Image
    content_box: tuple[int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        """The size restore() returns: the source's aspect ratio at the model's resolution."""
        left, top, right, bottom = self.content_box
        return right - left, bottom - top

    def fit(self, image: Image.Image) -> Image.Image:
        """Another image of the source's size (its mask, a control image) placed as the source is in `image`."""
        left, top, right, bottom = self.content_box
        content = image.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
        return _pad_with_edges(content, *self.image.size)

    def restore(self, result: Image.Image) -> Image.Image:
        """The result without the padding, at `size`; a result at another scale is first resized to `image`."""
        if result.size != self.image.size:
            result = result.resize(self.image.size, Image.Resampling.LANCZOS)
        return result.crop(self.content_box)


def prepare_model_input(image: Image.Image, resolution: int, multiple: int = 8) -> ModelInput:
    """The pipeline input for `image` at `resolution`, keeping its aspect ratio: padded, not squashed.

    Use: `model_input = prepare_model_input(load_rgb(path, min_side=resolution), resolution)`, give
    `model_input.image` to the pipeline, save `model_input.restore(result)`. A 6000x1000 panorama at 128
    runs as 192x32 and comes back 192x32 (aspect 6.0); a 1000x750 photo at 100 runs as 104x80 and comes
    back 100x75.
    """
    width, height = content_size(image.size, resolution)
    content = image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)
    padded_width, padded_height = -(-width // multiple) * multiple, -(-height // multiple) * multiple
    return ModelInput(_pad_with_edges(content, padded_width, padded_height), (0, 0, width, height))


def _pad_with_edges(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` at the top left of a width x height canvas whose extra columns and rows repeat its last ones."""
    if image.size == (width, height):
        return image
    content_width, content_height = image.size
    padded = Image.new(image.mode, (width, height))
    padded.paste(image, (0, 0))
    if width > content_width:
        column = image.crop((content_width - 1, 0, content_width, content_height))
        padded.paste(
            column.resize((width - content_width, content_height), Image.Resampling.NEAREST), (content_width, 0)
        )
    if height > content_height:
        row = padded.crop((0, content_height - 1, width, content_height))
        padded.paste(row.resize((width, height - content_height), Image.Resampling.NEAREST), (0, content_height))
    return padded


def open_image_copy(path: str | os.PathLike) -> Image.Image:
    """A result image read fully into memory, from a local path or a URL."""
    with location(path).open("rb") as handle, Image.open(handle) as image:
        image.load()
        return image.copy()


def thumbnail_data_uri(image: Image.Image, size: int = 256, quality: int = 80) -> str:
    """A small inline JPEG, small enough to live in Dagster's event log."""
    thumb = image.convert("RGB").copy()
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def square_tile(path: str | os.PathLike | None, size: int, missing: str = "missing") -> Image.Image:
    """The image fitted into a grey square (for sheets and grids), or the square saying `missing`."""

    tile = Image.new("RGB", (size, size), (220, 220, 220))
    try:
        if path is None:
            raise OSError(missing)
        picture = ImageOps.contain(ImageOps.exif_transpose(open_image_copy(path)).convert("RGB"), (size, size))
    except (OSError, ValueError):
        ImageDraw.Draw(tile).text((8, size // 2), missing, fill="black")
        return tile
    tile.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    return tile


LABEL_BAND = 18  # pixels under a labelled strip's images for their labels


def image_strip(
    images: list[Image.Image], height: int = 96, gap: int = 4, labels: list[str] | None = None
) -> Image.Image:
    """Images side by side at one height: a preview strip, each image's label (if given) under it."""
    scaled = [ImageOps.contain(im.convert("RGB"), (height * 4, height)) for im in images]
    width = sum(im.width for im in scaled) + gap * max(0, len(scaled) - 1)
    strip = Image.new("RGB", (max(width, 1), height + (LABEL_BAND if labels else 0)), "white")
    draw = ImageDraw.Draw(strip)
    x = 0
    for index, im in enumerate(scaled):
        strip.paste(im, (x, (height - im.height) // 2))
        if labels:
            draw.text((x + 4, height + 3), labels[index], fill="black")
        x += im.width + gap
    return strip
