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
import stat
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from .images import MASK_MARK, quick_image_problem, shown_size
from .output_location import is_local, location, overlap

MASK = "mask"
COMPUTED_CONTROLS = ("canny",)  # control types computed from the source where no file is given
CANNY_THRESHOLDS = (100, 200)  # low, high: AUTOMATIC1111's ControlNet defaults
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")  # a 16-bit or float one would clip


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
    _listings: dict[Path, dict[str, list[str]]] = field(default_factory=dict, repr=False)
    _control_types: list[str] | None = field(default=None, repr=False)

    def find(self, source_path: str, relative_path: str, role: str) -> Path | None:
        """The file paired in `role` (`mask` or a control type) with the source at `source_path`, `relative_path`
        under the images folder; None if it has none, PairError if it has two (a stem in two formats, or a mask both
        beside the source and in the masks folder)."""
        folder, _, name = relative_path.rpartition("/")
        stem = Path(name).stem
        if role == MASK:
            found = self._in(Path(source_path).parent, f"{stem}{MASK_MARK}")
            found += self._in(Path(self.masks_dir, folder), stem) if self.masks_dir else []
        else:
            found = self._in(Path(self.controls_dir, role, folder), stem) if self.controls_dir else []
        if len(found) > 1:
            raise PairError(
                f"{relative_path} has {len(found)} files for its {role}: {', '.join(map(str, found))}; keep one."
            )
        return found[0] if found else None

    def versions(self, source_path: str, relative_path: str) -> dict[str, str]:
        """Role -> content hash of every file paired with the source (its mask, a control image of each type that
        has a folder), whichever model it draws: part of the image's data version (captions.image_version). A pair
        that cannot be told or read counts as none here; the run that needs it names the problem."""
        versions = {}
        for role in self._roles():
            try:
                path = self.find(source_path, relative_path, role)
                if path is not None:
                    versions[role] = file_sha256(path)[:16]
            except (PairError, OSError):
                continue
        return versions

    def _roles(self) -> list[str]:
        if self._control_types is None:
            types = []
            if self.controls_dir and os.path.isdir(self.controls_dir):
                types = sorted(entry.name for entry in os.scandir(self.controls_dir) if entry.is_dir())
            self._control_types = types
        return [MASK, *self._control_types]

    def _in(self, folder: Path, stem: str) -> list[Path]:
        """The image files in `folder` whose name is `stem` plus an image suffix: regular files only (a device, a
        FIFO or a folder so named would hang or fail the read). The folder is listed once, by name alone; only the
        names a lookup asks for are looked at."""
        if folder not in self._listings:
            listing: dict[str, list[str]] = {}
            try:
                for name in os.listdir(folder):
                    listing.setdefault(Path(name).stem, []).append(name)
            except OSError:
                pass
            self._listings[folder] = listing
        candidates = [folder / name for name in sorted(self._listings[folder].get(stem, []))]
        return [path for path in candidates if _is_regular_file(path) and quick_image_problem(path) is None]


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)  # follows a symlink to what it names
    except OSError:
        return False


def require_pairs_apart(images_dir: str, output_dir: str, folders: dict[str, str | None]) -> None:
    """Refuse a masks or controls folder (`folders`: the setting that names it -> the folder) that is, holds or lies in
    the images folder (the scan would take its files for sources; a mask beside its source is `<stem>.mask.png`), in
    a local output folder (results would be read as pairs), or in the other pair folder (a mask read as a control)."""
    images = Path(images_dir).resolve()
    named = {setting: Path(folder).resolve() for setting, folder in folders.items() if folder}
    for setting, folder in named.items():
        others = [("the images folder", images, "its images would be diffused as sources")]
        if is_local(location(output_dir)):
            others.append(("the output folder", Path(output_dir).resolve(), "results would be read as pairs"))
        others += [(other, path, "one kind of pair would be read as the other") for other, path in named.items()]
        for name, path, why in others:
            if name != setting and (relation := overlap(folder, path)):
                beside = ", or keep each mask beside its source as <stem>.mask.png" if path == images else ""
                raise PairFolderError(
                    f"The folder {folder} ({setting}) {relation} {name} {path}: {why}. Point {setting} at a folder "
                    f"of its own{beside}."
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
    """A mask as one channel (white: repaint, black: keep) from its bytes, upright; PairError unless it has the
    source's size (as shown) and something to repaint. Painted on a transparent layer (alpha not opaque everywhere),
    the paint is the mask, as AUTOMATIC1111 reads it."""
    image = _read_pair(path, data, source_size)
    transparent = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    alpha = image.convert("RGBA").getchannel("A") if transparent else None
    mask = alpha if alpha is not None and alpha.getextrema()[0] < 255 else image.convert("L")
    if mask.getextrema()[1] == 0:
        raise PairError(f"{path} is black everywhere, so nothing would be repainted: paint the area to change white.")
    return mask


def read_control(path: str, data: bytes, source_size: tuple[int, int]) -> Image.Image:
    return _read_pair(path, data, source_size).convert("RGB")


def _read_pair(path: str, data: bytes, source_size: tuple[int, int]) -> Image.Image:
    """The pair's picture, upright, once its header says it has the source's size and 8 bits per channel."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as opened:
            if (size := shown_size(opened)) != source_size:
                raise PairError(
                    f"{path} is {size[0]}x{size[1]} but its source is {source_size[0]}x{source_size[1]}: a pair must "
                    "have its source's size; resize it to match."
                )
            if opened.mode not in EIGHT_BIT_MODES:
                raise PairError(
                    f"{path} has pixel mode {opened.mode} ({', '.join(EIGHT_BIT_MODES)} are read): save it as an 8-bit "
                    "grayscale or RGB PNG."
                )
            return ImageOps.exif_transpose(opened)  # upright, as its source is read (images.load_rgb)
    except PairError:
        raise
    except Image.DecompressionBombError:
        raise PairError(f"{path} has too many pixels to be read safely; give it its source's size.") from None
    except (OSError, ValueError, SyntaxError):
        raise PairError(f"{path} is not an image file that can be read: save it as a PNG.") from None


def canny_edges(image: Image.Image) -> Image.Image:
    """The source's Canny edges (white on black, 3 channels), as ControlNet's canny models take them."""
    import cv2
    import numpy as np

    edges = cv2.Canny(np.asarray(image.convert("L")), *CANNY_THRESHOLDS)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))
