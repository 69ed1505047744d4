"""The img2img and inpaint endpoints of the real Gradio server, through gradio_client."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from tests.server_process import AppServer
from webui.engine.synthetic import write_synthetic_checkpoint
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("img2img-app")
    write_synthetic_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=7,
                               metadata={"modelspec.resolution": "64x64"})
    server = AppServer(root / "models", root / "outputs").wait_ready()
    yield server, root
    server.stop()


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app[0].url, verbose=False)


def _title(client: Client) -> str:
    return next(c[0] for c in client.predict(api_name="/refresh_checkpoints")["choices"] if c[0].startswith("tiny"))


def _shared(client: Client, steps: int = 3, denoise: float = 0.8) -> list:
    # prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch count, batch size, denoise, resize
    return [_title(client), "a red circle", "", "Euler", "Automatic", steps, 6, 0, 0, 21, 1, 1, denoise, "Just resize"]


def _inpaint_rest(mode: str, image=None, mask=None, outpaint=None, sides=(0, 0, 0, 0), blur: int = 4) -> list:
    return [mode, None, image, mask, outpaint, *sides, "edge", blur, "Inpaint masked", "original", "Whole picture", 32]


def test_img2img_endpoint_keeps_odd_size_and_saves_to_img2img(client: Client, app, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    gallery, _, infotext, status = client.predict(*_shared(client), handle_file(str(path)), api_name="/img2img")
    assert ">1 image(s) in " in status and len(gallery) == 1
    saved = sorted((app[1] / "outputs" / "img2img").glob("*/*.png"))
    assert saved and Image.open(saved[-1]).size == (70, 50)
    info = parse_infotext(read_infotext(saved[-1]))
    assert info["Denoising strength"] == 0.8 and info["Seed"] == 21 and parse_infotext(infotext)["Seed"] == 21


def test_inpaint_upload_endpoint_changes_only_the_mask(client: Client, app, tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 32, 64, 64))
    mask.save(tmp_path / "mask.png")
    gallery, _, infotext, _ = client.predict(
        *_shared(client), *_inpaint_rest("upload", handle_file(str(tmp_path / "in.png")),
                                         handle_file(str(tmp_path / "mask.png")), blur=0), api_name="/inpaint")
    out = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], pixels[keep]) and not np.array_equal(out[~keep], pixels[~keep])
    assert "Denoising strength: 0.8" in infotext and "Mask blur" not in infotext


def test_outpaint_endpoint(client: Client, tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), (20, 40, 200)).save(tmp_path / "in.png")
    gallery, *_ = client.predict(*_shared(client), *_inpaint_rest("outpaint", outpaint=handle_file(
        str(tmp_path / "in.png")), sides=(16, 0, 0, 8)), api_name="/inpaint")
    assert Image.open(gallery[0]["image"]).size == (80, 56)


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_bad_inputs_get_clear_messages_and_the_server_stays_up(client: Client, tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (200, 0, 0)).save(tmp_path / "in.png")
    Image.new("L", (64, 64), 0).save(tmp_path / "empty.png")
    image = handle_file(str(tmp_path / "in.png"))
    with pytest.raises(AppError, match="mask: the mask is empty: nothing to inpaint"):
        client.predict(*_shared(client), *_inpaint_rest("upload", image, handle_file(str(tmp_path / "empty.png"))),
                       api_name="/inpaint")
    with pytest.raises(AppError, match="nothing to inpaint: paint over"):  # brush mode, nothing painted
        client.predict(*_shared(client), "brush", {"background": image, "layers": [], "composite": image},
                       *_inpaint_rest("brush")[2:], api_name="/inpaint")
    (tmp_path / "big.png").write_bytes(_png_header(9000, 9000))
    with pytest.raises(AppError, match="the image is 9000x9000 .* the limit is 50.0 MP"):
        client.predict(*_shared(client), handle_file(str(tmp_path / "big.png")), api_name="/img2img")
    gallery, *_ = client.predict(*_shared(client, steps=2), image, api_name="/img2img")
    assert len(gallery) == 1
