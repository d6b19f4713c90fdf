"""The plan manifest of a compiled plan, and the end-to-end `compile` (load, compile, write)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from mixtera.planner.compile.plan_arrays import CompiledPlan, compile_plan
from mixtera.planner.compile.selection import FILTER_COLUMNS, MEDIA_FILTER_COLUMNS
from mixtera.planner.compile.writer import WrittenPlan, check_output, write_plan
from mixtera.planner.index import IndexTables, load_index, read_manifest
from mixtera.planner.mixture.spec import MixtureSpec, load_spec
from mixtera.planner.mixture.where import parse, referenced
from mixtera.runtime.format.plan_dir import TOKENS_DIR, VALIDATION

LOCATION_COLUMNS = ("file_id", "record", "offset", "length", "tokens", "token_offset")
# What the runtime checks a corpus file against; "etag" only for objects in a store.
_FILE_KEYS = ("file_id", "path", "format", "size", "mtime_ns", "content_hash", "etag")

def manifest_of(plan: CompiledPlan, index: IndexTables) -> dict[str, Any]:
    """Every manifest field except kind, version, created_by and segments (the writer adds those)."""
    spec = plan.spec
    initial = plan.weights[0] if len(plan.weights) else np.zeros(len(plan.components))
    tokenizer = index.manifest.get("tokenizer")
    token_files = {"dir": str((index.path / TOKENS_DIR).resolve())} if index.manifest.get("store_tokens") \
        else None
    return {
        "fingerprint": plan.fingerprint,
        "seed": spec.seed,
        "unit": spec.unit,
        "steps": spec.steps,
        "segment_steps": spec.segment_steps,
        "topology": plan.topology.to_dict(),
        "spec": spec.to_dict(),
        "components": [c.to_json(float(w)) for c, w in zip(plan.components, initial, strict=True)],
        "schedule": [s.to_dict() for s in spec.schedule],
        "index": {"path": str(Path(index.path).resolve()), "manifest_blake2b": plan.index_hash},
        "corpus_root": index.manifest["corpus_root"],
        "text_field": index.manifest.get("text_field"),
        "files": [{k: f[k] for k in _FILE_KEYS if k in f} for f in index.manifest["files"]],
        "tokenizer": tokenizer,
        "token_files": token_files,
        "dynamic": spec.dynamic,
        "elastic": None,
        # The runtime's image path reads what one image costs (only plans that set it carry it).
        **({"image_tokens": spec.image_tokens} if spec.image_tokens is not None else {}),
    }


def needed_columns(spec: MixtureSpec) -> list[str]:
    """Samples columns the compiler reads: locations, sizes (and image counts, from indexes that have
    them) and the properties and media and reserved columns the spec filters on (only those: at
    100 M samples every int64 column costs 0.8 GB of the compile's peak memory)."""
    manifest = read_manifest(spec.index)
    properties = manifest.get("properties", {})
    media = "images" in manifest.get("counts", {})  # an index of format 1.1 or later
    names = [n for node in spec.nodes().values() if node.where for n in referenced(parse(node.where))]
    wanted = {n for n in names if n in properties or n in FILTER_COLUMNS
              or (media and n in MEDIA_FILTER_COLUMNS)}
    filters = sorted(wanted - {"images"} - set(LOCATION_COLUMNS))
    return list(LOCATION_COLUMNS) + (["images"] if media else []) + filters


def compile_file(mixture: Path | str, out: Path | str,
                 progress: Callable[[int, int], None] | None = None, *,
                 replace_feedback_state: bool = False,
                 processes: int = 1) -> tuple[CompiledPlan, WrittenPlan]:
    """`mixtera compile MIXTURE --out PLAN`: read the spec and its index, compile, write.

    ``progress(done, total)`` is called after every packed segment. An existing plan at ``out``
    with feedback state is replaced only with ``replace_feedback_state`` (see ``check_output``).
    ``processes`` > 1 packs and encodes segments in that many worker processes (the same bytes); a
    plan over whole (image-text) samples is packed in this process whatever ``processes`` says: where
    a segment starts depends on where the previous one's whole samples went, which its quotas alone
    do not tell (``mixtera.planner.compile.parallel``).
    """
    spec = load_spec(mixture)
    check_output(Path(out), replace_feedback_state=replace_feedback_state)  # before the slow part
    index = load_index(spec.index, columns=needed_columns(spec))
    plan = compile_plan(spec, index)
    if plan.size is not None:
        plan.size.check_disk(Path(out))
    manifest = manifest_of(plan, index)
    nested = None if plan.validation is None else _validation_writer(plan, manifest, index)
    del index  # the plan holds all it needs: free the index tables before packing
    pa.default_memory_pool().release_unused()  # and hand their memory back to the system
    placement = plan.placement()
    if processes > 1 and placement is None:
        from mixtera.planner.compile.parallel import packed_segments

        segments = {"packed": _reporting(plan, packed_segments(plan, processes), progress)}
    else:
        segments = {"blocks": _reporting(plan, plan.blocks(), progress)}
    written = write_plan(out, manifest=manifest, samples=plan.samples, quotas=plan.quotas,
                         weights=plan.weights, nested=nested, placement=placement,
                         replace_feedback_state=replace_feedback_state, **segments)
    return plan, written


def _validation_writer(plan: CompiledPlan, manifest: dict[str, Any],
                       index: IndexTables) -> Callable[[Path], WrittenPlan]:
    """Records the validation plan in ``manifest`` and returns what writes it into the staged plan."""
    val = plan.validation
    assert val is not None and plan.spec.validation is not None
    vmanifest = {**manifest_of(val, index), "validation_of": plan.fingerprint}
    manifest["validation"] = {"dir": VALIDATION, "fingerprint": val.fingerprint, "steps": val.spec.steps,
                              "batch_size": val.topology.batch_size,
                              "per_component": plan.spec.validation.per_component,
                              "held_out": [int(q) for q in val.quotas.sum(axis=0)]}
    return lambda stage: write_plan(stage / VALIDATION, manifest=vmanifest, samples=val.samples,
                                    quotas=val.quotas, weights=val.weights, blocks=val.blocks(),
                                    placement=val.placement())


T = TypeVar("T")


def _reporting(plan: CompiledPlan, items: Iterable[T],
               progress: Callable[[int, int], None] | None) -> Iterator[T]:
    """``items`` (one per segment), calling ``progress(done, total)`` after each."""
    total = -(-plan.spec.steps // plan.spec.segment_steps)  # the last segment may be shorter
    for done, item in enumerate(items, start=1):
        yield item
        if progress is not None:
            progress(done, total)
