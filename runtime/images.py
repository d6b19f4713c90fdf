"""Decoding the images of WebDataset samples into uint8 tensors (3, H, W), in the loader workers.

Pillow decodes (imported on first use: `mixtera.runtime.webdataset.pillow`); an optional target size
``(H, W)`` resizes preserving the aspect ratio so that the image covers the target, then crops the
centre, the usual preprocessing of vision encoders (CLIP, SigLIP).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from mixtera.runtime.errors import CorpusError, MixteraUserError
from mixtera.runtime.webdataset import kind_of, pillow

_REINDEX = "check the shard (re-download it), re-index and recompile"


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
    """The RGB image in ``data`` as a uint8 tensor (3, H, W); resized and centre-cropped to ``size``."""
    image_mod = pillow()
    try:
        with image_mod.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for an image it cannot decode
        raise CorpusError(f"{where}: the image cannot be decoded ({type(exc).__name__}: {exc})",
                          _REINDEX) from None
    if size is not None:
        rgb = _cover_crop(rgb, size, image_mod)
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _cover_crop(im: Any, size: tuple[int, int], image_mod: Any) -> Any:
    """Resize so that ``im`` covers (H, W) with its aspect ratio kept, then crop the centre."""
    h, w = size
    scale = max(h / im.height, w / im.width)
    rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    if (rw, rh) != (im.width, im.height):
        im = im.resize((rw, rh), image_mod.Resampling.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    return im.crop((left, top, left + w, top + h))


def decode_media_images(media: dict[str, bytes], size: tuple[int, int] | None,
                        where: str = "sample") -> list[torch.Tensor]:
    """The sample's image members, in archive order, decoded."""
    return [decode_image(data, size, where=f"{where} .{ext}") for ext, data in media.items()
            if kind_of(ext) == "image"]
