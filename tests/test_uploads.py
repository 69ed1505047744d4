"""Upload checks (security-cases row 14): size refused from the header, bombs never decoded, every mode normalised."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from webui.services.uploads import (
    MAX_PIXELS_ENV,
    UploadError,
    UploadLimits,
    check_header,
    load_image,
    load_image_base64,
    to_rgb,
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of zeros: a few hundred KB on disk, width*height bytes once decoded."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test loudly."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_pillow_bomb_guard_is_still_on() -> None:
    import webui.ui.img2img  # noqa: F401  (importing the UI must not switch it off)
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 178_956_970


def test_20000_square_png_is_refused_from_the_header(no_decoding) -> None:
    data = png_header_only(20000, 20000)
    with pytest.raises(UploadError, match="image: refused: the image declares too many pixels"):
        load_image(data, "image", UploadLimits(max_pixels=10**12))  # Pillow's own guard, even with a huge limit
    with pytest.raises(UploadError, match="image: refused"):
        check_header(data, "image", UploadLimits())


def test_small_file_decompression_bomb_is_refused_before_decoding(tmp_path: Path, no_decoding) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(9000, 9000))  # 81 MP of zeros
    assert path.stat().st_size < 200_000
    with pytest.raises(UploadError, match=r"mask: the image is 9000x9000 \(81.0 MP\); the limit is 50.0 MP"):
        load_image(path, "mask", UploadLimits())


def test_limit_is_configurable(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(path)
    assert check_header(path, "image", UploadLimits(max_pixels=1200)) == (40, 30)
    with pytest.raises(UploadError, match="the image is 40x30"):
        load_image(path, "image", UploadLimits(max_pixels=1199))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(UploadError, match="the limit is 0.0 MP"):
        load_image(path, "image")
    with pytest.raises(UploadError):  # already-decoded values are held to the same limit
        load_image(np.zeros((30, 40, 3), np.uint8), "image")


def test_not_an_image_and_truncated_files(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="image: not an image file"):
        load_image(b"hello, not a picture", "image")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    with pytest.raises(UploadError, match="truncated or corrupt"):
        load_image(buffer.getvalue()[:400], "image")
    with pytest.raises(UploadError, match="file not found"):
        load_image(tmp_path / "missing.png", "image")


def _saved(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_image_modes_become_8bit_rgb() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    out = np.asarray(to_rgb(load_image(_saved(rgba), "image")))
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == [255, 255, 255]  # transparent -> white

    grey = np.asarray(to_rgb(load_image(_saved(Image.new("L", (4, 4), 77)), "image")))
    assert grey[0, 0].tolist() == [77, 77, 77]

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    assert np.asarray(to_rgb(load_image(_saved(palette), "image")))[2, 2].tolist() == [200, 100, 50]

    deep = Image.fromarray(np.full((4, 4), 257 * 128, np.uint16))
    loaded = load_image(_saved(deep), "image")
    assert loaded.mode == "L" and np.asarray(loaded)[0, 0] == 128

    assert to_rgb(load_image(_saved(Image.new("1", (4, 4), 1)), "image")).getpixel((0, 0)) == (255, 255, 255)
    cmyk = load_image(_saved(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"), "image")
    assert cmyk.mode == "RGB" and cmyk.getpixel((0, 0))[0] > 200


def test_base64_and_data_urls() -> None:
    data = _saved(Image.new("RGB", (8, 8), (1, 2, 3)))
    plain = base64.b64encode(data).decode()
    assert load_image_base64(plain, "init_images").getpixel((0, 0)) == (1, 2, 3)
    assert load_image_base64("data:image/png;base64," + plain, "init_images").size == (8, 8)
    with pytest.raises(UploadError, match="init_images: is not valid base64"):
        load_image_base64("%%%", "init_images")
    with pytest.raises(UploadError, match="not fetched"):
        load_image_base64("https://example.com/a.png", "init_images")
