"""FeedbackReporter.report refuses what the log cannot hold or ADO would misread, and writes nothing then."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixtera.runtime.errors import FeedbackError, MixteraUserError
from mixtera.runtime.feedback import FeedbackReporter
from mixtera.runtime.format.feedback_log import read_log
from mixtera.runtime.format.plan_dir import log_path
from mixtera.runtime.plan import read_manifest
from tests.helpers.feedback_plans import make_plan


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_plan(tmp_path_factory.mktemp("fb"), steps=200, segment_steps=50, refit=50, samples=800)


GOOD_TOKENS, GOOD_LOSS = [10, 20, 30, 40], [25.0, 40.0, 70.0, 100.0]


@pytest.mark.parametrize(("step", "tokens", "loss", "message"), [
    (-1, GOOD_TOKENS, GOOD_LOSS, r"report\(step=-1\): the step must be an integer in 0..199"),
    (200, GOOD_TOKENS, GOOD_LOSS, "in 0..199"),
    ("3", GOOD_TOKENS, GOOD_LOSS, "step='3'"),
    (3.0, GOOD_TOKENS, GOOD_LOSS, "step=3.0"),
    (3, [10, -1, 30, 40], GOOD_LOSS, "domain 1 has tokens = -1.0"),
    (3, [10, float("nan"), 30, 40], GOOD_LOSS, "domain 1 has tokens = nan"),
    (3, [10, 20, 1e30, 40], GOOD_LOSS, "domain 2 has tokens = 1e"),
    (3, GOOD_TOKENS, [25.0, float("inf"), 70.0, 100.0], "loss_sum = inf"),
    (3, GOOD_TOKENS, [25.0, 40.0, float("nan"), 100.0], "loss_sum = nan"),
    (3, GOOD_TOKENS, [-25.0, 40.0, 70.0, 100.0], "loss_sum = -25.0"),
    (3, GOOD_TOKENS[:3], GOOD_LOSS, "needs 4 values per domain"),
])
def test_bad_reports_are_refused_and_not_logged(plan: Path, step: object, tokens: list, loss: list,
                                                message: str) -> None:
    with FeedbackReporter(plan, rank=0, fsync=False) as fb:
        fb.report(0, tokens=GOOD_TOKENS, loss_sum=GOOD_LOSS)
        with pytest.raises(FeedbackError, match=message) as err:
            fb.report(step, tokens=np.array(tokens), loss_sum=np.array(loss))  # type: ignore[arg-type]
    assert isinstance(err.value, MixteraUserError) and err.value.hint
    assert set(read_log(log_path(plan), 4, read_manifest(plan)["fingerprint"]).step.tolist()) == {0}


def test_values_that_are_not_numbers_are_a_user_error(plan: Path) -> None:
    fb = FeedbackReporter(plan, rank=0, fsync=False)
    with fb, pytest.raises(FeedbackError, match="must be numbers"):
        fb.report(1, tokens=["a", 1, 2, 3], loss_sum=GOOD_LOSS)
