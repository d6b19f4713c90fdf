"""Reading TOML configs (index configs, mixture specs) with errors that name file, line and column."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from mixtera.runtime.errors import ConfigError

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def read_config_text(path: Path, what: str) -> str:
    """The text of config file ``path``; ``what`` names it in errors ("mixture file", ...)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {what} cannot be read ({exc})") from None


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """Parse TOML ``text``; invalid TOML raises ConfigError with the line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _POSITION.search(str(exc))
        at = f"line {m.group(1)}, column {m.group(2)}" if m else "an unknown position"
        raise ConfigError(
            f"{where}: invalid TOML at {at}: {_POSITION.sub('', str(exc))}",
            "check quotes, brackets and `key = value` syntax on that line",
        ) from None
