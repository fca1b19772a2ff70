"""Each image's caption, from the files people keep captions in.

A `<stem>.txt` beside the image (SD.Next's batch mode, kohya-style training folders) wins; otherwise the `text` (or
`caption`) column of a `metadata.jsonl` or `metadata.csv` in the image's folder or a folder above it, whose
`file_name` is the image's path relative to that file (Hugging Face's ImageFolder layout).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path

from .images import CAPTION_FILES, SourceFile
from .prompts import PromptListError, check_text, decode_text

CAPTION_COLUMNS = ("text", "caption")
MAX_CAPTION_FILE_BYTES = 64 * 2**20


class Captions:
    """Captions of images; each metadata file is read once per Captions."""

    def caption_for(self, source: SourceFile) -> str | None:
        """The source's caption, or None if it has none; PromptListError naming the file if one is unreadable."""
        sidecar = Path(source.path).with_suffix(".txt")
        if sidecar.is_file():
            return _checked(decode_text(sidecar.read_bytes(), str(sidecar)).strip(), str(sidecar))
        parts = source.folder.split("/") if source.folder else []
        root = Path(source.path).parents[len(parts)]  # the images folder
        for depth in range(len(parts), -1, -1):  # the nearest metadata file first
            folder = root.joinpath(*parts[:depth])
            relative = "/".join([*parts[depth:], source.name])
            caption = self._table(folder).get(relative)
            if isinstance(caption, PromptListError):
                raise caption  # this image's row is unusable; the other rows still count
            if caption is not None:
                return caption
        return None

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one Captions per plan; it lives as long as its tables
    def _table(self, folder: Path) -> dict[str, str | PromptListError]:
        """file_name -> caption (or why its row is unusable) from the metadata files in `folder`."""
        table: dict[str, str | PromptListError] = {}
        for name in CAPTION_FILES:
            path = folder / name
            if not path.is_file():
                continue
            if path.stat().st_size > MAX_CAPTION_FILE_BYTES:
                raise PromptListError(f"{path} is over {MAX_CAPTION_FILE_BYTES // 2**20} MB: split it per folder.")
            text = decode_text(path.read_bytes(), str(path))
            rows = _jsonl_rows(text, path) if name.endswith(".jsonl") else list(csv.DictReader(io.StringIO(text)))
            for number, row in enumerate(rows, start=1):
                column = next((c for c in CAPTION_COLUMNS if isinstance(row.get(c), str)), None)
                if isinstance(row.get("file_name"), str) and column:
                    try:
                        caption = _checked(row[column].strip(), f"{path}, row {number}")
                    except PromptListError as error:
                        caption = error
                    table.setdefault(row["file_name"].strip("/"), caption)
        return table


def _jsonl_rows(text: str, path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise PromptListError(f"{path}, line {number}: not JSON ({error.msg}): one JSON object per line.") from None
        rows.append(row if isinstance(row, dict) else {})
    return rows


def _checked(caption: str, where: str) -> str:
    """A caption goes into prompts: the prompt text rules apply, on one line."""
    caption = " ".join(caption.split())
    check_text(caption, f"caption in {where}")
    return caption


def image_version(content_version: str, caption: str | None, pairs: Mapping[str, str] | None = None) -> str:
    """The data version of an image with its caption and its pairs (role -> content hash: its mask, control
    images; engine/pairs.py): its content hash (16 hex, file_version) alone when it has neither, as before captions
    counted, else a hash of them all, so editing a caption or a mask makes that image's result stale."""
    if caption is None and not pairs:
        return content_version
    text = f"{content_version}\n{caption}" if caption is not None else content_version
    text += "".join(f"\n{role}:{digest}" for role, digest in sorted((pairs or {}).items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
