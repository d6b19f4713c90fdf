"""Paths read from an index or plan stay inside the folders they belong to.

An index or plan records corpus files relative to the corpus root, and the corpus root (an absolute
path or an object-store URL) and the token-file folder as absolute paths. A crafted or damaged file
could name ``../../x/secret.jsonl`` or ``/etc/passwd`` and make the runtime read and return a file
outside the corpus. The check is lexical, on the recorded path (no absolute path, no ``..`` left
after normalisation), not on ``resolve()``: the indexer follows symbolic links inside the corpus
root to files outside it, and such files are part of the corpus.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from mixtera.runtime.errors import PlanError
from mixtera.runtime.storage import CorpusPath, StorageError, corpus_location, is_url


def corpus_path(root: CorpusPath, relative: object, *, where: str, hint: str) -> CorpusPath:
    """``root / relative`` for a recorded corpus path that stays inside ``root``."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise PlanError(f"{where}: corpus file path {relative!r} is not a path", hint)
    norm = posixpath.normpath(relative)
    if posixpath.isabs(relative) or norm == "." or norm == ".." or norm.startswith("../"):
        raise PlanError(f"{where}: corpus file path {relative!r} leaves the corpus root {root} "
                        "(recorded paths are relative, without '..' outside the root)", hint)
    return root / norm


def recorded_root(path: object, *, where: str, hint: str) -> CorpusPath:
    """A recorded corpus root: an absolute folder (`recorded_dir`) or an object-store URL whose key
    has no empty, ``.`` or ``..`` component (the same lexical confinement as a local root)."""
    if not is_url(path):
        return recorded_dir(path, what="corpus_root", where=where, hint=hint)
    try:
        root = corpus_location(path)  # type: ignore[arg-type]
    except StorageError as exc:
        raise PlanError(f"{where}: corpus_root: {exc.message}", hint) from None
    if isinstance(root, Path):  # a file:// URL
        return recorded_dir(str(root), what="corpus_root", where=where, hint=hint)
    if any(p in ("", ".", "..") for p in root.parts):
        raise PlanError(f"{where}: corpus_root {path!r} must be a URL without empty, '.' or '..' parts",
                        hint)
    return root


def recorded_dir(path: object, *, what: str, where: str, hint: str, name: str | None = None) -> Path:
    """A recorded absolute folder (the corpus root, a token-file folder) without ``..`` components;
    with ``name``, its last component must be ``name``."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise PlanError(f"{where}: {what} {path!r} is not a path", hint)
    parts = Path(path).parts
    if not Path(path).is_absolute() or ".." in parts or (name is not None and parts[-1] != name):
        must = f", named {name!r}" if name else ""
        raise PlanError(f"{where}: {what} {path!r} must be an absolute path without '..'{must}", hint)
    return Path(path)
