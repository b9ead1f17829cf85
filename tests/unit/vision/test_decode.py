"""vision_service.decode on real photos and hostile files built here: what the model finally sees."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from shared.errors import TooLarge, UnsupportedMedia
from vision_service.decode import bounded_copy, decode_image

MAX = 40_000_000
RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _astronaut(size: int = 128) -> Image.Image:
    return Image.fromarray(skdata.astronaut()).resize((size, size))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(side: int) -> bytes:
    """A valid 1-bit PNG of one colour: ~100 KiB on disk, side*side pixels once decoded."""
    row = b"\x00" * (side // 8 + 2)
    block = row * max(1, (1 << 20) // len(row))
    per_block = len(block) // len(row)
    packer = zlib.compressobj(6)
    parts, left = [], side
    while left > 0:
        n = min(per_block, left)
        parts.append(packer.compress(block[: n * len(row)]))
        left -= n
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def _mean(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(img.crop(box), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_real_photo_decodes_to_the_same_pixels() -> None:
    photo = Image.fromarray(skdata.coffee())
    out = decode_image(_encode(photo, "PNG"), max_pixels=MAX)
    assert out.mode == "RGB"
    assert out.size == photo.size
    assert np.array_equal(np.asarray(out), np.asarray(photo))


def test_exif_orientation_is_applied() -> None:
    # Stored landscape, left half red; orientation 6 means "rotate 90 degrees clockwise to display".
    stored = Image.new("RGB", (120, 80), BLUE)
    stored.paste(RED, (0, 0, 60, 80))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(_encode(stored, "JPEG", quality=95, exif=exif.tobytes()), max_pixels=MAX)
    assert out.size == (80, 120)  # upright: portrait
    assert np.abs(_mean(out, (0, 0, 80, 50)) - RED).max() < 20  # what was left is now on top
    assert np.abs(_mean(out, (0, 70, 80, 120)) - BLUE).max() < 20


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 48), c) for c in (RED, GREEN, BLUE)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out = decode_image(data, max_pixels=MAX)
    assert out.mode == "RGB" and out.size == (64, 48)
    assert np.abs(_mean(out, (0, 0, 64, 48)) - RED).max() < 12


def test_cmyk_jpeg_becomes_the_same_picture_in_rgb() -> None:
    photo = _astronaut()
    data = _encode(photo.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data, max_pixels=MAX)
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out, dtype=np.float64) - np.asarray(photo, dtype=np.float64)).mean() < 8


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white_not_black(mode: str) -> None:
    # Fully transparent pixels carry black colour values, as most editors write them.
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((200, 40, 40, 255), (0, 0, 20, 40))
    img = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").convert("P")
    params: dict[str, object] = {}
    if mode == "P":
        black = img.getpixel((30, 30))
        params["transparency"] = black
    out = decode_image(_encode(img, "PNG", **params), max_pixels=MAX)
    assert out.mode == "RGB"
    assert _mean(out, (25, 0, 40, 40)).min() > 250  # the transparent half is white
    opaque = _mean(out, (0, 0, 15, 40))
    assert 60 < opaque.max() < 230  # the opaque half keeps its colour (grey 88 in LA)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    data = _encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = np.asarray(decode_image(data, max_pixels=MAX))
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[128] - 128) <= 2  # linear, where Pillow's own convert would be 255 almost everywhere
    assert np.all(np.diff(row) >= 0)


def test_truncated_jpeg_is_not_readable() -> None:
    data = _encode(_astronaut(256), "JPEG", quality=90)
    with pytest.raises(UnsupportedMedia, match="not a readable image"):
        decode_image(data[: len(data) // 2], max_pixels=MAX)


@pytest.mark.parametrize("data", [
    os.urandom(4096),
    b"",
    b"\xff\xd8\xff" + os.urandom(2000),  # a JPEG signature with garbage behind it
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # EPS would run Ghostscript: never opened
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
], ids=["random", "empty", "jpeg-garbage", "eps", "svg"])
def test_non_images_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMedia, match="not a readable image"):
        decode_image(data, max_pixels=MAX)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _bomb_png(30000)  # 900 million pixels in about 100 KiB
    assert len(bomb) < 200_000
    with pytest.raises(TooLarge, match="KASHF_MAX_IMAGE_PIXELS"):
        decode_image(bomb, max_pixels=MAX)


def test_image_over_the_configured_pixel_limit_is_refused() -> None:
    data = _encode(Image.new("RGB", (1200, 1000), GREEN), "PNG")
    with pytest.raises(TooLarge, match=r"1200x1000 pixels over the 1000000 pixel limit"):
        decode_image(data, max_pixels=1_000_000)


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    big = Image.fromarray(skdata.astronaut()).resize((2048, 1536))
    jpeg = _encode(big, "JPEG", quality=90)
    out = decode_image(jpeg, max_pixels=1_000_000, min_side=256)
    assert out.size == (1024, 768)  # 1/2 scale: still twice the 256 px the model resizes to
    small = np.asarray(big.resize((1024, 768), Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(np.asarray(out, dtype=np.float64) - small).mean() < 6
    # The same pixels as PNG cannot be drafted, so the limit holds.
    with pytest.raises(TooLarge):
        decode_image(_encode(big, "PNG"), max_pixels=1_000_000, min_side=256)


def test_bounded_copy_is_a_small_jpeg_at_the_model_scale() -> None:
    photo = Image.fromarray(skdata.chelsea())  # 451x300
    copy = bounded_copy(photo, short_side=256)
    assert copy[:3] == b"\xff\xd8\xff"
    back = decode_image(copy, max_pixels=MAX)
    assert back.size == (385, 256)  # the size the model resizes the original to
    assert len(copy) < 60_000
    ref = np.asarray(photo.resize(back.size, Image.Resampling.BILINEAR), dtype=np.float64)
    assert np.abs(np.asarray(back, dtype=np.float64) - ref).mean() < 2.5
    # A panorama keeps its longer side bounded; a small image is never upscaled.
    pano = decode_image(bounded_copy(photo.resize((4000, 300))), max_pixels=MAX)
    assert pano.size == (1024, 77)
    tiny = decode_image(bounded_copy(photo.resize((120, 80))), max_pixels=MAX)
    assert tiny.size == (120, 80)
