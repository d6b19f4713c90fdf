"""runtime/images.py on real images made with Pillow: transparency over white, JPEG draft, the cover
resize, one storage per step; no Pillow warning on any of them."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from mixtera.runtime.images import decode_image, decode_step_images, rgb_image, without_images

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def warnings_are_errors() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _encoded(im: object, fmt: str = "PNG", **save: object) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **save)
    return out.getvalue()


def _palette_png() -> bytes:
    """4 x 1: a transparent red, a half-transparent blue, an opaque green and an opaque black pixel,
    the transparency per palette entry (a tRNS chunk of bytes, what Pillow warns about)."""
    im = Image.new("P", (4, 1))
    im.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0, 0, 0, 0])
    im.putdata([0, 1, 2, 3])
    return _encoded(im, transparency=bytes([0, 128, 255, 255]))


def test_the_palette_image_is_one_pillow_warns_about() -> None:
    with pytest.raises(UserWarning, match="Palette images with Transparency expressed in bytes"):
        Image.open(io.BytesIO(_palette_png())).convert("RGB")  # what a plain RGB conversion does


def test_palette_transparency_is_composited_over_white() -> None:
    img = decode_image(_palette_png())
    assert img.shape == (3, 1, 4) and img.dtype == torch.uint8
    pixels = img[:, 0, :].T.tolist()
    assert pixels[0] == [255, 255, 255]  # transparent: white, not red
    assert pixels[1][:2] == [127, 127] and pixels[1][2] == 255  # half blue over white
    assert pixels[2:] == [[0, 255, 0], [0, 0, 0]]


def test_grey_with_alpha_is_composited_over_white() -> None:
    grey = Image.new("LA", (3, 2), (0, 255))
    grey.putpixel((1, 0), (0, 0))
    grey.putpixel((2, 0), (100, 64))
    img = decode_image(_encoded(grey)).numpy()
    assert img.shape == (3, 2, 3)
    assert (img[:, 1, :] == 0).all() and (img[:, 0, 0] == 0).all()
    assert (img[:, 0, 1] == 255).all()
    want = round(100 * 64 / 255 + 255 * (1 - 64 / 255))
    assert np.abs(img[:, 0, 2].astype(int) - want).max() <= 1


def test_rgba_is_composited_over_white_and_rgb_colour_keys_too() -> None:
    rgba = Image.new("RGBA", (2, 2), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # transparent red
    img = decode_image(_encoded(rgba))
    assert img[:, 0, 0].tolist() == [255, 255, 255] and img[:, 1, 1].tolist() == [0, 0, 255]
    keyed = Image.new("RGB", (2, 1), (10, 20, 30))
    keyed.putpixel((1, 0), (255, 0, 0))
    img = decode_image(_encoded(keyed, transparency=(255, 0, 0)))  # red is the transparent colour
    assert img[:, 0, :].T.tolist() == [[10, 20, 30], [255, 255, 255]]


def test_transparent_images_resize_like_their_flattened_copy() -> None:
    rgba = Image.radial_gradient("L").convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L"))
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba)
    got = decode_image(_encoded(rgba), (32, 48)).numpy().astype(int)
    want = decode_image(_encoded(flat), (32, 48)).numpy().astype(int)
    assert got.shape == (3, 32, 48) and np.abs(got - want).max() <= 1


def _gradient_jpeg(width: int, height: int) -> bytes:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 128.0)], axis=2)
    return _encoded(Image.fromarray(rgb.astype(np.uint8)), "JPEG", quality=95)


def test_a_large_jpeg_is_decoded_at_reduced_scale_close_to_a_full_decode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    data = _gradient_jpeg(2000, 1500)
    drafted: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: object, mode: str | None, size: tuple[int, int] | None) -> object:
        out = draft(self, mode, size)
        drafted.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    img = decode_image(data, (224, 224))
    assert drafted == [(500, 375)]  # 1/4 scale: the smallest that still covers 299 x 224
    assert img.shape == (3, 224, 224) and img.dtype == torch.uint8
    full = Image.open(io.BytesIO(data)).convert("RGB")  # no draft: every pixel decoded
    left = (2000 - 1500) / 2
    want = np.asarray(full.resize((224, 224), Image.Resampling.BICUBIC, box=(left, 0, left + 1500, 1500)))
    diff = np.abs(img.numpy().transpose(1, 2, 0).astype(int) - want.astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 12
    red = img[0, 112, :].numpy().astype(int)  # the horizontal gradient, columns 250 to 1750 of 2000
    assert np.abs(red - np.linspace(32, 222, 224)).max() < 4


def test_small_images_are_not_drafted_and_cover_by_upscaling() -> None:
    data = _gradient_jpeg(40, 120)
    assert rgb_image(data, (224, 224)).size == (224, 224)
    tall = decode_image(data, (224, 224)).numpy().astype(int)
    assert tall.shape == (3, 224, 224)
    assert abs(tall[1, 112, 112] - 128) < 8  # the centre row of a vertical gradient


@pytest.mark.parametrize("size", [None, (8, 8)])
def test_a_steps_images_are_views_of_one_storage(size: tuple[int, int] | None) -> None:
    red, blue = _encoded(Image.new("RGB", (6, 4), "red")), _encoded(Image.new("RGB", (3, 5), "blue"))
    media = [{"png": red, "seg.png": blue, "npy": b"raw"}, None, {"jpg": _gradient_jpeg(16, 16)}]
    got = decode_step_images(media, size, ["a#0", "b#1", "c#2"])
    assert got[1] is None and [len(x) for x in (got[0], got[2])] == [2, 1]
    first, second, third = got[0][0], got[0][1], got[2][0]
    assert {t.untyped_storage().data_ptr() for t in (first, second, third)} == {
        first.untyped_storage().data_ptr()}
    assert all(t.is_contiguous() for t in (first, second, third))
    assert torch.equal(first, decode_image(red, size)) and torch.equal(second, decode_image(blue, size))
    assert first.shape == ((3, 4, 6) if size is None else (3, 8, 8))
    assert without_images(media) == [{"npy": b"raw"}, None, {}]


def test_a_step_without_images_decodes_nothing() -> None:
    assert decode_step_images([None, {"npy": b"raw"}], (4, 4), ["a#0", "b#1"]) == [None, []]
