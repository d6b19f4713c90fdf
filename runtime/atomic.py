"""Crash-safe writes: a temporary file in the same folder, fsync, then rename.

Temporary files and folders are created with the usual modes (0o666 / 0o777, masked by the process
umask by the kernel), not ``tempfile``'s private 0o600 / 0o700: what they become by a rename is a
published plan or index that other users of a cluster must be able to read.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o666  # masked by the umask, as open(..., "w") does
DIR_MODE = 0o777  # masked by the umask, as mkdir does
_TRIES = 100


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (a folder after a rename in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_file(folder: Path | str, prefix: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, uniquely named file in ``folder`` opened for writing: (fd, path); like ``mkstemp``."""
    for _ in range(_TRIES):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name {prefix}*{suffix} after {_TRIES} tries")


def temp_dir(folder: Path | str, prefix: str, suffix: str = ".staging") -> Path:
    """A new, uniquely named, empty folder in ``folder``; like ``mkdtemp``."""
    for _ in range(_TRIES):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.mkdir(path, DIR_MODE)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name {prefix}*{suffix} after {_TRIES} tries")


@contextlib.contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary sibling that replaces it only when the block succeeds.

    Readers see the old file or the complete new one, never a mix; an exception removes the
    temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    fd, tmp = temp_file(path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def write_atomic(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix."""
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def staging_dir(final: Path | str) -> Iterator[Path]:
    """Yield a fresh sibling folder of ``final``; on success it replaces ``final`` in one rename.

    A crash or an exception leaves ``final`` exactly as it was (the staging folder is removed).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = temp_dir(final.parent, prefix=f".{final.name}.")
    try:
        yield stage
        _swap_in(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap_in(stage: Path, final: Path) -> None:
    if not final.exists():
        os.replace(stage, final)
    else:
        # Two renames: the old folder is moved aside first, so `final` is never half-written.
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(stage, final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(final.parent)
