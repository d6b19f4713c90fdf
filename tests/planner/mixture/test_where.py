"""The `where` language: grammar, semantics on real Arrow tables, and errors with positions."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixtera.planner.mixture.where import QueryError, compile_where, parse, referenced, tokenize

TABLE = pa.table({
    "language": ["en", "de", None, "fr", "en"],
    "quality": [0.1, 0.6, 0.9, None, 0.5],
    "n": [1, 2, 3, 4, 5],
    "ok": [True, False, None, True, False],
    "tags": pa.array([["a"], None, ["b", "a"], [], ["c"]], type=pa.list_(pa.string())),
})
SCHEMA = {"language": "string", "quality": "float", "n": "int", "ok": "bool", "tags": "list[string]"}


def rows(expr: str) -> list[int]:
    return TABLE.filter(compile_where(expr, SCHEMA))["n"].to_pylist()


@pytest.mark.parametrize(("expr", "expected"), [
    ("language == 'en'", [1, 5]),
    ('language != "en"', [2, 4]),  # null is neither equal nor different
    ("quality >= 0.5", [2, 3, 5]),
    ("quality < 0.5", [1]),
    ("n <= 2 or n > 4", [1, 2, 5]),
    ("language in ['en', 'fr']", [1, 4, 5]),
    ("language not in ['en', 'fr']", [2]),
    ("tags contains 'a'", [1, 3]),
    ("language contains 'e'", [1, 2, 5]),
    ("quality is null", [4]),
    ("language is not null and not ok", [2, 5]),
    ("ok", [1, 4]),
    ("ok == false", [2, 5]),
    ("not (n > 1 and n < 5)", [1, 5]),
    ("n in [1, 3.0, 5]", [1, 3, 5]),
    ("quality > -1e9 and n >= +2", [2, 3, 5]),
    ("language == 'en' or language == 'de' and n > 10", [1, 5]),  # and binds tighter than or
    ("(language == 'en' or language == 'de') and n > 1", [2, 5]),
    ("language in []", []),
    ("language == 'it\\'s'", []),
], ids=lambda v: v if isinstance(v, str) else None)
def test_semantics(expr: str, expected: list[int]) -> None:
    assert rows(expr) == expected


@pytest.mark.parametrize(("expr", "column", "message"), [
    ("langage == 'en'", 1, "unknown property 'langage'"),
    ("language == ", 13, "expected a value"),
    ("language = 'en'", 10, "unexpected character '='"),
    ("quality >= 'high'", 1, "property 'quality' is float"),
    ("(n > 1", 7, "expected '\\)'"),
    ("n > 1 n < 2", 7, "unexpected 'n'"),
    ("'abc", 1, "unterminated string"),
    ("language in 'en'", 13, "expected '\\['"),
    ("language not like 'x'", 14, "expected 'in'"),
    ("n is nothing", 6, "expected 'null'"),
    ("", 1, "the expression is empty"),
    ("tags == 'a'", 1, "is a list"),
    ("n contains 1", 1, "`contains` needs a list or string"),
    ("ok > true", 1, "only == and != apply"),
    ("n", 1, "not bool"),
    ("__import__('os')", 11, "unexpected '\\('"),
    ("n > 1 and", 10, "expected a property name"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_errors_name_the_column(expr: str, column: int, message: str) -> None:
    with pytest.raises(QueryError, match=message) as exc:
        compile_where(expr, SCHEMA, "mix.toml: components.web.where")
    assert f"at column {column}:" in exc.value.message
    assert exc.value.message.startswith("mix.toml: components.web.where: ")


def test_unknown_property_lists_known_ones_and_guesses() -> None:
    with pytest.raises(QueryError) as exc:
        compile_where("qualty > 0.5", SCHEMA)
    assert "did you mean 'quality'?" in (exc.value.hint or "")
    assert "language, n, ok, quality, tags" in (exc.value.hint or "")


def test_referenced_names() -> None:
    assert referenced(parse("a == 1 and (b in [1] or not a is null)")) == ["a", "b"]


def test_keywords_are_not_names() -> None:
    kinds = [t.kind for t in tokenize("not in is null true false and or contains x")]
    assert kinds == ["keyword"] * 9 + ["name", "end"]


@given(st.lists(st.sampled_from(["en", "de", "fr", "x y", "it's"]), max_size=4),
       st.booleans())
def test_in_lists_match_python(values: list[str], negated: bool) -> None:
    lit = ", ".join("'" + v.replace("'", "\\'") + "'" for v in values)
    expr = f"language {'not in' if negated else 'in'} [{lit}]"
    expected = [n for lang, n in zip(TABLE["language"].to_pylist(), TABLE["n"].to_pylist(), strict=True)
                if lang is not None and ((lang in values) != negated)]
    assert rows(expr) == expected
