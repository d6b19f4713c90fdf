"""Decoding the images of WebDataset samples into uint8 tensors (3, H, W), in the loader workers.

Pillow decodes (imported on first use: `mixtera.runtime.webdataset.pillow`). Transparency (an alpha
band, or a palette / colour key with ``transparency``) is composited over white, then the image is
RGB. An optional target size ``(H, W)`` resizes preserving the aspect ratio so that the image covers
the target and keeps the centre, the usual preprocessing of vision encoders (CLIP, SigLIP): one
bicubic resize of the centred box straight to (H, W), after a JPEG has been decoded at the smallest
DCT scale (1/2, 1/4, 1/8) that still covers the target (``Image.draft``: less to decode and resize).

A step's images are written into one tensor storage (`decode_step_images`), each image a view of it:
a loader worker hands every storage to the main process through its own shared-memory segment and
file descriptor, so one storage per step instead of one per image saves most of that cost.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mixtera.runtime.errors import CorpusError, MixteraUserError
from mixtera.runtime.webdataset import kind_of, pillow

_REINDEX = "check the shard (re-download it), re-index and recompile"
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
WHITE = (255, 255, 255)


def check_image_size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` as (H, W) of positive ints, or None; MixteraUserError otherwise."""
    if image_size is None:
        return None
    ok = (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size))
    if not ok:
        raise MixteraUserError(f"image_size={image_size!r} must be (height, width), two positive ints",
                               "e.g. image_size=(224, 224)")
    return int(image_size[0]), int(image_size[1])


def decode_image(data: bytes, size: tuple[int, int] | None = None, *, where: str = "image") -> torch.Tensor:
    """The image in ``data`` as a uint8 tensor (3, H, W): RGB over white; resized and centre-cropped
    to ``size``."""
    (image,) = _in_one_storage([rgb_image(data, size, where=where)])
    return image


def rgb_image(data: bytes, size: tuple[int, int] | None = None, *, where: str = "image") -> Any:
    """The image in ``data`` as a Pillow RGB image (transparency over white), covering ``size``."""
    image_mod = pillow()
    try:
        im = image_mod.open(io.BytesIO(data))
        if size is not None and im.format == "JPEG":
            im.draft(im.mode, _cover_size(im.size, size))  # decode at a reduced scale that still covers
        rgb = _over_white(im, image_mod)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for an image it cannot decode
        raise CorpusError(f"{where}: the image cannot be decoded ({type(exc).__name__}: {exc})",
                          _REINDEX) from None
    return rgb if size is None else _cover_resize(rgb, size, image_mod)


def _over_white(im: Any, image_mod: Any) -> Any:
    """``im`` in RGB, its transparent parts composited over white (not the black or the arbitrary
    colours a plain ``convert("RGB")`` leaves behind)."""
    if im.mode not in _ALPHA_MODES and "transparency" not in im.info:
        if im.mode == "RGB":
            im.load()
            return im
        return im.convert("RGB")
    rgba = im.convert("RGBA")  # palette / grey / colour-key transparency become an alpha band
    out = image_mod.new("RGB", rgba.size, WHITE)
    out.paste(rgba, mask=rgba)  # out = rgb * alpha + white * (1 - alpha)
    return out


def _cover_size(have: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of ``have`` = (W, H) scaled, aspect kept, to just cover ``size`` = (h, w)."""
    (w0, h0), (h, w) = have, size
    scale = max(h / h0, w / w0)
    return max(w, round(w0 * scale)), max(h, round(h0 * scale))


def _cover_resize(im: Any, size: tuple[int, int], image_mod: Any) -> Any:
    """The centred box of ``im`` with the aspect ratio of ``size`` = (H, W), resized to (H, W) in one
    step (no intermediate image, no crop copy)."""
    h, w = size
    if im.size == (w, h):
        return im
    scale = max(h / im.height, w / im.width)
    bw, bh = min(im.width, w / scale), min(im.height, h / scale)  # one of them is the whole side
    left, top = (im.width - bw) / 2, (im.height - bh) / 2
    return im.resize((w, h), image_mod.Resampling.BICUBIC, box=(left, top, left + bw, top + bh))


def _in_one_storage(images: Sequence[Any]) -> list[torch.Tensor]:
    """The RGB images as uint8 tensors (3, H, W), views of one new contiguous buffer."""
    shapes = [(3, im.height, im.width) for im in images]
    sizes = [3 * h * w for _, h, w in shapes]
    buffer = torch.empty(sum(sizes), dtype=torch.uint8)
    flat, out, at = buffer.numpy(), [], 0
    for im, shape, n in zip(images, shapes, sizes, strict=True):
        np.copyto(flat[at : at + n].reshape(shape), np.asarray(im).transpose(2, 0, 1))
        out.append(buffer[at : at + n].view(shape))
        at += n
    return out


def decode_step_images(media: Sequence[dict[str, bytes] | None], size: tuple[int, int] | None,
                       names: Sequence[str]) -> list[list[torch.Tensor] | None]:
    """Per sample of a step (``names``: its sample id, for errors), its image members in archive
    order decoded, all views of one storage; None for a sample without media (a text file's)."""
    decoded = [None if m is None else [rgb_image(data, size, where=f"{name} .{ext}")
                                       for ext, data in m.items() if kind_of(ext) == "image"]
               for m, name in zip(media, names, strict=True)]
    tensors = iter(_in_one_storage([im for ims in decoded if ims is not None for im in ims]))
    return [None if ims is None else [next(tensors) for _ in ims] for ims in decoded]


def without_images(media: Sequence[dict[str, bytes] | None]) -> list[dict[str, bytes] | None]:
    """Each sample's media without its image members (their decoded tensors stand for them)."""
    return [None if m is None else {ext: data for ext, data in m.items() if kind_of(ext) != "image"}
            for m in media]
