"""Plan rewriting end to end: a simulated job reports losses, ADO decisions rewrite future segments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mixtera.runtime.versions as versions
from mixtera.planner.feedback import rewrite
from mixtera.planner.feedback.orchestrate import feedback_lock, inprocess_rewriter, run_pending
from mixtera.planner.report import plan_report
from mixtera.runtime.errors import PlanError, StateError
from mixtera.runtime.feedback import FeedbackReporter
from mixtera.runtime.format.feedback_log import read_log
from mixtera.runtime.format.plan_dir import log_path, version_path
from mixtera.runtime.plan import Plan
from mixtera.runtime.versions import read_decision
from tests.helpers.feedback_plans import Replay, make_plan, run_job

STEPS, SEG, REFIT = 1200, 50, 200


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plan(tmp_path_factory.mktemp("fb"), steps=STEPS, segment_steps=SEG, refit=REFIT)


def _copy(plan: Path, tmp: Path, name: str = "plan") -> Path:
    dst = tmp / name
    shutil.copytree(plan, dst)
    return dst


def _governing_quotas(plan: Path, step: int) -> np.ndarray:
    manifest = json.loads((plan / "manifest.json").read_bytes())
    v = versions.VersionResolver(plan, manifest).data_version(step // SEG, wait=False)
    if v == 0:
        return np.load(plan / "quotas.npy")[step]
    d = read_decision(plan, v)
    return np.load(version_path(plan, v) / "quotas.npy")[step - d["first_step"]]


@pytest.fixture(scope="module")
def job(compiled: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The uninterrupted run: in-process rewrites from rank 0 at every refit point."""
    plan = _copy(compiled, tmp_path_factory.mktemp("job"))
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        counts, _ = run_job(plan, range(STEPS), reporter=fb)
    return plan, counts


def test_the_runtime_replays_what_the_decisions_recorded(job: tuple[Path, list[np.ndarray]]) -> None:
    plan, counts = job
    decisions = [read_decision(plan, v) for v in range(1, 6)]
    assert [d["action"] for d in decisions] == ["rewrite"] * 5
    assert [d["first_step"] for d in decisions] == [250, 450, 650, 850, 1050]
    assert all(d["fit"]["accepted"] for d in decisions)
    for step in range(STEPS):
        assert np.array_equal(counts[step], _governing_quotas(plan, step)), step
    # The weights moved away from the compiled mixture, and every record names its version.
    assert not np.allclose(decisions[-1]["weights"], [0.4, 0.3, 0.2, 0.1], atol=0.05)
    recs = read_log(log_path(plan), 4, json.loads((plan / "manifest.json").read_bytes())["fingerprint"])
    assert list(recs.step) == list(range(STEPS))
    assert recs.version[0] == 0 and recs.version[260] == 1 and recs.version[-1] == 5


def test_per_step_quotas_are_exact_for_the_new_weights(job: tuple[Path, list[np.ndarray]]) -> None:
    plan, _ = job
    total = 2 * 2 * 64
    for v in range(1, 6):
        q = np.load(version_path(plan, v) / "quotas.npy")
        w = np.load(version_path(plan, v) / "weights.npy")
        assert np.all(q.sum(axis=1) == total)
        carry = np.array(read_decision(plan, v)["segments"][0]["start_state"]["carry"])
        # Every prefix of steps is within one unit of its target (the carry in hand included).
        drift = np.abs(np.cumsum(q, axis=0) - np.cumsum(w * total, axis=0) - carry)
        assert drift.max() < 1.0


def _component_streams(plan_dir: Path) -> dict[int, list[tuple[int, int, int, int]]]:
    plan = Plan.open(plan_dir)
    replay = Replay(plan)
    out: dict[int, list[tuple[int, int, int, int]]] = {}
    for step in range(STEPS):
        for rank in range(plan.world_size):
            e = replay.entries(rank, step)
            cols = (e.component, e.position, e.token_start, e.token_end, e.doc_tokens)
            for c, p, s, t, d in zip(*cols, strict=True):
                out.setdefault(int(c), []).append((int(p), int(s), int(t), int(d)))
    plan.close()
    return out


def test_no_sample_is_repeated_or_skipped_across_rewrites(job: tuple[Path, list[np.ndarray]]) -> None:
    plan, _ = job
    for comp, entries in _component_streams(plan).items():
        pos, end, doc = entries[0][0], entries[0][2], entries[0][3]
        assert pos == 0 and entries[0][1] == 0
        for p, s, t, d in entries[1:]:
            if end < doc:  # the document continues where it stopped
                assert (p, s) == (pos, end), comp
            else:  # the next document of the stream starts at its beginning
                assert (p, s) == (pos + 1, 0), comp
            pos, end, doc = p, t, d


def test_resuming_after_a_rewrite_equals_the_uninterrupted_run(compiled: Path, tmp_path: Path,
                                                               job: tuple[Path, list[np.ndarray]]) -> None:
    plan = _copy(compiled, tmp_path)
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        _, _ = run_job(plan, range(530), reporter=fb)  # two rewrites published, then a crash
    # Resume from a checkpoint at step 480: steps 480..529 are replayed and reported again.
    seen = np.sum([_governing_quotas(plan, s) for s in range(480)], axis=0).astype(np.float64)
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        counts, _ = run_job(plan, range(480, STEPS), reporter=fb, seen=seen)
    ref_plan, ref_counts = job
    for i, step in enumerate(range(480, STEPS)):
        assert np.array_equal(counts[i], ref_counts[step])
    for v in range(1, 6):
        a = (version_path(plan, v) / "rank-00001.bin").read_bytes()
        assert a == (version_path(ref_plan, v) / "rank-00001.bin").read_bytes()
        assert read_decision(plan, v) == read_decision(ref_plan, v)


def test_a_crash_between_the_writes_of_a_rewrite_leaves_the_previous_plan(
        compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _copy(compiled, tmp_path)
    run_job(plan, range(REFIT))
    real = rewrite.write_durably

    def crash_after_two_files(files: dict[Path, bytes]) -> None:
        real(dict(list(files.items())[:2]))
        raise KeyboardInterrupt("simulated crash while writing the new version")

    monkeypatch.setattr(rewrite, "write_durably", crash_after_two_files)
    with pytest.raises(KeyboardInterrupt):
        run_pending(plan)
    monkeypatch.undo()
    assert not version_path(plan, 1).exists()
    assert list((plan / "versions").iterdir()) == []  # the staged folder went with the crash
    # A hard crash leaves a staged folder behind: readers never look at it.
    (plan / "versions" / ".v000001.abc.staging").mkdir()
    (plan / "versions" / ".v000001.abc.staging" / "rank-00000.bin").write_bytes(b"garbage")
    before = Plan.open(plan)
    assert before.segment(0, 4).version == 0
    outcomes, more = run_pending(plan)
    assert [o.action for o in outcomes] == ["rewrite"] and more
    assert Plan.open(plan).segment(1, 5).version == 1


def test_a_second_feedback_process_is_refused(compiled: Path, tmp_path: Path) -> None:
    plan = _copy(compiled, tmp_path)
    with feedback_lock(plan), pytest.raises(StateError, match="another feedback process"):
        run_pending(plan)
    run_pending(plan)  # released again


def test_a_rank_that_times_out_publishes_keep_for_everyone(compiled: Path, tmp_path: Path) -> None:
    root = tmp_path / "keep"
    root.mkdir()
    shutil.copytree(compiled.parent / "index", root / "index")
    plan = make_plan(root, steps=STEPS, segment_steps=SEG, refit=REFIT, wait=0.05)
    counts, _ = run_job(plan, range(300))  # nobody decides: segment 5 waits, then keeps
    d = read_decision(plan, 1)
    assert d["action"] == "keep" and d["data_version"] == 0 and "waited" in d["reason"]
    assert all(np.array_equal(counts[s], np.load(plan / "quotas.npy")[s]) for s in range(300))
    outcomes, _ = run_pending(plan)  # version 1 stays "keep"; version 2 cannot be decided yet
    assert outcomes == [] and read_decision(plan, 1)["action"] == "keep"
    run_job(plan, range(300, 400))
    outcomes, _ = run_pending(plan)
    assert [(o.version, o.action) for o in outcomes] == [(2, "rewrite")]
    assert read_decision(plan, 2)["based_on"] == 0


def test_on_missing_fail_raises_a_clear_error(compiled: Path, tmp_path: Path) -> None:
    root = tmp_path / "fail"
    root.mkdir()
    shutil.copytree(compiled.parent / "index", root / "index")
    plan = make_plan(root, steps=STEPS, segment_steps=SEG, refit=REFIT, wait=0.05, missing="fail")
    with pytest.raises(PlanError, match="did not appear within"):
        run_job(plan, range(300))


def test_a_concurrent_publish_of_the_same_version_loses_cleanly(tmp_path: Path) -> None:
    def build(text: str):
        def write(stage: Path) -> None:
            (stage / "decision.json").write_text(text)
        return write

    assert versions.publish_version(tmp_path, 3, build("first"))
    assert not versions.publish_version(tmp_path, 3, build("second"))
    assert (version_path(tmp_path, 3) / "decision.json").read_text() == "first"
    assert [p.name for p in (tmp_path / "versions").iterdir()] == ["v000003"]


def test_loss_proportional_weights_follow_the_mean_losses(compiled: Path, tmp_path: Path) -> None:
    root = tmp_path / "lp"
    root.mkdir()
    shutil.copytree(compiled.parent / "index", root / "index")
    plan = make_plan(root, steps=600, segment_steps=SEG, refit=REFIT,
                     dynamic='algorithm = "loss_proportional"\nrefit_every = 200\nwait_timeout_s = 30')
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        run_job(plan, range(600), reporter=fb)
    d = read_decision(plan, 1)
    mean = np.array(d["fit"]["mean_loss"])
    np.testing.assert_allclose(d["weights"], mean / mean.sum(), rtol=1e-12)
    w = np.load(version_path(plan, 1) / "weights.npy")
    assert np.all(w == w[0])


def test_plans_in_samples_are_rewritten_with_exact_sample_quotas(compiled: Path, tmp_path: Path) -> None:
    root = tmp_path / "samples"
    root.mkdir()
    shutil.copytree(compiled.parent / "index", root / "index")
    plan = make_plan(root, steps=600, segment_steps=SEG, refit=REFIT, unit="samples")
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        run_job(plan, range(600), reporter=fb)
    assert [read_decision(plan, v)["action"] for v in (1, 2)] == ["rewrite", "rewrite"]
    replay = Replay(Plan.open(plan))
    for step in range(600):
        per = np.zeros(4, np.int64)
        for rank in range(2):
            np.add.at(per, replay.entries(rank, step).component.astype(np.int64), 1)
        assert np.array_equal(per, _governing_quotas(plan, step)), step


def test_a_redistribute_component_drops_out_when_a_rewrite_would_exhaust_it(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, steps=STEPS, segment_steps=SEG, refit=REFIT, samples=1000,
                     wiki_exhausted="redistribute")
    with FeedbackReporter(plan, rank=0, on_refit=inprocess_rewriter(plan), fsync=False) as fb:
        counts, _ = run_job(plan, range(STEPS), reporter=fb)
    wiki = json.loads((plan / "manifest.json").read_bytes())["components"][3]
    used = np.cumsum([c[3] for c in counts])
    assert used[-1] <= wiki["size"]  # never past one epoch, although ADO wanted more of it
    gone = int(np.argmax(np.array([c[3] for c in counts]) == 0))
    assert gone > 250 and all(c[3] == 0 for c in counts[gone:])
    assert all(c.sum() == 256 for c in counts)  # the others took its share


def test_a_rewrite_records_its_step_arrays_checksums_and_readers_check_them(
    job: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:

    plan = _copy(job[0], tmp_path)
    assert set(read_decision(plan, 1)["checksums"]) == {"quotas.npy", "weights.npy"}
    plan_report(plan)  # intact: reads every version's arrays
    path = version_path(plan, 1) / "weights.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with Plan.open(plan) as p, pytest.raises(PlanError, match=r"v000001/weights.npy: its content hash"):
        p.step_array("weights.npy", 1)
    with pytest.raises(PlanError, match=r"weights.npy: its content hash differs"):
        plan_report(plan)
