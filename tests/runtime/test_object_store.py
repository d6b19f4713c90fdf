"""Replaying a plan over a corpus in S3 (a real server on 127.0.0.1): exactly the local replay's data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import MixteraUserError, PlanError
from mixtera.runtime.object_reads import read_stats
from tests.helpers import SHARED
from tests.helpers.runtime_plans import assert_same_steps, make_docs, write_corpus_file
from tests.helpers.s3_server import ACCESS_KEY, SECRET_KEY, S3Server, s3_environment

MIXTURE = """[mixture]
index = "{index}"
seed = 5
unit = "{unit}"
steps = {steps}
segment_steps = 3

[topology]
world_size = 2
batch_size = {batch}
{seq_len}

[components.all]
weight = 1.0
"""


def _own_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    for name, fmt, seed, n in [("web", "jsonl", 1, 40), ("web", "jsonl.gz", 2, 30),
                               ("code", "parquet", 3, 25), ("books", "jsonl.zst", 4, 25)]:
        write_corpus_file(corpus / name / f"part{seed}.{fmt}", make_docs(seed, n), fmt, nested=False)
    return corpus


def _plan(root: Path, corpus: str | Path, name: str, *, tokenizer: Path | None, steps: int = 8) -> Path:
    from mixtera.planner.compile.pipeline import compile_file
    from mixtera.planner.index.build import build_index

    index = root / f"{name}-index"
    build_index(corpus, index, tokenizer=tokenizer, processes=1)
    unit, seq = ("tokens", "seq_len = 48") if tokenizer else ("samples", "")
    mixture = MIXTURE.format(index=index, unit=unit, steps=steps, batch=3, seq_len=seq)
    (root / f"{name}.toml").write_text(mixture)
    compile_file(root / f"{name}.toml", root / f"{name}-plan")
    return root / f"{name}-plan"


def _replay(plan: Path, tmp: Path, **kwargs: Any) -> list[list[Any]]:
    return [list(PlanDataset(plan, rank=r, world_size=2, cache_dir=tmp / "cache", **kwargs)
                 .loader(num_workers=0)) for r in range(2)]


@pytest.mark.slow
def test_tokens_from_s3_equal_the_local_replay(s3_server: Any, tmp_path: Path, tiny_tokenizer: Path) -> None:
    corpus = _own_corpus(tmp_path)
    url = s3_server.upload(corpus, "replay", "own")
    local = _plan(tmp_path, corpus, "local", tokenizer=tiny_tokenizer)
    remote = _plan(tmp_path, url, "remote", tokenizer=tiny_tokenizer)
    before = read_stats()
    got = _replay(remote, tmp_path / "r", tokenizer=tiny_tokenizer, with_provenance=True)
    assert read_stats()["requests"] > before["requests"]  # the samples came by ranged GETs
    assert_same_steps(got, _replay(local, tmp_path / "l", tokenizer=tiny_tokenizer, with_provenance=True))
    assert sum(len(r) for r in got) == 16
    for folder in (tmp_path / "remote-index", remote, tmp_path / "r"):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, path
    assert json.loads((remote / "manifest.json").read_bytes())["corpus_root"] == "s3://replay/own"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["own", "shared"])
def test_documents_from_s3_equal_the_local_replay(s3_server: Any, tmp_path: Path, which: str) -> None:
    corpus = SHARED / "corpora" / "text" if which == "shared" else _own_corpus(tmp_path)
    if not corpus.is_dir():
        pytest.skip(f"needs {corpus} (the read-only ../shared beside the checkout is absent)")
    url = s3_server.upload(corpus, "replay-docs", which)
    local = _plan(tmp_path, corpus, "local", tokenizer=None, steps=12)
    remote = _plan(tmp_path, url, "remote", tokenizer=None, steps=12)
    got = _replay(remote, tmp_path / "r", output="documents")
    assert_same_steps(got, _replay(local, tmp_path / "l", output="documents"))
    assert sum(len(r) for r in got) == 24


@pytest.mark.slow
def test_loader_workers_read_from_s3_after_the_parent_did(s3_server: Any, tmp_path: Path) -> None:
    """Forked workers get their own store client and block cache (threads do not survive a fork)."""
    corpus = _own_corpus(tmp_path)
    plan = _plan(tmp_path, s3_server.upload(corpus, "workers", "c"), "remote", tokenizer=None)
    def dataset() -> PlanDataset:
        return PlanDataset(plan, rank=0, world_size=2, output="documents", cache_dir=tmp_path / "cache")

    in_process = list(dataset().loader(num_workers=0))  # the parent has a client, a loop, fetch threads
    assert len(in_process) == 8
    assert_same_steps(list(dataset().loader(num_workers=2)), in_process)


def test_a_replaced_object_fails_naming_it(s3_server: Any, tmp_path: Path) -> None:
    corpus = _own_corpus(tmp_path)
    url = s3_server.upload(corpus, "replaced", "c")
    plan = _plan(tmp_path, url, "remote", tokenizer=None)
    data = (corpus / "web" / "part1.jsonl").read_bytes()
    changed = data.replace(b"doc", b"DOC")  # the same size: only the ETag tells
    s3_server.client().put_object(Bucket="replaced", Key="c/web/part1.jsonl", Body=changed)
    with pytest.raises(PlanError, match=r"s3://replaced/c/web/part1\.jsonl: corpus object changed since"):
        _replay(plan, tmp_path, output="documents")


def test_a_ranged_get_insists_on_the_plans_etag(s3_server: Any, tmp_path: Path) -> None:
    from mixtera.runtime.storage import corpus_location, read_range, stat

    s3_server.upload(_own_corpus(tmp_path), "etag-check", "c")
    obj = corpus_location("s3://etag-check/c/web/part1.jsonl")
    assert read_range(obj, 0, 5, stat(obj).etag) == b'{"id"'
    with pytest.raises(PlanError, match=r"s3://etag-check/c/web/part1\.jsonl: the object changed"):
        read_range(obj, 0, 5, "0123456789abcdef0123456789abcdef")


@pytest.mark.slow
def test_server_stopped_mid_replay_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("moto")
    corpus = tmp_path / "corpus"
    docs = make_docs(9, 3000, words=(100, 300))  # ~5 MB: far more blocks than read-ahead holds
    write_corpus_file(corpus / "web" / "big.jsonl", docs, "jsonl", nested=False)
    server = S3Server()  # its own: this test stops it
    try:
        with s3_environment(server.endpoint, tmp=tmp_path):
            url = server.upload(corpus, "stopping", "c")
            plan = _plan(tmp_path, url, "remote", tokenizer=None, steps=60)
            steps = iter(PlanDataset(plan, rank=0, world_size=2, output="documents",
                                     cache_dir=tmp_path / "cache").loader(num_workers=0))
            next(steps)
            next(steps)
            server.stop()
            with pytest.raises(MixteraUserError) as info:
                for _ in steps:
                    pass
    finally:
        server.stop()
    text = str(info.value)
    assert "s3://stopping/c/web/big.jsonl" in text and "cannot be reached" in text
    assert "AWS_ENDPOINT_URL" in text and SECRET_KEY not in text
