"""The index on disk: file names, reserved columns, property types, and `load_index`.

`man/mixtera-formats.md` is the contract; this module is its single implementation for readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mixtera.planner.index.columns import PROPERTY_TYPE_NAMES, SAMPLE_COLUMN_NAMES
from mixtera.runtime.confine import corpus_path, recorded_root
from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import ALGORITHM as CONTENT_HASH
from mixtera.runtime.fingerprint import content_digest
from mixtera.runtime.format.plan_dir import INDEX_FILES, INDEX_MANIFEST, INDEX_SAMPLES
from mixtera.runtime.storage import CorpusPath, corpus_location

INDEX_KIND = "mixtera-index"
FORMAT_VERSION = "1.1"  # 1.1: the media columns (key, images, image_width, image_height)
ROW_GROUP_SIZE = 65_536

# Columns every samples table has, in this order; properties follow, sorted by name.
SAMPLE_COLUMNS: dict[str, pa.DataType] = dict(
    zip(
        SAMPLE_COLUMN_NAMES,
        [pa.string(), pa.int32(), pa.int64(), pa.int64(), pa.int64(), pa.int64(), pa.int64(), pa.int64(),
         pa.string(), pa.int64(), pa.int64(), pa.int64()],
        strict=True,
    )
)
FILE_COLUMNS: dict[str, pa.DataType] = {
    "file_id": pa.int32(),
    "path": pa.string(),
    "format": pa.string(),
    "size": pa.int64(),
    "mtime_ns": pa.int64(),
    "content_hash": pa.string(),
    "records": pa.int64(),
}

# Property type names of the config and the manifest, and their Arrow column types.
PROPERTY_TYPES: dict[str, pa.DataType] = dict(
    zip(
        PROPERTY_TYPE_NAMES,
        [pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.list_(pa.string())],
        strict=True,
    )
)


def samples_schema(properties: dict[str, str]) -> pa.Schema:
    """Schema of samples.parquet for properties ``{name: type name}``."""
    fields = [pa.field(n, t) for n, t in SAMPLE_COLUMNS.items()]
    fields += [pa.field(n, PROPERTY_TYPES[properties[n]]) for n in sorted(properties)]
    return pa.schema(fields)


def files_schema() -> pa.Schema:
    return pa.schema([pa.field(n, t) for n, t in FILE_COLUMNS.items()])


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexTables:
    """A loaded index: its manifest and both tables (samples sorted by (file_id, record))."""

    path: Path
    manifest: dict[str, Any]
    samples: pa.Table
    files: pa.Table

    @property
    def corpus_root(self) -> CorpusPath:
        return corpus_location(self.manifest["corpus_root"])

    @property
    def properties(self) -> dict[str, str]:
        """``{property name: type name}`` in column order."""
        return {n: p["type"] for n, p in sorted(self.manifest["properties"].items())}

    def file_path(self, file_id: int) -> CorpusPath:
        """Absolute path (or URL) of corpus file ``file_id``."""
        return self.corpus_root / self.manifest["files"][file_id]["path"]


def manifest_json(path: Path, *, what: str, hint: str) -> dict[str, Any]:
    """The manifest of folder ``path``, an index or a plan ({} when it is not a JSON object).

    PlanError when the folder or its manifest is missing or not JSON; ``what`` completes the message
    for a folder without a manifest ("is not a mixtera index").
    """
    mpath = path / INDEX_MANIFEST
    if not path.is_dir():
        raise PlanError(f"{path} does not exist or is not a directory", hint)
    if not mpath.is_file():
        raise PlanError(f"{path} {what}: it has no {INDEX_MANIFEST}", hint)
    try:
        manifest = json.loads(mpath.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"{mpath} is not valid JSON: {exc}", hint) from None
    return manifest if isinstance(manifest, dict) else {}


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of index directory ``path``; PlanError when ``path`` is not a readable index."""
    path = Path(path)
    hint = f"build one with `mixtera index CORPUS --out {path}`"
    manifest = manifest_json(path, what="is not a mixtera index", hint=hint)
    if manifest.get("kind") != INDEX_KIND:
        raise PlanError(f"{path} is not a mixtera index (manifest kind is {manifest.get('kind')!r})", hint)
    major = str(manifest.get("format_version", "")).split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise PlanError(
            f"index {path} has format version {manifest.get('format_version')!r}; "
            f"this mixtera reads {FORMAT_VERSION.split('.')[0]}.x",
            "rebuild the index with this version of mixtera",
        )
    _check_content_hashes(manifest, path)
    _check_fields(manifest, path / INDEX_MANIFEST)
    return manifest


# Fields every index manifest has, with their JSON types (what build, compile and inspect read).
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "corpus_root": str, "config": dict, "properties": dict, "files": list, "counts": dict,
}
_FILE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "file_id": int, "path": str, "format": str, "size": int, "mtime_ns": int, "content_hash": str,
    "records": int,
}


def _check_fields(manifest: dict[str, Any], mpath: Path) -> None:
    """Refuse a manifest whose fields are missing or of the wrong type, naming the field."""
    hint = f"rebuild the index with `mixtera index CORPUS --out {mpath.parent}`"

    def need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> None:
        if key not in obj:
            raise PlanError(f"{mpath}: field {where}{key!r} is missing", hint)
        value = obj[key]
        if isinstance(value, bool) and kind is int or not isinstance(value, kind):
            raise PlanError(f"{mpath}: field {where}{key!r} is {type(value).__name__}, not "
                            f"{getattr(kind, '__name__', kind)}", hint)

    for key, kind in _FIELDS.items():
        need(manifest, key, kind, "")
    need(manifest["counts"], "samples", int, "counts.")
    for name, prop in manifest["properties"].items():
        if not isinstance(prop, dict) or prop.get("type") not in PROPERTY_TYPE_NAMES:
            raise PlanError(f"{mpath}: property {name!r} has no type among {', '.join(PROPERTY_TYPE_NAMES)}",
                            hint)
    for i, entry in enumerate(manifest["files"]):
        if not isinstance(entry, dict):
            raise PlanError(f"{mpath}: files[{i}] is {type(entry).__name__}, not an object", hint)
        for key, kind in _FILE_FIELDS.items():
            need(entry, key, kind, f"files[{i}].")
        if "etag" in entry:
            need(entry, "etag", str, f"files[{i}].")


def _check_content_hashes(manifest: dict[str, Any], path: Path) -> None:
    """Refuse an index whose file fingerprints predate `mixtera.runtime.fingerprint` (blake2b, unprefixed)."""
    files = manifest.get("files")
    if not isinstance(files, list) or all(
        not isinstance(f, dict) or content_digest(f.get("content_hash")) is not None for f in files
    ):
        return
    raise PlanError(
        f"index {path} records file fingerprints in an older form (this mixtera records "
        f"{CONTENT_HASH}:<hex> content hashes)",
        f"rebuild it with `mixtera index CORPUS --out {path}`",
    )


def load_index(path: Path | str, *, columns: list[str] | None = None) -> IndexTables:
    """Load index directory ``path``: manifest plus samples and files tables.

    ``columns`` limits the samples columns read (all by default); the files table is always whole.
    """
    path = Path(path)
    manifest = read_manifest(path)
    hint = f"rebuild it with `mixtera index CORPUS --out {path}`"
    for name in (INDEX_SAMPLES, INDEX_FILES):
        if not (path / name).is_file():
            raise PlanError(f"index {path} is incomplete: {name} is missing", hint)
    try:
        samples = pq.read_table(path / INDEX_SAMPLES, columns=columns)
        files = pq.read_table(path / INDEX_FILES)
    except FileNotFoundError as exc:  # removed while reading
        raise PlanError(f"index {path} is incomplete: {exc}", hint) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise PlanError(f"index {path} has an unreadable table: {exc}", hint) from None
    if columns is None and samples.num_rows != manifest["counts"]["samples"]:
        raise PlanError(
            f"index {path}: samples.parquet has {samples.num_rows} rows, the manifest says "
            f"{manifest['counts']['samples']}",
            hint,
        )
    _check_paths(path, manifest, files)
    return IndexTables(path=path, manifest=manifest, samples=samples, files=files)


def _check_paths(path: Path, manifest: dict[str, Any], files: pa.Table) -> None:
    """Every recorded corpus path stays inside the corpus root (runtime/confine.py)."""
    hint = f"the index was edited or is damaged: rebuild it with `mixtera index CORPUS --out {path}`"
    where = str(path / INDEX_MANIFEST)
    root = recorded_root(manifest["corpus_root"], where=where, hint=hint)
    for i, f in enumerate(manifest["files"]):
        corpus_path(root, f.get("path") if isinstance(f, dict) else None,
                    where=f"{where}: files[{i}]", hint=hint)
    if "path" in files.column_names:
        for i, rel in enumerate(files.column("path").to_pylist()):
            corpus_path(root, rel, where=f"{path / INDEX_FILES}: row {i}", hint=hint)
