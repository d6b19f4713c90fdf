"""WebDataset shards for tests: tar files of Pillow-drawn images with captions, written in the test.

`write_shard(path, samples)` writes members in the order given; a sample is a dict
``{extension: bytes | str | dict}`` with a ``__key__`` (str dicts become JSON, str become UTF-8).
`image_samples(n)` makes ``n`` captioned samples with PNG images of varying sizes.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

COLOURS = ("red", "green", "blue", "yellow")


def png_bytes(width: int, height: int, colour: str = "red", fmt: str = "PNG") -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(im).rectangle([width // 4, height // 4, width * 3 // 4, height * 3 // 4], fill=colour)
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def image_samples(n: int, *, start: int = 0, fmt: str = "png") -> list[dict[str, Any]]:
    """Captioned image samples: ``png`` (or ``jpg``), ``txt`` and ``json`` (caption, colour, index)."""
    out = []
    for i in range(start, start + n):
        colour = COLOURS[i % len(COLOURS)]
        w, h = 16 + 8 * (i % 5), 12 + 4 * (i % 3)
        caption = f"a {colour} square number {i}"
        out.append({"__key__": f"s{i:05d}",
                    fmt: png_bytes(w, h, colour, "JPEG" if fmt == "jpg" else "PNG"),
                    "txt": caption,
                    "json": {"caption": caption, "colour": colour, "index": i,
                             "captions": {"de": f"ein {colour} Quadrat {i}"}}})
    return out


def member_bytes(value: bytes | str | dict[str, Any]) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def write_members(path: Path, members: list[tuple[str, bytes | str | dict[str, Any]]]) -> Path:
    """A tar of ``(member name, value)`` in this order (for odd layouts: non-adjacent keys, no text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, value in members:
            data = member_bytes(value)
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
    return path


def write_shard(path: Path, samples: list[dict[str, Any]], folder: str = "") -> Path:
    """A WebDataset shard: each sample's members adjacent, in the sample's key order."""
    members = [(f"{folder}{s['__key__']}.{ext}", v)
               for s in samples for ext, v in s.items() if ext != "__key__"]
    return write_members(path, members)


def mixed_corpus(root: Path, shards: int = 2, per_shard: int = 12, texts: int = 30) -> Path:
    """``root/img/shard-<i>.tar`` (captioned PNGs) beside ``root/text/t.jsonl`` (plain documents)."""
    for i in range(shards):
        write_shard(root / "img" / f"shard-{i}.tar", image_samples(per_shard, start=i * per_shard))
    text = root / "text" / "t.jsonl"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("".join(json.dumps({"text": f"document {i} " + "word " * (3 + i % 7)}) + "\n"
                            for i in range(texts)))
    return root


def mixture_toml(index: Path, weights: dict[str, float], *, unit: str = "samples", steps: int = 6,
                 world_size: int = 2, batch_size: int = 5, seq_len: int = 0, seed: int = 3,
                 extra: str = "") -> str:
    """A mixture over an index of ``mixed_corpus`` (property `source`: img, text)."""
    parts = [f'[mixture]\nindex = "{index}"\nunit = "{unit}"\nsteps = {steps}\nsegment_steps = 2\n'
             f"seed = {seed}\n{extra}",
             f"[topology]\nworld_size = {world_size}\nbatch_size = {batch_size}\n"
             + (f"seq_len = {seq_len}\n" if seq_len else "")]
    parts += [f"[components.{name}]\nwhere = \"source == '{name}'\"\nweight = {w}\n"
              for name, w in weights.items()]
    return "\n".join(parts)
