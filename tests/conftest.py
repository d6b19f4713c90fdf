"""Shared fixtures. Tests that need ../shared (real corpora, tokenizers) skip with a reason without it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the read-only ../shared folder beside the checkout is absent)")
    return path


@pytest.fixture(scope="session")
def shared_corpora() -> Path:
    return _require(SHARED / "corpora")


@pytest.fixture(scope="session")
def neox_tokenizer() -> Path:
    return _require(SHARED / "tokenizers" / "gpt-neox-olmo-dolma-v1_5.json")


@pytest.fixture(scope="session")
def olmo2_tokenizer() -> Path:
    return _require(SHARED / "tokenizers" / "olmo2-dolma2.json")
