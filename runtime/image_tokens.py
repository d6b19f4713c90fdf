"""Image placeholders in a step's token stream: where each image's span goes and which labels it hides.

With ``PlanDataset(output="tokens", image_token_id=ID)`` an image-text sample becomes, in its sequence,
``[bos] ID * image_tokens (per image, in member order) text ids [eos]``: the images before their text,
as LLaVA lays out a prompt. The plan counted those placeholders in the sample's tokens (``[mixture]
image_tokens``) and packed the sample whole, so the span of an image never crosses two sequences.

Labels follow the text path (``labels[i] = input_ids[i + 1]``); a label whose target is a placeholder
is -100: the model is never asked to predict an image. The label of the last placeholder, the first
text token, stays: it is the one the image conditions most directly.

Everything here is plain numpy on one step, so it runs in the loader worker that builds the step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mixtera.runtime.errors import PlanError

_REPACK = "the plan does not pack image samples whole; recompile it with this mixtera"


@dataclass(frozen=True, slots=True)
class ImageSpans:
    """Where the images of one step go: one row per image, in stream order."""

    start: np.ndarray  # int64: first placeholder's index in the step's flat stream
    image_tokens: int

    def positions(self, seq_len: int) -> np.ndarray:
        """int64 [images, 2]: (sequence, offset of the first placeholder in it)."""
        seq = self.start // seq_len
        crossing = (self.start + self.image_tokens - 1) // seq_len != seq
        if crossing.any():
            at = int(self.start[np.flatnonzero(crossing)[0]])
            raise PlanError(f"the image span at stream offset {at} ({self.image_tokens} placeholders) "
                            f"crosses a sequence boundary (seq_len {seq_len})", _REPACK)
        return np.stack([seq, self.start % seq_len], axis=1)

    def hidden_labels(self, seq_len: int) -> np.ndarray:
        """Flat indices of the labels whose target is a placeholder (the first label of a sequence
        predicts nothing before it, so a span at offset 0 hides one label fewer)."""
        first = self.start - 1 + (self.start % seq_len == 0)
        count = self.start + self.image_tokens - 1 - first
        return np.repeat(first - np.cumsum(count) + count, count) + np.arange(int(count.sum()))


def check_whole(token_start: np.ndarray, token_end: np.ndarray, doc_tokens: np.ndarray,
                images: np.ndarray, step: int) -> None:
    """Every entry with images must be its whole sample: a split one would cut a placeholder span."""
    split = (images > 0) & ((token_start != 0) | (token_end != doc_tokens))
    if split.any():
        i = int(np.flatnonzero(split)[0])
        raise PlanError(
            f"step {step}: entry {i} holds tokens [{token_start[i]}, {token_end[i]}) of an image sample of "
            f"{doc_tokens[i]} tokens: an image's placeholders would be split across sequences", _REPACK)


def stack_images(images: list[np.ndarray], size: tuple[int, int] | None) -> np.ndarray | list[np.ndarray]:
    """A step's images as one uint8 [N, 3, H, W] array when resized to ``size``, else as they are."""
    if size is None:
        return images
    return np.stack(images) if images else np.empty((0, 3, *size), dtype=np.uint8)


def insert_placeholders(text_flat: np.ndarray, text_sizes: np.ndarray, images: np.ndarray,
                        image_tokens: int, image_token_id: int, bos: bool) -> tuple[np.ndarray, ImageSpans]:
    """The step's stream with ``images[i] * image_tokens`` placeholders after the (optional) begin id of
    every entry ``i``, and where each image's span starts in it."""
    counts = images.astype(np.int64)
    owners = np.flatnonzero(counts)
    text_at = np.cumsum(text_sizes) - text_sizes + int(bos)
    dtype = np.result_type(text_flat.dtype, np.min_scalar_type(image_token_id))
    where = np.repeat(text_at[owners], counts[owners] * image_tokens)
    flat = np.insert(text_flat.astype(dtype, copy=False), where, image_token_id)
    sizes = text_sizes + counts * image_tokens
    entry_at = (np.cumsum(sizes) - sizes + int(bos))[owners]
    nth = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts[owners]) - counts[owners], counts[owners])
    start = np.repeat(entry_at, counts[owners]) + nth * image_tokens
    return flat, ImageSpans(start.astype(np.int64), image_tokens)
