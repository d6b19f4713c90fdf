"""Publishing folders and lock files (runtime/atomic.py): crash points, leftovers, planted links."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mixtera.runtime import atomic
from mixtera.runtime.atomic import exclusive_lock, open_lock, recover, staging_dir
from mixtera.runtime.errors import MixteraUserError


def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "manifest.json").write_text(content)
    (path / "data.bin").write_bytes(content.encode() * 100)
    return path


def _crash_publish(final: Path, *, exchange: bool, crash_at: str) -> subprocess.CompletedProcess[str]:
    """Re-publish ``final`` in a child process that dies (os._exit, no cleanup) at ``crash_at``:
    "exchange" (just before the swap), "after-exchange" (old folder not yet removed), "between"
    (fallback: after moving the old folder aside), "trash" (fallback: while removing the old one)."""
    script = textwrap.dedent(f"""
        import os, shutil
        from pathlib import Path
        from mixtera.runtime import atomic

        crash_at = {crash_at!r}
        real_rename, real_rmtree, real_exchange = os.rename, shutil.rmtree, atomic.exchange
        renames = []

        def exchange(a, b):
            if crash_at == "exchange":
                os._exit(9)
            if not {exchange!r}:
                return False
            real_exchange(a, b)
            if crash_at == "after-exchange":
                os._exit(9)
            return True

        def rename(a, b):
            renames.append(b)
            if crash_at == "between" and len(renames) == 2:
                os._exit(9)
            real_rename(a, b)

        def rmtree(p, *args, **kw):
            if crash_at == "trash":
                os._exit(9)
            real_rmtree(p, *args, **kw)

        atomic.exchange = exchange
        os.rename = rename
        atomic.shutil.rmtree = rmtree
        with atomic.staging_dir(Path({str(final)!r})) as stage:
            (stage / "manifest.json").write_text("new")
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def _siblings(final: Path) -> list[str]:
    return sorted(n for n in os.listdir(final.parent) if n != final.name)


@pytest.mark.parametrize(("exchange", "crash_at", "expect"), [
    (True, "exchange", "old"), (True, "after-exchange", "new"),
    (False, "between", None), (False, "trash", "new")])
def test_a_killed_publish_leaves_a_complete_folder_and_recover_tidies(
        tmp_path: Path, exchange: bool, crash_at: str, expect: str | None) -> None:
    final = _folder(tmp_path / "plan", "old")
    proc = _crash_publish(final, exchange=exchange, crash_at=crash_at)
    assert proc.returncode == 9, proc.stderr
    if expect is None:  # the fallback's window between its two renames: the old copy sits aside
        assert not final.exists()
        assert sorted(n.rsplit(".", 1)[1] for n in _siblings(final)) == ["old", "staging"]
    else:
        assert (final / "manifest.json").read_text() == expect
    assert _siblings(final), "the killed run left its temporary folder"
    recover(final)
    assert _siblings(final) == []
    want = expect or "old"
    assert (final / "manifest.json").read_text() == want
    if want == "old":
        assert (final / "data.bin").read_bytes() == b"old" * 100


def test_publish_replaces_through_an_exchange_and_leaves_nothing_else(tmp_path: Path) -> None:
    final = _folder(tmp_path / "plan", "old")
    with staging_dir(final) as stage:
        (stage / "manifest.json").write_text("new")
    assert os.listdir(final) == ["manifest.json"] and (final / "manifest.json").read_text() == "new"
    assert _siblings(final) == []


def test_publish_without_exchange_keeps_the_guarantee(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    final = _folder(tmp_path / "plan", "old")
    with staging_dir(final) as stage:
        (stage / "manifest.json").write_text("new")
    assert (final / "manifest.json").read_text() == "new" and _siblings(final) == []


def test_recover_leaves_live_owners_other_hosts_and_foreign_names(tmp_path: Path) -> None:
    final = _folder(tmp_path / "plan", "x")
    host = atomic._owner().rsplit(".", 1)[0]
    live = tmp_path / f".plan.{host}.{os.getppid()}.{'a' * 12}.staging"
    elsewhere = tmp_path / f".plan.other-host.1.{'b' * 12}.staging"
    user = tmp_path / ".plan.notes"
    for p in (live, elsewhere, user):
        p.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f".plan.{host}.{dead}.{'c' * 12}.staging"
    stale_tmp = tmp_path / f".plan.{host}.{dead}.{'d' * 12}.tmp"
    stale.mkdir()
    stale_tmp.write_bytes(b"x")
    assert sorted(recover(final)) == sorted([stale.name, stale_tmp.name])
    assert live.exists() and elsewhere.exists() and user.exists()


def test_an_unwritable_output_folder_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: let the stage's mkdir fail as it does for users

        def denied(folder: Path, prefix: str, suffix: str = ".staging") -> Path:
            raise PermissionError(13, "Permission denied", str(folder))

        monkeypatch.setattr(atomic, "temp_dir", denied)
    parent.chmod(0o555)
    try:
        with pytest.raises(MixteraUserError, match="permission denied") as err, staging_dir(parent / "plan"):
            pass
        assert str(parent) in str(err.value)
    finally:
        parent.chmod(0o755)


def test_a_symlink_planted_as_lock_is_refused_and_its_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    lock = tmp_path / ".build.lock"
    lock.symlink_to(target)
    with pytest.raises(MixteraUserError, match="symbolic link"):
        open_lock(lock)
    with pytest.raises(MixteraUserError, match="symbolic link"), exclusive_lock(lock):
        pass
    assert target.read_text() == "keep me"


def test_a_hard_link_or_fifo_planted_as_lock_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    os.link(target, tmp_path / "lock")
    with pytest.raises(MixteraUserError, match="hard links"):
        open_lock(tmp_path / "lock")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(MixteraUserError, match="not a regular file"):
        open_lock(tmp_path / "fifo")  # must not block on opening the FIFO either
    assert target.read_text() == "keep me"


def test_an_existing_lock_file_is_not_truncated(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    lock.write_text("123\n")
    os.close(open_lock(lock))
    assert lock.read_text() == "123\n"


def test_an_unwritable_output_is_refused_before_any_work(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    with pytest.raises(MixteraUserError, match=f"cannot write {tmp_path}/ro/new/plan: permission denied"):
        atomic.check_writable(tmp_path / "ro" / "new" / "plan")
    atomic.check_writable(tmp_path / "new" / "plan")  # missing folders under a writable one are fine
