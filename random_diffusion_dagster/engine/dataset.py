"""The results as a dataset training code loads as it is: Hugging Face's ImageFolder layout with a metadata.jsonl,
and the same rows as a Parquet manifest for pandas and DuckDB.

`datasets.load_dataset("imagefolder", data_dir=...)` reads the images and every metadata column (label, caption,
prompt, model, seed, ...). The folder is built beside the old one and swapped in, so a reader sees the old dataset
or the new one; only a folder this module wrote (it holds MARKER) is ever replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from .images import SPLIT_WORDS, label_of, readable, split_of
from .output_location import is_local, location, overlap
from .results import ResultRecord

MARKER = ".random-diffusion-dataset"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "manifest.parquet"


@dataclass(frozen=True)
class DatasetRow:
    """One image of the dataset and where it came from; `kind` is "augmented" (a result) or "source"."""

    file_name: str
    kind: str
    source_file: str
    label: str
    caption: str | None
    prompt: str | None
    prompt_template: str | None
    model: str | None
    model_hash: str | None
    seed: int | None
    strength: float | None
    variant: int | None
    # Whether the result passed its model's quality gates (engine/quality.py): filter on it to train only on results
    # that kept the subject; None for sources and results made before gates existed.
    quality_passed: bool | None


class DatasetExportError(OSError):
    """The dataset folder cannot be written; the message names it and the fix."""


def require_dataset_folder(
    images_dir: str | os.PathLike, output_dir: str | os.PathLike, target: str | os.PathLike
) -> Path:
    """`target` resolved, or DatasetExportError naming the fix: it must lie apart from the images and output folders
    (replacing it would delete results, or a scan would read it), be new or written by this module, and the results
    must be local files to link or copy. Checked before a run starts, and again as the dataset is written."""
    if not is_local(location(output_dir)):
        raise DatasetExportError(
            f"The output location {output_dir} is not a local folder: the dataset links or copies the results from "
            "one; export on a machine that mounts them there."
        )
    target = Path(target).resolve()
    for name, folder in (("images", images_dir), ("output", output_dir)):
        relation = overlap(target, Path(folder).resolve())
        if relation:
            raise DatasetExportError(
                f"The dataset folder {target} {relation} the {name} folder {Path(folder).resolve()}: point "
                "RANDOM_DIFFUSION_DATASET_DIR at a folder outside both."
            )
    if target.exists() and not (target / MARKER).is_file():
        raise DatasetExportError(
            f"{target} exists and was not written by this project (no {MARKER} in it): move it, or point "
            "RANDOM_DIFFUSION_DATASET_DIR at a new folder."
        )
    return target


def export_image_folder(
    results: list[tuple[ResultRecord, Path]],
    images_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    target: str | os.PathLike,
    sources: bool,
    captions: Mapping[str, str | None],
) -> list[DatasetRow]:
    """Write `target` as an ImageFolder dataset of these results (record, result file), with their sources too if
    `sources`; returns its rows. `captions`: each source file's caption now (a file missing from it keeps its
    record's). The files are hard links where the filesystem allows, else copies."""
    import pandas as pd

    target = require_dataset_folder(images_dir, output_dir, target)
    staging = target.parent / f".{target.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # An images folder of splits (`train/<label>/...`) gives a dataset of them: `<split>/augmented/...` with the
    # split's own metadata.jsonl, which `datasets` reads per split (a metadata.jsonl above the splits it drops).
    split = bool(results) and all(split_of(record.source_file) for record, _result in results)
    try:
        rows = []
        output = Path(location(output_dir)).resolve()
        for record, result in sorted(results, key=lambda pair: (pair[0].key, pair[0].variant)):
            folder = f"{split_of(record.source_file)}/" if split else ""
            within = Path(result).relative_to(output).as_posix()  # as the output folder has it: under the split too
            name = readable(f"{folder}augmented/{within.removeprefix(folder)}")
            _place(result, staging / name)
            caption = captions.get(record.source_file, record.caption)
            rows.append(_row(name, "augmented", record, caption))
            if sources:
                source = Path(images_dir) / record.source_file
                name = readable(f"{folder}source/{record.source_file.removeprefix(folder)}")
                if source.is_file() and not (staging / name).exists():
                    _place(source, staging / name)
                    own = (readable(record.source_file), label_of(record.source_file), caption)
                    rows.append(DatasetRow(name, "source", *own, *[None] * 8))
        by_folder: dict[str, list[str]] = {}
        for row in rows:
            folder, _, within = row.file_name.partition("/") if split else ("", "", row.file_name)
            line = json.dumps({**asdict(row), "file_name": within}, ensure_ascii=False)  # relative to its metadata file
            by_folder.setdefault(folder, []).append(line + "\n")
        for folder, lines in by_folder.items():
            (staging / folder / METADATA_FILE).write_text("".join(lines), encoding="utf-8")
        pd.DataFrame([asdict(row) for row in rows], columns=list(DatasetRow.__dataclass_fields__)).to_parquet(
            staging / MANIFEST_FILE, index=False
        )
        (staging / MARKER).write_text("Written by random-diffusion's augmented_dataset; rebuilt on each run.\n")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return rows


# A folder or file name `datasets` reads as naming a split (datasets.data_files' patterns): the word alone or
# between characters other than letters (`test/`, `train-2/`, `test_01.png`, `cat 2 train.png`).
_SPLIT_NAME = re.compile(rf"(?:^|[-._ 0-9])(?:{'|'.join(SPLIT_WORDS)})(?:$|[-._ 0-9])")


def split_word_names(rows: list[DatasetRow]) -> list[str]:
    """The rows' file names with a folder or file named like a split below the dataset's splits (or anywhere, when it
    has none): `datasets` would split the dataset by them and leave the metadata out."""
    found = []
    for row in rows:
        parts = row.file_name.split("/")
        below = parts[1:] if split_of(row.source_file) and parts[0] == split_of(row.source_file) else parts
        if any(_SPLIT_NAME.search(part) for part in below):
            found.append(row.file_name)
    return found


def _row(name: str, kind: str, record: ResultRecord, caption: str | None) -> DatasetRow:
    return DatasetRow(
        file_name=name,
        kind=kind,
        source_file=readable(record.source_file),
        label=label_of(record.source_file),
        caption=caption,
        prompt=record.prompt,
        prompt_template=record.prompt_template,
        model=record.model,
        model_hash=record.model_hash,
        seed=record.seed,
        strength=record.strength,
        variant=record.variant,
        quality_passed=None if record.quality is None else record.quality["passed"],
    )


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(source, target)


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` with `staging`: two renames, so readers find the old dataset or the new one."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
