"""Tokenizer identity and loading: a plan is only replayed with the tokenizer its index counted with."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from mixtera.runtime.errors import ConfigError, PlanError


def tokenizer_blake2b(path: Path | str) -> str:
    """Hex blake2b (16-byte digest) of the tokenizer.json bytes: the identity the index records."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def check_tokenizer(path: Path | str, expected: dict[str, Any] | None) -> str:
    """The blake2b of a HF ``tokenizer.json`` after checking it against the plan's tokenizer record."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(
            f"tokenizer {path} does not exist", "pass the tokenizer.json the index was built with"
        )
    digest = tokenizer_blake2b(path)
    if expected is None:
        raise PlanError(
            f"the plan has no tokenizer, but tokenizer {path} was given",
            "index the corpus with a tokenizer (`[index] tokenizer = ...`) and recompile, "
            "or use output='documents' without a tokenizer",
        )
    if expected.get("blake2b") and expected["blake2b"] != digest:
        raise PlanError(
            f"tokenizer {path} (blake2b {digest}) is not the tokenizer of the plan's index "
            f"({expected.get('path')}, blake2b {expected['blake2b']})",
            "pass the tokenizer the index was built with, or re-index and recompile",
        )
    return digest


@lru_cache(maxsize=4)
def cached_tokenizer(path: str, digest: str) -> Any:
    """The HF ``tokenizer.json`` at ``path`` whose blake2b is ``digest`` (cached per content hash: one
    load per process and file version). The index and the runtime both load through here."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on bad files
        raise ConfigError(
            f"tokenizer {path} cannot be loaded: {exc}", "pass a Hugging Face tokenizer.json"
        ) from None


def load_tokenizer(path: Path | str, expected: dict[str, Any] | None) -> tuple[Any, str]:
    """Load a HF ``tokenizer.json`` after checking it against the plan's tokenizer record."""
    digest = check_tokenizer(path, expected)
    return cached_tokenizer(str(Path(path).resolve()), digest), digest


def framing_tokens(tokenizer: dict[str, Any] | None) -> int:
    """Tokens a document's frame adds to its span: the end-of-document token with ``eos``, the
    begin-of-document token with ``bos`` (the index's tokenizer record)."""
    record = tokenizer or {}
    return int(bool(record.get("eos"))) + int(bool(record.get("bos")))
