"""Where a step's document texts and token ids come from: corpus readers, a tokenizer, or token files.

All sources take the columns of the plan's ``samples.npy`` rows of the step (``file``, ``offset``,
``length``, ``tokens``, ``token_offset``) and return one item per row, in order.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mixtera.runtime.errors import PlanError
from mixtera.runtime.fingerprint import json_digest
from mixtera.runtime.format.plan_dir import INDEX_MANIFEST
from mixtera.runtime.format.token_file import TokenFile
from mixtera.runtime.images import decode_step_images
from mixtera.runtime.object_reads import block_cache
from mixtera.runtime.readers import FileEntry, JsonLinesReader, ReaderPool, TarReader

_DOC_CACHE_TOKENS = 1 << 21  # ids kept for documents that a later entry continues (~16 MB as int64)
_OPEN_TOKEN_FILES = 64


class TextSource:
    """Reads document texts, grouping the reads by corpus file."""

    def __init__(self, files: dict[int, FileEntry], text_field: str, cache_dir: Path) -> None:
        self.pool = ReaderPool(files, text_field, cache_dir)
        self.remote = any(f.remote is not None for f in files.values())  # some file is an object

    def request(self, file: Sequence[int], offset: Sequence[int], length: Sequence[int]) -> None:
        """Start fetching, on background threads, what reading these samples needs from objects in a
        store (every object of them at once: one step's GETs overlap); local files need nothing."""
        if not self.remote:
            return
        files, offsets, lengths = (_as_list(x) for x in (file, offset, length))
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(files):
            groups.setdefault(f, []).append(i)
        wants = {}
        for f, where in groups.items():
            reader = self.pool.get(f)
            if reader.remote is not None:
                wants[reader.remote] = reader.ranges([offsets[i] for i in where], [lengths[i] for i in where])
        block_cache().fetch(wants)

    def texts(self, file: Sequence[int], offset: Sequence[int], length: Sequence[int]) -> list[str]:
        """Texts of samples at (file id, offset, length), in order; numpy arrays or lists."""
        files, offsets, lengths = (_as_list(x) for x in (file, offset, length))
        self.request(files, offsets, lengths)
        unique = set(files)
        if len(unique) <= self.pool.capacity:  # else opening the last would close the first ones
            readers = {f: self.pool.get(f) for f in unique}
            if all(type(r) is JsonLinesReader for r in readers.values()):
                return _plain_texts(readers, files, offsets, lengths)
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(files):
            groups.setdefault(f, []).append(i)
        out: list[Any] = [None] * len(files)
        for f, where in groups.items():  # each reader is used right after it is (re)opened
            got = self.pool.get(f).texts([offsets[i] for i in where], [lengths[i] for i in where])
            for i, text in zip(where, got, strict=True):
                out[i] = text
        return out

    def documents(self, file: Sequence[int], offset: Sequence[int],
                  length: Sequence[int]) -> tuple[list[str], list[dict[str, bytes] | None]]:
        """Texts, and the media (``{extension: bytes}`` of the non-text members) of WebDataset samples
        (None for samples of other formats), in order; plain lists."""
        media: list[dict[str, bytes] | None] = [None] * len(file)
        if not any(self.pool.format_of(f) == "tar" for f in set(file)):
            return self.texts(file, offset, length), media
        self.request(file, offset, length)  # the spans of every shard object of the step at once
        groups: dict[int, list[int]] = {}
        for i, f in enumerate(file):
            groups.setdefault(f, []).append(i)
        texts: list[Any] = [None] * len(file)
        for f, where in groups.items():
            reader = self.pool.get(f)
            offsets, lengths = [offset[i] for i in where], [length[i] for i in where]
            if isinstance(reader, TarReader):
                for i, sample in zip(where, reader.samples(offsets, lengths), strict=True):
                    texts[i], media[i] = sample.text, sample.media
            else:
                for i, text in zip(where, reader.texts(offsets, lengths), strict=True):
                    texts[i] = text
        return texts, media

    def close(self) -> None:
        self.pool.close()


def _as_list(x: Sequence[int]) -> list[int]:
    return x.tolist() if isinstance(x, np.ndarray) else list(x)


def _plain_texts(
    readers: dict[int, JsonLinesReader], files: list[int], offsets: list[int], lengths: list[int]
) -> list[str]:
    """Every sample lives in an uncompressed JSON lines file: parsed from its map, in plan order."""
    if not files:
        return []
    views = {f: r.view for f, r in readers.items()}
    get, loads = next(iter(readers.values())).getter, orjson.loads
    try:
        return [get(loads(views[f][o : o + n])) for f, o, n in zip(files, offsets, lengths, strict=True)]
    except (orjson.JSONDecodeError, KeyError, TypeError):  # let the reader name the bad record
        return [readers[f].texts([o], [n])[0] for f, o, n in zip(files, offsets, lengths, strict=True)]


class ImageSource:
    """The decoded images of samples (uint8 [3, H, W] arrays, member order): one positioned read of a
    shard sample's span, then runtime/images.py per image member; a sample of a text file has none."""

    def __init__(self, texts: TextSource, image_size: tuple[int, int] | None) -> None:
        self.texts = texts
        self.image_size = image_size

    def images(
        self, file: Sequence[int], offset: Sequence[int], length: Sequence[int], names: Sequence[str]
    ) -> list[list[np.ndarray]]:
        """Per sample (``names``: its sample id, for errors), its images."""
        _, media = self.texts.documents(file, offset, length)
        decoded = decode_step_images(media, self.image_size, names)
        return [[t.numpy() for t in images or ()] for images in decoded]


class DocCache:
    """LRU of document token ids by sample row, bounded by the total number of ids held."""

    def __init__(self, max_tokens: int = _DOC_CACHE_TOKENS) -> None:
        self._docs: OrderedDict[int, np.ndarray] = OrderedDict()
        self._held = 0
        self._max = max_tokens

    def get(self, row: int) -> np.ndarray | None:
        doc = self._docs.get(row)
        if doc is not None:
            self._docs.move_to_end(row)
        return doc

    def put(self, row: int, doc: np.ndarray) -> None:
        if row in self._docs or doc.size > self._max:
            return
        self._docs[row] = doc
        self._held += doc.size
        while self._held > self._max:
            self._held -= self._docs.popitem(last=False)[1].size


class TokenizingSource:
    """Token ids by reading and tokenizing texts; documents that are continued later stay cached."""

    def __init__(self, texts: TextSource, tokenizer: Any, eos_id: int | None,
                 bos_id: int | None = None) -> None:
        self.text_source = texts
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.bos_id = bos_id
        self.specials = (eos_id is not None) + (bos_id is not None)  # framing tokens per document
        self.cache = DocCache()

    def documents(self, rows: np.ndarray, cols: dict[str, np.ndarray], keep: np.ndarray) -> list[np.ndarray]:
        """Ids (end-of-document token included) per row; rows where ``keep`` is set are cached.

        A row that occurs twice (a document split at a sequence boundary) is tokenized once.
        """
        row_list = rows.tolist()
        found: dict[int, np.ndarray] = {}
        todo: dict[int, int] = {}  # row -> its first index in this step
        for i, r in enumerate(row_list):
            if r not in found and r not in todo:
                doc = self.cache.get(r)
                if doc is None:
                    todo[r] = i
                else:
                    found[r] = doc
        if todo:
            idx = np.fromiter(todo.values(), dtype=np.int64, count=len(todo))
            texts = self.text_source.texts(cols["file"][idx], cols["offset"][idx], cols["length"][idx])
            encoded = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            keep_rows = set(rows[keep].tolist())
            for (r, i), enc in zip(todo.items(), encoded, strict=True):
                ids = enc.ids
                _check_count(len(ids), int(cols["tokens"][i]), r)
                if self.eos_id is not None:
                    ids.append(self.eos_id)  # a fresh list: one conversion, no copy
                if self.bos_id is not None:
                    ids.insert(0, self.bos_id)
                found[r] = np.array(ids, dtype=np.int64)
                if r in keep_rows:
                    self.cache.put(r, found[r])
        return [found[r] for r in row_list]

    def flat(
        self, rows: np.ndarray, cols: dict[str, np.ndarray], start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """The ids of ranges ``[start, end)`` of every row's document, concatenated."""
        doc = cols["tokens"].astype(np.int64) + self.specials
        docs = self.documents(rows, cols, keep=end < doc)
        _check_ranges(start, end, doc)  # documents() checked every length against ``doc``
        pieces = [d[s:e] for d, s, e in zip(docs, start.tolist(), end.tolist(), strict=True)]
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def close(self) -> None:
        self.text_source.close()


def _check_count(got: int, indexed: int, row: int) -> None:
    if got != indexed:
        raise PlanError(
            f"sample row {row}: the tokenizer gives {got} tokens, the index counted {indexed}",
            "use the same tokenizer (and tokenizers version) as the index, or re-index",
        )


def check_index_unchanged(plan_manifest: dict[str, Any], index_dir: Path) -> None:
    """Token files belong to the index the plan was compiled from: refuse a rebuilt index.

    The plan records the blake2b of the index manifest's canonical JSON (sorted keys, compact);
    a re-index of a changed corpus changes it, and with it possibly every token file.
    """
    expected = (plan_manifest.get("index") or {}).get("manifest_blake2b")
    path = index_dir / INDEX_MANIFEST
    if not expected or not path.is_file():
        return
    digest = json_digest(json.loads(path.read_bytes()))
    if digest != expected:
        raise PlanError(
            f"{index_dir}: the index changed since the plan was compiled (manifest blake2b "
            f"{digest}, the plan recorded {expected}), so its token files may not match",
            "recompile the plan from the current index (`mixtera compile`)",
        )


class PretokenizedSource:
    """Token ids sliced from the memory-mapped ``tokens/<file_id>.bin`` files of the index."""

    def __init__(self, token_dir: Path, eos_id: int | None, bos_id: int | None = None) -> None:
        self.token_dir = token_dir
        self.eos_id = eos_id
        self.bos_id = bos_id
        self._open: OrderedDict[int, TokenFile] = OrderedDict()

    def _file(self, file_id: int) -> TokenFile:
        tf = self._open.get(file_id)
        if tf is not None:
            self._open.move_to_end(file_id)
        else:
            tf = TokenFile(self.token_dir / f"{file_id}.bin")
            self._open[file_id] = tf
        return tf

    def _trim(self) -> None:
        """Close the least recently used files beyond the limit; called before a step opens its files,
        so that no file of the step is closed while the step slices it."""
        while len(self._open) > _OPEN_TOKEN_FILES:
            self._open.popitem(last=False)[1].close()

    def flat(
        self, rows: np.ndarray, cols: dict[str, np.ndarray], start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """The ids of ranges ``[start, end)`` of every row's document, concatenated.

        Each range is a view of the mapped token file; the begin- and end-of-document ids, which the
        files do not store, are inserted where a range covers them (document coordinate 0 is the
        begin-of-document id when the index has one).
        """
        stored = cols["tokens"].astype(np.int64)
        bos = int(self.bos_id is not None)
        _check_ranges(start, end, stored + (self.eos_id is not None) + bos)
        files = cols["file"].tolist()
        self._trim()
        maps = {f: self._file(f) for f in set(files)}
        first = cols["token_offset"].astype(np.int64)
        lo = first + np.maximum(start - bos, 0)
        hi = np.maximum(first + np.minimum(end - bos, stored), lo)
        limit = np.array([maps[f].tokens for f in files], dtype=np.int64)
        outside = (hi > limit) | (lo < 0)
        if outside.any():
            bad = np.flatnonzero(outside)
            tf = maps[files[int(bad[0])]]
            raise PlanError(
                f"{tf.path}: the plan reads tokens [{lo[bad[0]]}, {hi[bad[0]]}) of its {tf.tokens}",
                "the plan and the token files disagree; re-index and recompile",
            )
        # Copy each range into its place in one array of the files' dtype (StepBatch.of widens it),
        # then write every end-of-document id at once: no per-entry pieces to concatenate.
        none = np.zeros(len(files), dtype=bool)
        with_eos = end > stored + bos if self.eos_id is not None else none
        with_bos = (start == 0) & (end > 0) if bos else none
        sizes = hi - lo + with_eos + with_bos
        at = np.cumsum(sizes) - sizes
        specials = np.min_scalar_type(max(self.eos_id or 0, self.bos_id or 0))
        dtype = np.result_type(*{tf.ids.dtype for tf in maps.values()}, specials)
        out = np.empty(int(sizes.sum()), dtype=dtype)
        arrays = {f: tf.ids for f, tf in maps.items()}
        for f, tf in maps.items():  # checksums of the blocks read for the first time
            mine = slice(None) if len(maps) == 1 else cols["file"] == f
            tf.check_ranges(lo[mine], hi[mine])
        body = (at + with_bos).tolist()
        for f, a, b, o in zip(files, lo.tolist(), hi.tolist(), body, strict=True):
            out[o : o + b - a] = arrays[f][a:b]
        out[(at + sizes - 1)[with_eos]] = self.eos_id or 0
        out[at[with_bos]] = self.bos_id or 0
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def _check_ranges(start: np.ndarray, end: np.ndarray, doc: np.ndarray) -> None:
    outside = (start < 0) | (start >= end) | (end > doc)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise PlanError(
            f"plan entry token range [{start[i]}, {end[i]}) is outside its document of {doc[i]} tokens",
            "the plan does not match the index; recompile the plan",
        )

