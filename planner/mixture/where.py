"""The `where` language of mixture components, compiled to pyarrow compute expressions.

Grammar (keywords are case-sensitive, lower case)::

    expr      := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | atom
    atom      := "(" expr ")" | NAME [predicate]
    predicate := CMP literal | ["not"] "in" list | "contains" literal | "is" ["not"] "null"
    list      := "[" [literal ("," literal)* [","]] "]"
    literal   := STRING | NUMBER | "true" | "false"
    CMP       := "==" | "!=" | "<" | "<=" | ">" | ">="

A bare NAME is a boolean property (``is_code`` means ``is_code == true``). Comparisons with a null
property are null, which selects nothing, as in SQL (so ``x != 'a'`` and ``x not in [...]`` skip
rows where ``x`` is null). Parsing is a tokenizer plus recursive descent: no ``eval``. Parentheses
and ``not`` nest at most ``MAX_DEPTH`` levels; flat ``or`` / ``and`` chains may be any length (they
compile to a balanced tree). Integers fit in 64 bits, numbers are finite. :func:`unparse` prints a
tree back as source that parses to the same tree.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mixtera.runtime.errors import ConfigError

Literal = str | int | float | bool
MAX_DEPTH = 64  # nested parentheses and `not`: the parser, the compiler and pyarrow recurse per level
_INT64 = (-(2**63), 2**63 - 1)
_MAX_DIGITS = 40  # longer number literals are refused before converting them
KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "is", "null", "true", "false"})
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\],])
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # number | string | op | name | keyword | punct | end
    text: str
    pos: int  # 0-based character offset in the expression


class QueryError(ConfigError):
    """A `where` expression is malformed or does not fit the index."""


_SHOWN = 40  # characters of the expression shown on either side of an error's caret


def _fail(source: str, pos: int, message: str, hint: str | None = None, where: str = "") -> QueryError:
    start, end = max(0, pos - _SHOWN), min(len(source), pos + _SHOWN)
    head, tail = ("..." if start else ""), ("..." if end < len(source) else "")
    caret = f"\n    {head}{source[start:end]}{tail}\n    {' ' * (len(head) + pos - start)}^"
    prefix = f"{where}: " if where else ""
    return QueryError(f"{prefix}invalid where expression at column {pos + 1}: {message}{caret}", hint)


def tokenize(source: str, where: str = "") -> list[Token]:
    tokens, pos = [], 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            if source[pos] in "'\"":
                raise _fail(source, pos, "unterminated string", "close the string with the same quote",
                            where)
            hint = "compare with `==`" if source[pos] == "=" else None
            raise _fail(source, pos, f"unexpected character {source[pos]!r}", hint, where)
        kind = m.lastgroup or ""
        if kind != "ws":
            text = m.group()
            if kind == "name" and text in KEYWORDS:
                kind = "keyword"
            tokens.append(Token(kind, text, pos))
        pos = m.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


# -- syntax tree ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Compare:
    name: str
    op: str
    value: Literal
    pos: int


@dataclass(frozen=True, slots=True)
class In:
    name: str
    values: tuple[Literal, ...]
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Contains:
    name: str
    value: Literal
    pos: int


@dataclass(frozen=True, slots=True)
class IsNull:
    name: str
    negated: bool
    pos: int


@dataclass(frozen=True, slots=True)
class Truthy:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # "and" | "or"
    operands: tuple[Node, ...]


Node = Compare | In | Contains | IsNull | Truthy | Not | BoolOp


class _Parser:
    def __init__(self, source: str, where: str) -> None:
        self.source = source
        self.where = where
        self.tokens = tokenize(source, where)
        self.i = 0
        self.depth = 0

    def deeper(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"the expression nests deeper than {MAX_DEPTH} levels of parentheses and `not`",
                            "flatten it: `a or b or c` needs no parentheses, and `x in [...]` lists "
                            "alternatives", tok)

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, message: str, hint: str | None = None, tok: Token | None = None) -> QueryError:
        return _fail(self.source, (tok or self.tok).pos, message, hint, self.where)

    def found(self) -> str:
        return "the end of the expression" if self.tok.kind == "end" else repr(self.tok.text)

    def accept(self, text: str) -> bool:
        if self.tok.kind in ("keyword", "punct", "op") and self.tok.text == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str, hint: str | None = None) -> None:
        if not self.accept(text):
            raise self.fail(f"expected {text!r}, found {self.found()}", hint)

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise self.fail("the expression is empty", "write e.g. `language == 'en'`")
        node = self.or_expr()
        if self.tok.kind != "end":
            raise self.fail(f"unexpected {self.found()}", "join conditions with `and` / `or`")
        return node

    def or_expr(self) -> Node:
        parts = [self.and_expr()]
        while self.accept("or"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def and_expr(self) -> Node:
        parts = [self.not_expr()]
        while self.accept("and"):
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def not_expr(self) -> Node:
        tok = self.tok
        if self.accept("not"):
            self.deeper(tok)
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        return self.atom()

    def atom(self) -> Node:
        tok = self.tok
        if self.accept("("):
            self.deeper(tok)
            node = self.or_expr()
            self.expect(")", "every `(` needs a matching `)`")
            self.depth -= 1
            return node
        tok = self.tok
        if tok.kind != "name":
            raise self.fail(f"expected a property name or '(', found {self.found()}")
        self.i += 1
        return self.predicate(tok)

    def predicate(self, name: Token) -> Node:
        tok = self.tok
        if tok.kind == "op":
            self.i += 1
            return Compare(name.text, tok.text, self.literal(), name.pos)
        if self.accept("in"):
            return In(name.text, self.list_literal(), False, name.pos)
        if tok.text == "not" and tok.kind == "keyword":
            self.i += 1
            self.expect("in", "`not` after a property name must be followed by `in`")
            return In(name.text, self.list_literal(), True, name.pos)
        if self.accept("contains"):
            return Contains(name.text, self.literal(), name.pos)
        if self.accept("is"):
            negated = self.accept("not")
            self.expect("null", "write `is null` or `is not null`")
            return IsNull(name.text, negated, name.pos)
        return Truthy(name.text, name.pos)

    def list_literal(self) -> tuple[Literal, ...]:
        self.expect("[", "`in` takes a list such as ['a', 'b']")
        values: list[Literal] = []
        while not self.accept("]"):
            values.append(self.literal())
            if not self.accept(","):
                self.expect("]", "separate list items with commas")
                break
        return tuple(values)

    def literal(self) -> Literal:
        tok = self.tok
        if tok.kind == "string":
            self.i += 1
            return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), tok.text[1:-1])
        if tok.kind == "number":
            return self.number(tok)
        if tok.kind == "keyword" and tok.text in ("true", "false"):
            self.i += 1
            return tok.text == "true"
        raise self.fail(f"expected a value (string, number, true or false), found {self.found()}",
                        "quote strings: language == 'en'")


    def number(self, tok: Token) -> int | float:
        if len(tok.text) > _MAX_DIGITS:
            raise self.fail(f"a number literal of {len(tok.text)} characters is too long "
                            f"(at most {_MAX_DIGITS})", "integers fit in 64 bits, floats in float64")
        self.i += 1
        if any(c in tok.text for c in ".eE"):
            value = float(tok.text)
            if not np.isfinite(value):
                raise self.fail(f"number {tok.text} is beyond the float64 range", None, tok)
            return value
        number = int(tok.text)
        if not _INT64[0] <= number <= _INT64[1]:
            raise self.fail(f"integer {tok.text} does not fit in 64 bits", "integer properties are int64; "
                            f"use a value in {_INT64[0]}..{_INT64[1]}", tok)
        return number


def parse(source: str, where: str = "") -> Node:
    """Parse ``source``; ``where`` (e.g. ``mix.toml: components.web.where``) prefixes errors."""
    return _Parser(source, where).parse()


# -- compilation --------------------------------------------------------------------------------------
_CMP = {"==": "equal", "!=": "not_equal", "<": "less", "<=": "less_equal", ">": "greater",
        ">=": "greater_equal"}
_LIST_CONTAINS = "mixtera_list_contains"


def _list_contains(ctx: pc.UdfContext, values: pa.Array, needle: pa.Scalar) -> pa.Array:
    hit = pc.fill_null(pc.equal(pc.list_flatten(values), needle), False).to_numpy(zero_copy_only=False)
    out = np.zeros(len(values), dtype=bool)
    out[pc.list_parent_indices(values).to_numpy()[hit.astype(bool)]] = True
    return pa.array(out, mask=pc.is_null(values).to_numpy(zero_copy_only=False))


def _register_udf() -> None:
    if _LIST_CONTAINS in pc.list_functions():
        return
    pc.register_scalar_function(
        _list_contains, _LIST_CONTAINS,
        {"summary": "list contains", "description": "true where the list holds the value"},
        {"values": pa.list_(pa.string()), "needle": pa.string()}, pa.bool_())


def _set_type(kind: str, values: tuple[Literal, ...]) -> pa.DataType:
    if kind == "int" and all(isinstance(v, int) for v in values):
        return pa.int64()
    return {"string": pa.string(), "bool": pa.bool_()}.get(kind, pa.float64())


# What the compiler makes: expressions, or (evaluated on a table) arrays, scalars as operands.
Value = pc.Expression | pa.Array | pa.ChunkedArray | pa.Scalar


class _Compiler:
    """Compiles a tree to compute-function calls on ``ref(name)`` operands: pyarrow expressions
    (``table`` None), or, given a ``table``, arrays evaluated on its columns right away."""

    def __init__(self, source: str, schema: dict[str, str], where: str,
                 table: pa.Table | None = None) -> None:
        self.source, self.schema, self.where, self.table = source, schema, where, table

    def fail(self, pos: int, message: str, hint: str | None = None) -> QueryError:
        return _fail(self.source, pos, message, hint, self.where)

    def call(self, fn: str, args: list[Value], options: pc.FunctionOptions | None = None) -> Value:
        if self.table is None:
            return pc.Expression._call(fn, args, options)
        return pc.call_function(fn, args, options)

    def ref(self, name: str) -> Value:
        return pc.field(name) if self.table is None else self.table.column(name)

    def lit(self, value: Literal) -> Value:
        return pc.scalar(value) if self.table is None else pa.scalar(value)

    def type_of(self, name: str, pos: int) -> str:
        if name in self.schema:
            return self.schema[name]
        known = sorted(self.schema)
        close = difflib.get_close_matches(name, known, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise self.fail(pos, f"unknown property {name!r}",
                        f"{guess}the index has properties: {', '.join(known)}")

    def check_literal(self, name: str, kind: str, value: Literal, pos: int) -> None:
        ok = {"string": isinstance(value, str), "bool": isinstance(value, bool),
              "list[string]": isinstance(value, str)}.get(
            kind, isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            raise self.fail(pos, f"property {name!r} is {kind}, compared with {type(value).__name__} "
                                 f"{value!r}", f"use a {kind} value for {name!r}")

    def compile(self, node: Node) -> Value:
        if isinstance(node, BoolOp):
            return self.balanced([self.compile(p) for p in node.operands], f"{node.op}_kleene")
        if isinstance(node, Not):
            return self.call("invert", [self.compile(node.operand)])
        kind = self.type_of(node.name, node.pos)
        field = self.ref(node.name)
        if isinstance(node, IsNull):
            return self.call("is_valid" if node.negated else "is_null", [field])
        if isinstance(node, Truthy):
            if kind != "bool":
                raise self.fail(node.pos, f"property {node.name!r} is {kind}, not bool",
                                f"compare it, e.g. {node.name} == ...")
            return self.call("equal", [field, self.lit(True)])
        if isinstance(node, Contains):
            return self.contains(node, kind, field)
        if kind == "list[string]":
            raise self.fail(node.pos, f"property {node.name!r} is a list", f"use `{node.name} contains 'x'`")
        if isinstance(node, In):
            for v in node.values:
                self.check_literal(node.name, kind, v, node.pos)
            values = pa.array(node.values, type=_set_type(kind, node.values))
            expr = self.call("is_in", [field], pc.SetLookupOptions(values))
            if not node.negated:
                return expr
            return self.call("and_kleene", [self.call("is_valid", [field]), self.call("invert", [expr])])
        self.check_literal(node.name, kind, node.value, node.pos)
        if kind == "bool" and node.op not in ("==", "!="):
            raise self.fail(node.pos, f"property {node.name!r} is bool: only == and != apply")
        return self.call(_CMP[node.op], [field, self.lit(node.value)])

    def contains(self, node: Contains, kind: str, field: Value) -> Value:
        self.check_literal(node.name, kind, node.value, node.pos)
        if kind == "string":
            return self.call("match_substring", [field], pc.MatchSubstringOptions(str(node.value)))
        if kind != "list[string]":
            raise self.fail(node.pos, f"`contains` needs a list or string property; {node.name!r} is {kind}")
        _register_udf()
        return self.call(_LIST_CONTAINS, [field, self.lit(str(node.value))])

    def balanced(self, parts: list[Value], fn: str) -> Value:
        """``parts`` joined by ``fn`` as a balanced tree (depth log2 n); Kleene and/or are associative."""
        while len(parts) > 1:
            pairs = [self.call(fn, [a, b]) for a, b in zip(parts[::2], parts[1::2], strict=False)]
            parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
        return parts[0]


def referenced(node: Node) -> list[str]:
    """Property names ``node`` refers to, in order of appearance, without repeats."""
    if isinstance(node, BoolOp):
        names = [n for part in node.operands for n in referenced(part)]
    elif isinstance(node, Not):
        names = referenced(node.operand)
    else:
        names = [node.name]
    return list(dict.fromkeys(names))


def compile_where(source: str, schema: dict[str, str], where: str = "") -> pc.Expression:
    """Compile ``source`` against ``schema`` (``{property: type name}``) to a pyarrow expression.

    pyarrow flattens and/or chains back into one deep chain when it runs an expression, so one of
    several thousand terms overflows its stack: evaluate such filters with :func:`where_mask`.
    """
    return _Compiler(source, schema, where).compile(parse(source, where))


def where_mask(source: str, schema: dict[str, str], table: pa.Table, where: str = "") -> pa.ChunkedArray:
    """Evaluate ``source`` on ``table`` (which holds the referenced columns): the selection mask.

    Same semantics as :func:`compile_where`, computed call by call, so chains of any length work.
    """
    mask = _Compiler(source, schema, where, table).compile(parse(source, where))
    return mask if isinstance(mask, pa.ChunkedArray) else pa.chunked_array([mask])


def unparse(node: Node) -> str:
    """Source text for ``node``; ``parse(unparse(node))`` gives ``node`` back (positions aside)."""
    if isinstance(node, BoolOp):
        return f" {node.op} ".join(f"({unparse(p)})" if isinstance(p, BoolOp) else unparse(p)
                                   for p in node.operands)
    if isinstance(node, Not):
        inner = unparse(node.operand)
        return f"not ({inner})" if isinstance(node.operand, BoolOp) else f"not {inner}"
    if isinstance(node, Compare):
        return f"{node.name} {node.op} {_literal_source(node.value)}"
    if isinstance(node, In):
        items = ", ".join(_literal_source(v) for v in node.values)
        return f"{node.name} {'not in' if node.negated else 'in'} [{items}]"
    if isinstance(node, Contains):
        return f"{node.name} contains {_literal_source(node.value)}"
    if isinstance(node, IsNull):
        return f"{node.name} is {'not null' if node.negated else 'null'}"
    return node.name


_QUOTE = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n", "\t": "\\t"})


def _literal_source(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.translate(_QUOTE) + "'"
    return repr(value)
