"""Arrow tables from the workers' `FileRows`: the part of indexing that needs pyarrow.

Runs in the writing process. The integer columns arrive as raw int64 arrays and are wrapped without
a copy; only property values and the sample ids are converted.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixtera.planner.index.indexer import FileResult, MediaRows
from mixtera.planner.index.schema import PROPERTY_TYPES


def file_table(res: FileResult) -> pa.Table:
    """The file's samples: reserved columns, then declared and automatic properties (unordered:
    `writer.conform` orders, widens and fills them)."""
    rows, n = res.rows, len(res.rows.record)
    data: dict[str, Any] = {
        "sample_id": _sample_ids(res.file.relpath, rows.record),
        "file_id": pa.array(np.full(n, res.file_id, dtype=np.int32)),
        "record": _int64(rows.record),
        "offset": _int64(rows.offset),
        "length": _int64(rows.length),
        "text_bytes": _int64(rows.text_bytes),
        "tokens": _int64(rows.tokens) if rows.tokens is not None else pa.nulls(n, pa.int64()),
        "token_offset": _token_offsets(rows.tokens) if rows.token_file else pa.nulls(n, pa.int64()),
        **_media_columns(rows.media, n),
    }
    for name, values in rows.declared.items():
        data[name] = pa.array(values, PROPERTY_TYPES[rows.declared_types[name]])
    for name, values in rows.auto.items():
        data[name] = pa.array(values, PROPERTY_TYPES[rows.auto_types[name]])
    return pa.table(data)


def _media_columns(media: MediaRows | None, n: int) -> dict[str, pa.Array]:
    """Key, image count and first image size of a tar shard's samples; no key and no image elsewhere."""
    if media is None:
        return {"key": pa.nulls(n, pa.string()), "images": pa.array(np.zeros(n, np.int64)),
                "image_width": pa.nulls(n, pa.int64()), "image_height": pa.nulls(n, pa.int64())}
    return {"key": pa.array(media.key, pa.string()), "images": _int64(media.images),
            "image_width": pa.array(media.image_width, pa.int64()),
            "image_height": pa.array(media.image_height, pa.int64())}


def _int64(values: array | None) -> pa.Array:
    return pa.array(np.frombuffer(values, dtype=np.int64))


def _token_offsets(tokens: array | None) -> pa.Array:
    """First token of each sample in the file's token file: the running sum of the counts before it."""
    counts = np.frombuffer(tokens, dtype=np.int64) if tokens is not None else np.zeros(0, np.int64)
    return pa.array(np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else counts)


def _sample_ids(relpath: str, records: array) -> pa.Array:
    """``<relpath>#<record>`` for every record, built in Arrow."""
    numbers = pc.cast(_int64(records), pa.string())
    return pc.binary_join_element_wise(f"{relpath}#", numbers, "")
