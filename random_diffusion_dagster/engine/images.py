"""Image I/O: finding source images, naming their partitions, loading, resizing, writing results."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

from .storage import location

MAX_KEY_LENGTH = 120
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

    @property
    def partition_key(self) -> str:
        return partition_key_for(self.name)


def partition_key_for(file_name: str) -> str:
    """A Dagster-safe, stable partition key for a file name.

    Names that are already safe are kept as they are. Anything else is reduced to
    letters, digits, `_`, `-` and single dots, and gets a short hash of the original
    name appended, so two names that reduce alike still get different keys.
    """
    normalized = unicodedata.normalize("NFC", file_name)
    safe = re.sub(r"[^\w.\-]", "_", normalized, flags=re.UNICODE)
    safe = re.sub(r"\.{2,}", ".", safe).strip("._") or "image"
    if safe == file_name and len(safe) <= MAX_KEY_LENGTH:
        return safe
    digest = hashlib.sha1(file_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[: MAX_KEY_LENGTH - 9]}-{digest}"


def scan_folder(folder: str | Path) -> list[SourceFile]:
    """All visible regular files directly in `folder`, sorted by name; one scandir, no reads."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Images folder {folder} does not exist: create it and put images in it, "
            "or point RANDOM_DIFFUSION_IMAGES_DIR at one."
        )
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=True):
                continue
            stat = entry.stat()
            files.append(SourceFile(entry.name, entry.path, stat.st_size, stat.st_mtime_ns))
    return sorted(files, key=lambda f: f.name)


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
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{label} looks like a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{label} cannot be decoded (truncated or not an image): {exc}") from exc


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


def fit_size(size: tuple[int, int], resolution: int, multiple: int = 8) -> tuple[int, int]:
    """Scale so the longer side is `resolution`, keep the aspect ratio, round sides to `multiple`."""
    width, height = size
    scale = resolution / max(width, height)

    def snap(side: float) -> int:
        return max(multiple, int(round(side * scale / multiple)) * multiple)

    return snap(width), snap(height)


def fit_to_resolution(image: Image.Image, resolution: int) -> Image.Image:
    target = fit_size(image.size, resolution)
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.LANCZOS)


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


def image_strip(images: list[Image.Image], height: int = 96, gap: int = 4) -> Image.Image:
    """Images side by side at one height: a preview strip."""
    scaled = [ImageOps.contain(im.convert("RGB"), (height * 4, height)) for im in images]
    width = sum(im.width for im in scaled) + gap * max(0, len(scaled) - 1)
    strip = Image.new("RGB", (max(width, 1), height), "white")
    x = 0
    for im in scaled:
        strip.paste(im, (x, (height - im.height) // 2))
        x += im.width + gap
    return strip
