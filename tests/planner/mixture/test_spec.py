"""Mixture TOML: the issue's example parses as documented; every bad input names file, key, fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixtera.planner.mixture.spec import MixtureSpec, load_spec, parse_spec
from mixtera.runtime.errors import ConfigError

EXAMPLE = """
[mixture]
index = "../index"          # relative to this file
seed = 1234
unit = "tokens"
steps = 2000
segment_steps = 100

[topology]
world_size = 8
batch_size = 16
seq_len = 2048

[components.web_en]
where = "language == 'en' and source in ['ccnet', 'web'] and quality >= 0.5"
weight = 0.5
on_exhausted = "repeat"

[components.code]
where = "source == 'code' and license in ['MIT', 'Apache-2.0']"
weight = 0.3

[components.other]
weight = 0.2
[components.other.components.de]
where = "language == 'de'"
weight = "natural"
[components.other.components.rest]
where = "language not in ['en', 'de']"
weight = "natural"

[[schedule]]
from_step = 1000
ramp_steps = 200
weights = { web_en = 0.3, code = 0.5, other = 0.2 }

[dynamic]
algorithm = "ado"
refit_every = 500
"""


def spec_of(text: str) -> MixtureSpec:
    return parse_spec(text, file="mix.toml", base=Path("/data/mixes"))


def test_the_issue_example(tmp_path: Path) -> None:
    path = tmp_path / "mixes" / "mix.toml"
    path.parent.mkdir()
    path.write_text(EXAMPLE)
    spec = load_spec(path)
    assert spec.index == (tmp_path / "index").resolve()
    assert [leaf.name for leaf in spec.leaves()] == ["web_en", "code", "other.de", "other.rest"]
    assert spec.leaves()[2].weight == "natural"
    assert spec.schedule[0].from_step == 1000 and spec.schedule[0].ramp_steps == 200
    assert spec.dynamic == {"algorithm": "ado", "refit_every": 500}
    assert spec.topology.global_batch == 128
    assert spec.to_dict()["components"][2]["components"][1]["where"] == "language not in ['en', 'de']"


def test_defaults_and_nested_schedule_keys() -> None:
    text = EXAMPLE.replace("weights = { web_en = 0.3, code = 0.5, other = 0.2 }",
                           "weights = { other = { de = 0.5, rest = 0.5 } }")
    spec = spec_of(text.replace("[dynamic]\nalgorithm = \"ado\"\nrefit_every = 500\n", ""))
    assert spec.schedule[0].weights == {"other.de": 0.5, "other.rest": 0.5}
    assert spec.dynamic is None and spec.overlap == "error"
    assert spec.leaves()[1].on_exhausted == "repeat"


def bad(text: str, key: str, message: str, hint: str | None = None) -> None:
    with pytest.raises(ConfigError) as exc:
        spec_of(text)
    assert exc.value.message.startswith("mix.toml: "), exc.value.message
    assert key in exc.value.message, exc.value.message
    assert message in exc.value.message, exc.value.message
    if hint:
        assert hint in (exc.value.hint or ""), exc.value.hint


def test_invalid_toml_names_line_and_column() -> None:
    bad(EXAMPLE.replace("seed = 1234", "seed = = 1234"), "", "invalid TOML at line 4, column 8")


@pytest.mark.parametrize(("old", "new", "key", "message", "hint"), [
    ("seed = 1234", "seed = 1234\nsed = 1", "mixture.sed", "unknown key", "did you mean 'seed'?"),
    ("[topology]", "[topolgy]\nx = 1\n[topology]", "topolgy", "unknown key", "did you mean 'topology'?"),
    ("weight = 0.3", "weight = 0.3\nwheer = 'x'", "components.code.wheer", "unknown key",
     "did you mean 'where'?"),
    ("ramp_steps = 200", "ramp_steps = 200\nramp = 1", "schedule[0].ramp", "unknown key", None),
    ("weight = 0.3", "weight = 0", "components.code.weight", "must be a number > 0", None),
    ("weight = 0.3", "weight = -0.3", "components.code.weight", "must be a number > 0", None),
    ("weight = 0.3", "weight = 'lots'", "components.code.weight", "unknown weight 'lots'", None),
    ("weight = 0.3", "weight = 0.4", "components", "sum to 1.1, not 1", "normalize = true"),
    ("weight = 0.2\n[components.other.components.de]", "weight = 0.2\nnormalize = true\n"
     "[components.other.components.de]", "", "", None),
    ("where = \"language == 'de'\"\nweight = \"natural\"", "where = \"language == 'de'\"\nweight = 1.0",
     "components.other.components", "leaving nothing for the \"natural\"", None),
    ("web_en = 0.3, code", "web_em = 0.3, code", "schedule[0].weights.web_em", "unknown component 'web_em'",
     "did you mean 'web_en'?"),
    ("web_en = 0.3, code = 0.5", "web_en = 0.4, code = 0.5", "schedule[0].weights", "sum to 1.1", None),
    ("from_step = 1000", "from_step = 2000", "schedule[0].from_step", "must be in [0, 2000)", None),
    ("ramp_steps = 200", "ramp_steps = 1200", "schedule[0].ramp_steps", "end by step 2000", None),
    ("unit = \"tokens\"", "unit = \"bytes\"", "mixture.unit", "unknown unit 'bytes'", "tokens, samples"),
    ("seq_len = 2048", "seq_len = 0", "topology.seq_len", "must be >= 1 with unit = 'tokens'", None),
    ("world_size = 8", "world_size = 0", "topology.world_size", "must be >= 1", None),
    ("world_size = 8", "world_size = '8'", "topology.world_size", "must be an integer", None),
    ("on_exhausted = \"repeat\"", "on_exhausted = \"loop\"", "components.web_en.on_exhausted",
     "unknown value 'loop'", "repeat, error, redistribute"),
    ("algorithm = \"ado\"", "algorithm = \"magic\"", "dynamic.algorithm", "unknown algorithm 'magic'",
     "ado, loss_proportional, static"),
    ("steps = 2000", "", "mixture.steps", "is required", None),
    ("where = \"language == 'de'\"", "where = \"language == 'de' and\"",
     "components.other.components.de.where", "invalid where expression at column 21", None),
    ("[components.code]", "[components.'bad name']\nwhere = 'x == 1'\nweight = 0.1\n[components.code]",
     "components.bad name", "may only hold letters", None),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_bad_input(old: str, new: str, key: str, message: str, hint: str | None) -> None:
    text = EXAMPLE.replace(old, new, 1)
    assert text != EXAMPLE
    if not message:  # normalize = true on a level whose weights are fine keeps it valid
        spec_of(text)
        return
    bad(text, key, message, hint)


def test_normalize_scales_a_level() -> None:
    text = EXAMPLE.replace("weight = 0.3\n", "weight = 0.6\n", 1)
    text = text.replace("seed = 1234", "seed = 1\nnormalize = true")
    spec = spec_of(text)
    assert spec.normalize and spec.components[1].weight == 0.6


def test_schedule_out_of_order() -> None:
    text = EXAMPLE + "\n[[schedule]]\nfrom_step = 1100\nweights = { web_en = 0.5, code = 0.3, other = 0.2 }\n"
    bad(text.replace("[dynamic]", "[dyn]").replace("[dyn]", "[dynamic]"), "schedule[1].from_step",
        "must be in [1200, 2000)", "order [[schedule]] entries")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="mixture file does not exist"):
        load_spec("/nonexistent/mix.toml")


def test_weights_whose_sum_overflows_are_refused() -> None:
    text = EXAMPLE.replace("seed = 1234", "seed = 1234\nnormalize = true")
    for weight in ("0.5", "0.3"):
        text = text.replace(f"weight = {weight}\n", "weight = 1e308\n", 1)
    bad(text, "components", "sum beyond the float64 range", "scale them down")


@pytest.mark.parametrize(("prior", "message"), [
    ("{ web = 1.0 }", "prior names ['web'] components and misses ['web_en', 'code', 'other.de', "
     "'other.rest']"),
    ("{ web_en = 1, code = 1, 'other.de' = 1, 'other.rest' = 'x' }", "must be finite numbers > 0"),
    ("{ web_en = 1, code = 1, 'other.de' = 1, 'other.rest' = 0 }", "must be finite numbers > 0"),
])
def test_a_prior_is_checked_against_the_components_at_compile(prior: str, message: str) -> None:
    bad(EXAMPLE + f"prior = {prior}\n", "[dynamic] prior", message, "")
    spec_of(EXAMPLE + "prior = { web_en = 1, code = 1, 'other.de' = 1, 'other.rest' = 2 }\n")


@pytest.mark.parametrize(("line", "message"), [
    ("wait_timeout_s = inf", "wait_timeout_s = inf must be a finite number >= 0"),
    ("wait_timeout_s = nan", "must be a finite number"),
    ("refit_every = true", "refit_every = True must be an integer >= 1"),
    ("lookahead = true", "lookahead = True must be an integer >= 0"),
])
def test_dynamic_values_of_the_wrong_kind_are_refused(line: str, message: str) -> None:
    key = line.split(" = ")[0]
    text = "\n".join(x for x in EXAMPLE.splitlines() if not x.startswith(f"{key} = "))
    bad(f"{text}\n{line}\n", "[dynamic]", message)
