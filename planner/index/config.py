"""The index config (`index.toml`): dataclasses, TOML parsing, validation.

Every key is checked: an unknown key is an error naming it, so a typo never silently does nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixtera.planner.index.columns import PROPERTY_TYPE_NAMES, RESERVED
from mixtera.planner.mixture.toml_reader import parse_toml, read_config_text
from mixtera.runtime.errors import ConfigError

ON_ERROR = ("fail", "skip")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class PropertySpec:
    """One `[properties.NAME]` table: where the value comes from and its type."""

    name: str
    type: str = "string"
    from_: tuple[str, ...] = ()  # dotted JSON paths, first present wins
    path: str | None = None  # pattern over the relative file path, e.g. "{source}/**"
    default: Any = None

    def validate(self, where: str) -> None:
        if not _NAME.match(self.name) or self.name in RESERVED:
            raise ConfigError(
                f"{where}: property name {self.name!r} is not allowed",
                f"use letters, digits and _, and none of the reserved columns {', '.join(sorted(RESERVED))}",
            )
        if self.type not in PROPERTY_TYPE_NAMES:
            raise ConfigError(
                f"{where}: type {self.type!r} is not a property type",
                f"use one of {', '.join(PROPERTY_TYPE_NAMES)}",
            )
        if self.from_ and self.path is not None:
            raise ConfigError(f"{where}: give either `from` or `path`, not both")
        if self.default is not None and not _default_fits(self.default, self.type):
            raise ConfigError(f"{where}: default {self.default!r} is not of type {self.type}")

    def sources(self) -> list[str]:
        """How the manifest describes where the value comes from."""
        if self.path is not None:
            return [f"path:{self.path}"]
        return list(self.from_) if self.from_ else ["function"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexConfig:
    """The `[index]` table plus every `[properties.*]` table of an index config."""

    text: str | tuple[str, ...] = "text"  # dotted path, or paths of which the first present wins
    on_error: str = "fail"
    tokenizer: str | None = None  # absolute path once resolved
    eos: bool = True
    eos_token: str | None = None
    bos: bool = False  # a begin-of-document token before every document, counted like eos
    bos_token: str | None = None
    function: str | None = None  # "module:function" mapping (record, relpath) -> dict
    properties: tuple[PropertySpec, ...] = ()
    base_dir: str | None = field(default=None, compare=False)  # folder of the config file

    @property
    def text_paths(self) -> tuple[str, ...]:
        """The dotted text paths, in the order they are tried."""
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def explicit(self) -> bool:
        """True when the user declared properties or a hook (no automatic top-level fields)."""
        return bool(self.properties) or self.function is not None

    def validate(self, where: str = "index config") -> None:
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"{where}: [index] on_error = {self.on_error!r} is not one of fail, skip")
        if not self.text_paths or not all(self.text_paths):
            raise ConfigError(f"{where}: [index] text must name the field holding the document text",
                              'write text = "text", or paths tried in order: text = ["text", "txt"]')
        if self.function is not None and not _HOOK.match(self.function):
            raise ConfigError(
                f"{where}: [index] function = {self.function!r} is not of the form module:function",
                'write it like function = "my_props:extract"',
            )
        for spec in self.properties:
            spec.validate(f"{where}: [properties.{spec.name}]")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, as recorded in the manifest (sorted, JSON-ready)."""
        return {
            "text": self.text if isinstance(self.text, str) else list(self.text),
            "on_error": self.on_error,
            "tokenizer": self.tokenizer,
            "eos": self.eos,
            "eos_token": self.eos_token,
            "function": self.function,
            "properties": {
                p.name: {"type": p.type, "from": list(p.from_), "path": p.path, "default": p.default}
                for p in sorted(self.properties, key=lambda p: p.name)
            },
            # only when set, so that indexes without a begin-of-document token keep their bytes
            **({"bos": True, "bos_token": self.bos_token} if self.bos else {}),
        }


_INDEX_KEYS = {"text", "on_error", "tokenizer", "eos", "eos_token", "bos", "bos_token", "function"}
_PROPERTY_KEYS = {"type", "from", "path", "default"}
_TOP_KEYS = {"index", "properties"}


def parse_config(text: str, *, where: str = "index config", base_dir: Path | None = None) -> IndexConfig:
    """Parse and validate TOML ``text``; relative tokenizer paths resolve against ``base_dir``."""
    doc = parse_toml(text, where)
    _check_keys(doc, _TOP_KEYS, where, "")
    index = _table(doc.get("index", {}), where, "[index]")
    _check_keys(index, _INDEX_KEYS, where, "[index] ")
    props = _table(doc.get("properties", {}), where, "[properties]")
    specs = tuple(_parse_property(name, value, where) for name, value in sorted(props.items()))
    tokenizer = _opt_str(index, "tokenizer", where)
    if tokenizer is not None and base_dir is not None:
        tokenizer = str((base_dir / tokenizer).resolve())
    config = IndexConfig(
        text=_text(index, where),
        on_error=_str(index, "on_error", "fail", where),
        tokenizer=tokenizer,
        eos=_bool(index, "eos", True, where),
        eos_token=_opt_str(index, "eos_token", where),
        bos=_bool(index, "bos", False, where),
        bos_token=_opt_str(index, "bos_token", where),
        function=_opt_str(index, "function", where),
        properties=specs,
        base_dir=str(base_dir) if base_dir is not None else None,
    )
    config.validate(where)
    return config


def load_config(path: Path | str) -> IndexConfig:
    """Read and validate the index config file ``path``."""
    path = Path(path)
    text = read_config_text(path, "index config")
    return parse_config(text, where=str(path), base_dir=path.resolve().parent)


def _parse_property(name: str, value: Any, where: str) -> PropertySpec:
    label = f"[properties.{name}]"
    table = _table(value, where, label)
    _check_keys(table, _PROPERTY_KEYS, where, f"{label} ")
    sources = table.get("from", [])
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) and s for s in sources):
        raise ConfigError(f"{where}: {label} from must be a field path or a list of field paths")
    path = _opt_str(table, "path", where)
    return PropertySpec(
        name=name,
        type=_str(table, "type", "string", where),
        from_=tuple(sources) if (sources or path is not None) else (name,),
        path=path,
        default=table.get("default"),
    )


def _check_keys(table: dict[str, Any], allowed: set[str], where: str, prefix: str) -> None:
    for key in sorted(table):
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {prefix}{key!r}",
                f"allowed keys there: {', '.join(sorted(allowed))} (see man/mixtera-index.md)",
            )


def _table(value: Any, where: str, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {label} must be a table, got {type(value).__name__}")
    return value


def _str(table: dict[str, Any], key: str, default: str, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _text(table: dict[str, Any], where: str) -> str | tuple[str, ...]:
    value = table.get("text", "text")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value[0] if len(value) == 1 else tuple(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: [index] text must be a field path or a list of field paths, "
                          f"got {value!r}",
                          'e.g. text = "json.caption" or text = ["text", "txt"] (the first present wins)')
    return value


def _opt_str(table: dict[str, Any], key: str, where: str) -> str | None:
    return None if key not in table else _str(table, key, "", where)


def _bool(table: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _default_fits(value: Any, type_name: str) -> bool:
    checks = {
        "string": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list[string]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    }
    return checks[type_name](value)
