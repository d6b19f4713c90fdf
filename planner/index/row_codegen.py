"""Generated per-file row functions: the property-extraction part of the hot loop, without
per-record Python loops over properties and paths.

`row_function(fields, constants, names)` returns ``row(record) -> tuple`` (values in ``names``
order). A value of the declared Python type takes the fast path; anything else goes through the
converter, which widens (int -> float) or raises `ValueTypeError` naming the field that held it.
`column_function` gives the same values for a whole chunk at once, column by column: the hot loop
uses it and falls back to `row_function` for chunks with a value to report.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from typing import Any

from mixtera.planner.index.values import ValueTypeError, get_path

# The Python type a value of each property type already has (None: always convert).
_EXACT: dict[str, str | None] = {
    "string": "str",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "list[string]": None,
}

Field = tuple[str, list[tuple[str, tuple[str, ...]]], Callable[[Any], Any], str, Any]


def _getter(var: str, path: tuple[str, ...], j: int) -> list[str]:
    if len(path) == 1:
        return [f"{var} = r.get({path[0]!r})"]
    if len(path) == 2:
        return [f"m = r.get({path[0]!r})", f"{var} = m.get({path[1]!r}) if type(m) is dict else None"]
    return [f"{var} = _get(r, P{j})"]


def _slow(paths: list[tuple[str, tuple[str, ...]]], convert: Callable[[Any], Any], type_name: str) -> Any:
    def slow(record: dict[str, Any], value: Any) -> Any:
        try:
            return convert(value)
        except TypeError:
            label = next(lb for lb, p in paths if get_path(record, p) is not None)
            raise ValueTypeError(label, type_name, value) from None

    return slow


def row_function(fields: list[Field], constants: dict[str, Any], names: list[str]) -> Callable[[Any], tuple]:
    """Compile ``row(record)`` for the declared `from` fields and the per-file constants."""
    env: dict[str, Any] = {"_get": get_path}
    body: list[str] = []
    var_of: dict[str, str] = {}
    paths_seen = 0
    for i, (name, paths, convert, type_name, default) in enumerate(fields):
        var = f"v{i}"
        var_of[name] = var
        env[f"D{i}"], env[f"C{i}"] = default, _slow(paths, convert, type_name)
        for k, (_, path) in enumerate(paths):
            env[f"P{paths_seen}"] = path
            lines = _getter(var, path, paths_seen)
            paths_seen += 1
            if k == 0:
                body += lines
            else:
                body += [f"if {var} is None:"] + [f"    {ln}" for ln in lines]
        exact = _EXACT[type_name]
        body += [f"if {var} is None:", f"    {var} = D{i}"]
        body += [f"elif type({var}) is not {exact}:" if exact else "else:", f"    {var} = C{i}(r, {var})"]
    for j, (name, value) in enumerate(sorted(constants.items())):
        env[f"K{j}"] = value
        var_of[name] = f"K{j}"
    values = ", ".join(var_of[n] for n in names)
    source = (
        "def row(r):\n"
        + "".join(f"    {ln}\n" for ln in body)
        + f"    return ({values}{',' if names else ''})\n"
    )
    exec(compile(source, "<mixtera row function>", "exec"), env)  # noqa: S102 - code built from the config
    return env["row"]


def column_function(
    fields: list[Field], constants: dict[str, Any], names: list[str]
) -> Callable[[list[dict[str, Any]]], list[list[Any]] | None]:
    """Compile ``columns(records)``: the declared values of a chunk of records, one list per name in
    ``names`` order, built with C-level ``map(dict.get, ...)`` instead of a Python call per record.

    Returns None when a value needs the per-record `row_function` (a value that does not convert to
    its declared type, which that function then reports with the field that held it).
    """
    by_name = {f[0]: f for f in fields}
    plan: list[tuple[Any, ...]] = []
    for name in names:
        if name in constants:
            plan.append((True, constants[name]))
        else:
            _, paths, convert, type_name, default = by_name[name]
            exact = _PY_TYPES.get(_EXACT[type_name] or "")
            plan.append((False, [p for _, p in paths], convert, exact, default))

    def columns(records: list[dict[str, Any]]) -> list[list[Any]] | None:
        n, out = len(records), []
        for item in plan:
            if item[0]:
                out.append([item[1]] * n)
                continue
            col = _typed(_first_present(records, item[1], n), *item[2:])
            if col is None:
                return None
            out.append(col)
        return out

    return columns


_PY_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
_NONE = type(None)


def _path_column(records: list[Any], path: tuple[str, ...]) -> list[Any]:
    """The value at ``path`` of every record (None where missing), a C-level map per level."""
    col = records
    for depth, key in enumerate(path):
        if depth and set(map(type, col)) != {dict}:  # records themselves are known to be dicts
            col = [m.get(key) if type(m) is dict else None for m in col]
        else:
            col = list(map(dict.get, col, repeat(key)))
    return col


def _first_present(records: list[Any], paths: list[tuple[str, ...]], n: int) -> list[Any]:
    """Per record, the value of the first path that holds one (not None)."""
    if not paths:
        return [None] * n
    col = _path_column(records, paths[0])
    for path in paths[1:]:
        missing = col.count(None)
        if not missing:
            break
        more = _path_column(records, path)
        col = more if missing == n else [a if a is not None else b for a, b in zip(col, more, strict=True)]
    return col


def _typed(
    col: list[Any], convert: Callable[[Any], Any], exact: type | None, default: Any
) -> list[Any] | None:
    """``col`` in its declared type with the default for missing values; None if a value does not fit."""
    kinds = set(map(type, col))
    has_none = _NONE in kinds
    kinds.discard(_NONE)
    if kinds and (exact is None or kinds != {exact}):
        try:
            col = [v if v is None else convert(v) for v in col]
        except TypeError:
            return None
    if has_none and default is not None:
        col = [default if v is None else v for v in col]
    return col
