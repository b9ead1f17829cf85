"""Safe image decoding: bounded pixels, EXIF orientation, first frame, every mode to 8-bit RGB.

The pixel count is checked from the header before decoding; large JPEGs are decoded at reduced scale."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps

from shared.errors import TooLarge, UnsupportedMedia

# Only raster formats a browser or phone produces; EPS (Ghostscript), PSD and the rest stay closed.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
COPY_MEDIA_TYPE = "image/jpeg"
_NOT_READABLE = "not a readable image"


def _too_large(width: int, height: int, max_pixels: int) -> TooLarge:
    return TooLarge(
        f"image of {width}x{height} pixels over the {max_pixels} pixel limit (KASHF_MAX_IMAGE_PIXELS)"
    )


def decode_image(data: bytes, *, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` to an RGB image, upright, first frame only; a JPEG much larger than ``min_side``
    needs is decoded at reduced scale. TooLarge over ``max_pixels``, UnsupportedMedia if unreadable."""
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        # Pillow's own guard (2x its MAX_IMAGE_PIXELS) fired while reading the header.
        raise TooLarge(f"image over the {max_pixels} pixel limit (KASHF_MAX_IMAGE_PIXELS)") from None
    except (OSError, SyntaxError, ValueError, EOFError):  # UnidentifiedImageError is an OSError
        raise UnsupportedMedia(_NOT_READABLE) from None
    try:
        if min_side and img.format in ("JPEG", "MPO") and min(img.size) >= 4 * min_side:
            # Keep 2x the needed side: DCT-scaled pixels straight at model size shift the embedding
            # (cosine 0.985); one more resize from 2x brings it back to 0.999 of a full decode.
            img.draft("RGB", (2 * min_side, 2 * min_side))
        width, height = img.size
        if width < 1 or height < 1:
            raise UnsupportedMedia(_NOT_READABLE)
        if width * height > max_pixels:
            raise _too_large(width, height, max_pixels)
        img.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: the first frame
        img.load()
        upright = ImageOps.exif_transpose(img)
        return to_rgb(upright)
    except (TooLarge, UnsupportedMedia):
        raise
    except Image.DecompressionBombError:
        raise _too_large(*img.size, max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error):
        # Truncated or corrupt data surfaces as any of these, depending on the plugin.
        raise UnsupportedMedia(_NOT_READABLE) from None
    finally:
        img.close()


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; transparency composited on white (transparent pixels often hide black)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _wide_to_rgb(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale: scale to 0..255 (Pillow's convert would clip everything to white)."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if float(arr.max(initial=0.0)) <= 1.0 else 65535.0
    else:
        top = 65535.0 if float(arr.max(initial=0.0)) > 255.0 else 255.0
    grey = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def bounded_copy(
    img: Image.Image, *, short_side: int = 256, max_side: int = 1024, quality: int = 95,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> bytes:
    """A JPEG of ``img`` at the model's input scale: shorter side ``short_side``, longer <= ``max_side``."""
    # Resized as the model's preprocessing does, so re-embedding it skips a second resize; 4:4:4 at q95
    # because the model sees JPEG noise at this scale (cosine to the original >= 0.985 on real photos).
    copy = img.convert("RGB")
    w, h = copy.size
    scale = min(short_side / min(w, h), max_side / max(w, h))
    if scale < 1.0:
        copy = copy.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    out = io.BytesIO()
    copy.save(out, format="JPEG", quality=quality, subsampling=0, optimize=True)
    return out.getvalue()
