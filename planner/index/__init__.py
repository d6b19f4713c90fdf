"""`mixtera index`: scan corpora into Parquet metadata tables (see man/mixtera-formats.md).

Public API: `build_index` writes an index, `load_index` reads one, `index_stats` summarises it.
"""

from __future__ import annotations

from planner.index.build import IndexReport, build_index
from planner.index.config import IndexConfig, PropertySpec, load_config, parse_config
from planner.index.schema import (
    FORMAT_VERSION,
    INDEX_KIND,
    PROPERTY_TYPES,
    IndexTables,
    load_index,
    read_manifest,
)
from planner.index.stats import index_stats

__all__ = [
    "FORMAT_VERSION",
    "INDEX_KIND",
    "PROPERTY_TYPES",
    "IndexConfig",
    "IndexReport",
    "IndexTables",
    "PropertySpec",
    "build_index",
    "index_stats",
    "load_config",
    "load_index",
    "parse_config",
    "read_manifest",
]
