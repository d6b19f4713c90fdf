"""Crash-safe writes: a temporary file in the same folder, fsync, then rename.

Folders (a plan, an index) are built in a staging sibling and published with one exchange rename
(Linux ``renameat2(RENAME_EXCHANGE)``), so the destination holds the complete old or the complete new
folder at every moment. Where the file system has no exchange rename, the old folder is first renamed
aside to ``.NAME.HOST.PID.XXXX.old`` and the stage renamed in: a crash between those two renames leaves
no folder at the destination, and the next publish onto it (or :func:`recover`) renames the old one back.

Every temporary name carries its owner, ``HOST.PID``: :func:`recover` removes the leftovers of killed
runs on this host (owner no longer alive) and never touches those of a live process or another host.

Temporary files and folders are created with the usual modes (0o666 / 0o777, masked by the process
umask by the kernel), not ``tempfile``'s private 0o600 / 0o700: what they become by a rename is a
published plan or index that other users of a cluster must be able to read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mixtera.runtime.errors import MixteraUserError

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


def _owner() -> str:
    """``HOST.PID`` of this process, as temporary names carry it (host: letters, digits, ``-``)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    return f"{host}.{os.getpid()}"


def _temp_name(prefix: str, suffix: str) -> str:
    return f"{prefix}{_owner()}.{secrets.token_hex(6)}{suffix}"


def temp_file(folder: Path | str, prefix: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """A new, uniquely named file in ``folder`` opened for writing: (fd, path); like ``mkstemp``."""
    for _ in range(_TRIES):
        path = Path(folder) / _temp_name(prefix, suffix)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name {prefix}*{suffix} after {_TRIES} tries")


def temp_dir(folder: Path | str, prefix: str, suffix: str = ".staging") -> Path:
    """A new, uniquely named, empty folder in ``folder``; like ``mkdtemp``."""
    for _ in range(_TRIES):
        path = Path(folder) / _temp_name(prefix, suffix)
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


_STAGE, _OLD, _TRASH = ".staging", ".old", ".trash"


@contextlib.contextmanager
def staging_dir(final: Path | str) -> Iterator[Path]:
    """Yield a fresh sibling folder of ``final``; on success it replaces ``final`` (see the module).

    A crash or an exception leaves ``final`` exactly as it was (an exception removes the stage; a
    killed run's stage is removed by the next publish onto ``final``).
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        recover(final)
        stage = temp_dir(final.parent, prefix=f".{final.name}.")
    except PermissionError as exc:
        raise unwritable(final, exc) from None
    try:
        yield stage
        publish_dir(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def check_writable(final: Path | str) -> None:
    """Refuse early an output whose nearest existing folder this user may not write (staging_dir
    refuses it too, but only when the work is done)."""
    final = Path(final)
    folder = final.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise unwritable(final, PermissionError(errno.EACCES, "Permission denied", str(folder)))


def unwritable(path: Path, exc: OSError) -> MixteraUserError:
    """The error for an output whose folder this process may not write."""
    where = exc.filename or path.parent
    return MixteraUserError(f"cannot write {path}: permission denied on {where}",
                            "choose an --out in a folder you can write, or ask its owner for write access")


def publish_dir(stage: Path, final: Path) -> None:
    """Put the complete folder ``stage`` at ``final``, replacing what is there, and drop the old one."""
    if not os.path.lexists(final):
        os.rename(stage, final)
    elif exchange(stage, final):
        shutil.rmtree(stage)  # the old folder, now under the stage's name
    else:
        old = final.with_name(_temp_name(f".{final.name}.", _OLD))
        os.rename(final, old)
        os.rename(stage, final)  # a crash just before this line: recover() renames `old` back
        trash = old.with_name(old.name[: -len(_OLD)] + _TRASH)
        os.rename(old, trash)  # an `.old` folder is always complete; a `.trash` one may be partial
        shutil.rmtree(trash)
    fsync_path(final.parent)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def _renameat2() -> object | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:  # pragma: no cover - no C library to load (not Linux)
        return None


def exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one atomic step; False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)  # type: ignore[operator]
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def recover(final: Path | str) -> list[str]:
    """Tidy the temporary siblings of ``final`` that killed runs on this host left behind.

    An old copy that a killed swap had moved aside is renamed back when ``final`` is missing;
    every other leftover (stage, trash, temporary file) of an owner that is no longer alive is
    removed. Returns the names removed or restored.
    """
    final = Path(final)
    pattern = re.compile(re.escape(f".{final.name}.") + r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\."
                         r"[0-9a-f]{12}(?P<kind>\.staging|\.old|\.trash|\.tmp)$")
    host = _owner().rsplit(".", 1)[0]
    try:
        names = sorted(os.listdir(final.parent))
    except FileNotFoundError:
        return []
    dead = [n for n in names if (m := pattern.match(n)) and m["host"] == host and not _alive(int(m["pid"]))]
    done = []
    old = [n for n in dead if n.endswith(_OLD)]
    if old and not os.path.lexists(final):
        newest = max(old, key=lambda n: os.lstat(final.parent / n).st_mtime_ns)
        os.rename(final.parent / newest, final)
        done.append(newest)
    for name in dead:
        if name not in done:
            _remove(final.parent / name)
            done.append(name)
    return done


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def open_lock(path: Path | str) -> int:
    """Open (creating if needed) the lock file ``path`` for reading and writing, never through a link.

    A symlink, a hard link, a FIFO or anything but a regular file planted at ``path`` is refused:
    writing a pid into it, or truncating it, would damage what it points to.
    """
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    hint = f"remove {path} (mixtera creates its lock files itself) and run again"
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MixteraUserError(f"{path}: the lock file is a symbolic link; refusing to follow it",
                                   hint) from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise MixteraUserError(f"{path}: cannot open the lock file ({exc.strerror})",
                                   "check that the folder is writable for this user") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = "has other hard links" if stat.S_ISREG(st.st_mode) else "is not a regular file"
        raise MixteraUserError(f"{path}: the lock file {what}; refusing to use it", hint)
    os.set_blocking(fd, True)
    return fd


@contextlib.contextmanager
def exclusive_lock(path: Path | str) -> Iterator[int]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (see :func:`open_lock`); yields its fd."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)
