"""Hand-made corpora and plans for runtime tests, written straight from man/mixtera-formats.md.

``build_plan`` is a small, independent implementation of the plan layout (not the compiler): it
quotas each step's tokens by weight, packs the global stream into sequences, splits entries at
sequence boundaries and writes rank files with mixtera.runtime.format.rank_file. Tests compare what the
runtime
replays with ``expected_tokens`` computed here from the corpus and the tokenizer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from tokenizers import Tokenizer

from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format.plan_dir import rank_file_name
from mixtera.runtime.format.rank_file import RankHeader, write_rank_file
from mixtera.runtime.format.rank_frames import Segment
from mixtera.runtime.format.token_file import write_token_file
from mixtera.runtime.plan import SAMPLE_DTYPE
from mixtera.runtime.shuffle import stream_samples

EOS = "<|endoftext|>"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "chi",
    "psi",
    "omega",
    "def",
    "class",
    "return",
    "import",
    "lambda",
    "yield",
    "while",
    "for",
    "if",
    "else",
]


def make_docs(seed: int, n: int, words: tuple[int, int] = (5, 120)) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        k = int(rng.integers(*words))
        body = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), size=k))
        docs.append(f"doc {seed}-{i}: {body}\u2028end")
    return docs


def write_corpus_file(path: Path, docs: list[str], fmt: str, nested: bool = True) -> list[tuple[int, int]]:
    """Write ``docs`` as records {"id", "meta": {"text"}} (``nested``) or {"id", "text"}; returns the
    (offset, length) the index records for each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wrap = (lambda d: {"meta": {"text": d}}) if nested else (lambda d: {"text": d})
    if fmt == "parquet":
        table = pa.table(
            {"id": list(range(len(docs))), **pa.Table.from_pylist([wrap(d) for d in docs]).to_pydict()}
        )
        pq.write_table(table, path, row_group_size=7)
        return [(i // 7, i % 7) for i in range(len(docs))]
    lines = [orjson.dumps({"id": i, **wrap(d)}) for i, d in enumerate(docs)]
    locs, at = [], 0
    for line in lines:
        locs.append((at, len(line)))
        at += len(line) + 1
    raw = b"\n".join(lines) + b"\n"
    if fmt.endswith("gz"):
        raw = gzip.compress(raw)
    elif fmt.endswith("zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return locs


@dataclass(slots=True)
class HandPlan:
    path: Path
    components: list[str]
    docs: list[str]  # text of every samples.npy row
    doc_ids: list[np.ndarray] = field(default_factory=list)  # tokens (eos included) per row
    steps: int = 0
    world_size: int = 1
    batch_size: int = 1
    seq_len: int = 0
    seed: int = 0
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    global_steps: list[np.ndarray] = field(default_factory=list)  # every step's token stream, all ranks
    quotas: list[np.ndarray] = field(default_factory=list)  # tokens per component per step


def _blake(path: Path) -> str:
    """The tokenizer's identity, as the index records it."""
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def build_plan(
    root: Path,
    tokenizer: Path,
    *,
    sources: dict[str, list[tuple[str, list[str]]]],
    weights: dict[str, float],
    steps: int,
    world_size: int,
    batch_size: int,
    seq_len: int,
    segment_steps: int = 3,
    seed: int = 7,
    store_tokens: bool = False,
) -> HandPlan:
    """``sources``: component -> [(file name with suffix, docs)]; returns the plan and its oracle."""
    tok = Tokenizer.from_file(str(tokenizer))
    eos_id = tok.token_to_id(EOS)
    corpus, plan_dir = root / "corpus", root / "plan"
    plan_dir.mkdir(parents=True)
    files, samples, texts, ids_per_row, comps, rows_of = [], [], [], [], [], {}
    token_dir = root / "tokens"
    for cid, (name, file_list) in enumerate(sources.items()):
        first = len(samples)
        for fname, docs in file_list:
            fid = len(files)
            fmt = next(s for s in ("jsonl.zst", "jsonl.gz", "jsonl", "parquet") if fname.endswith(s))
            fpath = corpus / name / fname
            locs = write_corpus_file(fpath, docs, fmt)
            st = os.stat(fpath)
            files.append(
                {
                    "file_id": fid,
                    "path": f"{name}/{fname}",
                    "format": fmt,
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "content_hash": file_content_hash(fpath),
                }
            )
            enc = [
                np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(docs, add_special_tokens=False)
            ]
            offsets = np.concatenate([[0], np.cumsum([e.size for e in enc])])[:-1]
            if store_tokens:
                token_dir.mkdir(exist_ok=True)
                write_token_file(token_dir / f"{fid}.bin", enc, 2)
            for rec, ((off, ln), e) in enumerate(zip(locs, enc, strict=True)):
                samples.append((fid, rec, off, ln, e.size, offsets[rec] if store_tokens else 2**64 - 1))
                ids_per_row.append(np.append(e, eos_id))
            texts.extend(docs)
        rows_of[name] = (first, len(samples) - first)
        comps.append(
            {
                "id": cid,
                "name": name,
                "where": "",
                "first_row": first,
                "rows": len(samples) - first,
                "tokens": 0,
                "epochs": 0,
                "stream": name,
            }
        )
    np.save(plan_dir / "samples.npy", np.array(samples, dtype=SAMPLE_DTYPE))
    per_rank, streams, quotas = _layout(
        comps, ids_per_row, weights, steps, world_size, batch_size, seq_len, seed
    )
    fingerprint = hashlib.blake2b(f"hand/{seed}/{steps}".encode(), digest_size=16).digest()
    segs = [
        {
            "index": k,
            "first_step": k * segment_steps,
            "steps": min(segment_steps, steps - k * segment_steps),
            "version": 0,
        }
        for k in range(-(-steps // segment_steps))
    ]
    for r in range(world_size):
        segments = [_segment(per_rank[r], s["first_step"], s["steps"]) for s in segs]
        write_rank_file(
            plan_dir / rank_file_name(r),
            RankHeader(
                rank=r,
                world_size=world_size,
                steps=steps,
                segment_steps=segment_steps,
                first_segment=0,
                segment_count=len(segs),
                fingerprint=fingerprint,
            ),
            segments,
        )
    manifest = {
        "kind": "mixtera-plan",
        "format_version": "1.0",
        "created_by": "tests",
        "fingerprint": fingerprint.hex(),
        "seed": seed,
        "unit": "tokens",
        "steps": steps,
        "segment_steps": segment_steps,
        "topology": {"world_size": world_size, "batch_size": batch_size, "seq_len": seq_len},
        "components": comps,
        "corpus_root": str(corpus),
        "files": files,
        "text_field": "meta.text",
        "tokenizer": {
            "path": str(tokenizer),
            "blake2b": _blake(tokenizer),
            "eos_id": eos_id,
            "eos": True,
            "vocab_size": tok.get_vocab_size(),
        },
        "token_files": {"dir": str(token_dir)} if store_tokens else None,
        "segments": segs,
        "index": {"path": None},
    }
    (plan_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return HandPlan(
        plan_dir,
        list(sources),
        texts,
        ids_per_row,
        steps,
        world_size,
        batch_size,
        seq_len,
        seed,
        rows_of,
        streams,
        quotas,
    )


def _layout(
    comps: list[dict],
    ids: list[np.ndarray],
    weights: dict[str, float],
    steps: int,
    world: int,
    batch: int,
    seq_len: int,
    seed: int,
) -> tuple[list, list[np.ndarray], list[np.ndarray]]:
    """Per rank, per step, entries (component, position, token_start, token_end); each step's token
    stream; each step's per-component quota."""
    step_tokens = world * batch * seq_len
    w = np.array([weights[c["name"]] for c in comps], dtype=float)
    cursor = [[0, 0] for _ in comps]  # stream position, tokens already used of that document
    per_rank: list[list[list]] = [[] for _ in range(world)]
    streams, quotas = [], []
    for _ in range(steps):
        quota = np.floor(w / w.sum() * step_tokens).astype(int)
        quota[: step_tokens - quota.sum()] += 1
        stream, tokens = [], []
        for cid, c in enumerate(comps):
            need = int(quota[cid])
            while need:
                pos, used = cursor[cid]
                row = c["first_row"] + int(stream_samples(np.array([pos]), c["rows"], seed, c["stream"])[0])
                take = min(need, ids[row].size - used)
                stream.append((cid, pos, used, used + take))
                tokens.append(ids[row][used : used + take])
                need -= take
                cursor[cid] = [pos + 1, 0] if used + take == ids[row].size else [pos, used + take]
        seqs = [[_to_end_marker(e, comps, ids, seed) for e in s] for s in _cut(stream, seq_len)]
        for r in range(world):
            per_rank[r].append([e for s in seqs[r * batch : (r + 1) * batch] for e in s])
        streams.append(np.concatenate(tokens))
        quotas.append(quota)
    return per_rank, streams, quotas


def _to_end_marker(
    entry: tuple[int, int, int, int], comps: list[dict], ids: list[np.ndarray], seed: int
) -> tuple[int, int, int, int]:
    cid, pos, start, end = entry
    c = comps[cid]
    row = c["first_row"] + int(stream_samples(np.array([pos]), c["rows"], seed, c["stream"])[0])
    return (cid, pos, start, 0 if end == ids[row].size else end)


def _cut(stream: list[tuple[int, int, int, int]], seq_len: int) -> list[list[tuple[int, int, int, int]]]:
    seqs, cur, room = [], [], seq_len
    for cid, pos, start, end in stream:
        while start < end:
            take = min(room, end - start)
            cur.append((cid, pos, start, start + take))
            start += take
            room -= take
            if room == 0:
                seqs.append(cur)
                cur, room = [], seq_len
    return seqs


def _segment(steps: list[list[tuple[int, int, int, int]]], first: int, n: int) -> Segment:
    chunk = steps[first : first + n]
    flat = [e for s in chunk for e in s]
    arr = np.array(flat, dtype=np.int64).reshape(-1, 4)
    return Segment(
        first,
        np.array([len(s) for s in chunk], dtype=np.uint32),
        arr[:, 0].astype(np.uint16),
        arr[:, 1],
        arr[:, 2].astype(np.uint32),
        arr[:, 3].astype(np.uint32),
    )


def expected_tokens(plan: HandPlan, rank: int, step: int) -> np.ndarray:
    """The [batch, seq_len] token ids rank ``rank`` must replay at ``step``, from the oracle."""
    from mixtera.runtime.plan import Plan

    with Plan.open(plan.path) as p:
        ent = p.step_entries(rank, step)
        pieces = [
            plan.doc_ids[int(r)][int(s) : int(e)]
            for r, s, e in zip(ent.row, ent.token_start, ent.token_end, strict=True)
        ]
    return np.concatenate(pieces).reshape(plan.batch_size, plan.seq_len)


def assert_same_steps(a: Any, b: Any) -> None:
    """Two replays' steps are equal: nested lists, dicts and `StepDocuments`, tensors by dtype and value."""
    import torch

    from mixtera.runtime.batches import StepDocuments

    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_steps(a[k], b[k])
    elif isinstance(a, list | tuple | StepDocuments):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_steps(x, y)
    else:
        assert a == b
