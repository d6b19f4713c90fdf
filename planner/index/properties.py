"""Property extraction: dotted field paths, path captures, a user hook, and automatic fields.

`compile_extractor(config, relpath)` builds, once per file, the object the hot loop calls per record.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from planner.index.config import IndexConfig, PropertySpec
from planner.index.names import RESERVED
from runtime.errors import ConfigError, CorpusError

SOURCE = PropertySpec(name="source", type="string", path="{source}/**")


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
# Path captures are text: these parse them into the declared type.
_FROM_TEXT: dict[str, Callable[[str], Any]] = {
    "string": str,
    "int": int,
    "float": float,
    "bool": lambda s: {"true": True, "false": False}[s.lower()],
    "list[string]": lambda s: [s],
}


def get_path(record: Any, path: tuple[str, ...]) -> Any:
    """The value at dotted ``path`` in ``record`` or None (missing and null look the same)."""
    for key in path:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record


@lru_cache(maxsize=256)
def path_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a relative-path pattern: `{name}` captures one path segment, `*` matches inside one
    segment, `**` any number of segments."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "{":
            end = pattern.index("}", i)
            out.append(f"(?P<{pattern[i + 1 : end]}>[^/]+)")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def capture(pattern: str, name: str, relpath: str) -> str | None:
    """The capture of ``pattern`` for property ``name`` in ``relpath`` (None when it does not match)."""
    m = path_pattern(pattern).match(relpath)
    if m is None:
        return None
    groups = m.groupdict()
    if name in groups:
        return groups[name]
    return next(iter(groups.values())) if len(groups) == 1 else None


def check_pattern(spec: PropertySpec, where: str) -> None:
    try:
        groups = path_pattern(spec.path or "").groupindex
    except (re.error, ValueError) as exc:
        raise ConfigError(
            f"{where}: [properties.{spec.name}] path {spec.path!r} is not a valid pattern ({exc})"
        ) from None
    if spec.name not in groups and len(groups) != 1:
        raise ConfigError(
            f"{where}: [properties.{spec.name}] path {spec.path!r} captures nothing named {{{spec.name}}}",
            f'write the folder to capture as {{{spec.name}}}, e.g. path = "{{{spec.name}}}/**"',
        )


def load_hook(spec: str, search_path: str | None) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """Import the user's ``module:function``; the config's folder is searched first."""
    module_name, func_name = spec.split(":")
    if search_path and search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"[index] function: cannot import module {module_name!r} ({exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"[index] function: module {module_name!r} has no function {func_name!r}")
    return func


@dataclass(slots=True)
class Extractor:
    """Everything the hot loop needs to turn one record into (text, declared values, auto values)."""

    text_path: tuple[str, ...]
    fields: list[tuple[str, list[tuple[str, tuple[str, ...]]], Callable[[Any], Any], str, Any]]
    constants: dict[str, Any]  # path-captured values, the same for every record of the file
    names: list[str]  # declared property names, sorted (column order)
    hook: Callable[[dict[str, Any], str], dict[str, Any]] | None
    automatic: bool
    relpath: str
    skip_auto: frozenset[str] = field(default_factory=frozenset)
    row: Callable[[Any], tuple] = tuple  # generated by `rowcode.row_function`: declared values
    columns: Callable[[list[Any]], list[list[Any]] | None] | None = None  # `rowcode.column_function`
    types: dict[str, str] = field(default_factory=dict)  # declared name -> property type

    def text(self, record: Any) -> Any:
        if len(self.text_path) == 1:
            return record.get(self.text_path[0]) if isinstance(record, dict) else None
        return get_path(record, self.text_path)

    def automatic_fields(self, record: dict[str, Any]) -> dict[str, Any]:
        """Top-level scalar fields other than the text and the declared properties."""
        return {
            k: v
            for k, v in record.items()
            if k not in self.skip_auto and (type(v) in (str, int, float, bool))
        }


def compile_extractor(config: IndexConfig, relpath: str, hook: Callable[..., Any] | None) -> Extractor:
    """The per-file extractor: path captures are resolved here, once."""
    specs = declared_specs(config)
    fields, constants = [], {}
    for spec in specs:
        if spec.path is not None:
            constants[spec.name] = _captured(spec, relpath)
        else:
            paths = [(p, tuple(p.split("."))) for p in spec.from_]
            fields.append((spec.name, paths, CONVERTERS[spec.type], spec.type, spec.default))
    names = sorted(s.name for s in specs)
    from planner.index.rowcode import column_function, row_function  # rowcode builds on this module

    return Extractor(
        text_path=tuple(config.text.split(".")),
        fields=fields,
        constants=constants,
        names=names,
        hook=hook,
        automatic=not config.explicit,
        relpath=relpath,
        skip_auto=frozenset([config.text.split(".")[0], *names, *RESERVED]),
        row=row_function(fields, constants, names),
        columns=column_function(fields, constants, names),
        types={s.name: s.type for s in specs},
    )


def declared_specs(config: IndexConfig) -> list[PropertySpec]:
    """The declared properties; without any declaration, `source` comes from the first folder."""
    if config.explicit:
        return sorted(config.properties, key=lambda s: s.name)
    return [SOURCE]


def _captured(spec: PropertySpec, relpath: str) -> Any:
    text = capture(spec.path or "", spec.name, relpath)
    if text is None:
        return spec.default
    try:
        return _FROM_TEXT[spec.type](text)
    except (ValueError, KeyError):
        raise CorpusError(
            f"{relpath}: property {spec.name!r} captured {text!r} from the path, which is not {spec.type}",
            f"change [properties.{spec.name}] type or path",
        ) from None


def infer_type(values: list[Any]) -> str:
    """The property type of automatic values: bool, int, float (ints and floats), else string."""
    kinds = {type(v) for v in values if v is not None}
    if not kinds or kinds == {str}:
        return "string"
    if kinds == {bool}:
        return "bool"
    if kinds == {int}:
        return "int"
    if kinds <= {int, float}:
        return "float"
    return "string"


def widen(a: str, b: str) -> str:
    """The type that holds values of both automatic types ``a`` and ``b``."""
    if a == b:
        return a
    return "float" if {a, b} == {"int", "float"} else "string"


def as_text(value: Any) -> str | None:
    """How a non-string automatic value reads once its column widens to string."""
    if value is None or type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)
