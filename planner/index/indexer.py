"""Index one corpus file: the per-record hot loop, run inside worker processes.

`index_file` returns the file's rows as compact columns (`FileRows`) plus its fingerprint; it never
touches the index directory except for writing the file's token file with `--store-tokens`. This
module and what it imports stay free of pyarrow and numpy (imported lazily for Parquet files and
token files only), so a spawned worker starts in tens of milliseconds instead of a quarter second;
the writing process turns the rows into Arrow tables (`tables.py`).
"""

from __future__ import annotations

import contextlib
import gc
import os
from array import array
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import orjson

from mixtera.planner.index.columns import RESERVED
from mixtera.planner.index.config import IndexConfig
from mixtera.planner.index.corpus_files import Chunk, CorpusFile, MediaInfo, read_jsonl_range, reader_for
from mixtera.planner.index.properties import Extractor, as_text, compile_extractor, infer_type, load_hook
from mixtera.planner.index.values import CONVERTERS, ValueTypeError
from mixtera.runtime.errors import CorpusError, MixteraUserError
from mixtera.runtime.storage import CorpusPath, corpus_location
from mixtera.runtime.tokenizer import cached_tokenizer


@dataclass(frozen=True, slots=True, kw_only=True)
class FileTask:
    file_id: int
    root: str  # a local folder or an object-store URL (mixtera.runtime.storage.corpus_location)
    file: CorpusFile
    token_path: str | None  # where to write tokens/<file_id>.bin, or None
    part: int = 0  # which span of the file (`parts.py` splits large plain JSON lines files)
    span: tuple[int, int] | None = None  # [start, stop) bytes at line starts; None: the whole file

    @property
    def size(self) -> int:
        return self.span[1] - self.span[0] if self.span is not None else self.file.size


@dataclass(slots=True, kw_only=True)
class FileRows:
    """The good records of one file, column by column, in record order."""

    record: array  # int64 columns ("q"): pickled as raw bytes, wrapped by Arrow without a copy
    offset: array
    length: array
    text_bytes: array
    tokens: array | None  # None without a tokenizer
    media: MediaRows | None  # tar shards only
    token_file: bool  # tokens were written to the file's token file (token_offset = running sum)
    declared: dict[str, list[Any]]  # declared properties, sorted by name
    declared_types: dict[str, str]
    auto: dict[str, list[Any]]  # automatic properties, dense (None where absent), sorted by name
    auto_types: dict[str, str]


@dataclass(slots=True, kw_only=True)
class MediaRows:
    """The media columns of a tar shard's good samples (the index's `key`, `images`, `image_*`)."""

    key: list[str] = field(default_factory=list)
    images: array = field(default_factory=lambda: array("q"))
    image_width: list[int | None] = field(default_factory=list)
    image_height: list[int | None] = field(default_factory=list)

    def extend(self, infos: list[MediaInfo]) -> None:
        self.key.extend(m.key for m in infos)
        self.images.extend(m.images for m in infos)
        self.image_width.extend(m.width for m in infos)
        self.image_height.extend(m.height for m in infos)


@dataclass(slots=True, kw_only=True)
class FileResult:
    file_id: int
    file: CorpusFile
    content_hash: str  # mixtera.runtime.fingerprint: "xxh3_128:<hex>" of the file's bytes ("" in parts > 0)
    records: int  # all records, bad ones included
    rows: FileRows
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, message)
    bytes_read: int = 0
    part: int = 0  # of a span task: record numbers and lines count from the span's start
    lines: int = 0  # of a span task: the lines in its span


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
    loaded = cached_tokenizer(*tokenizer) if tokenizer is not None else None
    hook = load_hook(config.function, config.base_dir) if config.function else None
    _STATE = WorkerState(config, loaded, token_code, hook)


BAD_RECORD_HINT = (
    'fix the record, or set on_error = "skip" under [index] in the config to leave bad records out'
)


class BadRecordError(CorpusError):
    """A bad JSON lines record with ``on_error = "fail"``: the file, its line and the problem."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        super().__init__(f"{path}:{line}: {problem}", BAD_RECORD_HINT)


@dataclass(frozen=True, slots=True)
class Failure:
    """A user error raised in a worker, carried back whole (hints do not survive pickling).

    ``record``: a bad JSON lines record's (path, line, problem), its line counted from the task's span.
    """

    cls: type[MixteraUserError]
    message: str
    hint: str | None
    file_id: int = -1
    part: int = 0
    record: tuple[str, int, str] | None = None

    def error(self, line_base: int = 0) -> MixteraUserError:
        """The error; a bad record's line is moved by ``line_base``, the lines of the spans before."""
        if self.record is not None:
            path, line, problem = self.record
            return BadRecordError(path, line + line_base, problem)
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
    except BadRecordError as exc:
        record = (exc.path, exc.line, exc.problem)
        return Failure(type(exc), exc.message, exc.hint, task.file_id, task.part, record)
    except MixteraUserError as exc:
        return Failure(type(exc), exc.message, exc.hint, task.file_id, task.part)
    finally:
        if was_enabled:
            gc.enable()


class _Rows:
    """Column buffers for the good records of one file."""

    def __init__(self, names: list[str]) -> None:
        self.record: list[int] = []
        self.offset: list[int] = []
        self.length: list[int] = []
        self.text_bytes: list[int] = []
        self.tokens: list[int] = []
        self.columns: list[list[Any]] = [[] for _ in names]  # declared properties, `Extractor.names` order
        self.auto: dict[str, tuple[list[int], list[Any]]] = {}  # sparse: (rows, values)
        self.writer: Any = None  # mixtera.runtime.format.token_file.TokenFileWriter with --store-tokens
        self.media: MediaRows | None = None  # tar shards


def index_file(task: FileTask, state: WorkerState) -> FileResult:
    cfg, f = state.config, task.file
    path = corpus_location(task.root) / f.relpath
    extractor = compile_extractor(cfg, f.relpath, state.hook)
    rows = _Rows(extractor.names)
    skipped: list[tuple[int, str]] = []
    digest: list[str] = []
    columns = _columns_needed(cfg, extractor)
    record_no, bytes_read, lines = 0, 0, [0]
    with contextlib.ExitStack() as stack:
        if task.token_path is not None:
            from mixtera.runtime.format.token_file import TokenFileWriter  # numpy: only with --store-tokens

            rows.writer = stack.enter_context(TokenFileWriter(task.token_path, state.token_code))
        try:
            chunks = (reader_for(f.format)(path, columns, digest) if task.span is None
                      else read_jsonl_range(path, task.span, digest, lines))
            for chunk in chunks:
                texts = _index_chunk(chunk, record_no, extractor, rows, skipped, path, cfg.on_error)
                record_no += len(chunk.items)
                bytes_read += sum(chunk.lengths) + len(chunk.lengths) if chunk.raw else 0
                if state.tokenizer is not None and texts:
                    _tokenize(state, texts, rows)
        except FileNotFoundError:
            raise CorpusError(f"{path}: the file vanished while indexing", "re-run mixtera index") from None
        except OSError as exc:  # e.g. its permissions changed after discovery
            raise CorpusError(f"{path}: cannot be read ({exc.strerror or exc})",
                              "fix the file's permissions and re-run mixtera index") from None
    return FileResult(
        file_id=task.file_id,
        file=f,
        content_hash=digest[0] if digest else "",
        records=record_no,
        rows=_file_rows(rows, extractor, state.tokenizer is not None),
        skipped=skipped,
        bytes_read=bytes_read if task.span is not None else bytes_read or f.size,  # parts: summed, then `or`
        part=task.part,
        lines=lines[-1],
    )


def _columns_needed(cfg: IndexConfig, ex: Extractor) -> list[str] | None:
    """Top-level Parquet columns to read; None reads every scalar column (automatic properties)."""
    if ex.automatic or ex.hook is not None:
        return None
    tops = {p.split(".")[0] for p in cfg.text_paths}
    for _, paths, *_ in ex.fields:
        tops.update(p[0] for _, p in paths)
    return sorted(tops)


def _index_chunk(
    chunk: Chunk,
    first: int,
    ex: Extractor,
    rows: _Rows,
    skipped: list[tuple[int, str]],
    path: CorpusPath,
    on_error: str,
) -> list[str]:
    """The hot loop: parse, take the text, extract properties; returns the good records' texts."""
    if ex.hook is None and not ex.automatic and ex.text_key is not None and not chunk.problems:
        texts = _clean_chunk(chunk, first, ex, rows)
        if texts is not None:
            return texts
    loads, JSONError = orjson.loads, orjson.JSONDecodeError
    problems = chunk.problems or {}
    texts: list[str] = []
    row, auto, hook, raw = ex.row, ex.automatic, ex.hook, chunk.raw
    key = ex.text_key
    values: list[tuple] = []
    text_bytes, bad = rows.text_bytes, []
    for i, item in enumerate(chunk.items):
        try:
            if i in problems:
                raise _Bad(problems[i])
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
                vals = _extras(ex, item, vals, rows, len(text_bytes))
        except (_Bad, ValueTypeError) as exc:
            _bad(path, chunk, i, str(exc), on_error, skipped)
            bad.append(i)
            continue
        values.append(vals)
        # `_utf8_size`, inlined: this loop runs per record in the default (automatic) mode
        text_bytes.append(len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass")))
        texts.append(text)
    if values:
        for column, vals in zip(rows.columns, zip(*values, strict=True), strict=True):
            column.extend(vals)
    _locations(chunk, first, bad, rows)
    return texts


def _clean_chunk(chunk: Chunk, first: int, ex: Extractor, rows: _Rows) -> list[str] | None:
    """The common case at C speed (maps over the chunk, no Python call per record): every record
    parses, is an object, has a string text and well-typed properties. Returns None, having
    appended nothing, when any record is bad; the careful loop then finds and reports it."""
    try:
        records = list(map(orjson.loads, chunk.items)) if chunk.raw else chunk.items
    except orjson.JSONDecodeError:
        return None
    if set(map(type, records)) != {dict}:
        return None
    texts = list(map(dict.get, records, repeat(ex.text_key)))
    if set(map(type, texts)) != {str}:
        return None
    columns = ex.columns(records) if ex.columns is not None else None
    if columns is None:
        return None
    for column, values in zip(rows.columns, columns, strict=True):
        column.extend(values)
    # all ASCII (the common case): the sizes are the lengths, with no Python call per record
    rows.text_bytes.extend(map(len if all(map(str.isascii, texts)) else _utf8_size, texts))
    _locations(chunk, first, [], rows)
    return texts


def _utf8_size(text: str) -> int:
    # isascii() is O(1) in CPython: ASCII text needs no encoding to know its UTF-8 size
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _locations(chunk: Chunk, first: int, bad: list[int], rows: _Rows) -> None:
    """Record numbers, offsets and lengths (and media columns) of the chunk's good records, in bulk."""
    n = len(chunk.items)
    if chunk.media is not None and rows.media is None:
        rows.media = MediaRows()
    if not bad:
        rows.record.extend(range(first, first + n))
        rows.offset.extend(chunk.offsets)
        rows.length.extend(chunk.lengths)
        if rows.media is not None and chunk.media is not None:
            rows.media.extend(chunk.media)
        return
    dropped = set(bad)
    good = [i for i in range(n) if i not in dropped]
    rows.record.extend(first + i for i in good)
    rows.offset.extend(chunk.offsets[i] for i in good)
    rows.length.extend(chunk.lengths[i] for i in good)
    if rows.media is not None and chunk.media is not None:
        rows.media.extend([chunk.media[i] for i in good])


def _extras(ex: Extractor, record: dict[str, Any], vals: tuple, rows: _Rows, n: int) -> tuple:
    """Hook or automatic properties of record ``n`` (never both: a hook makes the config explicit):
    the hook's declared ones replace `vals`, the others go sparse."""
    if ex.hook is not None:
        declared = dict(zip(ex.names, vals, strict=True))
        extra = _hooked(ex.hook, record, ex, declared)
        vals = tuple(declared[name] for name in ex.names)
    else:
        extra = ex.automatic_fields(record)
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
    field_name = " or ".join(repr(".".join(p)) for p in ex.text_paths)
    if text is None:
        return f"missing text field {field_name}"
    return f"text field {field_name} must be a string, got {type(text).__name__}"


def _hooked(hook: Any, record: dict[str, Any], ex: Extractor, values: dict[str, Any]) -> dict[str, Any]:
    """Run the user's hook; its declared keys override `values`, the others are automatic fields."""
    try:
        out = hook(record, ex.relpath)
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:  # in a pool worker it would kill the process and lose the task
        raise _Bad(f"function {_hook_name(hook)} called sys.exit({exc.code!r}); a function must return "
                   "a dict of properties (raise an exception for a bad record)") from None
    except BaseException as exc:  # noqa: BLE001 - a bug in the user's hook is the user's error, with its line
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


def _hook_name(hook: Any) -> str:
    return f"{getattr(hook, '__module__', '?')}:{getattr(hook, '__qualname__', repr(hook))}"


def _convert(convert: Any, name: str, type_name: str, value: Any) -> Any:
    try:
        return convert(value)
    except TypeError:
        raise ValueTypeError(f"function:{name}", type_name, value) from None


def _bad(
    path: CorpusPath, chunk: Chunk, i: int, message: str, on_error: str, skipped: list[tuple[int, str]]
) -> None:
    line = chunk.lines[i]
    if on_error == "fail":
        if chunk.raw:  # JSON lines, maybe a span's: `parts.Merger` moves the line by the spans before
            raise BadRecordError(str(path), line, message)
        hint = BAD_RECORD_HINT
        if chunk.media is not None and message.startswith("missing text field"):
            members = ", ".join(sorted(chunk.items[i])) or "none"
            hint = (f"a WebDataset sample is the record {{extension: value}} (its text and JSON members: "
                    f"{members}); name its text under [index], e.g. text = \"txt\", \"json.caption\" or "
                    f"[\"text\", \"txt\"]; or {hint}")
        raise CorpusError(f"{chunk.where(path, i)}: {message}", hint)
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


def _file_rows(rows: _Rows, ex: Extractor, tokenizing: bool) -> FileRows:
    """Pack the buffers: integer columns as arrays (pickled as raw bytes), automatic ones dense."""
    n = len(rows.record)
    auto: dict[str, list[Any]] = {}
    auto_types: dict[str, str] = {}
    for name in sorted(rows.auto):
        where, values = rows.auto[name]
        dense: list[Any] = [None] * n
        for r, v in zip(where, values, strict=True):
            dense[r] = v
        auto_types[name] = infer_type(values)
        auto[name] = [as_text(v) for v in dense] if auto_types[name] == "string" else dense
    return FileRows(
        record=array("q", rows.record),
        offset=array("q", rows.offset),
        length=array("q", rows.length),
        text_bytes=array("q", rows.text_bytes),
        tokens=array("q", rows.tokens) if tokenizing else None,
        media=rows.media,
        token_file=rows.writer is not None,
        declared=dict(zip(ex.names, rows.columns, strict=True)),
        declared_types=dict(ex.types),
        auto=auto,
        auto_types=auto_types,
    )
