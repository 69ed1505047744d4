"""Every uploaded image goes through here: UI fields, the HTTP API and the CLI (security-cases row 14).

The pixel count is checked from the header (`Image.open` reads only the header) before anything is decoded, so a
20000x20000 PNG or a tiny decompression bomb is refused without allocating its pixels. Pillow's own
`MAX_IMAGE_PIXELS` guard stays on as a second line; its warning is treated as an error. After decoding, images are
normalised to 8-bit RGB/RGBA/L/LA (16-bit, palette, CMYK, float and EXIF-rotated images included).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from webui.services.requests import RequestError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7070x7070: far above any generation size, far below Pillow's bomb threshold
MAX_PIXELS_ENV = "LATENT_STUDIO_MAX_IMAGE_PIXELS"
_URL_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")  # http:, HTTPS:, file:, ftp:...; base64 never holds a colon

ImageSource = Union[str, Path, bytes, BinaryIO, Image.Image, np.ndarray]


class UploadError(RequestError):
    """An uploaded image was refused; `field_name` names the upload field, the message says why."""


@dataclass(frozen=True)
class UploadLimits:
    """How big an uploaded image may be. Configurable: constructor, or the LATENT_STUDIO_MAX_IMAGE_PIXELS variable."""

    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_env(cls) -> "UploadLimits":
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return cls()
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels") from None
        if value <= 0:
            raise ValueError(f"{MAX_PIXELS_ENV} must be positive")
        return cls(max_pixels=value)


def _megapixels(count: int) -> str:
    return f"{count / 1e6:.1f} MP"


def check_size(width: int, height: int, field: str, limits: UploadLimits) -> None:
    if width <= 0 or height <= 0:
        raise UploadError(field, f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise UploadError(
            field,
            f"the image is {width}x{height} ({_megapixels(width * height)}); the limit is "
            f"{_megapixels(limits.max_pixels)} — scale it down first",
        )


def _open_header(source: str | Path | bytes | BinaryIO, field: str) -> Image.Image:
    """Open without decoding; Pillow's bomb warning becomes an error."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(field, f"refused: the image declares too many pixels ({exc})") from None
    except FileNotFoundError:
        raise UploadError(field, f"file not found: {source}") from None
    except UnidentifiedImageError:
        raise UploadError(field, "not an image file that can be read (use PNG, JPEG or WebP)") from None
    except OSError as exc:
        raise UploadError(field, f"could not read the image: {exc}") from None


def check_header(source: str | Path | bytes | BinaryIO, field: str, limits: UploadLimits) -> tuple[int, int]:
    """Size from the header, refused over the limit; nothing is decoded."""
    with _open_header(source, field) as image:
        check_size(image.width, image.height, field, limits)
        return image.size


def normalise(image: Image.Image) -> Image.Image:
    """Any decoded image -> 8-bit RGB, RGBA, L or LA, upright by its EXIF orientation."""
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if mode.startswith("I;16"):
        array = np.asarray(image.convert("I"), dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "L")
    if mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "F" and array.size and np.nanmax(array) <= 1.0:
            array = array * 255.0
        elif array.size and np.nanmax(array) > 255:
            array = array / 257.0
        return Image.fromarray(np.clip(np.nan_to_num(array) + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "1":
        return image.convert("L")
    if mode in ("P", "PA"):
        return image.convert("RGBA" if ("transparency" in image.info or mode == "PA") else "RGB")
    if mode.startswith("RGBA") or mode in ("RGBa", "La"):
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, 48-bit RGB variants


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Flatten transparency onto a background (white, like A1111's default) and drop greyscale to RGB."""
    image = normalise(image)
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(flat, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, field: str, limits: UploadLimits | None = None) -> Image.Image:
    """The one entry point for uploads: header check, bounded decode, normalisation. Raises UploadError."""
    limits = limits or UploadLimits.from_env()
    if isinstance(source, np.ndarray):  # already decoded by the caller (e.g. a Gradio numpy value)
        if source.ndim < 2:
            raise UploadError(field, "not an image")
        check_size(source.shape[1], source.shape[0], field, limits)
        array = source if source.dtype == np.uint8 else np.clip(source, 0, 255).astype(np.uint8)
        return normalise(Image.fromarray(array))
    if isinstance(source, Image.Image):
        check_size(source.width, source.height, field, limits)
        return normalise(source)
    image = _open_header(source, field)
    try:
        check_size(image.width, image.height, field, limits)
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise UploadError(field, f"the image file is truncated or corrupt ({exc})") from None
        return normalise(image.copy() if image.mode in ("RGB", "RGBA", "L", "LA") else image)
    finally:
        image.close()


def load_image_base64(data: str, field: str, limits: UploadLimits | None = None) -> Image.Image:
    """An API upload: plain base64 or a `data:image/...;base64,` URL (never fetched from the network)."""
    text = data.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise UploadError(field, "only base64 data URLs are accepted")
    if _URL_SCHEME.match(text):  # any scheme, any case: the server never fetches (no SSRF, no local file reads)
        raise UploadError(field, "image URLs are not fetched; send the image itself as base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(field, "is not valid base64") from None
    return load_image(raw, field, limits)
