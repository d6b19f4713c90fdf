"""Replaying plans over WebDataset shards in S3 (a real server on 127.0.0.1): documents with their media
and decoded images, and token steps with image placeholders, exactly as the local replay; each sample's
span comes by ranged GETs that insist on the plan's ETag."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.index import build_index, parse_config
from mixtera.runtime import PlanDataset
from mixtera.runtime.errors import PlanError
from mixtera.runtime.object_reads import block_cache, read_stats
from mixtera.runtime.readers import FileEntry, ObjectTarReader, open_reader
from mixtera.runtime.storage import corpus_location
from tests.helpers import ROOT, SHARED
from tests.helpers.image_plans import assert_resumes_exactly, stopped_and_resumed
from tests.helpers.runtime_plans import assert_same_steps
from tests.helpers.shards import image_samples, mixed_corpus, mixture_toml, write_shard

pytest.importorskip("PIL", reason="needs the vision extra (pip install 'mixtera[vision]')")

PLACEHOLDER = "<image>"
SIZE = (8, 8)
_SHARED_SHARDS = SHARED / "corpora" / "image_text"


def _corpus(root: Path) -> Path:
    corpus = mixed_corpus(root / "corpus", shards=2, per_shard=14, texts=30)
    write_shard(corpus / "img" / "jpeg.tar", image_samples(8, start=50, fmt="jpg"))
    return corpus


def _plan(root: Path, corpus: str | Path, name: str, *, tokenizer: Path | None = None,
          shared: bool = False) -> Path:
    """Index ``corpus`` and compile a mixture of its images and texts into ``root/<name>-plan``."""
    tok = f'tokenizer = "{tokenizer}"\n' if tokenizer else ""
    source = '[properties.source]\npath = "{source}/**"\n' if shared else ""
    build_index(corpus, root / f"{name}-idx", parse_config(f'[index]\ntext = ["text", "txt"]\n{tok}{source}'),
                processes=1)
    extra = {"unit": "tokens", "seq_len": 48, "batch_size": 2, "extra": "image_tokens = 4\n"} if tokenizer \
        else {"batch_size": 4}
    (root / f"{name}.toml").write_text(mixture_toml(root / f"{name}-idx", {"img": 0.5, "text": 0.5},
                                                    steps=6, **extra))
    compile_file(root / f"{name}.toml", root / f"{name}-plan")
    return root / f"{name}-plan"


def _documents(plan: Path, cache: Path, workers: int = 0) -> list[list[Any]]:
    return [list(PlanDataset(plan, rank=r, world_size=2, output="documents", decode_images=True,
                             cache_dir=cache).loader(num_workers=workers)) for r in range(2)]


def _images_in(steps: list[list[Any]]) -> int:
    return sum(len(d.get("images", [])) for rank in steps for step in rank for d in step)


@pytest.mark.slow
def test_documents_with_images_from_s3_equal_the_local_replay(s3_server: Any, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    local = _plan(tmp_path, corpus, "local")
    remote = _plan(tmp_path, s3_server.upload(corpus, "shard-replay", "docs"), "remote")
    assert json.loads((remote / "manifest.json").read_bytes())["corpus_root"] == "s3://shard-replay/docs"
    before = read_stats()
    got = _documents(remote, tmp_path / "r")
    assert read_stats()["requests"] > before["requests"]  # the spans came by ranged GETs
    want = _documents(local, tmp_path / "l")
    assert_same_steps(got, want)
    assert _images_in(got) == 2 * 6 * 2  # half of each rank's 4 samples per step are images
    assert all("media" in d for rank in got for step in rank for d in step if d["domain"] == "img")
    assert_same_steps(_documents(remote, tmp_path / "w", workers=2), want)  # forked workers read from S3 too
    _assert_documents_resume_exactly(remote, tmp_path / "resume", stop=3)


def _assert_documents_resume_exactly(plan: Path, cache: Path, stop: int) -> None:
    """Rank 1 stopped and resumed gives exactly the documents of an uninterrupted run, decoded
    images included."""
    def make() -> PlanDataset:
        return PlanDataset(plan, rank=1, world_size=2, output="documents", decode_images=True,
                           cache_dir=cache)

    resumed, whole = stopped_and_resumed(make, stop)
    assert_same_steps(resumed, whole)


@pytest.fixture(scope="module")
def image_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT / "examples"))
    from demo_tokenizer import train_tokenizer

    texts = [f"a {c} square number {i}" for c in ("red", "green", "blue", "yellow") for i in range(60)]
    texts += [f"document {i} " + "word " * (3 + i % 7) for i in range(30)]
    out = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer(texts, out, vocab_size=300, extra_special=(PLACEHOLDER,))


def _tokens(plan: Path, tok: Path, rank: int) -> PlanDataset:
    ph = Tokenizer.from_file(str(tok)).token_to_id(PLACEHOLDER)
    return PlanDataset(plan, rank=rank, world_size=2, tokenizer=tok, image_token_id=ph, image_size=SIZE,
                       cache_dir=plan.parent / f"cache-{plan.name}")


@pytest.mark.slow
def test_tokens_with_images_from_s3_equal_the_local_replay_and_resume(
    s3_server: Any, tmp_path: Path, image_tokenizer: Path
) -> None:
    corpus = _corpus(tmp_path)
    local = _plan(tmp_path, corpus, "local", tokenizer=image_tokenizer)
    remote = _plan(tmp_path, s3_server.upload(corpus, "shard-replay", "tokens"), "remote",
                   tokenizer=image_tokenizer)
    for rank in (0, 1):
        got = list(_tokens(remote, image_tokenizer, rank).loader(num_workers=0))
        want = list(_tokens(local, image_tokenizer, rank).loader(num_workers=0))
        assert len(got) == 6 and sum(len(b["images"]) for b in got) > 0
        assert_same_steps(got, want)
    assert_resumes_exactly(lambda: _tokens(remote, image_tokenizer, 1), stop=3)


@pytest.mark.slow
def test_the_shared_shards_from_s3_replay_as_the_local_ones(s3_server: Any, tmp_path: Path) -> None:
    if not _SHARED_SHARDS.is_dir():
        pytest.skip(f"needs {_SHARED_SHARDS} (the read-only ../shared beside the checkout is absent)")
    corpus = tmp_path / "corpus"
    (corpus / "text").mkdir(parents=True)
    (corpus / "img").symlink_to(_SHARED_SHARDS)
    (corpus / "text" / "t.jsonl").write_text("".join(json.dumps({"text": f"note {i} " * 5}) + "\n"
                                                     for i in range(40)))
    local = _plan(tmp_path, corpus, "local", shared=True)
    s3_server.upload(_SHARED_SHARDS, "shard-replay", "shared/img")
    url = s3_server.upload(corpus / "text", "shard-replay", "shared/text").removesuffix("text/")
    remote = _plan(tmp_path, url, "remote", shared=True)
    got = _documents(remote, tmp_path / "r")
    assert_same_steps(got, _documents(local, tmp_path / "l"))
    assert _images_in(got) == 2 * 6 * 2


def _shard_entry(plan: Path, name: str) -> FileEntry:
    manifest = json.loads((plan / "manifest.json").read_bytes())
    entry = next(f for f in manifest["files"] if f["path"] == name)
    return FileEntry.from_manifest(entry, corpus_location(manifest["corpus_root"]))


def test_a_replaced_shard_object_is_refused_naming_it(s3_server: Any, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    plan = _plan(tmp_path, s3_server.upload(corpus, "shard-replaced", "c"), "remote")
    entry = _shard_entry(plan, "img/shard-0.tar")
    reader = open_reader(entry, "txt", tmp_path / "cache")  # opened while the object is the indexed one
    assert isinstance(reader, ObjectTarReader)
    data = bytearray((corpus / "img" / "shard-0.tar").read_bytes())
    data[-1] ^= 1  # the same size: only the ETag tells
    s3_server.client().put_object(Bucket="shard-replaced", Key="c/img/shard-0.tar", Body=bytes(data))
    block_cache().clear()
    with pytest.raises(PlanError, match=r"s3://shard-replaced/c/img/shard-0\.tar: the object changed since "
                       "indexing"):  # a ranged GET of the open reader insists on the plan's ETag
        reader.samples([0], [2048])
    with pytest.raises(PlanError, match=r"s3://shard-replaced/c/img/shard-0\.tar: corpus object changed "
                       "since indexing"):  # a new replay checks the ETag when it opens the shard
        _documents(plan, tmp_path / "again")
