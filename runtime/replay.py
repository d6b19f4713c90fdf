"""The per-process part of a PlanDataset: the open plan, the sources and the current segment.

A ``Replay`` lives in one process (the main one, or a loader worker) and turns a step number into
the step's token sequences or documents. It decodes one plan segment at a time and resolves only
the steps of that segment that this worker replays, so memory and work per worker do not grow
with the plan or the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixtera.runtime.batches import StepDocuments
from mixtera.runtime.confine import recorded_dir
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.plan_dir import MANIFEST, TOKENS_DIR
from mixtera.runtime.format.rank_frames import Segment
from mixtera.runtime.image_tokens import check_whole, insert_placeholders, stack_images
from mixtera.runtime.images import decode_step_images, without_images
from mixtera.runtime.packing import PackedStep, pack_step, provenance_slices
from mixtera.runtime.plan import Plan, ResolvedEntries
from mixtera.runtime.readers import FileEntry
from mixtera.runtime.sources import (
    ImageSource,
    PretokenizedSource,
    TextSource,
    TokenizingSource,
    check_index_unchanged,
)
from mixtera.runtime.tokenizer import load_tokenizer
from mixtera.runtime.versions import VersionResolver

_LIST_COLUMNS = ("file", "offset", "length", "record", "component", "token_start", "token_end")
READ_AHEAD_STEPS = 4  # steps of this worker whose object reads are requested before the current one waits
_DOC_COLUMNS = ("file", "record", "component", "token_start", "token_end")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayConfig:
    """What a Replay needs, fixed once by ``PlanDataset.__init__`` (and pickled to loader workers)."""

    plan_path: Path
    fingerprint: str  # the plan identity the dataset checked; a replay refuses any other plan
    rank: int
    output: str  # "tokens" | "documents"
    batch_size: int
    seq_len: int
    with_provenance: bool
    domains: tuple[str, ...]  # component names by id
    text_field: str | list[str]
    cache_dir: Path
    pretokenized: bool
    tokenizer_path: Path | None
    tokenizer_info: dict[str, Any] | None  # the plan's tokenizer record
    tokenizer_blake2b: str | None  # the digest checked at construction
    document_masks: bool = False  # tokens: add position_ids and document_ids (runtime/document_masks.py)
    continue_positions: bool = False
    decode_images: bool = False  # documents of WebDataset samples: add `images` (runtime/images.py)
    image_size: tuple[int, int] | None = None
    keep_image_bytes: bool = False  # decode_images: `media` keeps the decoded members' bytes too
    image_token_id: int | None = None  # tokens: image placeholders and images (runtime/image_tokens.py)
    image_tokens: int = 0  # placeholders per image, the plan's [mixture] image_tokens


class Replay:
    """The per-process part of a PlanDataset: open plan, sources and the current segment."""

    def __init__(self, cfg: ReplayConfig) -> None:
        self.cfg = cfg
        self.plan = Plan.open(cfg.plan_path)
        if self.plan.fingerprint != cfg.fingerprint:
            self.plan.close()
            raise PlanError(f"{cfg.plan_path}: the plan changed since the dataset was created (fingerprint "
                            f"{self.plan.fingerprint}, the dataset checked {cfg.fingerprint})",
                            "create the PlanDataset again after recompiling the plan")
        manifest, mpath = self.plan.manifest, self.plan.path / MANIFEST
        files = {
            int(f["file_id"]): FileEntry.from_manifest(f, self.plan.corpus_root, where=str(mpath))
            for f in self.plan.files
        }
        info = cfg.tokenizer_info or {}
        self.eos_id = int(info["eos_id"]) if self.plan.eos else None
        self.bos_id = int(info["bos_id"]) if self.plan.bos else None
        self.texts = TextSource(files, cfg.text_field, cfg.cache_dir)
        self.paths = {int(f["file_id"]): f["path"] for f in self.plan.files}
        self.tokens: Any = None
        if cfg.output == "tokens" and cfg.pretokenized:
            token_dir = recorded_dir((manifest["token_files"] or {}).get("dir"), what="token_files.dir",
                                     where=str(mpath), name=TOKENS_DIR,
                                     hint="the manifest was edited or is damaged: recompile the plan")
            check_index_unchanged(manifest, token_dir.parent)
            self.tokens = PretokenizedSource(token_dir, self.eos_id, self.bos_id)
        elif cfg.output == "tokens":
            tok, _ = load_tokenizer(cfg.tokenizer_path, cfg.tokenizer_info)
            self.tokens = TokenizingSource(self.texts, tok, self.eos_id, self.bos_id)
        # The one choice of version: waits for a pending decision, publishes "keep" on timeout.
        self.images = ImageSource(self.texts, cfg.image_size) if cfg.image_token_id is not None else None
        self.resolver = VersionResolver(self.plan.path, manifest, who=f"rank {cfg.rank}")
        self.workers = 1  # loader workers: each resolves only its own steps of a segment
        self._segment: tuple[int, int, ResolvedEntries, dict[int, tuple[int, int]]] | None = None
        self._lists: dict[str, list[int]] | None = None
        self._requested = -1  # the last step whose object reads were requested ahead

    def _read_ahead(self, step: int) -> None:
        """Request ``step``'s object reads, then those of this worker's next `READ_AHEAD_STEPS` steps of
        the loaded segment (a later segment is not decoded early); each step is requested once."""
        if not self.texts.remote:
            return
        _, _, resolved, ranges = self._segment  # type: ignore[misc]
        window = READ_AHEAD_STEPS * self.workers
        if not self._requested - window <= step <= self._requested:  # a new epoch, a resume: start over
            self._requested = step - 1
        last = step + window
        for s in range(step, last + 1, self.workers):
            if s <= self._requested and s != step:
                continue
            if s not in ranges:
                break
            lo, hi = ranges[s]
            self.texts.request(resolved.file[lo:hi], resolved.offset[lo:hi], resolved.length[lo:hi])
            self._requested = max(self._requested, s)

    def _load_segment(self, step: int) -> tuple[int, int]:
        """Decode and resolve this worker's steps of the segment holding ``step`` (kept until another
        is needed); returns the step's entry range in the resolved arrays."""
        k = self.plan.segment_of_step(step)
        phase = step % self.workers
        if self._segment is None or self._segment[:2] != (k, phase):
            seg = self.plan.segment(self.cfg.rank, k, self.resolver.data_version(k))
            mine, ranges = _worker_share(seg, phase, self.workers)
            self._segment = (k, phase, self.plan.resolve(mine), ranges)
            self._lists = None
        return self._segment[3][step]

    def entries(self, step: int) -> ResolvedEntries:
        lo, hi = self._load_segment(step)
        return self._segment[2].take(slice(lo, hi))

    def entry_lists(self, step: int) -> dict[str, list[int]]:
        """The step's entries as Python lists (converted once per segment: the documents path)."""
        lo, hi = self._load_segment(step)
        if self._lists is None:
            resolved = self._segment[2]
            self._lists = {name: getattr(resolved, name).tolist() for name in _LIST_COLUMNS}
        return {name: values[lo:hi] for name, values in self._lists.items()}

    def packed(self, step: int) -> PackedStep:
        """The step's token ids, checked against the topology, in compact form (runtime/batches.py)."""
        ent = self.entries(step)
        if isinstance(self.tokens, TokenizingSource):
            self._read_ahead(step)  # before the images: an image sample's span is an object read too
        images = self._images(ent, step)
        counts = np.array([len(x) for x in images], dtype=np.int64) if images is not None else 0
        placeholders = counts * self.cfg.image_tokens
        cols = {
            "file": ent.file,
            "offset": ent.offset,
            "length": ent.length,
            "tokens": ent.doc_tokens - (self.eos_id is not None) - (self.bos_id is not None) - placeholders,
            "token_offset": ent.token_offset,
        }
        # Text coordinates (the document without its placeholders): image entries are whole samples.
        start, end = ent.token_start, ent.token_end - placeholders
        flat = self.tokens.flat(ent.row, cols, start, end)
        if images is not None:
            flat, spans = insert_placeholders(flat, end - start, counts, self.cfg.image_tokens,
                                              self.cfg.image_token_id, self.bos_id is not None)
        sizes = ent.token_end - ent.token_start
        packed = pack_step(flat, sizes, ent.component, self.cfg.batch_size, self.cfg.seq_len, step)
        if images is not None:
            packed.images = stack_images([img for imgs in images for img in imgs], self.cfg.image_size)
            packed.image_positions = spans.positions(self.cfg.seq_len)
            packed.hidden_labels = spans.hidden_labels(self.cfg.seq_len)
        if self.cfg.document_masks:
            packed.token_start = ent.token_start.astype(np.int64)
            packed.continue_positions = self.cfg.continue_positions
        if self.cfg.with_provenance:
            files, records, paths = ent.file.tolist(), ent.record.tolist(), self.paths
            packed.provenance = [
                [(f"{paths[files[i]]}#{records[i]}", s, e) for i, s, e in slices]
                for slices in provenance_slices(sizes, ent.token_start, self.cfg.seq_len, self.cfg.batch_size)
            ]
        return packed

    def _images(self, ent: ResolvedEntries, step: int) -> list[list[np.ndarray]] | None:
        """Each entry's decoded images (none for text samples), checked to be whole samples."""
        if self.images is None:
            return None
        files, records = ent.file.tolist(), ent.record.tolist()
        names = [f"{self.paths[f]}#{r}" for f, r in zip(files, records, strict=True)]
        images = self.images.images(files, ent.offset.tolist(), ent.length.tolist(), names)
        counts = np.array([len(x) for x in images], dtype=np.int64)
        check_whole(ent.token_start, ent.token_end, ent.doc_tokens, counts, step)
        return images

    def documents(self, step: int) -> StepDocuments:
        lists = self.entry_lists(step)
        self._read_ahead(step)
        # The texts in the readers' tight loop (orjson.loads of a mapped slice for JSON lines); the
        # dicts are built where the batch is used (runtime/batches.py).
        texts, media = self.texts.documents(lists["file"], lists["offset"], lists["length"])
        cols: dict[str, Any] = {name: lists[name] for name in _DOC_COLUMNS}
        if any(m is not None for m in media):
            if self.cfg.decode_images:
                names = [f"{self.paths[f]}#{r}" for f, r in zip(lists["file"], lists["record"], strict=True)]
                cols["images"] = decode_step_images(media, self.cfg.image_size, names)
                media = media if self.cfg.keep_image_bytes else without_images(media)
            cols["media"] = media
        cols["paths"] = {f: self.paths[f] for f in set(lists["file"])}
        cols["domains"] = self.cfg.domains
        return StepDocuments(step, texts, cols)


def _worker_share(seg: Segment, phase: int, workers: int) -> tuple[Segment, dict[int, tuple[int, int]]]:
    """The entries of the steps ``s`` of ``seg`` with ``s % workers == phase``, and each such step's
    entry range in them."""
    bounds = seg.step_slices()
    steps = [i for i in range(seg.steps) if (seg.first_step + i) % workers == phase]
    counts = seg.step_counts[steps]
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    ranges = {seg.first_step + i: (int(starts[j]), int(starts[j + 1])) for j, i in enumerate(steps)}
    if workers == 1:
        return seg, ranges
    sel = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in steps] or [np.empty(0, np.int64)])
    mine = Segment(
        seg.first_step,
        counts,
        seg.component[sel],
        seg.position[sel],
        seg.token_start[sel],
        seg.token_end[sel],
        seg.version,
    )
    return mine, ranges
