"""`build_index`: discover files, index new and changed ones in parallel, write the index atomically.

Incremental: a file whose size and mtime (for an object in a store: its ETag) match the previous index
keeps its rows; a file whose size matches but mtime (ETag) does not is hashed and kept when its content
hash matches. Anything that changes how
rows are computed (config, tokenizer, --store-tokens, corpus root) re-indexes everything.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from mixtera.planner.index import indexer
from mixtera.planner.index.config import IndexConfig, load_config
from mixtera.planner.index.corpus_files import READERS, CorpusFile, as_corpus_paths, corpus_root, discover
from mixtera.planner.index.parallel import run_tasks
from mixtera.planner.index.parts import SPAN_BYTES, Merger, Progress, build_tasks
from mixtera.planner.index.properties import check_pattern, declared_specs, widen
from mixtera.planner.index.schema import INDEX_KIND, IndexTables, manifest_json
from mixtera.planner.index.tables import file_table
from mixtera.planner.index.tokenizer_info import tokenizer_identity
from mixtera.planner.index.writer import conform, previous_index, token_code_for, write_index
from mixtera.runtime.atomic import check_writable, staging_dir
from mixtera.runtime.errors import ConfigError, CorpusError, MixteraUserError
from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format.plan_dir import INDEX_FILES, INDEX_MANIFEST, INDEX_SAMPLES, TOKENS_DIR
from mixtera.runtime.format.token_file import VERSION as TOKEN_FORMAT
from mixtera.runtime.storage import CorpusPath


@dataclass(slots=True, kw_only=True)
class IndexReport:
    """What a build did; `to_dict()` is the `--json` summary."""

    out: Path
    corpus_root: CorpusPath
    files: int
    samples: int
    bytes: int
    tokens: int | None
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"file", "line", "error"}
    ignored: list[str] = field(default_factory=list)  # files without a reader
    skipped_paths: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}: left out
    properties: dict[str, str] = field(default_factory=dict)
    bytes_read: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "corpus_root": str(self.corpus_root),
            "counts": {
                "files": self.files,
                "samples": self.samples,
                "bytes": self.bytes,
                "tokens": self.tokens,
            },
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "ignored": self.ignored,
            "skipped_paths": self.skipped_paths,
            "properties": self.properties,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
        }


def build_index(
    corpus_paths: list[Path | str] | Path | str,
    out: Path | str,
    config: IndexConfig | Path | str | None = None,
    *,
    tokenizer: Path | str | None = None,
    processes: int | None = None,
    store_tokens: bool = False,
    progress: Progress | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    span_bytes: int = SPAN_BYTES,
) -> IndexReport:
    """Index ``corpus_paths`` into directory ``out`` (see man/mixtera-index.md).

    ``executor``: "local" (``processes`` processes on this machine) or "ray" (tasks on the Ray
    cluster at ``ray_address``, else a local one; ``processes`` caps the tasks in flight). Plain
    JSON lines files above ``span_bytes`` are indexed in spans; the index is the same either way.
    """
    started = time.perf_counter()
    _check_executor(executor, ray_address)
    paths = as_corpus_paths([corpus_paths] if isinstance(corpus_paths, (str, Path)) else corpus_paths)
    if not paths:
        raise CorpusError("no corpus path given", "pass one or more corpus folders or files")
    out = Path(out).resolve()
    cfg = _resolve_config(config, tokenizer)
    tok = tokenizer_identity(cfg) if cfg.tokenizer else None
    if store_tokens and tok is None:
        raise ConfigError(
            "--store-tokens needs a tokenizer", "pass --tokenizer PATH or set [index] tokenizer"
        )
    _check_out(out)
    root = corpus_root(paths)
    found = discover(paths, root, exclude=out, on_error=cfg.on_error)
    files, ignored = found.files, found.ignored
    if not files:
        raise CorpusError(
            f"corpus {root} holds no indexable files",
            f"mixtera indexes {', '.join(READERS)} files",
        )
    identity = {
        "corpus_root": str(root),
        "config": cfg.to_dict(),
        "tokenizer": tok,
        "store_tokens": store_tokens,
        # token files of an older format are rewritten, not carried over into the new index
        "token_format": TOKEN_FORMAT if store_tokens else None,
    }
    prev = previous_index(out, identity)
    plan = _plan(files, prev)
    report = IndexReport(
        out=out,
        corpus_root=root,
        files=len(files),
        samples=0,
        bytes=0,
        tokens=None,
        ignored=ignored,
        skipped_paths=found.skipped,
        **plan.changes(),
    )
    code = token_code_for(tok) if store_tokens else 0
    with staging_dir(out) as stage:  # swapped in whole on success; the old index stays on failure
        token_stage = stage if store_tokens else None
        if token_stage is not None:
            (token_stage / TOKENS_DIR).mkdir()
        tasks = build_tasks(files, plan.todo, root, token_stage, span_bytes)
        results = _run(tasks, cfg, tok, code, _Executor(executor, processes, ray_address), progress)
        tables = _gather(files, plan, results, prev, token_stage)
        props = _property_types(cfg, results, prev, [tables[i] for i in sorted(plan.reuse)])
        samples = pa.concat_tables([conform(t, props) for t in tables])
        if samples.num_rows == 0:
            raise CorpusError(f"corpus {root} holds no records", "check that the files hold documents")
        report.skipped = [
            {"file": results[i].file.relpath, "line": ln, "error": msg}
            for i in sorted(results)
            for ln, msg in results[i].skipped
        ]
        report.bytes_read = sum(r.bytes_read for r in results.values())
        manifest = write_index(stage, identity, cfg, props, files, plan, results, samples, tok)
    report.samples = manifest["counts"]["samples"]
    report.bytes = manifest["counts"]["bytes"]
    report.tokens = manifest["counts"]["tokens"]
    report.properties = {n: p["type"] for n, p in manifest["properties"].items()}
    report.seconds = time.perf_counter() - started
    return report


def _resolve_config(config: IndexConfig | Path | str | None, tokenizer: Path | str | None) -> IndexConfig:
    cfg = config if isinstance(config, IndexConfig) else (load_config(config) if config else IndexConfig())
    for spec in declared_specs(cfg):
        if spec.path is not None:
            check_pattern(spec, "index config")
    if tokenizer is not None:
        cfg = replace(cfg, tokenizer=str(Path(tokenizer).resolve()))
    return cfg


def _check_out(out: Path) -> None:
    check_writable(out)
    if not out.exists():
        return
    hint = "choose an empty or new folder for --out, or an existing mixtera index to update"
    if not out.is_dir():
        raise MixteraUserError(f"--out {out} is a file, not an index directory", hint)
    entries = [p.name for p in out.iterdir()]
    if not entries:
        return
    try:
        kind = manifest_json(out, what="is not a mixtera index", hint=hint).get("kind")
    except MixteraUserError:  # no manifest, or not JSON
        kind = None
    if kind != INDEX_KIND:
        raise MixteraUserError(
            f"--out {out} holds something other than a mixtera index ({_shown(entries)}); "
            "refusing to replace it",
            hint,
        )
    foreign = sorted(n for n in entries if n not in (INDEX_MANIFEST, INDEX_SAMPLES, INDEX_FILES, TOKENS_DIR))
    if foreign:
        raise MixteraUserError(
            f"--out {out} holds files mixtera did not write ({_shown(foreign)}); refusing to replace "
            "the index, which would delete them",
            f"move them out of {out}, or choose a new --out",
        )


def _shown(names: list[str]) -> str:
    return ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")


@dataclass(slots=True)
class _Plan:
    """Which files keep their previous rows (new file_id -> old file_id) and which are (re)indexed."""

    todo: list[int] = field(default_factory=list)  # file_ids to (re)index
    reuse: dict[int, int] = field(default_factory=dict)
    fresh_hash: dict[int, str] = field(default_factory=dict)
    prev_files: list[dict[str, Any]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def changes(self) -> dict[str, list[str]]:
        return {
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "unchanged": self.unchanged,
        }


def _plan(files: list[CorpusFile], prev: IndexTables | None) -> _Plan:
    old = {f["path"]: f for f in prev.manifest["files"]} if prev is not None else {}
    plan = _Plan(prev_files=list(old.values()))
    for file_id, f in enumerate(files):
        entry = old.pop(f.relpath, None)
        if entry is not None and _unchanged(f, entry, plan, file_id, prev):
            plan.reuse[file_id] = entry["file_id"]
            plan.unchanged.append(f.relpath)
            continue
        (plan.changed if entry is not None else plan.added).append(f.relpath)
        plan.todo.append(file_id)
    plan.removed = sorted(old)
    return plan


def _unchanged(f: CorpusFile, entry: dict[str, Any], plan: _Plan, file_id: int, prev: IndexTables) -> bool:
    if f.size != entry["size"]:
        return False
    if f.mtime_ns == entry["mtime_ns"] and f.etag == entry.get("etag"):
        return True
    digest = file_content_hash(prev.corpus_root / f.relpath)
    plan.fresh_hash[file_id] = digest
    return digest == entry["content_hash"]


@dataclass(frozen=True, slots=True)
class _Executor:
    kind: str  # "local" or "ray"
    processes: int | None
    ray_address: str | None


EXECUTORS = ("local", "ray")


def _check_executor(executor: str, ray_address: str | None) -> None:
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}", f"choose one of {', '.join(EXECUTORS)}")
    if ray_address is not None and executor != "ray":
        raise ConfigError("--ray-address needs --executor ray", "add --executor ray, or drop --ray-address")


def _run(
    tasks: list[indexer.FileTask],
    cfg: IndexConfig,
    tok: dict[str, Any] | None,
    code: int,
    executor: _Executor,
    progress: Progress | None,
) -> dict[int, indexer.FileResult]:
    """Index ``tasks`` on the executor; every result goes through one `Merger`, whichever ran it."""
    tok_key = (tok["path"], tok["blake2b"]) if tok else None
    merger = Merger(tasks, progress)
    if executor.kind == "ray":
        from mixtera.planner.index.ray_executor import run_tasks_on_ray  # Ray loads only when asked for

        run_tasks_on_ray(tasks, (cfg, tok_key, code), merger.add, executor.ray_address, executor.processes)
    else:
        workers = max(1, min(executor.processes or default_processes(tok is not None), len(tasks)))
        run_tasks(tasks, workers, (cfg, tok_key, code), merger.add)
    return merger.results()


def default_processes(tokenizing: bool) -> int:
    """Every CPU for metadata; one process with a tokenizer, whose own thread pool uses every CPU
    (tokenizing dominates, so one process tokenizes as fast and skips the start-up of workers)."""
    return 1 if tokenizing else (os.cpu_count() or 1)


def _gather(
    files: list[CorpusFile],
    plan: _Plan,
    results: dict[int, indexer.FileResult],
    prev: IndexTables | None,
    stage: Path | None,
) -> list[pa.Table]:
    """Per-file tables in file order: fresh rows, or the previous rows under their new file_id."""
    tables = []
    bounds = _file_bounds(prev) if prev is not None else {}
    for file_id in range(len(files)):
        if file_id in results:
            tables.append(file_table(results[file_id]))
            continue
        old_id = plan.reuse[file_id]
        start, stop = bounds.get(old_id, (0, 0))
        rows = prev.samples.slice(start, stop - start)  # type: ignore[union-attr]
        ids = pa.array([file_id] * rows.num_rows, pa.int32())
        tables.append(rows.set_column(rows.schema.get_field_index("file_id"), "file_id", ids))
        if stage is not None:
            _carry_tokens(prev.path / TOKENS_DIR / f"{old_id}.bin", stage / TOKENS_DIR / f"{file_id}.bin")  # type: ignore[union-attr]
    return tables


def _file_bounds(prev: IndexTables) -> dict[int, tuple[int, int]]:
    """Row range of each file in the previous samples table (sorted by file_id)."""
    ids = prev.samples.column("file_id").to_numpy()
    bounds: dict[int, tuple[int, int]] = {}
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            bounds[int(ids[start])] = (start, i)
            start = i
    return bounds


def _carry_tokens(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _property_types(
    cfg: IndexConfig,
    results: dict[int, indexer.FileResult],
    prev: IndexTables | None,
    reused: list[pa.Table],
) -> dict[str, dict[str, Any]]:
    """The property schema: declared types, and automatic types widened over every file.

    An automatic property of the previous index survives only where a reused file has a value for
    it, as in a fresh build (where a column exists only when some record has the field).
    """
    props = {s.name: {"type": s.type, "sources": s.sources()} for s in declared_specs(cfg)}
    auto: dict[str, str] = {}
    if prev is not None:
        for name, p in prev.manifest["properties"].items():
            if p.get("automatic") and any(t.column(name).null_count < t.num_rows for t in reused):
                auto[name] = p["type"]
    for file_id in sorted(results):
        for name, t in results[file_id].rows.auto_types.items():
            auto[name] = widen(auto[name], t) if name in auto else t
    source = [f"function:{cfg.function}"] if cfg.function else None
    for name in sorted(auto):
        if name not in props:
            props[name] = {"type": auto[name], "sources": source or [name], "automatic": True}
    return dict(sorted(props.items()))
