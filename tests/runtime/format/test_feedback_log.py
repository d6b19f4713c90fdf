"""The feedback log: records survive crashes as whole records or not at all; ranks are summed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from mixtera.planner.feedback.orchestrate import read_history
from mixtera.planner.feedback.rewrite import PlanContext
from mixtera.runtime.errors import PlanError
from mixtera.runtime.feedback import FeedbackReporter
from mixtera.runtime.format.feedback_log import HEADER_SIZE, LogWriter, encode_record, read_log
from mixtera.runtime.format.plan_dir import log_path
from tests.helpers.feedback_plans import make_plan

FP = "ab" * 16


def _write(path: Path, steps: range, k: int = 3) -> None:
    with LogWriter(path, k, FP, fsync=False) as w:
        for s in steps:
            w.append(s, 0, np.arange(k) + s, np.full(k, 0.5 * s))


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "log.bin"
    _write(path, range(5))
    recs = read_log(path, 3, FP)
    assert list(recs.step) == [0, 1, 2, 3, 4] and recs.torn_bytes == 0
    assert np.array_equal(recs.tokens[2], [2, 3, 4]) and recs.loss_sum[4][0] == 2.0


@pytest.mark.parametrize("cut", [1, 7, 20, 40], ids=lambda c: f"cut-{c}-bytes")
def test_a_torn_tail_is_never_read_and_is_truncated_before_the_next_append(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "log.bin"
    _write(path, range(3))
    whole = path.stat().st_size
    with open(path, "ab") as f:  # a crash in the middle of writing record 3
        f.write(encode_record(3, 0, np.ones(3), np.ones(3))[:cut])
    recs = read_log(path, 3, FP)
    assert list(recs.step) == [0, 1, 2] and recs.torn_bytes == cut and recs.valid_bytes == whole
    _write(path, range(3, 5))
    recs = read_log(path, 3, FP)
    assert list(recs.step) == [0, 1, 2, 3, 4] and recs.torn_bytes == 0


def _flip(path: Path, record: int, records: int, at: int = 12) -> bytes:
    data = bytearray(path.read_bytes())
    size = (len(data) - HEADER_SIZE) // records
    data[HEADER_SIZE + record * size + at] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("at", [0, 5, 12, 40], ids=lambda a: f"byte-{a}")
def test_a_corrupt_record_before_the_end_is_an_error_and_the_log_is_kept(tmp_path: Path, at: int) -> None:
    path = tmp_path / "log.bin"
    _write(path, range(4))
    damaged = _flip(path, 2, 4, at)  # record 2 of 4: records 3 would be lost by a repair
    size = (len(damaged) - HEADER_SIZE) // 4
    with pytest.raises(PlanError, match=rf"log.bin: record 2 \(at byte {HEADER_SIZE + 2 * size}\)") as err:
        read_log(path, 3, FP)
    assert "restore the log" in err.value.hint
    with pytest.raises(PlanError, match="record 2"):  # the next FeedbackReporter start
        LogWriter(path, 3, FP, fsync=False)
    assert path.read_bytes() == damaged  # nothing truncated


def test_a_corrupt_last_record_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.bin"
    _write(path, range(4))
    _flip(path, 3, 4)  # e.g. a crash left the last record's bytes unwritten
    recs = read_log(path, 3, FP)
    assert list(recs.step) == [0, 1, 2] and recs.torn_bytes > 0
    _write(path, range(3, 5))
    assert list(read_log(path, 3, FP).step) == [0, 1, 2, 3, 4]


def test_a_log_of_another_plan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.bin"
    _write(path, range(2))
    with pytest.raises(PlanError, match="belongs to another plan"):
        read_log(path, 3, "cd" * 16)
    with pytest.raises(PlanError, match="4 domains"):
        read_log(path, 4, FP)


def test_the_last_record_of_a_step_wins(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, steps=400, segment_steps=50, refit=200)
    with FeedbackReporter(plan, rank=0, fsync=False) as fb:
        for s in (0, 1, 2, 1):  # a resumed job reports step 1 again
            fb.report(s, tokens=[s + 1, 0, 0, 0], loss_sum=[10.0 * (s + 1) + len(str(s)), 0, 0, 0])
        fb.report(1, tokens=[5, 0, 0, 0], loss_sum=[99.0, 0, 0, 0])
    hist = read_history(PlanContext.open(plan), 4)
    assert list(hist.present) == [True, True, True, False]
    assert hist.tokens[1, 0] == 5 and hist.loss_sum[1, 0] == 99.0


def _rank_main(rank: int, plan: str, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    with FeedbackReporter(plan, fsync=False) as fb:
        for s in range(3):
            fb.report(s, tokens=np.array([1, 2, 3, 4]) * (rank + 1) + s,
                      loss_sum=np.array([0.5, 1.0, 1.5, 2.0]) * (rank + 1))
    dist.destroy_process_group()


def test_reports_are_summed_over_data_parallel_ranks(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, steps=400, segment_steps=50, refit=200)
    init = f"file://{tmp_path / 'rendezvous'}"
    os.environ.pop("RANK", None)
    mp.start_processes(_rank_main, args=(str(plan), init), nprocs=2, join=True, start_method="fork")
    manifest_fp = PlanContext.open(plan).manifest["fingerprint"]
    recs = read_log(log_path(plan), 4, manifest_fp)
    assert list(recs.step) == [0, 1, 2]
    assert np.array_equal(recs.tokens[1], np.array([1, 2, 3, 4]) * 3 + 2)
    np.testing.assert_array_equal(recs.loss_sum[0], [1.5, 3.0, 4.5, 6.0])
