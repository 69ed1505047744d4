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


def test_case_14_20000_square_png_is_refused_from_the_header(no_decoding) -> None:
    data = png_header_only(20000, 20000)
    with pytest.raises(UploadError, match="image: refused: the image declares too many pixels"):
        load_image(data, "image", UploadLimits(max_pixels=10**12))  # Pillow's own guard, even with a huge limit
    with pytest.raises(UploadError, match="image: refused"):
        check_header(data, "image", UploadLimits())


def test_case_14_small_file_decompression_bomb_is_refused_before_decoding(tmp_path: Path, no_decoding) -> None:
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


ORIENTATION = 0x0112
RED, GREEN = (255, 0, 0), (0, 255, 0)


def rotated_jpeg(orientation: int) -> bytes:
    """A 48x32 photo as a camera stores it (sensor orientation) with an EXIF Orientation tag: a red 8x8 block in the
    stored top-left corner, a green one in the stored bottom-right."""
    pixels = np.full((32, 48, 3), 128, np.uint8)
    pixels[:8, :8] = RED
    pixels[-8:, -8:] = GREEN
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


# Where the stored top-left (red) corner must end up once upright: 6 = turn 90° clockwise, 8 = 90° anticlockwise.
UPRIGHT = {3: ((48, 32), "bottom-right"), 6: ((32, 48), "top-right"), 8: ((32, 48), "bottom-left")}


def _corner(image: Image.Image, corner: str) -> tuple[int, int, int]:
    x = 3 if "left" in corner else image.width - 4
    y = 3 if "top" in corner else image.height - 4
    return image.getpixel((x, y))[:3]


def _assert_upright(image: Image.Image, orientation: int) -> None:
    size, red_corner = UPRIGHT[orientation]
    assert image.size == size
    opposite = {"top-left": "bottom-right", "top-right": "bottom-left", "bottom-left": "top-right",
                "bottom-right": "top-left"}[red_corner]
    assert np.abs(np.subtract(_corner(image, red_corner), RED)).max() < 24, red_corner
    assert np.abs(np.subtract(_corner(image, opposite), GREEN)).max() < 24, opposite
    for other in {"top-left", "top-right", "bottom-left", "bottom-right"} - {red_corner, opposite}:
        assert np.abs(np.subtract(_corner(image, other), (128, 128, 128))).max() < 24, other
    assert image.getexif().get(ORIENTATION, 1) == 1  # nothing downstream can rotate it a second time


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_is_loaded_upright(tmp_path: Path, orientation: int) -> None:
    data = rotated_jpeg(orientation)
    with Image.open(io.BytesIO(data)) as stored:  # the file itself really is sideways, tag and all
        assert stored.size == (48, 32) and stored.getexif()[ORIENTATION] == orientation
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    for source in (data, path, io.BytesIO(data), base64.b64encode(data).decode()):
        loaded = load_image_base64(source, "image") if isinstance(source, str) else load_image(source, "image")
        _assert_upright(to_rgb(loaded), orientation)
    with Image.open(path) as opened:  # an already-opened (not yet decoded) image, as Gradio hands over
        _assert_upright(load_image(opened, "image"), orientation)
    # The size limit applies to the upright image as well (same pixel count either way).
    assert check_header(data, "image", UploadLimits(max_pixels=48 * 32)) == (48, 32)
    with pytest.raises(UploadError, match="the image is 48x32"):
        load_image(data, "image", UploadLimits(max_pixels=48 * 32 - 1))


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_upload_through_the_ui_components(tmp_path: Path, orientation: int) -> None:
    """The UI path without the HTTP hop: Gradio's own preprocessing of the img2img `gr.Image` and the inpaint brush
    `gr.ImageEditor` (as configured in webui/ui/img2img.py), then the app's upload handling."""
    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData, ImageData

    from webui.ui.img2img import editor_image_and_mask

    path = tmp_path / "photo.jpg"
    path.write_bytes(rotated_jpeg(orientation))
    field = gr.Image(type="filepath", image_mode=None, sources=["upload"])
    handed_over = field.preprocess(ImageData(path=str(path), orig_name="photo.jpg"))
    _assert_upright(to_rgb(load_image(handed_over, "image")), orientation)

    # The brush editor: the browser paints on the upright picture, so the mask layer has the upright size.
    size, _ = UPRIGHT[orientation]
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, size[0] // 2, size[1] // 2))
    layer.save(tmp_path / "layer.png")
    editor = gr.ImageEditor(type="pil", image_mode="RGBA", sources=["upload"], layers=False, transforms=())
    value = editor.preprocess(EditorData(background=FileData(path=str(path), orig_name="photo.jpg"),
                                         layers=[FileData(path=str(tmp_path / "layer.png"), orig_name="layer.png")]))
    image, mask = editor_image_and_mask(value, UploadLimits())
    _assert_upright(image, orientation)
    assert mask is not None and mask.size == image.size
    assert np.asarray(mask)[: size[1] // 2, : size[0] // 2].all() and not np.asarray(mask)[size[1] // 2 :].any()


def test_float_and_32bit_modes_become_8bit_grey() -> None:
    """Mode F in 0..1 is scaled up, mode I above 255 (16-bit data) scaled down, NaN becomes black."""
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32), "F")
    assert np.asarray(load_image(unit, "image")).tolist() == [[0, 128, 255, 0]]
    wide = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.int32), "I")
    assert np.asarray(load_image(wide, "image")).tolist() == [[0, 100, 255]]
    small = Image.fromarray(np.array([[3, 200]], np.int32), "I")
    assert np.asarray(load_image(small, "image")).tolist() == [[3, 200]]  # already 8-bit range: kept


def test_palette_alpha_and_premultiplied_modes_keep_their_transparency() -> None:
    opaque = Image.new("P", (2, 2), 0)
    assert load_image(opaque, "image").mode == "RGB"
    see_through = Image.new("P", (2, 2), 0)
    see_through.info["transparency"] = 0
    assert load_image(see_through, "image").mode == "RGBA"
    assert load_image(Image.new("PA", (2, 2)), "image").mode == "RGBA"
    assert load_image(Image.new("RGBa", (2, 2)), "image").mode == "RGBA"


def test_numpy_uploads_and_empty_images() -> None:
    array = np.zeros((3, 5, 3), np.float64)
    array[0, 0] = (300.0, 20.4, -5.0)  # out-of-range values are clipped, not wrapped
    image = load_image(array, "image")
    assert image.size == (5, 3) and image.getpixel((0, 0)) == (255, 20, 0)
    with pytest.raises(UploadError, match=r"^image: the image has no pixels \(0x3\)"):
        load_image(np.zeros((3, 0, 3), np.uint8), "image")
    with pytest.raises(UploadError, match="image: not an image"):
        load_image(np.zeros(4, np.uint8), "image")


def test_data_url_without_base64_is_refused() -> None:
    with pytest.raises(UploadError, match="^init_images: only base64 data URLs are accepted"):
        load_image_base64("data:image/png,%89PNG", "init_images")



def test_a_refused_header_names_the_field() -> None:
    with pytest.raises(UploadError) as caught:
        check_header(png_header_only(300, 300), "controlnet unit 2 image", UploadLimits(max_pixels=1000))
    assert caught.value.field_name == "controlnet unit 2 image"


def test_animated_images_give_their_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    image = to_rgb(load_image(buffer.getvalue(), "image"))
    assert image.getpixel((4, 4))[0] > 200 and image.getpixel((4, 4))[2] < 50
