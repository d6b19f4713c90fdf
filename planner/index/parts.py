"""Work units of an index build and the merge of their results, shared by every executor.

A task is a whole file, or a span of a large plain JSON lines file (compressed streams cannot be
entered mid-way; Parquet files and files written with --store-tokens stay whole). A span's result
counts records and lines from the span's start; `Merger` puts a file's spans back together, so the
rows are exactly those of one whole-file pass. Executors (`parallel.py`, `ray_executor.py`) only
decide where tasks run and hand every result to `Merger.add` in the order they arrive.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixtera.planner.index.corpus_files import CorpusFile, line_spans
from mixtera.planner.index.indexer import Failure, FileResult, FileRows, FileTask
from mixtera.planner.index.properties import as_text, widen
from mixtera.runtime.format.plan_dir import TOKENS_DIR
from mixtera.runtime.storage import CorpusPath

Progress = Callable[[dict[str, Any]], None]
Sink = Callable[[FileResult | Failure], None]  # where an executor hands each task's result

SPAN_BYTES = 64 << 20  # plain JSON lines files larger than this are indexed in spans of about this size


def build_tasks(
    files: list[CorpusFile],
    ids: list[int],
    root: CorpusPath,
    stage: Path | None,
    span_bytes: int = SPAN_BYTES,
) -> list[FileTask]:
    """The tasks indexing files ``ids``, largest first (balanced workers); token files go to ``stage``."""
    tasks = []
    for i in ids:
        f = files[i]
        token_path = str(stage / TOKENS_DIR / f"{i}.bin") if stage else None
        spans = (line_spans(root / f.relpath, f.size, span_bytes, f.etag)
                 if f.format == "jsonl" and f.size > span_bytes and token_path is None else [None])
        tasks += [FileTask(file_id=i, root=str(root), file=f, token_path=token_path, part=k, span=s)
                  for k, s in enumerate(spans)]
    return sorted(tasks, key=lambda t: (-t.size, t.file_id, t.part))


class Merger:
    """Collects task results as they arrive; `results()` gives one `FileResult` per file.

    A failure is raised as soon as it is known to be the file's first: a bad record in span k waits
    for spans 0..k-1 (which give its line number, and may hold an earlier bad record), so the error
    is exactly the one a whole-file pass raises.
    """

    def __init__(self, tasks: list[FileTask], progress: Progress | None) -> None:
        self._parts: dict[int, int] = {}
        for t in tasks:
            self._parts[t.file_id] = self._parts.get(t.file_id, 0) + 1
        self._got: dict[int, dict[int, FileResult | Failure]] = {i: {} for i in self._parts}
        self._files: dict[int, FileResult] = {}
        self._progress = progress
        self.state: dict[str, Any] = {
            "files_done": 0,
            "files_total": len(self._parts),
            "records": 0,
            "bytes": 0,
            "bytes_total": sum(t.size for t in tasks),
        }
        self._sizes = {(t.file_id, t.part): t.size for t in tasks}
        if progress:
            progress(dict(self.state))

    def add(self, res: FileResult | Failure) -> None:
        got = self._got[res.file_id]
        got[res.part] = res
        self._raise_first_failure(got)
        if isinstance(res, FileResult):
            self.state["records"] += res.records
            self.state["bytes"] += self._sizes[res.file_id, res.part]
        if len(got) == self._parts[res.file_id]:
            parts = [got[k] for k in range(len(got))]
            self._files[res.file_id] = merge_parts(parts)  # type: ignore[arg-type]: no failure left
            del self._got[res.file_id]
            self.state["files_done"] += 1
        if self._progress and isinstance(res, FileResult):
            self._progress(dict(self.state))

    def results(self) -> dict[int, FileResult]:
        if self._got:
            missing = sorted(self._got)[:5]
            raise RuntimeError(f"index tasks of files {missing} never reported")  # an executor bug
        return self._files

    @staticmethod
    def _raise_first_failure(got: dict[int, FileResult | Failure]) -> None:
        """Raise the file's first failure once every span before it has succeeded."""
        line_base = 0
        for k in range(len(got)):
            res = got.get(k)
            if res is None:
                return
            if isinstance(res, Failure):
                raise res.error(line_base)
            line_base += res.lines


def merge_parts(parts: list[FileResult]) -> FileResult:
    """One file's result from its spans' results (in span order): records and lines renumbered."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    record, skipped = array("q"), []
    records, lines = 0, 0
    for p in parts:
        record.extend(r + records for r in p.rows.record)
        skipped += [(line + lines, msg) for line, msg in p.skipped]
        records += p.records
        lines += p.lines
    rows = [p.rows for p in parts]
    merged = FileRows(
        record=record,
        offset=_joined([r.offset for r in rows]),
        length=_joined([r.length for r in rows]),
        text_bytes=_joined([r.text_bytes for r in rows]),
        tokens=_joined([r.tokens for r in rows]) if first.rows.tokens is not None else None,  # type: ignore[misc]
        media=None,  # tar shards are never split
        token_file=False,  # files with token files are never split
        declared={name: [v for r in rows for v in r.declared[name]] for name in first.rows.declared},
        declared_types=first.rows.declared_types,
        **_merged_auto(rows),
    )
    return FileResult(
        file_id=first.file_id,
        file=first.file,
        content_hash=first.content_hash,
        records=records,
        rows=merged,
        skipped=skipped,
        bytes_read=sum(p.bytes_read for p in parts) or first.file.size,
    )


def _joined(arrays: list[array]) -> array:
    out = array("q")
    for a in arrays:
        out.extend(a)
    return out


def _merged_auto(rows: list[FileRows]) -> dict[str, Any]:
    """Automatic properties over the spans: each type widened as over one whole file (a value is
    never None where present), values shown as text where the column widens to string."""
    types: dict[str, str] = {}
    for r in rows:
        for name, t in r.auto_types.items():
            types[name] = widen(types[name], t) if name in types else t
    auto: dict[str, list[Any]] = {}
    for name in sorted(types):
        values: list[Any] = []
        for r in rows:
            part = r.auto.get(name)
            if part is None:
                values += [None] * len(r.record)
            elif types[name] == "string" and r.auto_types[name] != "string":
                values += map(as_text, part)
            else:
                values += part
        auto[name] = values
    return {"auto": auto, "auto_types": dict(sorted(types.items()))}
