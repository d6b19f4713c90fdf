"""Property tests of the TOML readers: any document is a spec / index config or a user error."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from mixtera.planner.index.config import parse_config
from mixtera.planner.mixture.spec import parse_spec
from mixtera.runtime.errors import MixteraUserError
from tests.planner.mixture.test_spec import EXAMPLE

# TOML values of every kind, including the awkward ones (huge, tiny, negative, inf, nan, nested).
_VALUES = st.one_of(
    st.sampled_from(["0", "-1", "1e308", "5e-324", "inf", "nan", "-inf", "true", "''", "'natural'",
                     "9223372036854775808", "[]", "{}", "[1, 'a']", "{ a = 1 }", "1979-05-27",
                     "'(((('", "\"language == 'en'\""]),
    st.integers().map(str), st.floats().map(repr),
    st.text(max_size=8).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'))

_LINES = EXAMPLE.splitlines()
_VALUE_LINES = [i for i, line in enumerate(_LINES) if " = " in line]


@given(st.lists(st.tuples(st.sampled_from(_VALUE_LINES), _VALUES), min_size=1, max_size=4))
def test_a_mixture_with_any_values_is_a_spec_or_a_user_error(edits: list[tuple[int, str]]) -> None:
    lines = list(_LINES)
    for i, value in edits:
        lines[i] = lines[i].split(" = ", 1)[0] + " = " + value
    with contextlib.suppress(MixteraUserError):
        parse_spec("\n".join(lines), file="mix.toml", base=Path("/data"))


@given(st.text(max_size=200))
def test_any_text_is_a_spec_or_a_user_error(text: str) -> None:
    with contextlib.suppress(MixteraUserError):
        parse_spec(text, file="mix.toml", base=Path("/data"))


_CONFIG_KEYS = ["[index]\ntext", "[index]\non_error", "[index]\ntokenizer", "[index]\neos",
                "[index]\nfunction", "[properties.p]\ntype", "[properties.p]\npath", "[properties.p]\nfrom",
                "[properties.p]\ndefault", "[properties.p]\nvalues"]


@given(st.lists(st.tuples(st.sampled_from(_CONFIG_KEYS), _VALUES), max_size=4))
def test_an_index_config_with_any_values_is_a_config_or_a_user_error(entries: list[tuple[str, str]]) -> None:
    text = "\n".join(f"{key} = {value}" for key, value in entries)
    with contextlib.suppress(MixteraUserError):
        parse_config(text, where="index.toml")
