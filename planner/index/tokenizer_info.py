"""The tokenizer identity an index records: path, content hash, vocabulary size, end-of-document id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixtera.planner.index.config import IndexConfig
from mixtera.runtime.errors import ConfigError
from mixtera.runtime.tokenizer import cached_tokenizer, tokenizer_blake2b

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")


def tokenizer_identity(cfg: IndexConfig) -> dict[str, Any]:
    """Load ``cfg.tokenizer`` and describe it; ConfigError when it cannot be used."""
    path = Path(cfg.tokenizer or "")
    if not path.is_file():
        raise ConfigError(f"tokenizer {path} does not exist", "pass a Hugging Face tokenizer.json file")
    digest = tokenizer_blake2b(path)
    tok = cached_tokenizer(str(path.resolve()), digest)
    return {
        "path": str(path.resolve()),
        "name": path.name,
        "blake2b": digest,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "eos_id": _eos_id(tok, cfg, path),
        "eos": cfg.eos,
        **({"bos": True, "bos_id": _bos_id(tok, cfg, path)} if cfg.bos else {}),
    }


def _bos_id(tok: Any, cfg: IndexConfig, path: Path) -> int:
    names = (cfg.bos_token,) if cfg.bos_token else BOS_CANDIDATES
    for name in names:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    if cfg.bos_token:
        raise ConfigError(f"tokenizer {path} has no token {cfg.bos_token!r} (bos_token)",
                          "set [index] bos_token to a token of the vocabulary")
    raise ConfigError(
        f"tokenizer {path} has none of the begin-of-document tokens {', '.join(BOS_CANDIDATES)}",
        'set [index] bos_token = "...", or drop bos = true')


def _eos_id(tok: Any, cfg: IndexConfig, path: Path) -> int | None:
    names = (cfg.eos_token,) if cfg.eos_token else EOS_CANDIDATES
    for name in names:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    if cfg.eos_token:
        raise ConfigError(
            f"tokenizer {path} has no token {cfg.eos_token!r} (eos_token)",
            "set [index] eos_token to a token of the vocabulary",
        )
    if cfg.eos:
        raise ConfigError(
            f"tokenizer {path} has none of the end-of-document tokens {', '.join(EOS_CANDIDATES)}",
            'set [index] eos_token = "...", or eos = false to count no end-of-document token',
        )
    return None
