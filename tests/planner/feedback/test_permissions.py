"""Published plans, versions and indexes get the usual modes (0o666 / 0o777 masked by the umask).

``tempfile`` creates private files (0o600) and folders (0o700); a plan or index published by renaming
one would be unreadable to the other users of a cluster.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import mixtera.runtime.versions as versions
from mixtera.planner.feedback.orchestrate import run_pending
from mixtera.runtime.atomic import staging_dir, temp_dir, temp_file, write_atomic
from mixtera.runtime.errors import PlanError
from mixtera.runtime.format.plan_dir import version_path
from tests.helpers.feedback_plans import make_plan, run_job


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_and_staged_folders_follow_the_umask(tmp_path: Path, umask: int) -> None:
    write_atomic(tmp_path / "a.json", b"{}")
    assert _mode(tmp_path / "a.json") == 0o666 & ~umask
    with staging_dir(tmp_path / "plan") as stage:
        write_atomic(stage / "manifest.json", b"{}")
    assert _mode(tmp_path / "plan") == 0o777 & ~umask
    assert _mode(tmp_path / "plan" / "manifest.json") == 0o666 & ~umask
    fd, path = temp_file(tmp_path, prefix=".x.")
    os.close(fd)
    assert _mode(path) == 0o666 & ~umask and path.name.startswith(".x.") and path.suffix == ".tmp"
    assert _mode(temp_dir(tmp_path, prefix=".y.")) == 0o777 & ~umask


def test_temporary_names_never_collide(tmp_path: Path) -> None:
    names = set()
    for _ in range(200):
        fd, path = temp_file(tmp_path, prefix=".x.")
        os.close(fd)
        names.add(path.name)
    assert len(names) == 200 and len(list(tmp_path.iterdir())) == 200


def test_a_compiled_and_rewritten_plan_is_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        plan = make_plan(tmp_path, steps=600, segment_steps=50, refit=200)
        run_job(plan, range(240))
        run_pending(plan)
    finally:
        os.umask(old)
    assert version_path(plan, 1).is_dir()
    for root in (plan, tmp_path / "index"):
        for path in [root, *root.rglob("*")]:
            want = 0o755 if path.is_dir() else 0o644
            assert _mode(path) == want, f"{path} has mode {oct(_mode(path))}, not {oct(want)}"


def test_a_rank_that_must_publish_keep_into_a_read_only_plan_gets_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = make_plan(tmp_path, steps=400, segment_steps=50, refit=200, wait=0.05)
    if os.geteuid() == 0:  # root writes anywhere: the stage's mkdir fails as it does for a user
        def denied(parent: Path, prefix: str, suffix: str = "") -> Path:
            raise PermissionError(13, "Permission denied", str(parent))

        monkeypatch.setattr(versions, "temp_dir", denied)
    plan.chmod(0o555)
    try:
        with pytest.raises(PlanError, match=r"cannot publish decision 1 \(Permission denied\)") as err:
            run_job(plan, range(300))  # nobody decides 1: rank 0 times out and must publish keep
    finally:
        plan.chmod(0o755)
    assert str(plan) in str(err.value) and "writable" in err.value.hint
