"""Mixtures over WebDataset shards: samples mode mixes them with text, `where` on image columns,
and what unit = "tokens" says about image-text samples (whole-sample packing:
test_whole_samples.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mixtera.planner.compile.pipeline import compile_file
from mixtera.planner.index import build_index, load_index, parse_config
from mixtera.planner.mixture.spec import parse_spec
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.plan import Plan
from tests.helpers.shards import mixed_corpus, mixture_toml


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    tmp = tmp_path_factory.mktemp("wdsplan")
    cfg = parse_config(f'[index]\ntext = ["text", "txt"]\ntokenizer = "{tiny_tokenizer}"\n')
    build_index(mixed_corpus(tmp / "corpus"), tmp / "idx", cfg)
    return tmp / "idx"


def _compile(tmp: Path, toml: str) -> Plan:
    (tmp / "mix.toml").write_text(toml)
    compile_file(tmp / "mix.toml", tmp / "plan")
    return Plan.open(tmp / "plan")


def test_samples_mode_mixes_shards_with_text_exactly(index: Path, tmp_path: Path) -> None:
    plan = _compile(tmp_path, mixture_toml(index, {"img": 0.3, "text": 0.7}, batch_size=5, steps=6))
    quotas = np.load(tmp_path / "plan" / "quotas.npy")
    assert quotas.tolist() == [[3, 7]] * 6  # 30% of 10 samples per step, exact
    assert plan.unit == "samples"
    plan.close()


def test_where_on_image_columns(index: Path, tmp_path: Path) -> None:
    rows = load_index(index).samples.to_pylist()
    wide = sum(1 for r in rows if (r["image_width"] or 0) >= 32)
    toml = mixture_toml(index, {}, batch_size=2, steps=2) + (
        '[components.wide]\nwhere = "image_width >= 32"\nweight = 0.5\n'
        '[components.text]\nwhere = "images == 0"\nweight = 0.5\n')
    plan = _compile(tmp_path, toml)
    (wide_c, _) = plan.components
    assert 0 < wide < 24 and wide_c.rows == wide
    plan.close()


def test_tokens_over_image_samples_needs_image_tokens(index: Path, tmp_path: Path) -> None:
    toml = mixture_toml(index, {"img": 0.5, "text": 0.5}, unit="tokens", seq_len=64, batch_size=2)
    with pytest.raises(ConfigError, match=r"(?s)mixture.image_tokens: component 'img' matches 24 samples "
                       r"with images.*set image_tokens = N under \[mixture\]"):
        _compile(tmp_path, toml)


def test_tokens_over_the_text_of_a_mixed_index(index: Path, tmp_path: Path) -> None:
    plan = _compile(tmp_path, mixture_toml(index, {"text": 1.0}, unit="tokens", seq_len=32, batch_size=2))
    assert plan.unit == "tokens" and plan.components[0].rows == 30
    plan.close()


@pytest.mark.parametrize(("extra", "seq", "message"), [
    ("image_tokens = 0\n", 64, "mixture.image_tokens: must be >= 1"),
    ("image_tokens = 100\n", 64, "100 does not fit in one sequence of seq_len = 64"),
])
def test_image_tokens_is_checked(index: Path, extra: str, seq: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec(mixture_toml(index, {"text": 1.0}, unit="tokens", seq_len=seq, extra=extra))


def test_image_tokens_needs_the_tokens_unit(index: Path) -> None:
    with pytest.raises(ConfigError, match="mixture.image_tokens: only applies with unit = 'tokens'"):
        parse_spec(mixture_toml(index, {"text": 1.0}, extra="image_tokens = 4\n"))
