"""The compiler's fast paths give exactly what the plain computations they replace give."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile import kernels, packing
from mixtera.planner.compile.packing import Streams
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


def _plain_pieces(lens: np.ndarray, consumed: int, quota: np.ndarray) -> np.ndarray:
    """(position, start, length, span, offset, step) of every piece: the stream from ``consumed``
    on, cut at every document end and every step end."""
    doc_end = np.cumsum(lens)
    step_end = consumed + np.cumsum(quota)
    cuts = np.union1d(doc_end, step_end)
    cuts = cuts[(cuts > consumed) & (cuts <= step_end[-1])]
    begin = np.concatenate([[consumed], cuts[:-1]])
    doc = np.searchsorted(doc_end, begin, side="right")
    step = np.searchsorted(step_end, begin, side="right")
    step_begin = np.concatenate([[consumed], step_end])[step]
    doc_begin = doc_end[doc] - lens[doc]
    return np.stack([doc, begin - doc_begin, cuts - begin, lens[doc], begin - step_begin, step])


@pytest.mark.parametrize("seed", range(6))
def test_token_pieces_cut_the_stream_at_document_and_step_ends(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps, k_count = 9, 3
    quotas = rng.integers(0, 400, (steps, k_count)) * (rng.random((steps, k_count)) < 0.7)
    lens = [rng.integers(1, int(rng.choice([3, 50, 900])), 2000) for _ in range(k_count)]
    consumed = np.array([int(rng.integers(0, x[0])) for x in lens])
    position = rng.integers(0, 10**6, k_count)
    first = np.concatenate([[0], np.cumsum([x.size for x in lens])])
    pos, start, length, span, offset, counts, new_pos, new_consumed = kernels.token_pieces(
        np.concatenate(lens), first, position, consumed, quotas)
    at = 0
    for k in range(k_count):
        plain = _plain_pieces(lens[k], int(consumed[k]), quotas[:, k])
        n = plain.shape[1]
        got = np.stack([pos[at: at + n] - position[k], start[at: at + n], length[at: at + n],
                        span[at: at + n], offset[at: at + n]])
        assert np.array_equal(got, plain[:5])
        assert np.array_equal(counts[k], np.bincount(plain[5], minlength=steps))
        last_doc, last_end = plain[0, -1], plain[1, -1] + plain[2, -1]
        whole = last_end == lens[k][last_doc]  # the block ends on a document's end
        assert (new_pos[k] - position[k], new_consumed[k]) == (last_doc + whole, 0 if whole else last_end)
        at += n
    assert at == pos.size


@pytest.mark.parametrize("seed", range(6))
def test_the_interleave_is_a_stable_sort_of_the_pieces_buckets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    steps, k_count = 7, 4
    counts = rng.integers(0, 30, (k_count, steps))
    quotas = np.ascontiguousarray((counts * rng.integers(1, 50, (k_count, steps))).T)
    offset = np.concatenate([np.sort(rng.integers(0, max(q, 1), c)) for c, q in
                             zip(counts.ravel(), quotas.T.ravel(), strict=True)])
    step = np.concatenate([np.full(c, s) for c, s in zip(counts.ravel(), np.tile(np.arange(steps), k_count),
                                                          strict=True)]).astype(np.int64)
    n = counts.sum(axis=0)[step]
    component = np.repeat(np.arange(k_count), counts.sum(axis=1))
    bucket = np.minimum((offset / quotas[step, component] * n).astype(np.int64), n - 1)
    plain = np.lexsort((np.arange(step.size), bucket, step))  # by step, then bucket, then piece
    assert np.array_equal(kernels.interleave(counts, offset, quotas), plain)


@pytest.mark.parametrize("seq_len, batch", [(7, 1), (64, 3), (1000, 2)])
def test_sequences_are_cut_at_every_multiple_of_seq_len(seq_len: int, batch: int) -> None:
    rng = np.random.default_rng(seq_len)
    world, steps = 2, 3
    total = world * batch * seq_len
    m = min(40, total)  # pieces per step
    length = np.concatenate([rng.multinomial(total - m, np.ones(m) / m) + 1 for _ in range(steps)])
    counts = np.full((1, steps), m)  # one component: the merge keeps stream order
    offset = (np.cumsum(length) - length) - np.repeat(np.arange(steps) * total, m)
    span = length + rng.integers(0, 2, length.size) * 5  # some pieces end their document, some do not
    start = span - length
    cells, comp, pos, t_start, t_end = kernels.cut_sequences(
        counts, offset, np.full((steps, 1), total), np.zeros(length.size, np.uint16),
        np.arange(length.size), start, length, span, world, batch, seq_len)
    stop = np.cumsum(length)
    cuts = np.union1d(stop, np.arange(1, stop[-1] // seq_len + 1) * seq_len)
    begin = np.concatenate([[0], cuts[:-1]])
    piece = np.searchsorted(stop, begin, side="right")
    assert np.array_equal(pos, piece)
    assert np.array_equal(t_start, begin - (stop - length)[piece] + start[piece])
    plain_end = cuts - (stop - length)[piece] + start[piece]
    assert np.array_equal(t_end, np.where(plain_end == span[piece], 0, plain_end))
    assert np.array_equal(cells.ravel(), np.bincount(begin // (seq_len * batch), minlength=steps * world))
    assert comp.dtype == np.uint16 and not comp.any()


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
