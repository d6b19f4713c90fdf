"""Writing an index directory: conformed tables, deterministic Parquet, the manifest last."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixtera.planner.index.config import IndexConfig
from mixtera.planner.index.corpus_files import CorpusFile
from mixtera.planner.index.schema import (
    FORMAT_VERSION,
    INDEX_KIND,
    ROW_GROUP_SIZE,
    IndexTables,
    files_schema,
    load_index,
    read_manifest,
    samples_schema,
)
from mixtera.runtime.atomic import write_atomic
from mixtera.runtime.errors import MixteraUserError
from mixtera.runtime.format.json_file import created_by, json_file_bytes
from mixtera.runtime.format.plan_dir import INDEX_FILES, INDEX_MANIFEST, INDEX_SAMPLES
from mixtera.runtime.format.token_file import dtype_code_for_vocab


def previous_index(out: Path, identity: dict[str, Any]) -> IndexTables | None:
    """The index in ``out`` when its rows can be reused (same root, config, tokenizer, token files)."""
    if not (out / INDEX_MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(out)
    except MixteraUserError:
        return None
    if manifest.get("format_version") != FORMAT_VERSION:  # an older index lacks columns of this one
        return None
    if any(manifest.get(k) != v for k, v in identity.items()):
        return None
    try:
        return load_index(out)
    except MixteraUserError:
        return None


def token_code_for(tok: dict[str, Any] | None) -> int:
    return dtype_code_for_vocab(tok["vocab_size"]) if tok else 0


def conform(table: pa.Table, props: dict[str, dict[str, Any]]) -> pa.Table:
    """``table`` with exactly the samples schema: missing properties null, automatic ones widened."""
    schema = samples_schema({n: p["type"] for n, p in props.items()})
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if col.type != f.type:
            col = _widen(col, f.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


def _widen(col: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_string(to) and pa.types.is_boolean(col.type):
        return pc.if_else(col, "true", "false")  # the spelling `properties.as_text` uses
    return col.cast(to)


def write_index(
    stage: Path,
    identity: dict[str, Any],
    cfg: IndexConfig,
    props: dict[str, dict[str, Any]],
    files: list[CorpusFile],
    plan: Any,
    results: dict[int, Any],
    samples: pa.Table,
    tok: dict[str, Any] | None,
) -> dict[str, Any]:
    """Write both tables into ``stage``, then the manifest (last, atomically); return the manifest."""
    prev_files = {f["path"]: f for f in plan.prev_files}
    entries = [
        _file_entry(i, f, results.get(i), prev_files.get(f.relpath), plan.fresh_hash.get(i))
        for i, f in enumerate(files)
    ]
    _write_parquet(samples, stage / INDEX_SAMPLES)
    _write_parquet(_files_table(entries), stage / INDEX_FILES)
    tokens = samples.column("tokens")
    manifest = {
        "kind": INDEX_KIND,
        "format_version": FORMAT_VERSION,
        "created_by": created_by(),
        **identity,
        "text_field": cfg.text,
        "properties": props,
        "files": entries,
        "counts": {
            "files": len(files),
            "samples": samples.num_rows,
            "bytes": int(pc.sum(samples.column("text_bytes")).as_py() or 0),
            "tokens": int(pc.sum(tokens).as_py() or 0) if tok else None,
            "images": int(pc.sum(samples.column("images")).as_py() or 0),
        },
    }
    write_atomic(stage / INDEX_MANIFEST, json_file_bytes(manifest, indent=2))
    return manifest


def _file_entry(
    file_id: int, f: CorpusFile, res: Any, old: dict[str, Any] | None, fresh_hash: str | None
) -> dict[str, Any]:
    if res is not None:
        digest, records, skipped = res.content_hash, res.records, len(res.skipped)
    else:  # reused: the previous fingerprint, with this run's mtime (ETag)
        digest, records, skipped = fresh_hash or old["content_hash"], old["records"], old["skipped"]  # type: ignore[index]
    entry = {
        "file_id": file_id,
        "path": f.relpath,
        "format": f.format,
        "size": f.size,
        "mtime_ns": f.mtime_ns,
        "content_hash": digest,
        "records": records,
        "skipped": skipped,
    }
    if f.etag is not None:  # objects in a store: the version the runtime's ranged reads insist on
        entry["etag"] = f.etag
    return entry


def _files_table(entries: list[dict[str, Any]]) -> pa.Table:
    schema = files_schema()
    return pa.Table.from_pylist([{k: e[k] for k in schema.names} for e in entries], schema=schema)


# Columns unique (or nearly) per sample: dictionary encoding only costs time and space there.
_NO_DICTIONARY = frozenset(
    {"sample_id", "record", "offset", "length", "text_bytes", "tokens", "token_offset", "key"}
)


def _write_parquet(table: pa.Table, path: Path) -> None:
    # Fixed row groups and no per-run metadata: same rows -> byte-identical file.
    pq.write_table(
        table,
        path,
        row_group_size=ROW_GROUP_SIZE,
        compression="zstd",
        write_statistics=True,
        use_dictionary=[c for c in table.column_names if c not in _NO_DICTIONARY],
    )
