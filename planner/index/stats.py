"""Statistics of a loaded index for `mixtera inspect INDEX`: counts and per-property distributions."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mixtera.planner.index.schema import IndexTables

TOP_VALUES = 10


def index_stats(tables: IndexTables, *, top: int = TOP_VALUES) -> dict[str, Any]:
    """Files, samples, bytes, tokens, and per property its top values, null count and numeric range."""
    m = tables.manifest
    return {
        "kind": m["kind"],
        "path": str(tables.path),
        "format_version": m["format_version"],
        "created_by": m.get("created_by"),
        "corpus_root": m["corpus_root"],
        "text_field": m.get("text_field"),
        "counts": dict(m["counts"]),
        "skipped": sum(int(f.get("skipped", 0)) for f in m["files"]),
        "formats": dict(sorted(Counter(f["format"] for f in m["files"]).items())),
        "tokenizer": m.get("tokenizer"),
        "store_tokens": m.get("store_tokens", False),
        "properties": {
            name: property_stats(tables.samples.column(name), spec, top)
            for name, spec in sorted(m["properties"].items())
        },
    }


def property_stats(column: pa.ChunkedArray, spec: dict[str, Any], top: int) -> dict[str, Any]:
    """Type, sources, null count, distinct values, the ``top`` most frequent values, min/mean/max."""
    values = pc.list_flatten(column) if pa.types.is_list(column.type) else column
    counts = _value_counts(values)
    stats: dict[str, Any] = {
        "type": spec["type"],
        "sources": spec.get("sources", []),
        "nulls": column.null_count,
        "distinct": len(counts),
        "top": counts[:top],
    }
    if spec["type"] in ("int", "float"):
        stats.update(_numbers(column))
    return stats


def _value_counts(values: pa.ChunkedArray) -> list[list[Any]]:
    """``[[value, count], ...]`` by count descending, then value (deterministic)."""
    if len(values) == 0 or values.null_count == len(values):
        return []
    vc = pc.value_counts(pc.drop_null(values))
    pairs = [
        [v, c] for v, c in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)
    ]
    return sorted(pairs, key=lambda p: (-p[1], _sort_key(p[0])))


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float, bool)) else (1, str(value))


def _numbers(column: pa.ChunkedArray) -> dict[str, Any]:
    if column.null_count == len(column):
        return {"min": None, "mean": None, "max": None}
    mm = pc.min_max(column)
    return {"min": mm["min"].as_py(), "mean": pc.mean(column).as_py(), "max": mm["max"].as_py()}
