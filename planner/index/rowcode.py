"""Generated per-file row functions: the property-extraction part of the hot loop, without
per-record Python loops over properties and paths.

`row_function(fields, constants, names)` returns ``row(record) -> tuple`` (values in ``names``
order). A value of the declared Python type takes the fast path; anything else goes through the
converter, which widens (int -> float) or raises `ValueTypeError` naming the field that held it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from planner.index.properties import ValueTypeError, get_path

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
