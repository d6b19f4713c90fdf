"""The content hash of corpus files: the one definition the index, the planner and the runtime share.

Corpus files are hashed whole when indexed and again when a size-equal file has a new mtime, so the
hash must cost far less than parsing: xxh3_128 runs at memory speed (~20 GB/s, blake2b ~1 GB/s). It
detects changed files, it does not defend against forgery, so a non-cryptographic hash is enough.
Small identities (tokenizer.json, manifests, specs) keep blake2b (``json_digest`` below): their
cost does not matter.

The hash is written self-describing, ``"xxh3_128:<32 hex digits>"``, so a later change of algorithm
is a visible mismatch, never a silent one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import xxhash

from mixtera.runtime.storage import ObjectPath, corpus_location, open_stream

ALGORITHM = "xxh3_128"
_PREFIX = ALGORITHM + ":"
_HEX_DIGITS = 32
READ_BYTES = 1 << 20


class ContentHasher:
    """Streaming content hash: feed a file's bytes in order with `update`, then read `hexdigest`."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = xxhash.xxh3_128()

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return _PREFIX + self._h.hexdigest()


def bytes_content_hash(data: bytes) -> str:
    """``"xxh3_128:<hex>"`` of ``data``: what :func:`file_content_hash` gives for a file holding it."""
    h = ContentHasher()
    h.update(data)
    return h.hexdigest()


def file_content_hash(path: Path | str | ObjectPath) -> str:
    """``"xxh3_128:<hex>"`` of the file's bytes (local or an object), as the index and the plan record it."""
    h = ContentHasher()
    with open_stream(corpus_location(path)) as f:
        while block := f.read(READ_BYTES):
            h.update(block)
    return h.hexdigest()


def content_digest(content_hash: str) -> bytes | None:
    """The raw 16-byte digest of a content hash string, or None when it is not one this version makes."""
    if not isinstance(content_hash, str) or not content_hash.startswith(_PREFIX):
        return None
    hexpart = content_hash[len(_PREFIX) :]
    if len(hexpart) != _HEX_DIGITS:
        return None
    try:
        return bytes.fromhex(hexpart)
    except ValueError:
        return None


def cache_name(content_hash: str) -> str:
    """A file-name-safe form of a content hash (``xxh3_128-<hex>``), for caches keyed by content."""
    return content_hash.replace(":", "-")


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no spaces: the same bytes for the same data, whatever the dict order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def json_digest(obj: Any) -> str:
    """The blake2b-128 hex digest of ``canonical_json(obj)`` (plan fingerprints, index manifest hashes)."""
    return hashlib.blake2b(canonical_json(obj), digest_size=16).hexdigest()
