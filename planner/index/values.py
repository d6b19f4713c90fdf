"""Record values: dotted-path access and conversion to a property's declared type.

Both the property extractor (`properties`) and the generated row functions (`row_codegen`) build on
these, so they live below both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ValueTypeError(Exception):
    """A record's value does not have the declared type (the indexer adds file and line)."""

    def __init__(self, field_path: str, expected: str, value: Any) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        super().__init__(f"field {field_path!r} must be {expected}, got {type(value).__name__} {shown}")


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(type(x) is str for x in v)


# Converters: return the value in its declared type, or raise TypeError.
def _to_string(v: Any) -> str:
    if type(v) is str:
        return v
    raise TypeError


def _to_int(v: Any) -> int:
    if type(v) is int:
        return v
    raise TypeError


def _to_float(v: Any) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    raise TypeError


def _to_bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise TypeError


def _to_str_list(v: Any) -> list[str]:
    if _is_str_list(v):
        return v
    raise TypeError


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "string": _to_string,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "list[string]": _to_str_list,
}


def get_path(record: Any, path: tuple[str, ...]) -> Any:
    """The value at dotted ``path`` in ``record`` or None (missing and null look the same)."""
    for key in path:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record
