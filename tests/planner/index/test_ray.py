"""`--executor ray`: the local executor's tasks and merge on a Ray cluster (a local 2-CPU Ray here).

One Ray is started for the whole module; the tests that need it share it (its startup costs seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mixtera.planner.index import build_index, load_config, parse_config
from mixtera.runtime.errors import ConfigError, CorpusError
from tests.helpers.index_helpers import CONFIG, assert_same_index, make_corpus, make_span_corpus, run_cli

ROOT = Path(__file__).resolve().parents[3]
SPANS = 700  # bytes: big.jsonl splits into dozens of span tasks


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[str]:
    """A local Ray with 2 CPUs; yields its address, for a second driver to join."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'mixtera[ray]'")
    with contextlib.suppress(pytest.skip.Exception):  # without moto and s3fs the S3 test alone skips
        request.getfixturevalue("s3_server")  # first: Ray's workers inherit its AWS environment
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100_000_000, log_to_driver=False,
             logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """Every format, declared and automatic properties, and a file that splits into spans."""
    make_corpus(tmp_path / "c")
    return make_span_corpus(tmp_path / "c" / "spans")


def test_ray_index_is_byte_identical_to_local(ray_cluster: str, corpus: Path, tmp_path: Path) -> None:
    cfg = parse_config(CONFIG)
    local = build_index([corpus], tmp_path / "local", cfg, processes=1)
    on_ray = build_index([corpus], tmp_path / "ray", cfg, executor="ray", span_bytes=SPANS)
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    assert (on_ray.samples, on_ray.bytes_read) == (local.samples, local.bytes_read)


@pytest.mark.shared
def test_ray_index_of_the_shared_corpora_is_byte_identical(
    ray_cluster: str, shared_corpora: Path, tmp_path: Path
) -> None:
    text, cfg = shared_corpora / "text", ROOT / "examples" / "shared_corpora_index.toml"
    build_index([text], tmp_path / "local", cfg, processes=1)
    build_index([text], tmp_path / "ray", cfg, executor="ray", span_bytes=64 << 10)
    assert_same_index(tmp_path / "local", tmp_path / "ray")


def _files(index: Path) -> list[dict[str, Any]]:
    """The manifest's file entries without what differs by nature between a folder and a bucket."""
    files = json.loads((index / "manifest.json").read_bytes())["files"]
    return [{k: v for k, v in f.items() if k not in ("mtime_ns", "etag")} for f in files]


def test_ray_index_of_an_s3_corpus_is_that_of_the_local_files(
    ray_cluster: str, s3_server: Any, corpus: Path, tmp_path: Path
) -> None:
    """Span tasks read their byte ranges from the objects; the index is the local executor's."""
    url = s3_server.upload(corpus, "ray-corpus", "text")
    cfg = parse_config(CONFIG)
    build_index([corpus], tmp_path / "files", cfg, processes=1)
    build_index(url, tmp_path / "local", cfg, processes=2, span_bytes=SPANS)
    on_ray = build_index(url, tmp_path / "ray", cfg, executor="ray", span_bytes=SPANS)
    assert str(on_ray.corpus_root) == "s3://ray-corpus/text"
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    files = tmp_path / "files" / "samples.parquet"
    assert (tmp_path / "ray" / "samples.parquet").read_bytes() == files.read_bytes()
    assert _files(tmp_path / "ray") == _files(tmp_path / "files")  # content hashes too


def test_a_bad_record_fails_with_the_local_message(ray_cluster: str, tmp_path: Path) -> None:
    root = make_span_corpus(tmp_path / "c", bad_lines=(220, 390))
    local = run_cli("index", root, "--out", tmp_path / "local", "-p", "1")
    on_ray = run_cli("index", root, "--out", tmp_path / "ray", "--executor", "ray")
    assert local.exit_code == on_ray.exit_code == 1
    assert f"{root / 'big.jsonl'}:220: malformed JSON" in local.stderr
    assert on_ray.stderr == local.stderr
    with pytest.raises(CorpusError, match=r"big\.jsonl:220: malformed JSON"):
        build_index([root], tmp_path / "spans", executor="ray", span_bytes=SPANS)
    assert not (tmp_path / "spans").exists()


KILLING_HOOK = """
import os

MARKER = {marker!r}


def extract(record, relpath):
    if not os.path.exists(MARKER):  # the first try of the first task: its worker process dies
        with open(MARKER, "w") as f:
            f.write(str(os.getpid()))
        os._exit(1)
    return {{"hooked": len(record["text"])}}
"""


def test_a_task_whose_worker_dies_is_retried(ray_cluster: str, corpus: Path, tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    (tmp_path / "killing_hook_props.py").write_text(KILLING_HOOK.format(marker=str(marker)))
    (tmp_path / "index.toml").write_text('[index]\nfunction = "killing_hook_props:extract"\n')
    cfg = load_config(tmp_path / "index.toml")
    build_index([corpus], tmp_path / "ray", cfg, executor="ray", span_bytes=SPANS)
    assert marker.read_text().isdigit()  # a worker died mid-task: the run went on
    try:
        build_index([corpus], tmp_path / "local", cfg, processes=1)  # the marker exists: nobody dies
    finally:
        sys.modules.pop("killing_hook_props", None)
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    assert "hooked" in json.loads((tmp_path / "ray" / "manifest.json").read_text())["properties"]


def test_ray_address_joins_a_running_cluster(ray_cluster: str, corpus: Path, tmp_path: Path) -> None:
    """A second driver (the CLI, in its own process) joins the cluster by its address."""
    build_index([corpus], tmp_path / "local", processes=1)
    cmd = [sys.executable, "-c", "from mixtera.cli.app import main; main()", "index", str(corpus),
           "--out", str(tmp_path / "ray"), "--executor", "ray", "--ray-address", ray_cluster, "--json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["samples"] > 400
    assert_same_index(tmp_path / "local", tmp_path / "ray")


def test_without_ray_installed_the_flag_names_the_extra(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = run_cli("index", corpus, "--out", tmp_path / "idx", "--executor", "ray")
    assert result.exit_code == 1
    assert "--executor ray needs Ray, which is not installed" in result.stderr
    assert "pip install 'mixtera[ray]'" in result.stderr
    assert not (tmp_path / "idx").exists()


def test_ray_address_needs_the_ray_executor(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        build_index([corpus], tmp_path / "idx", ray_address="127.0.0.1:6379")


def test_an_unreachable_ray_address_fails_fast(ray_cluster: str, corpus: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("index", corpus, "--out", tmp_path / "idx", "--executor", "ray",
                     "--ray-address", f"127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"error: cannot reach the Ray cluster at 127.0.0.1:{port}" in result.stderr


def test_ray_loads_only_for_the_ray_executor(corpus: Path, tmp_path: Path) -> None:
    """The CLI and a local build never import Ray (about a second of imports)."""
    code = (f"import sys; from mixtera.cli.app import app; from mixtera.planner.index import build_index; "
            f"build_index([{str(corpus)!r}], {str(tmp_path / 'idx')!r}, processes=1); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
