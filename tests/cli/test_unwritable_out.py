"""`--out` in a folder this user cannot write: exit 1, the path and a hint, for index and compile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mixtera.runtime import atomic
from tests.helpers.index_helpers import make_corpus, run_cli
from tests.helpers.plan_checks import write_mixture
from tests.helpers.synthetic_index import write_synthetic_index


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the stage's mkdir fails as it does for a user

        def denied(parent: Path, prefix: str, suffix: str = ".staging") -> Path:
            raise PermissionError(13, "Permission denied", str(parent))

        monkeypatch.setattr(atomic, "temp_dir", denied)
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def _refused(result, folder: Path) -> None:  # noqa: ANN001 - click's Result
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert result.stderr.lstrip().startswith("error: cannot write ") and "permission denied" in result.stderr
    assert str(folder) in result.stderr and "hint:" in result.stderr and "Traceback" not in result.stderr


def test_index_into_a_read_only_folder(tmp_path: Path, read_only: Path) -> None:
    make_corpus(tmp_path / "c")
    _refused(run_cli("index", tmp_path / "c", "--out", read_only / "idx", "-p", "1"), read_only)


def test_compile_into_a_read_only_folder(tmp_path: Path, read_only: Path) -> None:
    index = write_synthetic_index(tmp_path / "index", 200, tokens=(5, 100))
    mix = write_mixture(tmp_path / "mix.toml", index)
    _refused(run_cli("compile", mix, "--out", read_only / "plan"), read_only)
