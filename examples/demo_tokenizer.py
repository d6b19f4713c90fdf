"""Train a small byte-level BPE tokenizer offline, for the demo and for tests without ../shared.

Real jobs use a real tokenizer.json (for example ../shared/tokenizers); this one exists so that a
fresh machine can run everything without downloading a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"


def train_tokenizer(
    texts: Iterable[str], out: Path, vocab_size: int = 2000, extra_special: tuple[str, ...] = ()
) -> Path:
    """A BPE with ``<|endoftext|>`` and ``extra_special`` (e.g. ``<image>``) as special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


if __name__ == "__main__":
    import sys

    paths = [Path(p) for p in sys.argv[2:]]
    train_tokenizer((p.read_text(errors="replace") for p in paths), Path(sys.argv[1]))
