"""The multi-stream permutation of the runtime's resolve equals mixtera.runtime.shuffle.stream_samples."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mixtera.runtime.shuffle import stream_samples
from mixtera.runtime.stream_rows import stream_rows


def reference(component: np.ndarray, position: np.ndarray, rows: np.ndarray, first: np.ndarray, seed: int,
              streams: list[str]) -> np.ndarray:
    out = np.empty(component.size, dtype=np.int64)
    for i, (c, p) in enumerate(zip(component.tolist(), position.tolist(), strict=True)):
        out[i] = first[c] + stream_samples(np.array([p]), int(rows[c]), seed, streams[c])[0]
    return out


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=5),
    seed=st.integers(0, 2**32),
    entries=st.integers(0, 400),
    epochs=st.integers(1, 4),
    data=st.integers(0, 2**32),
)
def test_equals_stream_samples_of_each_component(sizes: list[int], seed: int, entries: int, epochs: int,
                                                 data: int) -> None:
    rng = np.random.default_rng(data)
    rows = np.array(sizes, dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    streams = [f"c{i}" for i in range(len(sizes))]
    component = rng.integers(0, len(sizes), entries).astype(np.uint16)
    position = (rng.random(entries) * rows[component] * epochs).astype(np.int64)
    got = stream_rows(component, position, rows, first, seed, streams)
    assert np.array_equal(got, reference(component, position, rows, first, seed, streams))


def test_a_whole_epoch_is_a_permutation_of_each_component() -> None:
    rows = np.array([1000, 37, 1], dtype=np.int64)
    first = np.array([0, 1000, 1037], dtype=np.int64)
    component = np.repeat(np.arange(3), rows).astype(np.uint16)
    position = np.concatenate([np.arange(n) for n in rows.tolist()]) + 2 * np.repeat(rows, rows)  # epoch 2
    got = stream_rows(component, position, rows, first, 7, ["a", "b", "c"])
    assert np.array_equal(np.sort(got), np.arange(1038))
    assert np.array_equal(got, reference(component, position, rows, first, 7, ["a", "b", "c"]))
