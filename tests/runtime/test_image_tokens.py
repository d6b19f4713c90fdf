"""Image placeholders in token steps (runtime/image_tokens.py), and images in batches (runtime/batches.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mixtera.runtime.batches import StepBatch, collate_sequences
from mixtera.runtime.errors import PlanError
from mixtera.runtime.image_tokens import check_whole, insert_placeholders
from mixtera.runtime.packing import IGNORE_INDEX, PackedStep

PH = 999


def _step(text_sizes: list[int], images: list[int], image_tokens: int, seq_len: int, bos: bool = False,
          size: tuple[int, int] | None = (4, 4)) -> PackedStep:
    """A step whose entries hold ``text_sizes`` text ids (entry i: ids 1000*(i+1) + j) and ``images``."""
    text = np.concatenate([1000 * (i + 1) + np.arange(n) for i, n in enumerate(text_sizes)]).astype(np.uint16)
    counts = np.array(images, dtype=np.int64)
    flat, spans = insert_placeholders(text, np.array(text_sizes), counts, image_tokens, PH, bos)
    sizes = np.array(text_sizes) + counts * image_tokens
    assert flat.size % seq_len == 0
    rng = np.random.default_rng(0)
    n = int(counts.sum())
    if size is None:  # mixed sizes: a list of arrays
        imgs: object = [rng.integers(0, 255, (3, 2 + i, 3), dtype=np.uint8) for i in range(n)]
    else:
        imgs = rng.integers(0, 255, (n, 3, *size), dtype=np.uint8)
    return PackedStep(step=5, batch_size=flat.size // seq_len, seq_len=seq_len, ids=flat,
                      component=np.arange(len(sizes)) % 2, sizes=sizes, provenance=None, images=imgs,
                      image_positions=spans.positions(seq_len), hidden_labels=spans.hidden_labels(seq_len))


def test_placeholders_go_before_each_samples_text_after_its_begin_id() -> None:
    text = np.array([1, 2, 3, 10, 11, 20, 21, 22], dtype=np.uint16)
    flat, spans = insert_placeholders(text, np.array([3, 2, 3]), np.array([1, 0, 2]), 2, PH, bos=True)
    assert flat.tolist() == [1, PH, PH, 2, 3, 10, 11, 20, PH, PH, PH, PH, 21, 22]
    assert spans.start.tolist() == [1, 8, 10]
    assert flat.dtype == np.uint16
    wide, _ = insert_placeholders(text, np.array([8]), np.array([1]), 1, 70_000, bos=False)
    assert wide.dtype == np.uint32 and wide[0] == 70_000  # widened to hold the placeholder id


def test_labels_whose_target_is_a_placeholder_are_hidden_and_the_first_text_label_stays() -> None:
    batch = StepBatch.of(_step([4, 4, 4, 4], [1, 0, 1, 0], image_tokens=4, seq_len=8))
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids[0].tolist() == [PH] * 4 + [1000, 1001, 1002, 1003]
    assert labels[0].tolist() == [IGNORE_INDEX] * 3 + [1000, 1001, 1002, 1003, IGNORE_INDEX]
    assert labels[1, 3].item() == IGNORE_INDEX  # the previous sample's last label targets a placeholder
    assert batch["image_positions"].tolist() == [[0, 0], [1, 4]]
    assert batch["images"].shape == (2, 3, 4, 4) and batch["images"].dtype == torch.uint8


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 2)), min_size=1, max_size=8),
       st.integers(1, 3), st.booleans())
def test_hidden_labels_are_exactly_the_labels_targeting_placeholders(
    entries: list[tuple[int, int]], image_tokens: int, bos: bool
) -> None:
    sizes = [n for n, _ in entries]
    images = [k for _, k in entries]
    fill = -(sum(sizes) + sum(images) * image_tokens) % 8
    if fill:  # a text entry fills the last sequence
        sizes, images = [*sizes, fill], [*images, 0]
    try:
        packed = _step(sizes, images, image_tokens, 8, bos=bos)
    except PlanError:  # a span crossing a sequence boundary: refused (the plan packs samples whole)
        return
    batch = StepBatch.of(packed)
    ids, labels = batch["input_ids"], batch["labels"]
    is_ph = ids == PH
    expected = ids.roll(-1, dims=1).clone()
    expected[is_ph.roll(-1, dims=1)] = IGNORE_INDEX
    expected[:, -1] = IGNORE_INDEX
    assert torch.equal(labels, expected)
    starts = batch["image_positions"]
    marked = torch.zeros_like(is_ph)
    for seq, off in starts.tolist():
        marked[seq, off : off + image_tokens] = True
    assert torch.equal(marked, is_ph)


def test_an_image_span_that_would_cross_sequences_is_refused() -> None:
    with pytest.raises(PlanError, match="crosses a sequence boundary"):
        _step([6, 6], [0, 1], image_tokens=4, seq_len=8)


def test_a_split_image_sample_is_refused_with_the_step_named() -> None:
    one = np.array([1])
    check_whole(np.array([0]), np.array([10]), np.array([10]), one, step=3)
    with pytest.raises(PlanError, match="step 3: entry 0 .* image sample"):
        check_whole(np.array([2]), np.array([10]), np.array([10]), one, step=3)


@pytest.mark.parametrize("size", [(4, 4), None], ids=["resized", "mixed-sizes"])
def test_sequences_carry_their_images_and_collate_back(size: tuple[int, int] | None) -> None:
    batch = StepBatch.of(_step([6, 4, 8, 8], [1, 2, 0, 0], image_tokens=2, seq_len=8, size=size))
    items = batch.sequences()
    assert [len(it["images"]) for it in items] == [1, 2, 0, 0]
    assert items[1]["image_positions"].tolist() == [0, 2]
    assert collate_sequences(items) is batch  # one whole step: its batch, no copy
    two = collate_sequences([items[1], items[0]])  # anything else is stacked
    assert two["image_positions"].tolist() == [[0, 0], [0, 2], [1, 0]]
    got = list(two["images"])
    want = [batch["images"][1], batch["images"][2], batch["images"][0]]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    if size is not None:
        assert two["images"].shape == (3, 3, 4, 4)


def test_a_step_with_images_crosses_a_pipe_in_compact_form() -> None:
    packed = _step([4, 4], [1, 1], image_tokens=4, seq_len=8)
    arrived = pickle.loads(pickle.dumps(StepBatch.in_transit(packed)))
    direct = StepBatch.of(packed)
    assert set(arrived) == set(direct)
    for key in direct:
        assert torch.equal(arrived[key], direct[key])
