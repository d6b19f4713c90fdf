"""Hand-made plans of captioned images and text, for the tokens path with images (independent of compile).

``build_image_plan`` writes a WebDataset shard of pictures (examples/make_vlm_corpus.py), a JSON lines
file of text, and a plan laid out by its own small packer, from man/mixtera-formats.md: every sequence
takes whole image samples (``images * image_tokens`` placeholders + caption + end of text) while one
fits and the step's image budget lasts, then fills what remains with text (split at sequence
boundaries). Samples count ``tokens`` = text tokens + ``images * image_tokens`` in ``samples.npy``
(the sample's planned size). The oracle gives every step's ids, labels, image offsets and images.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from mixtera.runtime.fingerprint import file_content_hash
from mixtera.runtime.format.plan_dir import rank_file_name
from mixtera.runtime.format.rank_file import RankHeader, write_rank_file
from mixtera.runtime.images import decode_image
from mixtera.runtime.packing import IGNORE_INDEX
from mixtera.runtime.plan import NO_TOKEN_OFFSET, SAMPLE_DTYPE
from mixtera.runtime.shuffle import stream_samples
from tests.helpers import ROOT
from tests.helpers.runtime_plans import EOS, _blake, _segment, make_docs, write_corpus_file

sys.path.insert(0, str(ROOT / "examples"))
from make_vlm_corpus import write_shard  # noqa: E402

PLACEHOLDER = "<image>"


@dataclass(slots=True)
class ImagePlan:
    path: Path
    image_token_id: int
    image_tokens: int
    batch_size: int
    seq_len: int
    doc_ids: list[np.ndarray]  # per samples.npy row: the document as the runtime lays it out
    image_bytes: list[list[bytes]]  # per row: its encoded images, in member order


def tar_spans(path: Path) -> list[tuple[int, int, list[bytes]]]:
    """Per sample (adjacent members of one key): span offset, span length, the image members' bytes."""
    out: dict[str, list] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            got = out.setdefault(key, [info.offset, end, []])
            got[1] = end
            if ext in ("png", "jpg"):
                got[2].append(tar.extractfile(info).read())
    return [(a, b - a, imgs) for a, b, imgs in out.values()]


def _file_entry(fid: int, root: Path, rel: str, fmt: str) -> dict:
    st = os.stat(root / rel)
    return {"file_id": fid, "path": rel, "format": fmt, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "content_hash": file_content_hash(root / rel)}


def build_image_plan(root: Path, tokenizer: Path, *, images: int = 40, texts: int = 60, steps: int = 6,
                     world_size: int = 1, batch_size: int = 2, seq_len: int = 48, image_tokens: int = 4,
                     image_share: float = 0.6, segment_steps: int = 2, seed: int = 3) -> ImagePlan:
    tok = Tokenizer.from_file(str(tokenizer))
    eos, ph = tok.token_to_id(EOS), tok.token_to_id(PLACEHOLDER)
    corpus, plan_dir = root / "corpus", root / "plan"
    plan_dir.mkdir(parents=True)
    write_shard(corpus / "pics" / "pics-0000.tar", seed, 0, images, "png")
    docs = make_docs(seed, texts, words=(3, 30))
    text_locs = write_corpus_file(corpus / "text" / "notes.jsonl", docs, "jsonl", nested=False)
    files = [_file_entry(0, corpus, "pics/pics-0000.tar", "tar"),
             _file_entry(1, corpus, "text/notes.jsonl", "jsonl")]
    samples, doc_ids, image_bytes = [], [], []
    spans = tar_spans(corpus / "pics" / "pics-0000.tar")
    captions = _captions(corpus / "pics" / "pics-0000.tar")
    for rec, ((off, ln, imgs), cap) in enumerate(zip(spans, captions, strict=True)):
        text = tok.encode(cap, add_special_tokens=False).ids
        samples.append((0, rec, off, ln, len(text) + len(imgs) * image_tokens, NO_TOKEN_OFFSET))
        doc_ids.append(np.array([ph] * (len(imgs) * image_tokens) + text + [eos], dtype=np.int64))
        image_bytes.append(imgs)
    for rec, ((off, ln), doc) in enumerate(zip(text_locs, docs, strict=True)):
        text = tok.encode(doc, add_special_tokens=False).ids
        samples.append((1, rec, off, ln, len(text), NO_TOKEN_OFFSET))
        doc_ids.append(np.array(text + [eos], dtype=np.int64))
        image_bytes.append([])
    np.save(plan_dir / "samples.npy", np.array(samples, dtype=SAMPLE_DTYPE))
    comps = [_component(0, "pics", 0, images), _component(1, "text", images, texts)]
    per_rank = _layout(comps, doc_ids, steps, world_size, batch_size, seq_len, image_share, seed)
    _write_plan(plan_dir, tokenizer, tok, per_rank, comps, files, corpus, steps, world_size, batch_size,
                seq_len, segment_steps, seed, image_tokens)
    return ImagePlan(plan_dir, ph, image_tokens, batch_size, seq_len, doc_ids, image_bytes)


def _captions(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return [tar.extractfile(i).read().decode() for i in tar if i.name.endswith(".txt")]


def _component(cid: int, name: str, first: int, rows: int) -> dict:
    return {"id": cid, "name": name, "where": "", "first_row": first, "rows": rows, "tokens": 0, "epochs": 0,
            "stream": name}


def _layout(comps: list[dict], ids: list[np.ndarray], steps: int, world: int, batch: int, seq_len: int,
            image_share: float, seed: int) -> list[list[list[tuple[int, int, int, int]]]]:
    """Per rank, per step, entries (component, position, token_start, token_end marker)."""
    cursor = [[0, 0], [0, 0]]  # per component: stream position, tokens used of that document

    def row(cid: int, pos: int) -> int:
        c = comps[cid]
        return c["first_row"] + int(stream_samples(np.array([pos]), c["rows"], seed, c["stream"])[0])

    per_rank: list[list] = [[] for _ in range(world)]
    for _ in range(steps):
        budget = int(image_share * world * batch * seq_len)
        seqs = []
        for _ in range(world * batch):
            seq, room = [], seq_len
            while budget > 0 and (size := ids[row(0, cursor[0][0])].size) <= room:
                seq.append((0, cursor[0][0], 0, 0))
                cursor[0][0] += 1
                room, budget = room - size, budget - size
            while room:
                pos, used = cursor[1]
                doc = ids[row(1, pos)].size
                take = min(room, doc - used)
                seq.append((1, pos, used, 0 if used + take == doc else used + take))
                cursor[1] = [pos + 1, 0] if used + take == doc else [pos, used + take]
                room -= take
            seqs.append(seq)
        for r in range(world):
            per_rank[r].append([e for s in seqs[r * batch : (r + 1) * batch] for e in s])
    return per_rank


def _write_plan(plan_dir: Path, tokenizer: Path, tok: Tokenizer, per_rank: list, comps: list[dict],
                files: list[dict], corpus: Path, steps: int, world: int, batch: int, seq_len: int,
                segment_steps: int, seed: int, image_tokens: int) -> None:
    fingerprint = hashlib.blake2b(f"images/{seed}/{steps}".encode(), digest_size=16).digest()
    segs = [{"index": k, "first_step": k * segment_steps,
             "steps": min(segment_steps, steps - k * segment_steps), "version": 0}
            for k in range(-(-steps // segment_steps))]
    for r in range(world):
        header = RankHeader(rank=r, world_size=world, steps=steps, segment_steps=segment_steps,
                            first_segment=0, segment_count=len(segs), fingerprint=fingerprint)
        write_rank_file(plan_dir / rank_file_name(r), header,
                        [_segment(per_rank[r], s["first_step"], s["steps"]) for s in segs])
    manifest = {
        "kind": "mixtera-plan", "format_version": "1.0", "created_by": "tests",
        "fingerprint": fingerprint.hex(), "seed": seed, "unit": "tokens", "steps": steps,
        "segment_steps": segment_steps,
        "topology": {"world_size": world, "batch_size": batch, "seq_len": seq_len}, "components": comps,
        "corpus_root": str(corpus), "files": files, "text_field": ["txt", "text"],
        "image_tokens": image_tokens,
        "tokenizer": {"path": str(tokenizer), "blake2b": _blake(tokenizer), "eos_id": tok.token_to_id(EOS),
                      "eos": True, "vocab_size": tok.get_vocab_size()},
        "token_files": None, "segments": segs, "index": {"path": None},
    }
    (plan_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))


def expected_step(plan: ImagePlan, rank: int, step: int, size: tuple[int, int] | None) -> dict:
    """What rank ``rank`` must replay at ``step``: ids, labels, image positions and decoded images."""
    from mixtera.runtime.plan import Plan

    with Plan.open(plan.path) as p:
        ent = p.step_entries(rank, step)
    ids, images, starts, at = [], [], [], 0
    for r, s, e in zip(ent.row.tolist(), ent.token_start.tolist(), ent.token_end.tolist(), strict=True):
        for j, data in enumerate(plan.image_bytes[r]):
            starts.append(at + j * plan.image_tokens)
            images.append(decode_image(data, size, where="oracle").numpy())
        ids.append(plan.doc_ids[r][s:e])
        at += e - s
    flat = np.concatenate(ids).reshape(plan.batch_size, plan.seq_len)
    labels = np.full_like(flat, IGNORE_INDEX)
    labels[:, :-1] = np.where(flat[:, 1:] == plan.image_token_id, IGNORE_INDEX, flat[:, 1:])
    starts_arr = np.array(starts, dtype=np.int64)
    positions = np.stack([starts_arr // plan.seq_len, starts_arr % plan.seq_len], 1).reshape(-1, 2)
    return {"input_ids": flat, "labels": labels, "image_positions": positions, "images": images}


IMAGE_BATCH_KEYS = ("input_ids", "labels", "domain_ids", "image_positions", "images", "step")


def stopped_and_resumed(make: Callable[[], Any], stop: int) -> tuple[list[Any], list[Any]]:
    """The steps of a dataset from ``make()`` stopped after ``stop`` steps (2 loader workers) and
    resumed from its state (1 worker), and those of an uninterrupted run."""
    whole = list(make().loader(num_workers=2))
    first = make()
    it = iter(first.loader(num_workers=2))
    head = [next(it) for _ in range(stop)]
    state = first.state_dict()
    del it
    again = make()
    again.load_state_dict(state)
    return head + list(again.loader(num_workers=1)), whole


def assert_resumes_exactly(make: Callable[[], Any], stop: int) -> None:
    """Stopped and resumed (``stopped_and_resumed``), a token dataset gives exactly the batches of an
    uninterrupted run, images included."""
    import torch

    resumed, whole = stopped_and_resumed(make, stop)
    assert len(resumed) == len(whole)
    for got, want in zip(resumed, whole, strict=True):
        for key in IMAGE_BATCH_KEYS:
            assert torch.equal(got[key], want[key]), key
