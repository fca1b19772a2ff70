"""What is at a local path a setting or the catalog names, in words, when it is not what was asked for."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def kind_problem(path: str | os.PathLike, want: str) -> str | None:
    """Why `path` is not a `want` ("file" or "folder"): "does not exist", "is a folder, not a file", ...; None if it
    is one. A device or FIFO is never a file to read: /dev/zero would be read for ever."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return None if want == "folder" else "is a folder, not a file"
    if stat.S_ISREG(mode):
        return None if want == "file" else "is a file, not a folder"
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"is {kind}, not a {want}"


def write_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in `folder` (created if missing), in words; None if they can."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        return f"cannot be written ({error.strerror or error})"
    return None
