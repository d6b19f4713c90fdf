"""Shared fixtures. Tests that need ../shared (real corpora, tokenizers) skip with a reason without it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.helpers import ROOT, SHARED

# Property tests: a bounded budget by default; HYPOTHESIS_PROFILE=long runs 100 times more examples.
settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits SIGINT
# ignored, and so would every CLI process it starts: the tests that interrupt one with SIGINT, as
# Ctrl-C would, then wait for nothing. An ignored SIGINT stays ignored across exec; a handler does not.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained here from the standard library's sources (no ../shared needed)."""
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    import json

    from demo_tokenizer import train_tokenizer

    stdlib = Path(json.__file__).parent.parent
    texts = [p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:40]]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "tokenizer.json", vocab_size=600)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's S3 on 127.0.0.1 (a free port), with the AWS configuration of this process pointed at it."""
    pytest.importorskip("moto", reason="needs moto[server] (in the dev extra) for the object-store tests")
    pytest.importorskip("s3fs", reason="needs s3fs (mixtera[s3], in the dev extra)")
    from tests.helpers.s3_server import S3Server, s3_environment

    server = S3Server()
    try:
        with s3_environment(server.endpoint, tmp=tmp_path_factory.mktemp("aws")):
            yield server
    finally:
        server.stop()
