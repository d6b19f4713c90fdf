"""[validation]: a fixed amount per component, compiled into PLAN/validation/, disjoint from training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile.elastic import repartition
from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.mixture.spec import load_spec, parse_spec
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.plan import Plan
from tests.helpers.plan_checks import (
    DEFAULTS,
    MIXTURE,
    all_entries,
    assert_streams_contiguous,
    per_step_units,
    write_mixture,
)
from tests.helpers.synthetic_index import write_synthetic_index

VALIDATION = "\n[validation]\ntokens_per_component = {amount}\nbatch_size = {batch}\n"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_index(tmp_path_factory.mktemp("idx") / "index", 600, tokens=(5, 100), seed=3)


def _compile(tmp: Path, index: Path, *, amount: int = 1000, batch: int = 2, **overrides: object) -> Path:
    tail = VALIDATION.format(amount=amount, batch=batch) if amount else ""
    tmp.mkdir(parents=True, exist_ok=True)
    compile_file(write_mixture(tmp / "mix.toml", index, tail=tail, **overrides), tmp / "plan")
    return tmp / "plan"


def _rows(plan: Path) -> set[tuple[int, int]]:
    samples = np.load(plan / "samples.npy")
    return set(zip(samples["file"].tolist(), samples["record"].tolist(), strict=True))


def test_validation_is_its_own_plan_with_equal_exact_shares(tmp_path: Path, index: Path) -> None:
    plan = _compile(tmp_path, index)
    meta = json.loads((plan / "manifest.json").read_bytes())["validation"]
    with Plan.open(plan / "validation") as val:
        step_units = val.world_size * val.batch_size * val.seq_len  # 4 ranks x 2 x 64 = 512
        assert (val.world_size, val.batch_size) == (4, 2)
        assert val.steps == meta["steps"] == -(-4 * 1000 // step_units)  # 4 components x 1000 tokens
        units = per_step_units(val)
        assert np.all(units.sum(axis=1) == step_units)
        assert units.sum(axis=0).tolist() == meta["held_out"]
        assert min(meta["held_out"]) >= 1000
        # every prefix of steps gives each component its equal share, within one token
        drift = np.abs(np.cumsum(units, axis=0) - np.cumsum(np.full(units.shape, step_units / 4), axis=0))
        assert drift.max() < 1.0
        assert_streams_contiguous(val)
        training = json.loads((plan / "manifest.json").read_bytes())
        assert val.manifest["validation_of"] == training["fingerprint"]


def test_held_out_samples_never_appear_in_training(tmp_path: Path, index: Path) -> None:
    without = _compile(tmp_path / "a", index, amount=0)
    plan = _compile(tmp_path / "b", index, steps=200)  # many epochs of every component
    train, val = _rows(plan), _rows(plan / "validation")
    assert val and not train & val
    assert train | val == _rows(without)  # nothing else is dropped
    # A plan replays only rows of its own sample table, however many epochs it runs.
    with Plan.open(plan) as p:
        assert min(c["epochs"] for c in p.manifest["components"]) > 1


def test_the_same_mixture_gives_byte_identical_validation_plans(tmp_path: Path, index: Path) -> None:
    a, b = _compile(tmp_path / "a", index), _compile(tmp_path / "b", index)
    for name in ("manifest.json", "samples.npy", "quotas.npy", "rank-00000.bin", "rank-00003.bin"):
        assert (a / "validation" / name).read_bytes() == (b / "validation" / name).read_bytes(), name


def test_a_component_too_small_for_its_share_is_an_error_with_a_hint(tmp_path: Path, index: Path) -> None:
    with pytest.raises(ConfigError, match="validation share of .* would leave no sample for training") as err:
        _compile(tmp_path, index, amount=200_000)
    assert "tokens_per_component" in err.value.hint
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize(("table", "key", "message"), [
    ("[validation]\nsamples_per_component = 5\nbatch_size = 2", "validation.samples_per_component",
     "does not fit unit = 'tokens'"),
    ("[validation]\ntokens_per_component = 5", "validation.batch_size", "is required"),
    ("[validation]\ntokens_per_component = 0\nbatch_size = 2", "validation.tokens_per_component", ">= 1"),
    ("[validation]\ntokens_per_component = 5\nbatch_size = 2\nshuffle = true", "validation.shuffle",
     "unknown key"),
])
def test_bad_validation_tables_name_the_key(index: Path, table: str, key: str, message: str) -> None:
    text = MIXTURE.format(**{**DEFAULTS, "index": index, "tail": table})
    with pytest.raises(ConfigError, match=message) as err:
        parse_spec(text, file="mix.toml")
    assert key in str(err.value)


def test_elastic_repartition_carries_the_validation_split(tmp_path: Path, index: Path) -> None:
    plan = _compile(tmp_path, index)
    new = tmp_path / "new"
    repartition(plan, load_spec(tmp_path / "mix.toml"), new, world_size=2, from_step=5)
    meta = json.loads((new / "manifest.json").read_bytes())["validation"]
    with Plan.open(new / "validation") as val, Plan.open(plan / "validation") as old:
        assert (val.world_size, val.batch_size, meta["batch_size"]) == (2, 4, 4)
        assert meta["fingerprint"] == val.fingerprint != old.fingerprint
        a, b = all_entries(old), all_entries(val)
        for field in ("step", "component", "position", "token_start", "token_end"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_inspect_shows_the_validation_split(tmp_path: Path, index: Path) -> None:
    from typer.testing import CliRunner

    from mixtera.cli.app import app

    plan = _compile(tmp_path, index)
    result = CliRunner().invoke(app, ["inspect", str(plan)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    held = json.loads((plan / "manifest.json").read_bytes())["validation"]["held_out"]
    line = next(row for row in result.output.splitlines() if "validation" in row)
    assert f"validation/: {-(-4 * 1000 // 512)} steps x batch 2" in line  # 4 components x 1000 tokens
    assert f"web {held[0]:,}" in line
