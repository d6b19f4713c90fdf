"""Index one corpus file: the per-record hot loop, run inside worker processes.

`index_file` returns the file's rows as an Arrow table plus its fingerprint; it never touches the
index directory except for writing the file's token file with `--store-tokens`.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

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
from planner.index.tokenizer_info import load_tokenizer
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


def init_worker(
    config: IndexConfig, tokenizer: tuple[str, str] | None, token_code: int, tokenizers_parallel: bool | None
) -> None:
    """Pool initializer (also called in-process for one process). ``tokenizer``: (path, blake2b)."""
    global _STATE
    if tokenizers_parallel is not None:
        # Several workers: one tokenizer thread each, so N processes use N cores, not N x cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if tokenizers_parallel else "false"
    loaded = load_tokenizer(*tokenizer) if tokenizer is not None else None
    hook = load_hook(config.function, config.base_dir) if config.function else None
    _STATE = WorkerState(config, loaded, token_code, hook)


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
    # The hot loop keeps a chunk's parsed records alive at once: thousands of dicts that would set
    # off the cyclic GC again and again, scanning them for cycles they cannot have.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return index_file(task, _STATE)
    except MixteraUserError as exc:
        return Failure(type(exc), exc.message, exc.hint)
    finally:
        if was_enabled:
            gc.enable()


class _Rows:
    """Column buffers for the good records of one file."""

    def __init__(self) -> None:
        self.record: list[int] = []
        self.offset: list[int] = []
        self.length: list[int] = []
        self.text_bytes: list[int] = []
        self.tokens: list[int] = []
        self.values: list[tuple] = []  # declared property values per record, in `Extractor.names` order
        self.auto: dict[str, tuple[list[int], list[Any]]] = {}  # sparse: (rows, values)
        self.writer: TokenFileWriter | None = None


def index_file(task: FileTask, state: WorkerState) -> FileResult:
    cfg, f = state.config, task.file
    path = Path(task.root) / f.relpath
    extractor = compile_extractor(cfg, f.relpath, state.hook)
    rows = _Rows()
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
        file_id=task.file_id,
        file=f,
        blake2b=digest[0],
        records=record_no,
        table=table,
        auto_types=auto_types,
        skipped=skipped,
        bytes_read=bytes_read or f.size,
    )


def _columns_needed(cfg: IndexConfig, ex: Extractor) -> list[str] | None:
    """Top-level Parquet columns to read; None reads every scalar column (automatic properties)."""
    if ex.automatic or ex.hook is not None:
        return None
    tops = {cfg.text.split(".")[0]}
    for _, paths, *_ in ex.fields:
        tops.update(p[0] for _, p in paths)
    return sorted(tops)


def _index_chunk(
    chunk: Chunk,
    first: int,
    ex: Extractor,
    rows: _Rows,
    skipped: list[tuple[int, str]],
    path: Path,
    on_error: str,
) -> list[str]:
    """The hot loop: parse, take the text, extract properties; returns the good records' texts."""
    if ex.hook is None and not ex.automatic and len(ex.text_path) == 1:
        texts = _clean_chunk(chunk, first, ex, rows)
        if texts is not None:
            return texts
    loads, JSONError = orjson.loads, orjson.JSONDecodeError
    texts: list[str] = []
    row, auto, hook, raw = ex.row, ex.automatic, ex.hook, chunk.raw
    key = ex.text_path[0] if len(ex.text_path) == 1 else None
    values, text_bytes, bad = rows.values, rows.text_bytes, []
    for i, item in enumerate(chunk.items):
        try:
            if raw:
                try:
                    item = loads(item)
                except JSONError as exc:
                    raise _Bad(f"malformed JSON: {exc}") from None
            if type(item) is not dict:
                raise _Bad(f"the record is a JSON {type(item).__name__}, not an object")
            text = item.get(key) if key is not None else ex.text(item)
            if type(text) is not str:
                raise _Bad(_text_problem(ex, text))
            vals = row(item)
            if hook is not None or auto:
                vals = _extras(ex, item, vals, rows, len(values))
        except (_Bad, ValueTypeError) as exc:
            _bad(path, chunk, i, str(exc), on_error, skipped)
            bad.append(i)
            continue
        values.append(vals)
        # isascii() is O(1) in CPython: ASCII text needs no encoding to know its UTF-8 size
        text_bytes.append(len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass")))
        texts.append(text)
    _locations(chunk, first, bad, rows)
    return texts


def _clean_chunk(chunk: Chunk, first: int, ex: Extractor, rows: _Rows) -> list[str] | None:
    """The common case at C speed (maps and comprehensions, no per-record Python branches): every
    record parses, is an object, has a string text and well-typed properties. Returns None, having
    appended nothing, when any record is bad; the careful loop then finds and reports it."""
    try:
        records = list(map(orjson.loads, chunk.items)) if chunk.raw else chunk.items
        if set(map(type, records)) != {dict}:
            return None
        key = ex.text_path[0]
        texts = [r.get(key) for r in records]
        if set(map(type, texts)) != {str}:
            return None
        values = list(map(ex.row, records))
    except (orjson.JSONDecodeError, ValueTypeError):
        return None
    rows.values.extend(values)
    rows.text_bytes.extend(
        [len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in texts]
    )
    _locations(chunk, first, [], rows)
    return texts


def _locations(chunk: Chunk, first: int, bad: list[int], rows: _Rows) -> None:
    """Record numbers, offsets and lengths of the chunk's good records, appended in bulk."""
    n = len(chunk.items)
    if not bad:
        rows.record.extend(range(first, first + n))
        rows.offset.extend(chunk.offsets)
        rows.length.extend(chunk.lengths)
        return
    dropped = set(bad)
    good = [i for i in range(n) if i not in dropped]
    rows.record.extend(first + i for i in good)
    rows.offset.extend(chunk.offsets[i] for i in good)
    rows.length.extend(chunk.lengths[i] for i in good)


def _extras(ex: Extractor, record: dict[str, Any], vals: tuple, rows: _Rows, n: int) -> tuple:
    """Hook and automatic properties of record ``n``: declared ones replace `vals`, others go sparse."""
    extra = ex.automatic_fields(record) if ex.automatic else {}
    if ex.hook is not None:
        declared = dict(zip(ex.names, vals, strict=True))
        extra = _hooked(ex.hook, record, ex, declared)
        vals = tuple(declared[name] for name in ex.names)
    for k, v in extra.items():
        col = rows.auto.get(k)
        if col is None:
            col = rows.auto[k] = ([], [])
        col[0].append(n)
        col[1].append(v)
    return vals


class _Bad(Exception):
    pass


def _text_problem(ex: Extractor, text: Any) -> str:
    field_name = ".".join(ex.text_path)
    if text is None:
        return f"missing text field {field_name!r}"
    return f"text field {field_name!r} must be a string, got {type(text).__name__}"


def _hooked(hook: Any, record: dict[str, Any], ex: Extractor, values: dict[str, Any]) -> dict[str, Any]:
    """Run the user's hook; its declared keys override `values`, the others are automatic fields."""
    try:
        out = hook(record, ex.relpath)
    except Exception as exc:  # noqa: BLE001 - a bug in the user's hook is the user's error, with its line
        raise _Bad(f"function raised {type(exc).__name__}: {exc}") from None
    if not isinstance(out, dict):
        raise _Bad(f"function returned {type(out).__name__}, not a dict of properties")
    extra = {}
    for k, v in out.items():
        if k in values:
            spec_type = ex.types[k]
            values[k] = v if v is None else _convert(CONVERTERS[spec_type], k, spec_type, v)
        elif k not in RESERVED and v is not None:
            if type(v) not in (str, int, float, bool):
                raise _Bad(
                    f"function returned {type(v).__name__} for undeclared property {k!r}; "
                    f"declare [properties.{k}] with its type"
                )
            extra[k] = v
    return extra


def _convert(convert: Any, name: str, type_name: str, value: Any) -> Any:
    try:
        return convert(value)
    except TypeError:
        raise ValueTypeError(f"function:{name}", type_name, value) from None


def _bad(
    path: Path, chunk: Chunk, i: int, message: str, on_error: str, skipped: list[tuple[int, str]]
) -> None:
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
        "sample_id": _sample_ids(task.file.relpath, rows.record),
        "file_id": pa.array(np.full(n, task.file_id, dtype=np.int32)),
        "record": pa.array(rows.record, pa.int64()),
        "offset": pa.array(rows.offset, pa.int64()),
        "length": pa.array(rows.length, pa.int64()),
        "text_bytes": pa.array(rows.text_bytes, pa.int64()),
        "tokens": pa.array(tokens, pa.int64()),
        "token_offset": pa.array(token_offset, pa.int64()),
    }
    columns = list(zip(*rows.values, strict=True)) if rows.values else [()] * len(ex.names)
    for name, column in zip(ex.names, columns, strict=True):
        type_name = ex.types[name]
        data[name] = pa.array(column, PROPERTY_TYPES[type_name])
    auto_types = {}
    for name in sorted(rows.auto):
        dense: list[Any] = [None] * n
        for r, v in zip(*rows.auto[name], strict=True):
            dense[r] = v
        auto_types[name] = infer_type(rows.auto[name][1])
        if auto_types[name] == "string":
            dense = [as_text(v) for v in dense]
        data[name] = pa.array(dense, PROPERTY_TYPES[auto_types[name]])
    return pa.table(data), auto_types


def _sample_ids(relpath: str, records: list[int]) -> pa.Array:
    """``<relpath>#<record>`` for every record, built in Arrow."""
    numbers = pc.cast(pa.array(records, pa.int64()), pa.string())
    return pc.binary_join_element_wise(f"{relpath}#", numbers, "")
