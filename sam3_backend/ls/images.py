"""Decode task media bytes to RGB pixels as a browser shows them (EXIF orientation, pixel limits)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MediaUnavailable
from ..types import ImageInput

# Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS): about 179 megapixels, 537 MB as RGB.
MAX_IMAGE_PIXELS = 178_956_970


def load_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInput:
    """Decode media bytes to RGB uint8 pixels (H, W, 3) as a browser shows them.

    EXIF orientation is applied, since Label Studio's original_width/height describe the displayed
    image. The key is the hex sha256 of ``data``. Raises MediaUnavailable for empty, non-image,
    corrupt or oversized (``max_pixels``) input; only the first frame of animations is used.
    """
    if not data:
        raise MediaUnavailable("the media file is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise MediaUnavailable(_too_many_pixels(width, height, max_pixels))
            img.load()
            img = ImageOps.exif_transpose(img)
            pixels = _to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise MediaUnavailable(f"the image is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        head = data[:64].lstrip().lower()
        hint = ""
        if head.startswith((b"<", b"{")):
            hint = " (it looks like HTML/JSON: the URL may lead to a login or error page; check the token)"
        raise MediaUnavailable(f"the media is not an image Pillow can read{hint}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaUnavailable(f"the image is corrupt or truncated: {exc}") from exc
    return ImageInput(pixels=pixels, key=hashlib.sha256(data).hexdigest())


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B"):  # 16-bit grayscale: keep the high byte like browsers
        gray = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode in ("I", "F"):  # 32-bit: stretch the range to 0-255
        values = np.asarray(img, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        gray = np.zeros(values.shape, np.uint8) if hi <= lo else ((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent shows as white
        img = Image.alpha_composite(background, img)
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _too_many_pixels(width: int, height: int, limit: int) -> str:
    return (
        f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit of "
        f"{limit:,} pixels (MEDIA_MAX_PIXELS; raise it if such images are expected)"
    )


__all__ = ["MAX_IMAGE_PIXELS", "load_image"]
