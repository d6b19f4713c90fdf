"""`mixtera index`: scan corpora into Parquet metadata tables (see man/mixtera-formats.md).

Public API: `build_index` writes an index, `load_index` reads one, `index_stats` summarises it.
The names load on first use: indexing workers import `planner.index.indexer` without pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMAT_VERSION": "planner.index.schema",
    "INDEX_KIND": "planner.index.schema",
    "PROPERTY_TYPES": "planner.index.schema",
    "IndexConfig": "planner.index.config",
    "IndexReport": "planner.index.build",
    "IndexTables": "planner.index.schema",
    "PropertySpec": "planner.index.config",
    "build_index": "planner.index.build",
    "index_stats": "planner.index.stats",
    "load_config": "planner.index.config",
    "load_index": "planner.index.schema",
    "manifest_json": "planner.index.schema",
    "parse_config": "planner.index.config",
    "read_manifest": "planner.index.schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'planner.index' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
