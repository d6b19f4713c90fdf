"""Column and property type names of the index, without pyarrow.

The indexing worker processes import only pyarrow-free modules, so that a worker starts in a few
tens of milliseconds; `schema.py` maps these names to Arrow types for the writing process.
"""

from __future__ import annotations

# WebDataset columns: the sample's key in its shard, its image count (0 for text files) and its first
# image's size from the header (null without an image). `where` may filter on these.
MEDIA_COLUMN_NAMES = ("key", "images", "image_width", "image_height")

# Columns every samples table has, in this order; properties follow, sorted by name.
SAMPLE_COLUMN_NAMES = (
    "sample_id",
    "file_id",
    "record",
    "offset",
    "length",
    "text_bytes",
    "tokens",
    "token_offset",
    *MEDIA_COLUMN_NAMES,
)
RESERVED = frozenset(SAMPLE_COLUMN_NAMES)

# Property type names of the config and the manifest.
PROPERTY_TYPE_NAMES = ("string", "int", "float", "bool", "list[string]")
