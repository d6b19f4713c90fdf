"""Index config parsing: every key checked, TOML errors with line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixtera.planner.index import parse_config
from mixtera.planner.index.config import load_config
from mixtera.runtime.errors import ConfigError

FULL = """
[index]
text = "body.text"
on_error = "skip"
tokenizer = "tok/tokenizer.json"
eos = false
eos_token = "</s>"
function = "my_props:extract"

[properties.language]
from = ["lang", "meta.language"]
type = "string"
default = "unknown"

[properties.source]
path = "{source}/**"

[properties.quality]
from = "metadata.score"
type = "float"

[properties.tags]
type = "list[string]"
"""


def test_full_config_parses(tmp_path: Path) -> None:
    cfg = parse_config(FULL, base_dir=tmp_path)
    assert (cfg.text, cfg.on_error, cfg.eos, cfg.eos_token, cfg.function) == (
        "body.text",
        "skip",
        False,
        "</s>",
        "my_props:extract",
    )
    assert cfg.tokenizer == str(tmp_path / "tok" / "tokenizer.json")
    props = {p.name: p for p in cfg.properties}
    assert props["language"].from_ == ("lang", "meta.language")
    assert props["language"].default == "unknown"
    assert props["source"].path == "{source}/**"
    assert props["quality"].from_ == ("metadata.score",) and props["quality"].type == "float"
    assert props["tags"].from_ == ("tags",)  # neither from nor path: the field of the same name


def test_defaults() -> None:
    cfg = parse_config("")
    assert (cfg.text, cfg.on_error, cfg.tokenizer, cfg.eos, cfg.properties) == (
        "text",
        "fail",
        None,
        True,
        (),
    )
    assert not cfg.explicit


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[index]\ntxt = 'x'\n", "unknown key [index] 'txt'"),
        ("[properties.a]\nfrom = ['x']\ntpye = 'int'\n", "unknown key [properties.a] 'tpye'"),
        ("[indexx]\n", "unknown key 'indexx'"),
        ("[index]\non_error = 'ignore'\n", "on_error = 'ignore'"),
        ("[index]\neos = 'yes'\n", "eos must be true or false"),
        ("[properties.a]\ntype = 'integer'\n", "type 'integer' is not a property type"),
        ("[properties.offset]\nfrom = ['x']\n", "property name 'offset' is not allowed"),
        ("[properties.a]\ntype = 'int'\ndefault = 'zero'\n", "default 'zero' is not of type int"),
        ("[properties.a]\nfrom = ['x']\npath = '{a}/**'\n", "either `from` or `path`"),
        ("[index]\nfunction = 'no_colon'\n", "not of the form module:function"),
        ("[properties.a]\nfrom = [1, 2]\n", "from must be a field path"),
    ],
    ids=[
        "index-key",
        "property-key",
        "top-key",
        "on_error",
        "eos",
        "type",
        "reserved",
        "default",
        "from+path",
        "function",
        "from-type",
    ],
)
def test_bad_config_names_the_problem(toml: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(toml, where="cfg.toml")
    assert needle in exc.value.message
    assert exc.value.message.startswith("cfg.toml: ")


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "index.toml"
    path.write_text('[index]\ntext = "text"\non_error = fail\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in exc.value.message
    assert "line 3, column 12" in exc.value.message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
