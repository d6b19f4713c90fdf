"""Index one corpus file: the per-record hot loop, run inside worker processes.

`index_file` returns the file's rows as an Arrow table plus its fingerprint; it never touches the
index directory except for writing the file's token file with `--store-tokens`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from planner.index.config import IndexConfig
from planner.index.properties import (
    CONVERTERS,
    Extractor,
    ValueTypeError,
    as_text,
    compile_extractor,
    infer_type,
    load_hook,
)
from planner.index.scan import Chunk, CorpusFile, reader_for
from planner.index.schema import PROPERTY_TYPES, RESERVED
from runtime.errors import CorpusError, MixteraUserError
from runtime.token_files import TokenFileWriter


@dataclass(frozen=True, slots=True, kw_only=True)
class FileTask:
    file_id: int
    root: str
    file: CorpusFile
    token_path: str | None  # where to write tokens/<file_id>.bin, or None


@dataclass(slots=True, kw_only=True)
class FileResult:
    file_id: int
    file: CorpusFile
    blake2b: str
    records: int  # all records, bad ones included
    table: pa.Table  # rows of the good records, columns: see `_table`
    auto_types: dict[str, str]
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, message)
    bytes_read: int = 0


@dataclass(slots=True)
class WorkerState:
    """Per-process state, built once: the config, the tokenizer and the user's hook."""

    config: IndexConfig
    tokenizer: Any = None
    token_code: int = 0  # 2 or 4 with --store-tokens
    hook: Any = None


_STATE: WorkerState | None = None


def init_worker(config: IndexConfig, tokenizer_path: str | None, token_code: int,
                tokenizers_parallel: bool | None) -> None:
    """Pool initializer (also called in-process for one process)."""
    global _STATE
    if tokenizers_parallel is not None:
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if tokenizers_parallel else "false"
    tokenizer = None
    if tokenizer_path is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(tokenizer_path)
    hook = load_hook(config.function, config.base_dir) if config.function else None
    _STATE = WorkerState(config, tokenizer, token_code, hook)


@dataclass(frozen=True, slots=True)
class Failure:
    """A user error raised in a worker, carried back whole (hints do not survive pickling)."""

    cls: type[MixteraUserError]
    message: str
    hint: str | None

    def error(self) -> MixteraUserError:
        return self.cls(self.message, self.hint)


def run_task_safe(task: FileTask) -> FileResult | Failure:
    if _STATE is None:
        raise RuntimeError("init_worker was not called in this process")
    try:
        return index_file(task, _STATE)
    except MixteraUserError as exc:
        return Failure(type(exc), exc.message, exc.hint)


class _Rows:
    """Column buffers for the good records of one file."""

    def __init__(self, names: list[str]) -> None:
        self.record: list[int] = []
        self.offset: list[int] = []
        self.length: list[int] = []
        self.text_bytes: list[int] = []
        self.tokens: list[int] = []
        self.declared: dict[str, list[Any]] = {n: [] for n in names}
        self.auto: dict[str, tuple[list[int], list[Any]]] = {}  # sparse: (rows, values)
        self.writer: TokenFileWriter | None = None


def index_file(task: FileTask, state: WorkerState) -> FileResult:
    cfg, f = state.config, task.file
    path = Path(task.root) / f.relpath
    extractor = compile_extractor(cfg, f.relpath, state.hook)
    rows = _Rows(extractor.names)
    skipped: list[tuple[int, str]] = []
    digest: list[str] = []
    columns = _columns_needed(cfg, extractor)
    record_no, bytes_read = 0, 0
    with contextlib.ExitStack() as stack:
        if task.token_path is not None:
            rows.writer = stack.enter_context(TokenFileWriter(task.token_path, state.token_code))
        try:
            for chunk in reader_for(f.format)(path, columns, digest):
                texts = _index_chunk(chunk, record_no, extractor, rows, skipped, path, cfg.on_error)
                record_no += len(chunk.items)
                bytes_read += sum(chunk.lengths) + len(chunk.lengths) if chunk.raw else 0
                if state.tokenizer is not None and texts:
                    _tokenize(state, texts, rows)
        except FileNotFoundError:
            raise CorpusError(f"{path}: the file vanished while indexing", "re-run mixtera index") from None
    table, auto_types = _table(task, rows, extractor, state)
    return FileResult(
        file_id=task.file_id, file=f, blake2b=digest[0], records=record_no, table=table,
        auto_types=auto_types, skipped=skipped, bytes_read=bytes_read or f.size,
    )


def _columns_needed(cfg: IndexConfig, ex: Extractor) -> list[str] | None:
    """Top-level Parquet columns to read; None reads every scalar column (automatic properties)."""
    if ex.automatic or ex.hook is not None:
        return None
    tops = {cfg.text.split(".")[0]}
    for _, paths, *_ in ex.fields:
        tops.update(p[0] for _, p in paths)
    return sorted(tops)


def _index_chunk(chunk: Chunk, first: int, ex: Extractor, rows: _Rows,
                 skipped: list[tuple[int, str]], path: Path, on_error: str) -> list[str]:
    """The hot loop: parse, take the text, extract properties, append to the column buffers."""
    loads, JSONError = orjson.loads, orjson.JSONDecodeError
    texts: list[str] = []
    declared, auto, hook = ex.declared, ex.automatic, ex.hook
    cols = [rows.declared[n] for n in ex.names]
    record, offset, length, text_bytes = rows.record, rows.offset, rows.length, rows.text_bytes
    for i, item in enumerate(chunk.items):
        try:
            if chunk.raw:
                try:
                    item = loads(item)
                except JSONError as exc:
                    raise _Bad(f"malformed JSON: {exc}") from None
            if type(item) is not dict:
                raise _Bad(f"the record is a JSON {type(item).__name__}, not an object")
            text = ex.text(item)
            if type(text) is not str:
                raise _Bad(_text_problem(ex, text))
            values = declared(item)
            extra = _hooked(hook, item, ex, values) if hook is not None else None
        except (_Bad, ValueTypeError) as exc:
            _bad(path, chunk, i, str(exc), on_error, skipped)
            continue
        n = len(record)
        if auto:
            extra = ex.automatic_fields(item)
        if extra:
            for k, v in extra.items():
                col = rows.auto.get(k)
                if col is None:
                    col = rows.auto[k] = ([], [])
                col[0].append(n)
                col[1].append(v)
        for col, name in zip(cols, ex.names):
            col.append(values[name])
        record.append(first + i)
        offset.append(chunk.offsets[i])
        length.append(chunk.lengths[i])
        text_bytes.append(len(text.encode("utf-8", "surrogatepass")))
        texts.append(text)
    return texts


class _Bad(Exception):
    pass


def _text_problem(ex: Extractor, text: Any) -> str:
    field_name = ".".join(ex.text_path)
    if text is None:
        return f"missing text field {field_name!r}"
    return f"text field {field_name!r} must be a string, got {type(text).__name__}"


def _hooked(hook: Any, record: dict[str, Any], ex: Extractor, values: dict[str, Any]) -> dict[str, Any]:
    """Run the user's hook; its declared keys override `values`, the others are automatic fields."""
    out = hook(record, ex.relpath)
    if not isinstance(out, dict):
        raise _Bad(f"function returned {type(out).__name__}, not a dict of properties")
    extra = {}
    for k, v in out.items():
        if k in values:
            spec_type = next((t for n, _, _, t, _ in ex.fields if n == k), None)
            values[k] = v if v is None or spec_type is None else _convert(CONVERTERS[spec_type], k, spec_type, v)
        elif k not in RESERVED and v is not None:
            if type(v) not in (str, int, float, bool):
                raise _Bad(f"function returned {type(v).__name__} for undeclared property {k!r}; "
                           f"declare [properties.{k}] with its type")
            extra[k] = v
    return extra


def _convert(convert: Any, name: str, type_name: str, value: Any) -> Any:
    try:
        return convert(value)
    except TypeError:
        raise ValueTypeError(f"function:{name}", type_name, value) from None


def _bad(path: Path, chunk: Chunk, i: int, message: str, on_error: str,
         skipped: list[tuple[int, str]]) -> None:
    line = chunk.lines[i]
    if on_error == "fail":
        where = f"{path}:{line}" if chunk.raw else f"{path} row {line}"
        raise CorpusError(
            f"{where}: {message}",
            'fix the record, or set on_error = "skip" under [index] in the config to leave bad records out',
        )
    skipped.append((line, message))


def _tokenize(state: WorkerState, texts: list[str], rows: _Rows) -> None:
    encodings = state.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    if rows.writer is None:
        rows.tokens.extend(len(e) for e in encodings)
        return
    for e in encodings:
        ids = e.ids
        rows.writer.add(ids)
        rows.tokens.append(len(ids))


def _table(task: FileTask, rows: _Rows, ex: Extractor, state: WorkerState) -> tuple[pa.Table, dict[str, str]]:
    """The file's rows; the caller adds `file_id` placement, unifies automatic types and orders columns."""
    n = len(rows.record)
    tokens = rows.tokens if state.tokenizer is not None else [None] * n
    token_offset: Any = [None] * n
    if rows.writer is not None:
        token_offset = np.concatenate(([0], np.cumsum(rows.tokens, dtype=np.int64)[:-1])) if n else []
    data: dict[str, pa.Array] = {
        "sample_id": pa.array([f"{task.file.relpath}#{r}" for r in rows.record], pa.string()),
        "file_id": pa.array(np.full(n, task.file_id, dtype=np.int32)),
        "record": pa.array(rows.record, pa.int64()),
        "offset": pa.array(rows.offset, pa.int64()),
        "length": pa.array(rows.length, pa.int64()),
        "text_bytes": pa.array(rows.text_bytes, pa.int64()),
        "tokens": pa.array(tokens, pa.int64()),
        "token_offset": pa.array(token_offset, pa.int64()),
    }
    types = {s: t for s, _, _, t, _ in ex.fields}
    for name in ex.names:
        type_name = types.get(name) or _constant_type(state.config, name)
        data[name] = pa.array(rows.declared[name], PROPERTY_TYPES[type_name])
    auto_types = {}
    for name in sorted(rows.auto):
        dense: list[Any] = [None] * n
        for r, v in zip(*rows.auto[name]):
            dense[r] = v
        auto_types[name] = infer_type(rows.auto[name][1])
        if auto_types[name] == "string":
            dense = [as_text(v) for v in dense]
        data[name] = pa.array(dense, PROPERTY_TYPES[auto_types[name]])
    return pa.table(data), auto_types


def _constant_type(cfg: IndexConfig, name: str) -> str:
    return next((p.type for p in cfg.properties if p.name == name), "string")
