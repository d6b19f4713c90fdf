"""`mixtera index`: scan corpora into Parquet metadata tables (see man/mixtera-formats.md).

Public API: `build_index` writes an index, `load_index` reads one, `index_stats` summarises it.
The names load on first use: indexing workers import `mixtera.planner.index.indexer` without pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMAT_VERSION": "mixtera.planner.index.schema",
    "INDEX_KIND": "mixtera.planner.index.schema",
    "PROPERTY_TYPES": "mixtera.planner.index.schema",
    "IndexConfig": "mixtera.planner.index.config",
    "IndexReport": "mixtera.planner.index.build",
    "IndexTables": "mixtera.planner.index.schema",
    "PropertySpec": "mixtera.planner.index.config",
    "build_index": "mixtera.planner.index.build",
    "index_stats": "mixtera.planner.index.stats",
    "load_config": "mixtera.planner.index.config",
    "load_index": "mixtera.planner.index.schema",
    "manifest_json": "mixtera.planner.index.schema",
    "parse_config": "mixtera.planner.index.config",
    "read_manifest": "mixtera.planner.index.schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mixtera.planner.index' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
