"""The JSON files mixtera writes (plan and index manifests, decisions): one layout, one ``created_by``."""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any


def json_file_bytes(obj: dict[str, Any], *, indent: int = 1) -> bytes:
    """Sorted keys, ``indent`` spaces, a final newline: the same object always gives the same bytes."""
    return json.dumps(obj, indent=indent, sort_keys=True).encode() + b"\n"


def created_by() -> str:
    """The ``created_by`` field of every manifest: the installed mixtera's version."""
    try:
        return f"mixtera {metadata.version('mixtera')}"
    except metadata.PackageNotFoundError:
        return "mixtera (source tree)"
