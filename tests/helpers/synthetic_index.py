"""Index directories written straight from man/mixtera-formats.md, for compiler tests and bench/.

No corpus is read: samples get random properties and token counts, so any size is cheap to make.
The layout is exactly what `mixtera index` writes (checked by loading it with ``load_index``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mixtera.planner.index.schema import FORMAT_VERSION, ROW_GROUP_SIZE, files_schema, samples_schema
from mixtera.runtime.format.plan_dir import INDEX_FILES, INDEX_MANIFEST, INDEX_SAMPLES

LANGUAGES = ("en", "de", "fr", "es")
SOURCES = ("web", "code", "books", "wiki")
LICENSES = ("MIT", "Apache-2.0", "GPL-3.0", "CC-BY-4.0")


def write_synthetic_index(out: Path, samples: int, *, seed: int = 0, files: int = 4,
                          tokens: tuple[int, int] | None = (20, 400), eos: bool = True,
                          sources: tuple[str, ...] = SOURCES) -> Path:
    """Write an index of ``samples`` rows with properties language, source, license, quality, tags.

    ``tokens=None`` makes an index without a tokenizer (null token counts).
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    file_id = np.sort(rng.integers(0, files, samples)).astype(np.int32)
    record = np.arange(samples) - np.searchsorted(file_id, file_id, side="left")
    n_tok = rng.integers(tokens[0], tokens[1], samples) if tokens else None
    props = {"language": "string", "source": "string", "license": "string", "quality": "float",
             "tags": "list[string]"}
    cols = {
        "sample_id": _sample_ids(file_id, record),
        "file_id": pa.array(file_id),
        "record": pa.array(record.astype(np.int64)),
        "offset": pa.array((record * 100).astype(np.int64)),
        "length": pa.array(np.full(samples, 99, np.int64)),
        "text_bytes": pa.array(np.full(samples, 99, np.int64)),
        "tokens": pa.array(n_tok.astype(np.int64)) if tokens else pa.nulls(samples, pa.int64()),
        "token_offset": pa.nulls(samples, pa.int64()),
        **_no_media(samples),
        "language": pa.array(np.array(LANGUAGES)[rng.integers(0, len(LANGUAGES), samples)]),
        "license": pa.array(np.array(LICENSES)[rng.integers(0, len(LICENSES), samples)]),
        "quality": pa.array(np.round(rng.random(samples), 3)),
        "source": pa.array(np.array(sources)[rng.integers(0, len(sources), samples)]),
        "tags": _tags(samples),
    }
    schema = samples_schema(props)
    pq.write_table(pa.table([cols[f.name] for f in schema], schema=schema), out / INDEX_SAMPLES)
    _write_tables_and_manifest(out, props, np.bincount(file_id, minlength=files),
                               int(n_tok.sum()) if tokens else None, eos=eos)
    return out


def _no_media(n: int) -> dict[str, pa.Array]:
    """The media columns of a text-only index (format 1.1)."""
    return {"key": pa.nulls(n, pa.string()), "images": pa.array(np.zeros(n, np.int64)),
            "image_width": pa.nulls(n, pa.int64()), "image_height": pa.nulls(n, pa.int64())}


def _sample_ids(file_id: np.ndarray, record: np.ndarray) -> pa.Array:
    """``f<file_id>.jsonl#<record>``, built in Arrow."""
    files = pc.binary_join_element_wise("f", pc.cast(pa.array(file_id), pa.string()), ".jsonl", "")
    return pc.binary_join_element_wise(files, pc.cast(pa.array(record), pa.string()), "#")


def _write_tables_and_manifest(out: Path, props: dict[str, str], records: np.ndarray, tokens: int | None, *,
                               eos: bool = True) -> None:
    """files.parquet and manifest.json of an index whose files ``f<i>.jsonl`` hold ``records[i]`` rows."""
    files = int(records.size)
    file_rows = [{"file_id": i, "path": f"f{i}.jsonl", "format": "jsonl", "size": 1000, "mtime_ns": 0,
                  "content_hash": f"xxh3_128:{i:032x}", "records": int(records[i])} for i in range(files)]
    pq.write_table(pa.Table.from_pylist(file_rows, schema=files_schema()), out / INDEX_FILES)
    tokenizer = {"path": "tok.json", "name": "synthetic", "blake2b": "0" * 32, "vocab_size": 1000,
                 "eos_id": 0, "eos": eos} if tokens is not None else None
    samples = int(records.sum())
    manifest = {"kind": "mixtera-index", "format_version": FORMAT_VERSION, "created_by": "synthetic",
                "corpus_root": str(out.resolve() / "corpus"), "text_field": "text", "config": {},
                "properties": {n: {"type": t, "sources": []} for n, t in props.items()},
                "files": [{**f, "skipped": 0} for f in file_rows],
                "counts": {"files": files, "samples": samples, "bytes": 99 * samples, "tokens": tokens,
                           "images": 0},
                "tokenizer": tokenizer, "store_tokens": False}
    (out / INDEX_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


SCALE_CHUNK = 1 << 22  # rows generated and written at once: bounds the generator's memory


def scale_sources(components: int) -> tuple[str, ...]:
    return tuple(f"c{k:02d}" for k in range(components))


def write_scale_index(out: Path, samples: int, *, components: int = 16, files: int = 1024,
                      tokens: tuple[int, int] = (20, 900), seed: int = 0) -> Path:
    """A Pile-sized index without a corpus, written in chunks of SCALE_CHUNK rows (memory stays flat).

    Row ``i`` lies in file ``i * files // samples`` (files of equal size, sorted as `mixtera index`
    writes them) at record ``i - first row of its file``, byte offset ``record * 100``, 99 bytes.
    Its one property ``source`` is ``c00``..``c<components-1>``, drawn with probability
    proportional to ``1 / (k + 1)`` (a long tail, like the Pile's subsets), and its token count is
    uniform in ``tokens`` (mean 460 by default), both from ``numpy.random.default_rng(seed)`` chunk
    by chunk, so the index is the same for the same arguments.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    props = {"source": "string"}
    schema = samples_schema(props)
    names = np.array(scale_sources(components))
    share = 1.0 / np.arange(1, components + 1)
    cdf = np.cumsum(share / share.sum())
    total_tokens = 0
    with pq.ParquetWriter(out / INDEX_SAMPLES, schema) as writer:
        for lo in range(0, samples, SCALE_CHUNK):
            row = np.arange(lo, min(lo + SCALE_CHUNK, samples), dtype=np.int64)
            file_id = (row * files // samples).astype(np.int32)
            record = row - (-(-file_id.astype(np.int64) * samples // files))  # first row: ceil(f * n / files)
            n_tok = rng.integers(tokens[0], tokens[1], row.size)
            total_tokens += int(n_tok.sum())
            source = names[np.minimum(np.searchsorted(cdf, rng.random(row.size)), components - 1)]
            cols = {"sample_id": _sample_ids(file_id, record), "file_id": pa.array(file_id),
                    "record": pa.array(record), "offset": pa.array(record * 100),
                    "length": pa.array(np.full(row.size, 99, np.int64)),
                    "text_bytes": pa.array(np.full(row.size, 99, np.int64)), "tokens": pa.array(n_tok),
                    "token_offset": pa.nulls(row.size, pa.int64()), **_no_media(row.size),
                    "source": pa.array(source)}
            writer.write_table(pa.table([cols[f.name] for f in schema], schema=schema),
                               row_group_size=ROW_GROUP_SIZE)
    counts = np.diff(-(-np.arange(files + 1, dtype=np.int64) * samples // files))
    _write_tables_and_manifest(out, props, counts, total_tokens)
    return out


def scale_mixture(index: Path | str, steps: int, *, components: int = 16, world_size: int = 256,
                  batch_size: int = 4, seq_len: int = 4096, segment_steps: int = 100,
                  extra: str = "") -> str:
    """Mixture TOML over `write_scale_index`'s sources, natural weights (each takes its share)."""
    comps = "\n".join(f"[components.{s}]\nwhere = \"source == '{s}'\"\nweight = \"natural\"\n"
                      for s in scale_sources(components))
    return _mixture_toml(index, comps, steps=steps, segment_steps=segment_steps, world_size=world_size,
                         batch_size=batch_size, seq_len=seq_len, extra=extra)


def _mixture_toml(index: Path | str, comps: str, *, steps: int, segment_steps: int, world_size: int,
                  batch_size: int, seq_len: int, extra: str) -> str:
    """The synthetic indexes' mixture TOML: seed 1, the topology, ``extra``, then ``comps``."""
    return f"""
[mixture]
index = "{index}"
seed = 1
steps = {steps}
segment_steps = {segment_steps}
[topology]
world_size = {world_size}
batch_size = {batch_size}
seq_len = {seq_len}
{extra}
{comps}"""


def _tags(n: int) -> pa.Array:
    """Tags cycle through ["a"], ["b", "c"], [], ["a", "c"]."""
    values = np.array(["a", "b", "c", "a", "c"])
    per = np.array([1, 2, 0, 2])[np.arange(n) % 4]
    offsets = np.concatenate([[0], np.cumsum(per)]).astype(np.int32)
    first = np.array([0, 1, 3, 3])[np.arange(n) % 4]
    flat = np.concatenate([values[first[per > 0]], values[first[per == 2] + 1]])
    order = np.argsort(np.concatenate([offsets[:-1][per > 0], offsets[:-1][per == 2] + 1]), kind="stable")
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat[order]))


# The benchmarks' mixture: 8 sources with fixed weights, 256 ranks by default (bench/compile.py,
# bench/feedback.py).
BENCH_SOURCES = ("web", "code", "books", "wiki", "news", "papers", "forum", "legal")
BENCH_WEIGHTS = (0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05)


def bench_mixture(index: Path | str, steps: int, *, batch: int, seq_len: int, extra: str = "",
                  world_size: int = 256) -> str:
    """Mixture TOML over BENCH_SOURCES; ``extra`` is appended before the components."""
    comps = "\n".join(f"[components.{s}]\nwhere = \"source == '{s}'\"\nweight = {w}\n"
                      for s, w in zip(BENCH_SOURCES, BENCH_WEIGHTS, strict=True))
    return _mixture_toml(index, comps, steps=steps, segment_steps=100, world_size=world_size,
                         batch_size=batch, seq_len=seq_len, extra=extra)
