"""Where results live: a local folder (the default) or any fsspec URL through universal-pathlib.

Workers on several machines need one place they all reach: `s3://bucket/outputs`,
`gs://...`, `memory://...` (tests) work wherever the matching fsspec package is installed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from upath import UPath

from .local_files import write_problem


def _process_umask() -> int:
    """The umask, read once at import (setting it to read it is not thread-safe later)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600 whatever the umask; results get the mode any file the user writes gets.
FILE_MODE = 0o666 & ~_process_umask()


def location(path_or_url: str | os.PathLike) -> UPath:
    return path_or_url if isinstance(path_or_url, UPath) else UPath(path_or_url)


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a partial write.

    Locally: `.<name>.tmp` beside the target, fsynced, then renamed over it. The name is the target's own, so a
    writer killed mid-write (`kill -9`, a lost worker) leaves one file that the next write of that target takes
    over, instead of a stray temporary file per kill. An exclusive `flock` held from opening to the rename keeps
    two live writers of one target apart; the kernel drops a killed writer's lock. Object stores: one PUT, which
    they make visible whole.
    """
    path = location(path)
    if not is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _locked_temporary(target)
    handle = os.fdopen(fd, "wb")
    try:
        handle.truncate()
        handle.write(data)
        handle.flush()
        os.fchmod(handle.fileno(), FILE_MODE)
        os.fsync(handle.fileno())
        # Renamed while the lock is held: a waiting writer then finds the name gone or a new file under it.
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        handle.close()


def _locked_temporary(target: Path) -> tuple[int, Path]:
    """`.<name>.tmp` opened under an exclusive lock, waiting for a live writer of the same target; a file a killed
    writer left is reused. The lock is taken on what the name holds once it is granted, not on a file another
    writer has since renamed onto the target. Another user's leftover (a folder a team shares), or a file system
    that takes no locks: this writer takes a name of its own."""
    tmp = target.with_name(f".{target.name}.tmp")
    while True:
        try:
            fd, created = _open_for_writing(tmp)
        except OSError:  # not ours to write: another user's file, or a link, folder or pipe under that name
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (ENOLCK, EOPNOTSUPP): the shared name is not safe there
            os.close(fd)
            if created:
                tmp.unlink(missing_ok=True)
            break
        locked = os.fstat(fd)
        ours = locked.st_uid == os.geteuid() and stat.S_ISREG(locked.st_mode)
        with contextlib.suppress(FileNotFoundError):
            if ours and os.stat(tmp).st_ino == locked.st_ino:
                return fd, tmp
        os.close(fd)
        if not ours:
            break
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    return fd, Path(name)


def _open_for_writing(path: Path) -> tuple[int, bool]:
    """(a descriptor, whether this call created the file). An existing name is opened without following a link or
    waiting on a pipe, and is not truncated until it is known to be a writer's leftover. A folder that is gone is
    FileNotFoundError, as for any write."""
    while True:
        with contextlib.suppress(FileExistsError):
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), True
        with contextlib.suppress(FileNotFoundError):  # renamed onto its target between the two opens: free again
            return os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK), False


def rename_atomic(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a file to a new name in the same folder; readers see it under the old name or whole under the new.

    Locally: one `os.replace` (atomic within a file system; it replaces `target`). Object stores have no
    rename: the file is copied (the store makes the copy visible whole), then the source is deleted, so a
    reader in between sees the same file under both names. FileNotFoundError when `source` is gone
    (another process moved it first).
    """
    source, target = location(source), location(target)
    if is_local(source) and is_local(target):
        os.replace(Path(source), Path(target))
        return
    if not source.exists():
        raise FileNotFoundError(str(source))
    source.fs.copy(source.path, target.path)
    source.fs.rm(source.path)


class OutputLocationError(OSError):
    """The output location cannot hold results; the message names it and the fix."""


def require_writable_folder(path_or_url: str | os.PathLike, subfolders: tuple[str, ...] = ()) -> None:
    """Create the folder if needed and prove it takes files, before any model is loaded; `subfolders` the project
    keeps in it (failure records) must not be files."""
    path = location(path_or_url)
    fix = "point RANDOM_DIFFUSION_OUTPUT_DIR (or the dataset resource's output_dir) at a writable folder"
    if not is_local(path):
        path.mkdir(parents=True, exist_ok=True)
        return
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputLocationError(f"Output location {folder} is a file, not a folder: {fix}.")
    if problem := write_problem(folder):
        raise OutputLocationError(f"Output folder {folder} {problem}: {fix}.")
    for name in subfolders:
        if (folder / name).exists() and not (folder / name).is_dir():
            raise OutputLocationError(
                f"{folder / name} is a file, but the project keeps a folder of that name in the output folder: move "
                f"the file, or {fix}."
            )


def require_separate_folders(images_dir: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Refuse an output folder that is the images folder, lies inside it or holds it: results would be written
    among the sources (a result can take a source's name) and the next scan would read them as sources."""
    output = location(output_dir)
    if not is_local(output):
        return
    images, out = Path(images_dir).resolve(), Path(output).resolve()
    relation = overlap(out, images)
    if relation is None:
        return
    raise OutputLocationError(
        f"The output folder {out} {relation} the images folder {images}: results would be written among the "
        "sources. Point RANDOM_DIFFUSION_OUTPUT_DIR (or the dataset resource's output_dir) at a folder outside it."
    )


def overlap(folder: Path, other: Path) -> str | None:
    """How `folder` lies against `other` ("is", "is inside", "holds"), or None when they are apart."""
    if folder == other:
        return "is"
    if other in folder.parents:
        return "is inside"
    if folder in other.parents:
        return "holds"
    return None
