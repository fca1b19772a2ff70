"""Files that come in pairs with a source image: its inpainting mask and its ControlNet control images.

A pair is matched by the source's path under the images folder without its extension (`cat/001` for
`cat/001.jpg`), in any image format:

- mask: `<masks folder>/cat/001.png`, or `cat/001.mask.png` beside the source (the scan leaves it out of the
  sources); white is repainted, black kept;
- control image of type T (a ControlNet entry's `control: T`): `<controls folder>/T/cat/001.png`; for `canny`
  with no such file, Canny edges computed from the source with OpenCV (no weights to download).

A pair's bytes are part of its image's data version and of its result's fingerprint, so a new mask stales that
image alone. Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from .images import MASK_MARK, quick_image_problem
from .output_location import overlap

MASK = "mask"
COMPUTED_CONTROLS = ("canny",)  # control types computed from the source where no file is given
CANNY_THRESHOLDS = (100, 200)  # low, high: AUTOMATIC1111's ControlNet defaults
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")  # a 16-bit or float mask would be clipped, not read


class PairError(ValueError):
    """An image's pair is missing or does not fit it; the message names the files and the fix."""


class PairFolderError(OSError):
    """A masks or controls folder that cannot be used as set; raised before any work, naming the fix."""


@dataclass(frozen=True)
class PairFile:
    """One file paired with a source: its role (`mask` or a control type), path and content hash; a computed
    control has neither path nor hash."""

    role: str
    path: str = ""
    sha256: str = ""

    @property
    def computed(self) -> bool:
        return not self.path


@dataclass
class PairFolders:
    """Where an image's pairs are looked for; each folder's listing is read once per PairFolders."""

    masks_dir: str | None = None
    controls_dir: str | None = None
    _listings: dict[Path, dict[str, str]] = field(default_factory=dict, repr=False)
    _control_types: list[str] | None = field(default=None, repr=False)

    def find(self, source_path: str, relative_path: str, role: str) -> Path | None:
        """The file paired in `role` (`mask` or a control type) with the source at `source_path`, `relative_path`
        under the images folder; None if it has none."""
        folder, _, name = relative_path.rpartition("/")
        stem = Path(name).stem
        if role == MASK:
            beside = self._in(Path(source_path).parent, f"{stem}{MASK_MARK}")
            if beside is not None:
                return beside
            return self._in(Path(self.masks_dir, folder), stem) if self.masks_dir else None
        return self._in(Path(self.controls_dir, role, folder), stem) if self.controls_dir else None

    def versions(self, source_path: str, relative_path: str) -> dict[str, str]:
        """Role -> content hash of every file paired with the source (its mask, a control image of each type that
        has a folder), whichever model it draws: part of the image's data version (captions.image_version)."""
        found = {role: self.find(source_path, relative_path, role) for role in self._roles()}
        return {role: file_sha256(path)[:16] for role, path in found.items() if path is not None}

    def _roles(self) -> list[str]:
        if self._control_types is None:
            types = []
            if self.controls_dir and os.path.isdir(self.controls_dir):
                types = sorted(entry.name for entry in os.scandir(self.controls_dir) if entry.is_dir())
            self._control_types = types
        return [MASK, *self._control_types]

    def _in(self, folder: Path, stem: str) -> Path | None:
        if folder not in self._listings:
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            listing: dict[str, str] = {}
            for name in names:  # the first in name order where two formats share a stem
                if quick_image_problem(folder / name) is None:
                    listing.setdefault(Path(name).stem, name)
            self._listings[folder] = listing
        name = self._listings[folder].get(stem)
        return folder / name if name else None


def require_pairs_apart(images_dir: str, folders: dict[str, str | None]) -> None:
    """Refuse a masks or controls folder (`folders`: the setting that names it -> the folder) that is, holds or lies in
    the images folder: the scan would take its files for sources (a mask beside its source is `<stem>.mask.png`)."""
    images = Path(images_dir).resolve()
    for setting, folder in folders.items():
        if folder and (relation := overlap(Path(folder).resolve(), images)):
            raise PairFolderError(
                f"The folder {Path(folder).resolve()} {relation} the images folder {images}: its images would be "
                f"diffused as sources. Point {setting} at a folder outside it, or keep each mask beside its source as "
                "<stem>.mask.png."
            )


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_pair_message(model_name: str, role: str, relative_path: str, folders: PairFolders) -> str:
    """Why an image has no `role` pair for `model_name`, where it was looked for, and the two fixes."""
    stem = relative_path.rsplit(".", 1)[0]
    if role == MASK:
        where = f"{stem}{MASK_MARK}.png beside it" + (
            f" or {Path(folders.masks_dir, stem)}.png" if folders.masks_dir else " (no masks folder is set)"
        )
        what = "a mask"
    else:
        where = (
            f"{Path(folders.controls_dir, role, stem)}.png"
            if folders.controls_dir
            else f"{role}/{stem}.png in a controls folder, and none is set"
        )
        what = f"a {role!r} control image"
    return (
        f"{relative_path}: model {model_name!r} needs {what} and there is none ({where}); add it, or set "
        f"`if_unpaired: run_without` on the {model_name!r} entry to run such images without it."
    )


def read_mask(path: str, data: bytes, source_size: tuple[int, int]) -> Image.Image:
    """A mask as one channel (white: repaint, black: keep) from its bytes; PairError unless it has the source's
    size."""
    return _read_pair(path, data, source_size, "L")


def read_control(path: str, data: bytes, source_size: tuple[int, int]) -> Image.Image:
    return _read_pair(path, data, source_size, "RGB")


def _read_pair(path: str, data: bytes, source_size: tuple[int, int], mode: str) -> Image.Image:
    import io

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened)  # upright, as its source is read (images.load_rgb)
            if image.mode not in EIGHT_BIT_MODES:
                raise PairError(
                    f"{path} has pixel mode {image.mode} ({EIGHT_BIT_MODES} are read): save it as an 8-bit grayscale "
                    "or RGB PNG."
                )
            if image.size != source_size:
                raise PairError(
                    f"{path} is {image.size[0]}x{image.size[1]} but its source is {source_size[0]}x{source_size[1]}: "
                    "a pair must have its source's size; resize it to match."
                )
            return image.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, PairError):
            raise
        raise PairError(f"{path} cannot be read as an image ({exc}); replace it with a PNG or JPEG.") from None


def canny_edges(image: Image.Image) -> Image.Image:
    """The source's Canny edges (white on black, 3 channels), as ControlNet's canny models take them."""
    import cv2
    import numpy as np

    edges = cv2.Canny(np.asarray(image.convert("L")), *CANNY_THRESHOLDS)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))
