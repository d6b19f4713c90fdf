"""The compiler's fast paths give exactly what the plain computations they replace give."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile import packing
from mixtera.planner.compile.packing import Streams, _insert_sorted
from mixtera.runtime.format.rank_frames import position_deltas, position_sums
from mixtera.runtime.shuffle import _permute_network, _permute_tables, _round_tables, permute


@pytest.mark.parametrize("n", [2, 3, 4097, 2**24 + 1, 3**16, 2**31 + 7, 2**32])
def test_table_rounds_equal_the_uint64_network(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.integers(0, n, 70_000)
    bits = max(1, (n - 1).bit_length())
    got = _permute_tables(x, n, bits, _round_tables(12345, bits))
    assert np.array_equal(got, _permute_network(x, n, bits, 12345))
    assert np.array_equal(permute(x, n, 12345), got)
    assert np.unique(got).size == np.unique(x).size  # a bijection


def test_wide_streams_use_the_uint64_network() -> None:
    n = 2**40 + 5
    x = np.array([0, 1, n - 1, 2**33])
    out = permute(x, n, 7)
    assert np.array_equal(out, _permute_network(x, n, (n - 1).bit_length(), 7))
    assert ((out >= 0) & (out < n)).all()


def test_read_ahead_gives_the_spans_the_shuffle_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packing, "SHUFFLE_AHEAD", 50)  # small: requests straddle the read-ahead
    rng = np.random.default_rng(5)
    members = (rng.integers(20, 900, 37).astype(np.uint16), rng.integers(1, 9, 1000).astype(np.uint16))
    streams = Streams(names=("a", "b"), doc_lengths=members, seed=3, unit="tokens")
    plain = Streams(names=("a", "b"), doc_lengths=members, seed=3, unit="tokens")
    at = [0, 0]
    for _ in range(300):  # mostly forward, as the packer asks; sometimes back, across epochs, or large
        k = int(rng.integers(0, 2))
        count = int(rng.choice([1, 7, 30, 49, 50, 51, 120]))
        at[k] = max(0, at[k] + int(rng.integers(-60, 40)))
        got = streams.lengths(k, at[k], count)
        assert np.array_equal(got, plain._shuffled(k, at[k], count))
        assert not got.flags.writeable  # a view of the read-ahead: nobody may change it
        at[k] += count
    assert streams._ahead
    copy = pickle.loads(pickle.dumps(streams))  # what a --processes worker gets
    assert copy.names == streams.names and copy.means == streams.means and not copy._ahead
    assert all(np.array_equal(a, b) for a, b in zip(copy.doc_lengths, members, strict=True))
    assert np.array_equal(copy.lengths(1, 5, 20), plain._shuffled(1, 5, 20))


@pytest.mark.parametrize("inserts", [0, 1, 5, 64, 65, 300])
def test_insert_sorted_equals_np_insert(inserts: int) -> None:
    rng = np.random.default_rng(inserts)
    values = np.cumsum(rng.integers(1, 9, 1000))
    at = np.sort(rng.integers(0, values.size + 1, inserts))
    new = rng.integers(0, 10**6, inserts)
    assert np.array_equal(_insert_sorted(values, at, new), np.insert(values, at, new))


@pytest.mark.parametrize("dtype", [np.uint16, np.int64])
def test_position_deltas_round_trip_with_either_component_dtype(dtype: type) -> None:
    rng = np.random.default_rng(3)
    component = rng.integers(0, 5, 4000).astype(dtype)
    position = np.zeros(4000, np.int64)
    for k in range(5):  # non-decreasing positions per component, as plans have them
        sel = component == k
        position[sel] = np.cumsum(rng.integers(0, 40, int(sel.sum())))
    one_rank = np.array([position.size])
    delta = position_deltas(component, position, one_rank)
    assert np.array_equal(position_sums(component, delta), position)
    assert np.array_equal(delta, position_deltas(component.astype(np.int64), position, one_rank))


@pytest.mark.parametrize("arr", [
    np.zeros(0, np.int64),
    np.arange(12, dtype=np.int64).reshape(3, 4),
    np.linspace(0, 1, 7).reshape(7, 1),
    np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    np.zeros(5, dtype=[("file", "<u4"), ("record", "<u8"), ("token_offset", "<u8")]),
])
def test_npy_files_are_the_bytes_of_np_save(tmp_path: Path, arr: np.ndarray) -> None:
    from mixtera.planner.compile.writer import _write_npy, npy_bytes

    assert _write_npy(tmp_path / "a.npy", arr).read_bytes() == npy_bytes(np.ascontiguousarray(arr))


def test_read_ahead_stops_at_the_end_of_the_epoch() -> None:
    # A small component read ahead SHUFFLE_AHEAD positions would shuffle thousands of epochs per
    # call (the many-rank job's feedback rewrite took seconds for a 60-document component).
    streams = Streams(names=("a",), doc_lengths=(np.arange(1, 61, dtype=np.uint16),), seed=3, unit="tokens")
    streams.lengths(0, 70, 5)
    first, spans = streams._ahead[0]
    assert (first, spans.size) == (70, 50)  # to the end of epoch 1, not SHUFFLE_AHEAD
    assert np.array_equal(streams.lengths(0, 118, 4), streams._shuffled(0, 118, 4))
