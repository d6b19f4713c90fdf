"""The `where` language: grammar, semantics on real Arrow tables, and errors with positions."""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixtera.planner.mixture.where import (
    MAX_DEPTH,
    BoolOp,
    Compare,
    Contains,
    In,
    IsNull,
    Node,
    Not,
    QueryError,
    Truthy,
    compile_where,
    parse,
    referenced,
    tokenize,
    unparse,
    where_mask,
)
from mixtera.runtime.errors import MixteraUserError

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
    mask = where_mask(expr, SCHEMA, TABLE).to_numpy(zero_copy_only=False)
    assert TABLE["n"].filter(pa.array(mask == True)).to_pylist() == expected  # noqa: E712 - nulls drop
    assert rows(unparse(parse(expr))) == expected


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


@pytest.mark.parametrize(("source", "column"), [("(" * 500 + "n > 1" + ")" * 500, MAX_DEPTH + 1),
                                               ("not " * 5000 + "ok", 4 * MAX_DEPTH + 1)],
                         ids=["parentheses", "not"])
def test_deep_nesting_is_refused_with_the_limit(source: str, column: int) -> None:
    with pytest.raises(QueryError, match=f"nests deeper than {MAX_DEPTH} levels") as exc:
        parse(source)
    assert f"at column {column}:" in exc.value.message
    assert len(exc.value.message) < 400  # the caret shows a window of the expression, not all of it


def test_nesting_up_to_the_limit_works() -> None:
    assert rows("(" * MAX_DEPTH + "n > 3" + ")" * MAX_DEPTH) == [4, 5]
    assert rows("not " * (MAX_DEPTH - 1) + "(n > 3)") == [1, 2, 3]  # 63 `not` (odd) and one `(`


@pytest.mark.parametrize(("op", "term", "first", "expected"), [
    ("and", "n != {}", 2, [True, False, False, False, False]),
    ("or", "n == {}", 5, [False, False, False, False, True])])
def test_long_flat_chains_work(op: str, term: str, first: int, expected: list[bool]) -> None:
    source = f" {op} ".join(term.format(i) for i in range(first, first + 10_000))
    assert where_mask(source, SCHEMA, TABLE).to_numpy(zero_copy_only=False).tolist() == expected


@pytest.mark.parametrize(("literal", "message"), [
    (str(2**63), "does not fit in 64 bits"), (str(-(2**63) - 1), "does not fit in 64 bits"),
    ("9" * 5000, "too long"), ("1e999", "beyond the float64 range")])
def test_number_literals_are_bounded(literal: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse(f"n == {literal}")
    assert parse(f"n == {2**63 - 1}") == Compare("n", "==", 2**63 - 1, 0)


_TOKENS = ["(", ")", "[", "]", ",", "and", "or", "not", "in", "is", "null", "contains", "true", "false",
           "==", "!=", "<", ">=", "n", "language", "'en'", '"x\\"', "1", "-2.5e3", "'", "=", " ", "9" * 30]


@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(_TOKENS), max_size=30).map(" ".join)))
def test_parsing_anything_gives_a_tree_or_a_user_error(source: str) -> None:
    try:
        node = parse(source)
    except MixteraUserError:
        return
    assert parse(unparse(node)) is not None
    with contextlib.suppress(MixteraUserError):
        where_mask(source, SCHEMA, TABLE)


_NAMES = st.sampled_from(["n", "language", "quality", "a.b"])
_LITERALS = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6))
_LEAVES = st.one_of(
    st.builds(Compare, _NAMES, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), _LITERALS, st.just(0)),
    st.builds(In, _NAMES, st.lists(_LITERALS, max_size=3).map(tuple), st.booleans(), st.just(0)),
    st.builds(Contains, _NAMES, _LITERALS, st.just(0)),
    st.builds(IsNull, _NAMES, st.booleans(), st.just(0)),
    st.builds(Truthy, _NAMES, st.just(0)))


def _trees(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(st.builds(Not, children),
                     st.builds(BoolOp, st.sampled_from(["and", "or"]),
                               st.lists(children, min_size=2, max_size=4).map(tuple)))


def _shape(node: Node) -> object:
    """``node`` without positions, with nested same-operator chains as the parser builds them."""
    if isinstance(node, BoolOp):
        return (node.op, tuple(_shape(p) for p in node.operands))
    if isinstance(node, Not):
        return ("not", _shape(node.operand))
    return (type(node).__name__, *(getattr(node, f) for f in node.__slots__ if f != "pos"))


@given(st.recursive(_LEAVES, _trees, max_leaves=12))
def test_printing_and_parsing_round_trips(node: Node) -> None:
    assert _shape(parse(unparse(node))) == _shape(node)
