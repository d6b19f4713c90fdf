"""What one plan step looks like to a training loop, and how it crosses from a loader worker.

A DataLoader worker hands every batch to the main process through a pipe (pickle); tensors go
through shared memory, one new segment and one file-descriptor hand-over per tensor storage. So
a step travels in its compact form and the main process builds what the loop reads:

- tokens: a ``PackedStep`` (runtime/packing.py: the step's ids in their narrow on-disk dtype, one
  component per packed entry) crosses; :class:`StepBatch` is built from it, its ``input_ids``, ``labels``,
  ``domain_ids`` and ``step`` all views of one int64 buffer (labels and domains are derived, never
  shipped). Per-sequence items (:class:`SequenceItem`, what iterating a PlanDataset yields for a
  plain ``DataLoader(ds, batch_size=plan batch size)``) collate back into their step's StepBatch
  without a copy: their type is registered in torch's ``default_collate_fn_map``.
- documents: :class:`StepDocuments`, a list-like batch of dicts that crosses as one string of all
  texts plus offsets and columns; its dicts are built on first use, in the process that uses them.
  It is neither a Sequence nor a Mapping, so torch's ``default_convert`` passes it through.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from mixtera.runtime.document_masks import document_layout
from mixtera.runtime.packing import IGNORE_INDEX, PackedStep

TENSOR_KEYS = ("input_ids", "labels", "domain_ids", "step")
MASK_KEYS = ("position_ids", "document_ids")  # with PlanDataset(document_masks=True)
IMAGE_KEYS = ("images", "image_positions")  # with PlanDataset(image_token_id=...)


def _keys(packed: PackedStep) -> tuple[str, ...]:
    masks = MASK_KEYS if packed.token_start is not None else ()
    return TENSOR_KEYS + masks + (IMAGE_KEYS if packed.image_positions is not None else ())


def _image_views(packed: PackedStep) -> tuple[Any, ...]:
    """``images`` (uint8 [N, 3, H, W], or a list of [3, H, W] of mixed sizes) and ``image_positions``
    (LongTensor [N, 2]: sequence, offset of the first placeholder), or nothing for a text-only step."""
    if packed.image_positions is None:
        return ()
    images = packed.images
    imgs = torch.from_numpy(images) if isinstance(images, np.ndarray) else [torch.from_numpy(a)
                                                                             for a in images]
    return imgs, torch.from_numpy(packed.image_positions.astype(np.int64, copy=False))


class StepBatch(dict):
    """A step's batch: ``input_ids``, ``labels``, ``domain_ids`` LongTensor[batch, seq_len] and ``step``
    LongTensor[batch], views of one buffer; ``provenance`` (a list per sequence) when asked for."""

    __slots__ = ("packed", "_views")

    @classmethod
    def of(cls, packed: PackedStep) -> StepBatch:
        b, n = packed.batch_size, packed.seq_len
        size = b * n
        planes = 5 if packed.token_start is not None else 3  # ids, labels, domains (+ positions, docs)
        buffer = torch.empty(planes * size + b, dtype=torch.int64)
        flat = buffer.numpy()
        ids, labels = flat[:size].reshape(b, n), flat[size : 2 * size].reshape(b, n)
        np.copyto(ids, packed.ids.reshape(b, n), casting="safe")
        labels[:, :-1] = ids[:, 1:]
        labels[:, -1] = IGNORE_INDEX
        if packed.hidden_labels is not None:
            flat[size : 2 * size][packed.hidden_labels] = IGNORE_INDEX  # targets that are placeholders
        flat[2 * size : 3 * size] = np.repeat(packed.component, packed.sizes)
        if packed.token_start is not None:
            positions, documents = document_layout(packed.sizes, packed.token_start, b, n,
                                                   packed.continue_positions)
            flat[3 * size : 4 * size] = positions.reshape(-1)
            flat[4 * size : 5 * size] = documents.reshape(-1)
        flat[planes * size :] = packed.step
        rows = buffer[: planes * size].view(planes, b, n).unbind(0)
        views = (*rows[:3], buffer[planes * size :], *rows[3:], *_image_views(packed))  # _keys(packed) order
        batch = cls(zip(_keys(packed), views, strict=True))
        if packed.provenance is not None:
            batch["provenance"] = packed.provenance
        batch.packed, batch._views = packed, views
        return batch

    @classmethod
    def in_transit(cls, packed: PackedStep) -> StepBatch:
        """The batch as a loader worker hands it to the queue: no tensors yet, only what crosses;
        the receiving process unpickles it into ``StepBatch.of(packed)``."""
        batch = cls()
        batch.packed, batch._views = packed, None
        return batch

    def _unchanged(self) -> bool:
        views = getattr(self, "_views", None)
        if views is None:
            return False
        keys = _keys(self.packed)
        return len(self) == len(keys) + (self.packed.provenance is not None) and all(
            self.get(k) is v for k, v in zip(keys, views, strict=True))

    def __reduce__(self) -> tuple[Any, ...]:
        if getattr(self, "packed", None) is not None and (self._views is None or self._unchanged()):
            return StepBatch.of, (self.packed,)  # the compact form, rebuilt where it arrives
        return dict, (dict(self),)  # changed (or rebuilt by someone): travels as the plain dict it is

    def __copy__(self) -> StepBatch:  # pin_memory and default_convert copy mappings shallowly
        out = StepBatch(self)
        out.packed, out._views = getattr(self, "packed", None), getattr(self, "_views", None)
        return out

    def sequences(self) -> list[SequenceItem]:
        """One item per sequence (views of this batch's rows); with images, each sequence's images and
        the offsets of their spans (``image_positions``, LongTensor[k])."""
        step, prov = self.packed.step, self.packed.provenance
        by_key = dict(zip(_keys(self.packed), self._views, strict=True))
        keys = [k for k in by_key if k != "step" and k not in IMAGE_KEYS]
        rows = [by_key[k].unbind(0) for k in keys]
        per_row = _images_per_row(by_key, self.packed.batch_size)
        items = []
        for row, values in enumerate(zip(*rows, strict=True)):
            item = SequenceItem(zip(keys, values, strict=True), step=step)
            if per_row is not None:
                item["images"], item["image_positions"] = per_row[row]
            if prov is not None:
                item["provenance"] = prov[row]
            item.batch, item.row, item._values = self, row, dict(item)
            items.append(item)
        return items


def _images_per_row(views: dict[str, Any], rows: int) -> list[tuple[Any, torch.Tensor]] | None:
    """Per sequence: its images (a slice of the step's, which are in stream order) and span offsets."""
    if "image_positions" not in views:
        return None
    images, positions = views["images"], views["image_positions"]
    bounds = np.searchsorted(positions[:, 0].numpy(), np.arange(rows + 1)).tolist()
    return [(images[a:b], positions[a:b, 1]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class SequenceItem(dict):
    """One planned sequence: ``input_ids``, ``labels``, ``domain_ids`` (LongTensor[seq_len]), ``step``
    (int) and, with provenance, its slices. Remembers its batch, so that a whole step collates to
    that batch without stacking."""

    __slots__ = ("batch", "row", "_values")

    def unchanged(self) -> bool:
        return len(self) == len(self._values) and all(self.get(k) is v for k, v in self._values.items())


def collate_sequences(items: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
    """Stack sequences; provenance stays a list (one list of slices per sequence).

    The unchanged items of exactly one step, in order, give back their StepBatch (no copy); any
    other list of items is stacked.
    """
    batch = getattr(items[0], "batch", None)
    if (
        batch is not None
        and len(items) == batch.packed.batch_size
        and batch._unchanged()
        and all(getattr(it, "batch", None) is batch and it.row == i and it.unchanged()
                for i, it in enumerate(items))
    ):
        return batch
    stacked = [k for k in (*TENSOR_KEYS[:3], *MASK_KEYS) if k in items[0]]
    out: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in stacked}
    out["step"] = torch.tensor([it["step"] for it in items], dtype=torch.long)
    if "image_positions" in items[0]:
        out["images"], out["image_positions"] = collate_images(items)
    if "provenance" in items[0]:
        out["provenance"] = [it["provenance"] for it in items]
    return out


def collate_images(items: list[dict[str, Any]]) -> tuple[Any, torch.Tensor]:
    """The sequences' images, concatenated in order (one uint8 tensor [N, 3, H, W] when every image has
    one size, else a list), and ``image_positions`` LongTensor [N, 2]: (sequence in the batch, offset)."""
    per_item = [it["images"] for it in items]
    if all(isinstance(x, torch.Tensor) for x in per_item):  # resized to image_size: one size
        images: Any = torch.cat(per_item)
    else:
        images = [img for imgs in per_item for img in imgs]
    rows = torch.cat([torch.full((len(it["image_positions"]),), i, dtype=torch.long)
                      for i, it in enumerate(items)])
    offsets = torch.cat([it["image_positions"].long() for it in items])
    return images, torch.stack([rows, offsets], dim=1)


default_collate_fn_map[SequenceItem] = collate_sequences  # torch's documented extension point


def collate_step(item: Any) -> Any:
    """PlanLoader's collate_fn (``batch_size=None``: one item per step): a PackedStep becomes its
    StepBatch, built here in-process, or in transit from a loader worker (built on arrival); other
    items (StepDocuments) pass as they are. A DataLoader rebuilt from ``loader.dataset`` and
    ``loader.collate_fn`` (as accelerate does) therefore yields the same batches."""
    if isinstance(item, PackedStep):
        return StepBatch.in_transit(item) if get_worker_info() is not None else StepBatch.of(item)
    return item


class StepDocuments:
    """One step's documents, in plan order: ``len``, indexing, slicing, iteration and ``==`` as a list
    of dicts with ``text``, ``sample_id``, ``domain``, ``domain_id``, ``step``, ``token_start``,
    ``token_end``; items of WebDataset samples add ``media`` (``{extension: bytes}`` of the non-text
    members) and, with ``decode_images=True``, ``images`` (uint8 tensors (3, H, W), archive order; then
    ``media`` holds only the members not decoded, unless ``keep_image_bytes=True``).
    The dicts are built once, on first use."""

    __slots__ = ("step", "_texts", "_cols", "_items")

    def __init__(self, step: int, texts: list[str] | tuple[str, list[int]], cols: dict[str, Any]) -> None:
        self.step = step
        self._texts = texts  # the texts, or (all texts joined, their end offsets) after a crossing
        self._cols = cols  # file, record, component, token_start, token_end (lists); paths; domains
        self._items: list[dict[str, Any]] | None = None

    def texts(self) -> list[str]:
        """The texts alone, in order (no dicts built)."""
        if self._items is not None:
            return [d["text"] for d in self._items]
        if isinstance(self._texts, list):
            return self._texts
        joined, ends = self._texts
        return [joined[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]

    def _materialize(self) -> list[dict[str, Any]]:
        if self._items is None:
            c, step = self._cols, self.step
            paths, names = c["paths"], c["domains"]
            self._items = [
                {
                    "text": text,
                    "sample_id": f"{paths[f]}#{r}",
                    "domain": names[k],
                    "domain_id": k,
                    "step": step,
                    "token_start": s,
                    "token_end": e,
                }
                for text, f, r, k, s, e in zip(
                    self.texts(), c["file"], c["record"], c["component"], c["token_start"],
                    c["token_end"], strict=True,
                )
            ]
            _add_media(self._items, c.get("media"), c.get("images"))
            self._texts = self._cols = None  # the dicts hold everything now
        return self._items

    def __len__(self) -> int:
        return len(self._items if self._items is not None else self._cols["file"])

    def __getitem__(self, i: int | slice) -> Any:
        return self._materialize()[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._materialize())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StepDocuments):
            other = other._materialize()
        return isinstance(other, list) and self._materialize() == other

    __hash__ = None  # type: ignore[assignment] # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"StepDocuments(step={self.step}, {self._materialize()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._items is not None:  # used (maybe changed) here: travels as its dicts
            return _documents_of_items, (self.step, self._items)
        texts = self._texts
        if isinstance(texts, list):
            texts = ("".join(texts), np.cumsum([len(t) for t in texts], dtype=np.int64).tolist())
        return StepDocuments, (self.step, texts, self._cols)


def _add_media(items: list[dict[str, Any]], media: list[Any] | None, images: list[Any] | None) -> None:
    """``media`` (and decoded ``images``) on the items of WebDataset samples (None for other items)."""
    if media is None:
        return
    for i, m in enumerate(media):
        if m is not None:
            items[i]["media"] = m
            if images is not None:
                items[i]["images"] = images[i]


def _documents_of_items(step: int, items: list[dict[str, Any]]) -> StepDocuments:
    docs = StepDocuments(step, [], {})
    docs._items = items
    return docs
