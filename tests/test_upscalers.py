"""Model upscalers through spandrel, the upscaler library, Extras, and A1111's upscaler API.

Every model file is a tiny random-weight network in a real on-disk layout (tests/upscaler_files.py). The expected
pixels come from calling that network directly on the image tensor, in A1111's channel order (blue, green, red) and
8-bit truncation, with no tiling and no resize; the library must find the file, recognise the architecture, load
the weights and give the same image.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import webuiapi
from PIL import Image

from tests.upscaler_files import BUILDERS, TinyUpscaler, realesrgan_compact, write_upscaler
from webui.context import AppPaths
from webui.services.extras import ExtrasInput, ExtrasRequest, ExtrasService
from webui.services.infotext import parse_infotext
from webui.services.jobs import JobManager
from webui.services.outputs import OutputStore, read_infotext
from webui.services.queue import JobQueue
from webui.services.upscalers import UpscaleOptions, UpscalerError, UpscalerLibrary

# (display name, A1111 folder, file stem, builder, suffix): every layout as a weights-only .pth, and two of them as
# .safetensors too (the flat table, without the params_ema wrapper).
LAYOUTS = [
    ("4x-TinyESRGAN", "ESRGAN", "4x-TinyESRGAN", ".pth"),
    ("R-ESRGAN 2x+", "RealESRGAN", "RealESRGAN_x2plus", ".pth"),
    ("R-ESRGAN General 4xV3", "RealESRGAN", "realesr-general-x4v3", ".pth"),
    ("SwinIR 4x", "SwinIR", "SwinIR_4x", ".pth"),
    ("DAT x2", "DAT", "DAT_x2", ".pth"),
    ("4x-TinyESRGAN-st", "ESRGAN", "4x-TinyESRGAN-st", ".safetensors"),
    ("DAT_x2-st", "DAT", "DAT_x2-st", ".safetensors"),
]


class Tiling:
    """The library's options, changeable per test."""

    def __init__(self) -> None:
        self.options = UpscaleOptions(tile=0, overlap=8)

    def __call__(self) -> UpscaleOptions:
        return self.options


@pytest.fixture(scope="module")
def networks() -> dict[str, TinyUpscaler]:
    torch.manual_seed(0)
    return {stem: builder() for stem, (_, builder) in BUILDERS.items()}


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, networks: dict[str, TinyUpscaler]):
    root = tmp_path_factory.mktemp("upscalers")
    for _, folder, stem, suffix in LAYOUTS:
        write_upscaler(root / "models", folder, stem, networks[stem.removesuffix("-st")], suffix)
    tiling = Tiling()
    paths = AppPaths(root / "models", root / "outputs", root / "data", ())
    return UpscalerLibrary(paths, options=tiling, cache_size=8), tiling, root


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def direct(network: torch.nn.Module, image: Image.Image) -> np.ndarray:
    """The network on the image as A1111 feeds it (BGR in [0, 1]), clamped and truncated to 8 bits, as RGB."""
    bgr = np.asarray(image, dtype=np.float32)[:, :, ::-1] / 255.0
    with torch.no_grad():
        out = network(torch.from_numpy(bgr.transpose(2, 0, 1).copy())[None])
    array = (out[0].clamp(0, 1) * 255).numpy().transpose(1, 2, 0)[:, :, ::-1]
    return array.astype(np.uint8).astype(int)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


def test_names_are_a1111s_pillow_first_then_by_name(library) -> None:
    lib, _, _ = library
    names = lib.names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert names[3:] == sorted((name for name, *_ in LAYOUTS), key=str.lower)


@pytest.mark.parametrize(("name", "folder", "stem", "suffix"), LAYOUTS, ids=[f"{s}{x}" for _, _, s, x in LAYOUTS])
def test_each_layout_loads_and_gives_its_networks_image(library, networks, name: str, folder: str, stem: str,
                                                       suffix: str) -> None:
    lib, tiling, _ = library
    tiling.options = UpscaleOptions(tile=0, overlap=8)
    tiny = networks[stem.removesuffix("-st")]
    image = random_image(20, 16, seed=len(name))
    result = lib.upscale(image, tiny.scale, name)
    expected = direct(tiny.network, image)
    assert result.size == (20 * tiny.scale, 16 * tiny.scale)
    assert expected.std() > 20 and (expected == 0).mean() < 0.1  # a real picture, not a clipped one
    difference = np.abs(pixels(result) - expected)
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_tiles_with_a_wide_enough_margin_equal_the_whole_image_and_a_narrow_one_shows_seams(library,
                                                                                            networks) -> None:
    """The compact net sees 4 pixels around each output pixel (4 3x3 convs): a 6-pixel margin hides every seam."""
    lib, tiling, _ = library
    image = random_image(44, 36, seed=3)
    tiles: list[tuple[int, int]] = []
    tiling.options = UpscaleOptions(tile=0, overlap=6)
    whole = pixels(lib.upscale(image, 4, "R-ESRGAN General 4xV3"))
    assert np.abs(whole - direct(networks["realesr-general-x4v3"].network, image)).max() <= 1
    tiling.options = UpscaleOptions(tile=20, overlap=6)
    tiled = pixels(lib.upscale(image, 4, "R-ESRGAN General 4xV3", on_tile=lambda done, total: tiles.append((done,
                                                                                                          total))))
    assert tiles[-1] == (30, 30)  # 20-pixel windows keep cores of 20 - 2*6 = 8: 44x36 takes 6 x 5 of them
    assert np.abs(tiled - whole).max() <= 1
    tiling.options = UpscaleOptions(tile=20, overlap=0)
    seams = pixels(lib.upscale(image, 4, "R-ESRGAN General 4xV3"))
    assert np.abs(seams - whole).max() > 8  # without context the tile borders differ: the check above can fail


def test_the_target_size_is_exact_and_a_2x_model_runs_twice_for_3x(library, networks) -> None:
    lib, tiling, _ = library
    tiling.options = UpscaleOptions(tile=0, overlap=8)
    image = random_image(12, 10, seed=5)
    network = networks["RealESRGAN_x2plus"].network
    twice = direct(network, Image.fromarray(direct(network, image).astype(np.uint8)))
    expected = Image.fromarray(twice.astype(np.uint8)).resize((36, 30), Image.Resampling.LANCZOS)
    result = lib.upscale(image, 3, "R-ESRGAN 2x+")
    assert result.size == (36, 30)
    assert np.abs(pixels(result) - pixels(expected)).max() <= 1
    assert lib.upscale(image, 2.5, "Lanczos").size == (round(12 * 2.5), round(10 * 2.5))
    assert lib.upscale(image, 2, "None").size == (24, 20)  # "None" is a Lanczos resize, as in A1111
    # upscale_to is A1111's resize_image: the upscaler to the multiple-of-8 size below the target, then Lanczos
    lanczos = Image.Resampling.LANCZOS
    stretched = image.resize((30, 25), Image.Resampling.NEAREST).resize((24, 24), lanczos).resize((30, 25), lanczos)
    assert np.array_equal(pixels(lib.upscale_to(image, 30, 25, "Nearest")), pixels(stretched))
    # crop and resize: the width fits (40 wide from 12, so 33 high), the centre 20 rows are kept
    fitted = image.resize((40, 33), Image.Resampling.NEAREST).resize((40, 32), lanczos).resize((40, 33), lanczos)
    assert np.array_equal(pixels(lib.upscale_to(image, 40, 20, "Nearest", crop=True)),
                          pixels(fitted.crop((0, 6, 40, 26))))


def test_case_09_a_malicious_upscaler_runs_nothing_and_bad_files_get_clear_errors(library, tmp_path: Path) -> None:
    from tests.test_security_cases import gadgets, torch_archive

    lib, _, root = library
    folder = root / "models" / "ESRGAN"
    canary = tmp_path / "canary"
    torch_archive(folder / "evil.pth", pickle_body=gadgets(canary)["os.system"])
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(folder / "unrelated.safetensors"))
    good = (folder / "4x-TinyESRGAN-st.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    mixed = dict(torch.load(folder / "4x-TinyESRGAN.pth", weights_only=True))
    mixed["model.0.weight"] = torch.zeros(8, 3, 5, 5)  # a known architecture whose tensors disagree
    torch.save(mixed, folder / "mixed.pth")
    lib.refresh()
    try:
        image = random_image(8, 8)
        expectations = {
            "evil": r"^evil\.pth: refused: its pickle asks for the forbidden global os\.system \(code, not weights",
            "unrelated": r"^unrelated\.safetensors: not an upscaler architecture spandrel",
            "truncated": r"^truncated\.safetensors: corrupt or incomplete file",
            "mixed": r"^mixed\.pth: broken or incomplete upscaler file",
        }
        for name, message in expectations.items():
            with pytest.raises(UpscalerError, match=message):
                lib.upscale(image, 2, name)
        assert not canary.exists()
        with pytest.raises(UpscalerError, match=r"^unknown upscaler 'nope'; choose one of: None, Lanczos, Nearest"):
            lib.upscale(image, 2, "nope")
        assert lib.upscale(image, 4, "4x-TinyESRGAN").size == (32, 32)  # the others still work
    finally:
        for name in ("evil.pth", "unrelated.safetensors", "truncated.safetensors", "mixed.pth"):
            (folder / name).unlink()
        lib.refresh()


def test_the_cache_keeps_the_most_recently_used_and_registered_upscalers_join_the_list(library) -> None:
    lib, tiling, _ = library
    tiling.options = UpscaleOptions(tile=0, overlap=8)
    image = random_image(8, 8)
    lib.cache_size = 2
    try:
        for name in ("DAT x2", "SwinIR 4x", "R-ESRGAN 2x+", "SwinIR 4x"):
            lib.upscale(image, 2, name)
        assert [path.stem for path in lib.loaded()][-2:] == ["RealESRGAN_x2plus", "SwinIR_4x"]
        assert len(lib.loaded()) == 2
    finally:
        lib.cache_size = 8

    class Inverter:
        name = "Invert x2"

        def upscale(self, picture: Image.Image, scale: float) -> Image.Image:
            return Image.eval(picture.resize((picture.width * 2, picture.height * 2)), lambda v: 255 - v)

    lib.register(Inverter())
    assert lib.names().index("Invert x2") == lib.names().index("DAT_x2-st") + 1
    result = lib.upscale(image, 3, "Invert x2")  # twice (x4), then Lanczos to 24x24
    assert result.size == (24, 24)
    with pytest.raises(ValueError, match="built-in upscaler name"):
        Inverter.name = "Lanczos"
        lib.register(Inverter())


def test_extras_blends_upscaler_2_saves_and_writes_a1111s_keys(library, tmp_path: Path) -> None:
    lib, tiling, _ = library
    tiling.options = UpscaleOptions(tile=0, overlap=8)
    queue = JobQueue(JobManager())
    service = ExtrasService(lib, OutputStore(tmp_path / "outputs"), queue)
    image = random_image(10, 8, seed=9)
    source = "a fox\nSteps: 4, Sampler: Euler, Seed: 77, Size: 10x8"
    request = ExtrasRequest(upscaling_resize=2, upscaler_1="Lanczos", upscaler_2="Nearest", upscaler_2_visibility=0.25)
    job = service.submit("local", [ExtrasInput("fox.png", image, source)], request)
    assert queue.wait(job, 60)
    result = job.result
    assert job.status == "done", job.error
    lanczos = image.resize((20, 16), Image.Resampling.LANCZOS)
    nearest = image.resize((20, 16), Image.Resampling.NEAREST)
    expected = pixels(lanczos) * 0.75 + pixels(nearest) * 0.25
    assert np.abs(pixels(result.images[0]) - expected).max() <= 1
    (saved,) = result.paths
    assert saved.parent.parent.name == "extras-images" and saved.name.endswith("-77.png")
    text = read_infotext(saved)
    assert text == (f"{source}, Postprocess upscale by: 2, Postprocess upscaler: Lanczos, "
                    "Postprocess upscaler 2: Nearest")
    assert parse_infotext(text)["Seed"] == 77
    with pytest.raises(ValueError, match="^upscaler_1: unknown upscaler 'R-ESRGAN 9x'"):
        service.submit("local", [ExtrasInput("x", image)], ExtrasRequest(upscaler_1="R-ESRGAN 9x"))

    class InterruptsItsJob:  # Interrupt pressed while the first of three images is being upscaled
        name = "Interrupting x2"

        def upscale(self, picture: Image.Image, scale: float) -> Image.Image:
            queue.cancel_all_of("local")
            return picture.resize((picture.width * 2, picture.height * 2))

    lib.register(InterruptsItsJob())
    job = service.submit("local", [ExtrasInput(f"{i}.png", image) for i in range(3)],
                         ExtrasRequest(upscaler_1="Interrupting x2"), save=False)
    assert queue.wait(job, 60) and job.status == "interrupted"
    assert job.result.interrupted and [picture.size for picture in job.result.images] == [(20, 16)]
    queue.shutdown()


# --- over HTTP, on the shared app server ------------------------------------------------------------------------------


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_a1111_clients_list_and_use_the_upscalers_over_http(browser_app) -> None:
    tiny = realesrgan_compact()
    write_upscaler(browser_app.root / "models", "RealESRGAN", "realesr-general-x4v3", tiny, ".pth")
    with httpx.Client(base_url=browser_app.url, timeout=120) as http:
        assert http.post("/sdapi/v1/refresh-upscalers").status_code == 200
        listing = http.get("/sdapi/v1/upscalers").json()
        assert [item["name"] for item in listing][:3] == ["None", "Lanczos", "Nearest"]
        entry = next(item for item in listing if item["name"] == "R-ESRGAN General 4xV3")
        assert set(entry) == {"name", "model_name", "model_path", "model_url", "scale"}
        assert entry["model_name"] == "realesr-general-x4v3" and entry["model_path"].endswith(".pth")

        client = webuiapi.WebUIApi(host="127.0.0.1", port=browser_app.port)
        image = random_image(16, 12, seed=11)
        single = client.extra_single_image(image, upscaling_resize=4, upscaler_1="R-ESRGAN General 4xV3")
        assert single.image.size == (64, 48)
        assert np.abs(pixels(single.image) - direct(tiny.network, image)).max() <= 1
        assert single.info == "<p>Postprocess upscale by: 4, Postprocess upscaler: R-ESRGAN General 4xV3</p>"

        second = random_image(8, 6, seed=12)
        batch = client.extra_batch_images([image, second], resize_mode=1, upscaling_resize_w=24,
                                          upscaling_resize_h=24, upscaling_crop=True, upscaler_1="Nearest")
        assert [picture.size for picture in batch.images] == [(24, 24), (24, 24)]
        # scaled by the larger ratio (x4: 32x24), then the centre cut out, as A1111's "crop to fit"
        expected = second.resize((32, 24), Image.Resampling.NEAREST).crop((4, 0, 28, 24))
        assert np.array_equal(pixels(batch.images[1]), pixels(expected))

        bad = http.post("/sdapi/v1/extra-single-image", json={"image": _b64(image), "upscaler_1": "Nope"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("upscaler_1: unknown upscaler 'Nope'")
        url = http.post("/sdapi/v1/extra-single-image", json={"image": "http://169.254.169.254/x.png"})
        assert url.status_code == 422 and "not fetched" in url.json()["detail"]
        faces = http.post("/sdapi/v1/extra-single-image", json={"image": _b64(image), "gfpgan_visibility": 0.5})
        assert faces.status_code == 422 and faces.json()["detail"].startswith("gfpgan_visibility: face restoration")


@pytest.mark.browser
def test_extras_tab_upscales_an_upload_and_saves_it_with_its_parameters(ui_browser, browser_app,
                                                                        tmp_path: Path) -> None:
    from tests.ui_artifacts import open_app_page, open_tab, save_screenshot
    from webui.services.outputs import png_bytes

    source = tmp_path / "source.png"
    source.write_bytes(png_bytes(random_image(24, 16, seed=13), "a fox\nSteps: 4, Seed: 4242, Size: 24x16"))
    page = open_app_page(ui_browser, browser_app.url, "desktop")
    try:
        open_tab(page, "Extras")
        page.locator("#extras_image input[type=file]").first.set_input_files(str(source))
        page.wait_for_selector("#extras_image img", timeout=30_000)
        page.locator("#extras_upscaler_1 input").first.click()
        page.get_by_role("option", name="Lanczos", exact=True).click()
        field = page.locator("#extras_upscaling_resize input[type=number]").first
        field.fill("3")
        field.press("Enter")
        page.click("#extras_generate")
        page.wait_for_function(
            "() => document.querySelectorAll('#extras_gallery .thumbnail-item img').length >= 1"
            " && (document.querySelector('#extras_status')?.innerText || '').includes('upscaled')", timeout=120_000)
        assert "Postprocess upscaler: Lanczos" in page.input_value("#extras_infotext textarea")
        assert page.locator("#extras_send_row button", has_text="Send to img2img").count() == 1
        save_screenshot(page, "extras_result-desktop")
    finally:
        page.context.close()
    (saved,) = [path for path in (browser_app.root / "outputs").rglob("*.png") if "-4242" in path.name
                and path.parent.parent.name == "extras-images"]
    with Image.open(saved) as image:
        assert image.size == (72, 48)
    assert read_infotext(saved) == ("a fox\nSteps: 4, Seed: 4242, Size: 24x16, Postprocess upscale by: 3, "
                                    "Postprocess upscaler: Lanczos")
