"""Build the captioned-image demo corpus: small pictures this script draws, captions that say what is drawn.

Every image is 32 x 32 pixels on a dark background with one or two shapes (circle, square, triangle) in
distinct quadrants, each in one of six colours; the caption names every shape, its colour and its quadrant
("a red circle in the top left and a blue square in the bottom right."), so a model can only caption
well by looking. Deterministic: fixed seeds, and tar headers without times, owners or PAX records, so the
same Pillow writes the same bytes. Layout::

    shapes/shapes-000{0..3}.tar   WebDataset shards: KEY.png (or .jpg in odd shards), KEY.txt, KEY.json
    heldout/heldout-0000.tar      the same kind of samples from another seed, never in a plan
    text/notes.jsonl              text-only sentences about shapes and colours ("text" field, no image)

The ``json`` member holds the caption and the drawn shapes (``shapes``: kind, colour, quadrant, box).
Run: ``python examples/make_vlm_corpus.py OUT_DIR``; ``build_vlm_corpus(out_dir)`` from Python.
"""

from __future__ import annotations

import io
import json
import random
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 32  # pixels per side; the tiny VLM cuts it into 8 x 8 patches
BACKGROUND = (16, 16, 16)
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
KINDS = ("circle", "square", "triangle")
QUADRANTS = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
SHARDS, PER_SHARD, HELDOUT = 4, 256, 128
TRAIN_SEED, HELDOUT_SEED, TEXT_SEED = 11, 23, 37


@dataclass(frozen=True, slots=True)
class Shape:
    kind: str
    colour: str
    quadrant: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive), in pixels


def draw_shapes(rng: random.Random) -> tuple[Image.Image, list[Shape]]:
    """One picture of one or two shapes in distinct quadrants, and what was drawn, left to right."""
    quadrants = rng.sample(sorted(QUADRANTS), rng.choice((1, 2)))
    quadrants.sort(key=lambda q: (QUADRANTS[q][1], QUADRANTS[q][0]))  # reading order: top row first
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    shapes = []
    for quadrant in quadrants:
        shape = _shape_in(quadrant, rng)
        _draw(pen, shape)
        shapes.append(shape)
    return image, shapes


def _shape_in(quadrant: str, rng: random.Random) -> Shape:
    half = SIZE // 2
    qx, qy = QUADRANTS[quadrant]
    side = rng.randint(9, 13)
    x0 = qx * half + rng.randint(1, half - side - 1)
    y0 = qy * half + rng.randint(1, half - side - 1)
    return Shape(rng.choice(KINDS), rng.choice(sorted(COLOURS)), quadrant, (x0, y0, x0 + side, y0 + side))


def _draw(pen: ImageDraw.ImageDraw, shape: Shape) -> None:
    fill = COLOURS[shape.colour]
    x0, y0, x1, y1 = shape.box
    if shape.kind == "circle":
        pen.ellipse(shape.box, fill=fill)
    elif shape.kind == "square":
        pen.rectangle(shape.box, fill=fill)
    else:
        pen.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def caption(shapes: list[Shape]) -> str:
    return " and ".join(f"a {s.colour} {s.kind} in the {s.quadrant}" for s in shapes) + "."


def encode(image: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "png":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def sample_members(key: str, rng: random.Random, ext: str) -> list[tuple[str, bytes]]:
    """The members of one WebDataset sample, in the order they are written."""
    image, shapes = draw_shapes(rng)
    text = caption(shapes)
    meta = {"caption": text, "key": key, "width": SIZE, "height": SIZE, "shapes": [asdict(s) for s in shapes]}
    return [
        (f"{key}.{ext}", encode(image, ext)),
        (f"{key}.txt", text.encode()),
        (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
    ]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar whose bytes depend only on ``members``: USTAR headers, no time, owner or mode of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def write_shard(path: Path, seed: int, first_key: int, count: int, ext: str) -> None:
    rng = random.Random(seed)
    members = []
    for n in range(first_key, first_key + count):
        members += sample_members(f"{n:06d}", rng, ext)
    write_tar(path, members)


TEXT_TEMPLATES = (
    "a {kind} drawn in {colour} looks the same in the {quadrant} as anywhere else.",
    "the {colour} paint was used for a {kind}.",
    "if you turn a {kind} around it is still a {kind}.",
    "{colour} is one of the six colours of the pictures.",
    "the {quadrant} is one quarter of a picture.",
)


def text_notes(count: int = 600) -> list[dict[str, str]]:
    """Sentences about the same words as the captions, with no picture to look at."""
    rng = random.Random(TEXT_SEED)
    rows = []
    for n in range(count):
        words = {"kind": rng.choice(KINDS), "colour": rng.choice(sorted(COLOURS)),
                 "quadrant": rng.choice(sorted(QUADRANTS))}
        rows.append({"id": f"note/{n}", "text": rng.choice(TEXT_TEMPLATES).format(**words)})
    return rows


def build_vlm_corpus(out_dir: Path | str, shards: int = SHARDS, per_shard: int = PER_SHARD) -> Path:
    """Write the corpus under ``out_dir`` (created; files of an earlier build are overwritten)."""
    root = Path(out_dir)
    for i in range(shards):
        ext = "png" if i % 2 == 0 else "jpg"
        write_shard(root / "shapes" / f"shapes-{i:04d}.tar", TRAIN_SEED + i, i * per_shard, per_shard, ext)
    write_shard(root / "heldout" / "heldout-0000.tar", HELDOUT_SEED, 0, HELDOUT, "png")
    (root / "text").mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(r, sort_keys=True) + "\n" for r in text_notes())
    (root / "text" / "notes.jsonl").write_text("".join(lines), encoding="utf-8")
    return root


def read_shard(path: Path) -> list[dict[str, bytes]]:
    """The samples of a shard as ``{extension: bytes}`` (plain ``tarfile``: for held-out evaluation)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return list(samples.values())


def corpus_texts(root: Path) -> list[str]:
    """Every caption and note of the corpus: what the demo's tokenizer is trained on."""
    captions = [s["txt"].decode() for shard in sorted(root.glob("*/*.tar")) for s in read_shard(shard)]
    notes = [json.loads(line)["text"] for line in (root / "text" / "notes.jsonl").read_text().splitlines()]
    return captions + notes


def train_vlm_tokenizer(root: Path, out: Path) -> Path:
    """A small BPE over the corpus texts with ``<image>``, the placeholder the tiny VLM reads images at."""
    from demo_tokenizer import train_tokenizer

    return train_tokenizer(corpus_texts(root), out, vocab_size=400, extra_special=("<image>",))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/vlm/corpus")
    root = build_vlm_corpus(out)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(f"captioned-image corpus in {root}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
