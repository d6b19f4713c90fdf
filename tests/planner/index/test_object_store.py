"""`mixtera index s3://...` against a real S3 server on 127.0.0.1: the same index as of the local files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from mixtera.planner.index import build_index
from mixtera.runtime.errors import MixteraUserError
from tests.helpers import SHARED
from tests.helpers.index_helpers import CONFIG, make_corpus, run_cli
from tests.helpers.s3_server import ACCESS_KEY, SECRET_KEY, s3_environment

_SHARED_TEXT = SHARED / "corpora" / "text"


def _corpus(tmp_path: Path, which: str) -> Path:
    if which == "shared":
        if not _SHARED_TEXT.is_dir():
            pytest.skip(f"needs {_SHARED_TEXT} (the read-only ../shared beside the checkout is absent)")
        return _SHARED_TEXT
    return make_corpus(tmp_path / "corpus")


def _files(index: Path) -> list[dict[str, Any]]:
    """The manifest's file entries without what differs by nature between a folder and a bucket."""
    files = json.loads((index / "manifest.json").read_bytes())["files"]
    return [{k: v for k, v in f.items() if k not in ("mtime_ns", "etag")} for f in files]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["own", "shared"])
def test_index_from_s3_equals_the_local_index(s3_server: Any, tmp_path: Path, which: str) -> None:
    corpus = _corpus(tmp_path, which)
    config = tmp_path / "index.toml"
    config.write_text(CONFIG)
    url = s3_server.upload(corpus, "corpora", f"{which}/text")
    local = build_index(corpus, tmp_path / "local", config, processes=1)
    remote = build_index(url, tmp_path / "remote", config, processes=2)
    assert str(remote.corpus_root) == f"s3://corpora/{which}/text"
    assert pq.read_table(tmp_path / "remote" / "samples.parquet").equals(
        pq.read_table(tmp_path / "local" / "samples.parquet"))  # sample ids, locations, properties
    assert _files(tmp_path / "remote") == _files(tmp_path / "local")  # content hashes too
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_bytes())
    assert all(f["mtime_ns"] == 0 and f["etag"] for f in manifest["files"])
    assert (local.samples, local.bytes) == (remote.samples, remote.bytes)


def _no_secret_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, path


def test_incremental_reindex_from_s3_uses_the_etag(s3_server: Any, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    url = s3_server.upload(corpus, "incremental", "c")
    out = tmp_path / "index"
    first = build_index(url, out)
    assert len(first.added) == 5
    again = build_index(url, out)
    assert (again.added, again.changed, again.unchanged) == ([], [], first.added)
    client = s3_server.client()
    client.put_object(Bucket="incremental", Key="c/web/a.jsonl", Body=b'{"text": "new"}\n')  # new bytes
    client.put_object(Bucket="incremental", Key="c/web/z.jsonl", Body=b'{"text": "added"}\n')
    client.delete_object(Bucket="incremental", Key="c/books/old.json.gz")
    third = build_index(url, out)
    assert (third.added, third.changed) == (["web/z.jsonl"], ["web/a.jsonl"])
    assert third.removed == ["books/old.json.gz"]
    assert build_index(url, tmp_path / "fresh").samples == third.samples
    _no_secret_in(out)


def test_cli_indexes_a_bucket_prefix(s3_server: Any, tmp_path: Path) -> None:
    url = s3_server.upload(make_corpus(tmp_path / "corpus"), "cli-corpus", "data")
    result = run_cli("index", url, "--out", tmp_path / "index", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["corpus_root"] == "s3://cli-corpus/data" and report["counts"]["files"] == 5
    assert SECRET_KEY not in result.output and ACCESS_KEY not in result.output
    _no_secret_in(tmp_path / "index")


def _error(url: str, out: Path) -> str:
    result = run_cli("index", url, "--out", out)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.output


def test_missing_bucket_and_prefix_are_named(s3_server: Any, tmp_path: Path) -> None:
    s3_server.upload(make_corpus(tmp_path / "corpus"), "present", "data")
    text = _error("s3://no-such-bucket/data/", tmp_path / "a")
    assert "s3://no-such-bucket/data" in text and "bucket 'no-such-bucket' does not exist" in text
    text = _error("s3://present/nothing-here/", tmp_path / "b")
    assert "s3://present/nothing-here" in text and "no objects under this prefix" in text


def test_wrong_credentials_are_refused_without_showing_them(s3_server: Any, tmp_path: Path) -> None:
    s3_server.upload(make_corpus(tmp_path / "corpus"), "guarded", "data")
    wrong = "wrong-secret-0123456789abcdef"
    s3_server.require_auth(True)
    try:
        with s3_environment(s3_server.endpoint, access_key="AKIAWRONGKEY0000", secret_key=wrong,
                            tmp=tmp_path):
            text = _error("s3://guarded/data/", tmp_path / "index")
    finally:
        s3_server.require_auth(False)
    assert "s3://guarded/data" in text and "access denied" in text and "AWS_ACCESS_KEY_ID" in text
    assert wrong not in text and "AKIAWRONGKEY0000" not in text
    assert not (tmp_path / "index").exists()


def test_no_credentials_say_what_to_set(s3_server: Any, tmp_path: Path) -> None:
    with s3_environment(s3_server.endpoint, access_key="", secret_key="", tmp=tmp_path):
        text = _error("s3://any-bucket/data/", tmp_path / "index")
    assert "no credentials" in text and "AWS_PROFILE" in text


def test_unreachable_endpoint_fails_in_bounded_time(tmp_path: Path) -> None:
    pytest.importorskip("s3fs")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with s3_environment(f"http://127.0.0.1:{port}", tmp=tmp_path):
        text = _error("s3://bucket/data/", tmp_path / "index")
    assert "cannot be reached" in text and "AWS_ENDPOINT_URL" in text


def test_credentials_in_the_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MixteraUserError, match="credentials inside a URL") as info:
        build_index("s3://KEY:SECRETVALUE@bucket/data/", tmp_path / "index")
    assert "SECRETVALUE" not in str(info.value)


def test_file_urls_are_local_paths(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    by_url = build_index(f"file://{corpus}", tmp_path / "a")
    by_path = build_index(corpus, tmp_path / "b")
    assert by_url.corpus_root == by_path.corpus_root == corpus
    assert (tmp_path / "a" / "samples.parquet").read_bytes() == \
        (tmp_path / "b" / "samples.parquet").read_bytes()
