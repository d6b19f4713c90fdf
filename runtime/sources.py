"""Where a step's document texts and token ids come from: corpus readers, a tokenizer, or token files.

All sources take the columns of the plan's ``samples.npy`` rows of the step (``file``, ``offset``,
``length``, ``tokens``, ``token_offset``) and return one item per row, in order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import PlanError
from runtime.readers import FileEntry, ReaderPool
from runtime.token_files import TokenFile

_DOC_CACHE_TOKENS = 1 << 21  # ids kept for documents that a later entry continues (~16 MB as int64)
_OPEN_TOKEN_FILES = 64


class TextSource:
    """Reads document texts, grouping the reads by corpus file."""

    def __init__(self, files: dict[int, FileEntry], text_field: str, cache_dir: Path) -> None:
        self.pool = ReaderPool(files, text_field, cache_dir)

    def texts(self, file: np.ndarray, offset: np.ndarray, length: np.ndarray) -> list[str]:
        out: list[Any] = [None] * len(file)
        for fid in np.unique(file):
            where = np.flatnonzero(file == fid)
            got = self.pool.get(int(fid)).texts(offset[where].tolist(), length[where].tolist())
            for i, text in zip(where.tolist(), got, strict=True):
                out[i] = text
        return out

    def close(self) -> None:
        self.pool.close()


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


def _with_eos(ids: np.ndarray, eos_id: int | None) -> np.ndarray:
    if eos_id is None:
        return ids
    out = np.empty(ids.size + 1, dtype=np.int64)
    out[:-1] = ids
    out[-1] = eos_id
    return out


class TokenizingSource:
    """Token ids by reading and tokenizing texts; documents that are continued later stay cached."""

    def __init__(self, texts: TextSource, tokenizer: Any, eos_id: int | None) -> None:
        self.text_source = texts
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.cache = DocCache()

    def documents(self, rows: np.ndarray, cols: dict[str, np.ndarray], keep: np.ndarray) -> list[np.ndarray]:
        """Ids (end-of-document token included) per row; rows where ``keep`` is set are cached."""
        docs: list[Any] = [self.cache.get(int(r)) for r in rows.tolist()]
        missing = np.asarray([i for i, d in enumerate(docs) if d is None], dtype=np.int64)
        if missing.size:
            texts = self.text_source.texts(
                cols["file"][missing], cols["offset"][missing], cols["length"][missing]
            )
            encoded = (
                self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
                if hasattr(self.tokenizer, "encode_batch_fast")
                else self.tokenizer.encode_batch(texts, add_special_tokens=False)
            )
            for i, enc in zip(missing.tolist(), encoded, strict=True):
                ids = np.asarray(enc.ids, dtype=np.int64)
                _check_count(ids.size, int(cols["tokens"][i]), int(rows[i]))
                docs[i] = _with_eos(ids, self.eos_id)
                if keep[i]:
                    self.cache.put(int(rows[i]), docs[i])
        return docs

    def flat(
        self, rows: np.ndarray, cols: dict[str, np.ndarray], start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """The ids of ranges ``[start, end)`` of every row's document, concatenated."""
        doc = cols["tokens"].astype(np.int64) + (self.eos_id is not None)
        docs = self.documents(rows, cols, keep=end < doc)
        pieces = take_ranges(docs, start, end)
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def close(self) -> None:
        self.text_source.close()


def _check_count(got: int, indexed: int, row: int) -> None:
    if got != indexed:
        raise PlanError(
            f"sample row {row}: the tokenizer gives {got} tokens, the index counted {indexed}",
            "use the same tokenizer (and tokenizers version) as the index, or re-index",
        )


class PretokenizedSource:
    """Token ids sliced from the memory-mapped ``tokens/<file_id>.bin`` files of the index."""

    def __init__(self, token_dir: Path, eos_id: int | None) -> None:
        self.token_dir = token_dir
        self.eos_id = eos_id
        self._open: OrderedDict[int, TokenFile] = OrderedDict()

    def _file(self, file_id: int) -> TokenFile:
        tf = self._open.get(file_id)
        if tf is None:
            tf = TokenFile(self.token_dir / f"{file_id}.bin")
            self._open[file_id] = tf
            if len(self._open) > _OPEN_TOKEN_FILES:
                self._open.popitem(last=False)[1].close()
        return tf

    def flat(
        self, rows: np.ndarray, cols: dict[str, np.ndarray], start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """The ids of ranges ``[start, end)`` of every row's document, concatenated (one gather per file)."""
        stored = cols["tokens"].astype(np.int64)
        _check_ranges(start, end, stored + (self.eos_id is not None))
        sizes = end - start
        at = np.concatenate([[0], np.cumsum(sizes)])
        out = np.empty(int(at[-1]), dtype=np.int64)
        for fid in np.unique(cols["file"]).tolist():
            sel = np.flatnonzero(cols["file"] == fid)
            n = sizes[sel]
            local = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # position inside its range
            dest = np.repeat(at[sel], n) + local
            first = cols["token_offset"][sel].astype(np.int64)
            src = np.repeat(first + start[sel], n) + local
            past = src >= np.repeat(first + stored[sel], n)  # one past the stored ids: the end-of-document
            tf = self._file(fid)
            if src[~past].size and int(src[~past].max()) >= tf.tokens:
                raise PlanError(
                    f"{tf.path}: the plan reads beyond its {tf.tokens} tokens",
                    "the plan and the token files disagree; re-index and recompile",
                )
            out[dest[~past]] = tf.ids[src[~past]]
            out[dest[past]] = self.eos_id if self.eos_id is not None else 0
        return out

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def _check_ranges(start: np.ndarray, end: np.ndarray, doc: np.ndarray) -> None:
    bad = np.flatnonzero((start < 0) | (start >= end) | (end > doc))
    if bad.size:
        i = int(bad[0])
        raise PlanError(
            f"plan entry token range [{start[i]}, {end[i]}) is outside its document of {doc[i]} tokens",
            "the plan does not match the index; recompile the plan",
        )


def take_ranges(docs: Sequence[np.ndarray], start: np.ndarray, end: np.ndarray) -> list[np.ndarray]:
    """``docs[i][start[i]:end[i]]`` with ``end == 0`` meaning to the end; checks every range."""
    out = []
    for i, doc in enumerate(docs):
        s, e = int(start[i]), int(end[i]) or doc.size
        if not 0 <= s < e <= doc.size:
            raise PlanError(
                f"plan entry token range [{s}, {e}) is outside its document of {doc.size} tokens",
                "the plan does not match the index; recompile the plan",
            )
        out.append(doc[s:e])
    return out
