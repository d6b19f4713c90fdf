"""Plans too large for the machine are refused before they are built, with the estimate in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixtera.planner.compile import estimate
from mixtera.planner.compile.pipeline import compile_file
from mixtera.runtime.errors import ConfigError
from tests.helpers.plan_checks import write_mixture
from tests.helpers.synthetic_index import write_synthetic_index


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_index(tmp_path_factory.mktemp("idx") / "index", 300, tokens=(5, 100))


@pytest.fixture(autouse=True)
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estimate, "physical_memory", lambda: 8 * 2**30)  # the same answer on any CI box


def _compile(tmp: Path, index: Path, **overrides: object) -> None:
    compile_file(write_mixture(tmp / "mix.toml", index, **overrides), tmp / "plan")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"world_size": 2**40}, "topology.world_size: it must be at most 4,294,967,295"),
    ({"seq_len": 2**33}, "topology.seq_len: it must be at most 4,294,967,295"),
    ({"steps": 5 * 2**33}, "mixture.steps: segments (steps / segment_steps) must be at most"),
])
def test_values_beyond_the_plan_format_are_refused(tmp_path: Path, index: Path, overrides: dict,
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _compile(tmp_path, index, **overrides)


@pytest.mark.parametrize("overrides", [{"world_size": 2**31}, {"seq_len": 2**31}, {"steps": 10**9},
                                       {"unit": "samples", "steps": 10**9}])
def test_a_plan_larger_than_the_memory_is_refused_with_its_estimate(tmp_path: Path, index: Path,
                                                                  overrides: dict) -> None:
    with pytest.raises(ConfigError, match=r"too large to compile here: about [\d,]+ entries, at least .* of "
                                          r"memory while compiling, and this machine has 8.0 GiB") as err:
        _compile(tmp_path, index, **overrides)
    assert "world_size" in (err.value.hint or "")
    assert not (tmp_path / "plan").exists()


def test_a_plan_larger_than_the_free_disk_is_refused(tmp_path: Path, index: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estimate, "free_disk", lambda out: 100)
    with pytest.raises(ConfigError, match="does not fit on its file system: about .* and 0.0 MiB are free"):
        _compile(tmp_path, index)
    assert not (tmp_path / "plan").exists()


def test_an_ordinary_plan_passes(tmp_path: Path, index: Path) -> None:
    _compile(tmp_path, index)
    assert (tmp_path / "plan" / "manifest.json").is_file()
