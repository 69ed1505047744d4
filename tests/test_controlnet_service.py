"""ControlNet through the app: the builtin extension, the service's checks, infotext and PNG Info, bad inputs.

Real files only: tiny real-layout checkpoints and ControlNets written in community layouts, the real extension
manager and generation service, real preprocessors. Parity of the images themselves is test_controlnet_parity.py.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from webui.context import AppPaths, build_context
from webui.engine.controlnet import ControlNetExtension, ControlUnit, control_image
from webui.engine.controlnet_loader import load_controlnet
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.synthetic import write_synthetic_controlnet
from webui.services.controlnet import ControlUnitRequest, parse_unit_infotext, units_from_controls
from webui.services.img2img import Img2ImgRequest, Img2ImgRunner
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext
from webui.services.requests import GenerationRequest, RequestError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def silhouette(width: int = 64, height: int = 64) -> Image.Image:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 255
    return Image.fromarray(array)


def as_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_sd1, tiny_sdxl):
    root = tmp_path_factory.mktemp("cn-app")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / "tiny.safetensors").symlink_to(tiny_sd1.path)
    (models / "ControlNet").mkdir()
    write_synthetic_controlnet(models / "ControlNet" / "control_tiny_sd1.safetensors", tiny_sd1.model, "cldm-1.1",
                               seed=41)
    write_synthetic_controlnet(models / "ControlNet" / "control_tiny_xl.safetensors", tiny_sdxl.model, "diffusers",
                               seed=42)
    (models / "ControlNet" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")
    (models / "ControlNet" / "a_checkpoint.safetensors").symlink_to(tiny_sd1.path)
    paths = AppPaths(models, root / "outputs", root / "data", ())
    return build_context(paths, device="cpu")


def generate(app, units: list[dict] | None, **fields):
    request = GenerationRequest(prompt="a red circle", negative_prompt="blue", steps=3, width=64, height=64, seed=5,
                                sampler_name="Euler", cfg_scale=6.0,
                                extensions={"controlnet": {"args": units}} if units is not None else {})
    for key, value in fields.items():
        setattr(request, key, value)
    return app.generation.run(app.jobs.create("test", "txt2img"), request)


def unit(**overrides) -> dict:
    return {"enabled": True, "module": "none", "model": "control_tiny_sd1", "image": as_base64(silhouette()),
            "weight": 1.0, **overrides}


def test_controlnet_registers_through_the_public_extension_api(app) -> None:
    record = {r.name: r for r in app.extensions.records}["controlnet"]
    assert record.status == "active" and record.builtin
    assert [t.title for t in record.registrations.tabs] == ["ControlNet"]
    assert [s.title for s in record.registrations.sections] == ["ControlNet"]
    assert len(record.registrations.denoise) == 1
    assert app.controlnet.names() == ["a_checkpoint", "broken", "control_tiny_sd1", "control_tiny_xl"]


def test_a_unit_changes_the_image_exactly_as_the_engine_extension_does(app) -> None:
    result = generate(app, [unit()])
    plain = generate(app, None)
    ours = np.asarray(result.images[0], dtype=int)
    assert np.abs(ours - np.asarray(plain.images[0], dtype=int)).max() > 10
    # The same unit straight through the engine: the service adds nothing of its own to the sampling.
    model = app.models.get(None)
    network = load_controlnet(app.paths.controlnet_dir / "control_tiny_sd1.safetensors").model
    params = SamplingParams(prompt="a red circle", negative_prompt="blue", sampler="Euler", steps=3, cfg_scale=6.0,
                            width=64, height=64, seeds=[5])
    direct = txt2img(model, params, app.samplers,
                     [ControlNetExtension([ControlUnit(network, control_image(silhouette(), 64, 64, 1))])])
    assert np.abs(ours - np.asarray(direct[0], dtype=int)).max() == 0


def test_disabled_units_and_weight_zero_change_nothing(app) -> None:
    plain = np.asarray(generate(app, None).images[0])
    assert np.array_equal(np.asarray(generate(app, [unit(enabled=False)]).images[0]), plain)
    assert np.array_equal(np.asarray(generate(app, [unit(weight=0)]).images[0]), plain)


def test_infotext_records_each_unit_and_png_info_reads_it_back(app) -> None:
    result = generate(app, [unit(module="canny", threshold_a=50, threshold_b=150, guidance_end=0.8,
                                 control_mode="ControlNet is more important", resize_mode="Just Resize"),
                            unit(weight=0.5, control_mode=1)])
    text = read_infotext(Path(result.paths[0]))
    parsed = parse_infotext(text)
    hash8 = app.controlnet.hashes.short_hash(app.paths.controlnet_dir / "control_tiny_sd1.safetensors")[:8]
    assert parsed["ControlNet 0"] == (
        f"Module: canny, Model: control_tiny_sd1 [{hash8}], Weight: 1, Resize Mode: Just Resize, "
        "Processor Res: -1, Threshold A: 50, Threshold B: 150, Guidance Start: 0, Guidance End: 0.8, "
        "Pixel Perfect: False, Control Mode: ControlNet is more important"
    )
    assert 'ControlNet 0: "Module: canny' in text  # quoted, as sd-webui-controlnet writes it
    first = parse_unit_infotext(parsed["ControlNet 0"])
    again = ControlUnitRequest.from_dict({**first, "image": silhouette()}, 0)
    assert (again.module, again.weight, again.guidance_end, again.threshold_a, again.control_mode.value) == (
        "canny", 1.0, 0.8, 50.0, "ControlNet is more important")
    assert parse_unit_infotext(parsed["ControlNet 1"])["control_mode"] == "My prompt is more important"


@pytest.mark.parametrize("bad,field,words", [
    ({"image": None}, "controlnet unit 0 image", "no control image"),
    ({"model": "None"}, "controlnet unit 0 model", "choose a ControlNet model"),
    ({"model": "nope"}, "controlnet unit 0 model", "available: a_checkpoint, broken, control_tiny_sd1"),
    ({"model": "control_tiny_xl"}, "controlnet unit 0 model", "SDXL ControlNet"),
    ({"model": "broken"}, "controlnet unit 0 model", "broken.safetensors"),
    ({"model": "a_checkpoint"}, "controlnet unit 0 model", "models/Stable-diffusion"),
    ({"module": "depth_midas"}, "controlnet unit 0 module", "dpt_hybrid-midas-501f0c75.pt"),
    ({"module": "nonsense"}, "controlnet unit 0 module", "canny"),
    ({"guidance_start": 0.9, "guidance_end": 0.2}, "controlnet unit 0 guidance", "start < end"),
    ({"weight": "heavy"}, "controlnet unit 0 weight", "heavy"),
    ({"control_mode": "loud"}, "controlnet unit 0 control_mode", "Balanced"),
    ({"resize_mode": 7}, "controlnet unit 0 resize_mode", "7"),
    ({"image": "bm90IGFuIGltYWdl"}, "controlnet unit 0 image", "image"),
    ({"surprise": 1}, "controlnet unit 0 surprise", "unknown field"),
])
def test_bad_units_stop_the_job_before_it_starts_with_a_clear_message(app, bad: dict, field: str, words: str) -> None:
    before = sorted(app.paths.outputs_dir.rglob("*.png"))
    with pytest.raises(RequestError) as caught:
        generate(app, [unit(**bad)])
    assert caught.value.field_name == field
    assert words in str(caught.value)
    assert sorted(app.paths.outputs_dir.rglob("*.png")) == before  # nothing was generated or saved
    assert {r.name: r.status for r in app.extensions.records}["controlnet"] == "active"  # nothing else affected
    assert len(generate(app, [unit()]).images) == 1


def test_oversized_control_image_and_decompression_bomb_are_refused(app, monkeypatch) -> None:
    monkeypatch.setenv("LATENT_STUDIO_MAX_IMAGE_PIXELS", "5000")
    with pytest.raises(RequestError, match="controlnet unit 0 image"):
        generate(app, [unit(image=as_base64(silhouette(128, 128)))])
    monkeypatch.delenv("LATENT_STUDIO_MAX_IMAGE_PIXELS")
    bomb = Image.new("1", (20000, 20000))  # 400 MP, a few KB as PNG
    buffer = io.BytesIO()
    bomb.save(buffer, format="PNG")
    with pytest.raises(RequestError, match="controlnet unit 0 image"):
        generate(app, [unit(image=base64.b64encode(buffer.getvalue()).decode())])


def test_img2img_unit_without_image_uses_the_input_image(app) -> None:
    init = silhouette().transpose(Image.Transpose.ROTATE_90).convert("RGB")
    base = dict(prompt="a red circle", negative_prompt="blue", steps=3, width=64, height=64, seed=5,
                sampler_name="Euler", cfg_scale=6.0, init_image=init, denoising_strength=0.8)
    runner = Img2ImgRunner(app.samplers)
    implicit = app.generation.run(app.jobs.create("t", "img2img"), Img2ImgRequest(
        **base, extensions={"controlnet": {"args": [unit(image=None)]}}), runner)
    explicit = app.generation.run(app.jobs.create("t", "img2img"), Img2ImgRequest(
        **base, extensions={"controlnet": {"args": [unit(image=as_base64(init))]}}), runner)
    plain = app.generation.run(app.jobs.create("t", "img2img"), Img2ImgRequest(**base), runner)
    assert np.array_equal(np.asarray(implicit.images[0]), np.asarray(explicit.images[0]))
    assert not np.array_equal(np.asarray(implicit.images[0]), np.asarray(plain.images[0]))


def test_ui_flat_controls_group_into_units() -> None:
    controls = {"unit0.enabled": True, "unit0.model": "m", "unit0.image": silhouette(), "unit0.weight": 0.7,
                "unit1.enabled": False, "unit1.model": "None", "unit2.enabled": True, "unit2.model": "k",
                "unit2.image": silhouette(), "unit2.control_mode": "My prompt is more important"}
    units = units_from_controls(controls)
    assert [(u.model, u.weight, u.control_mode.value) for u in units] == [
        ("m", 0.7, "Balanced"), ("k", 1.0, "My prompt is more important")]


def test_pixel_perfect_sets_the_preprocessor_resolution(app) -> None:
    model = app.models.get(None)
    units = [ControlUnitRequest.from_dict(unit(module="canny", pixel_perfect=True,
                                               image=silhouette(128, 96), resize_mode="Crop and Resize"), 0)]
    job = app.controlnet.prepare(units, model, 64, 64)
    # Crop and Resize: max(64/96, 64/128) * min(96, 128) = 64
    assert job.units[0].processor_res == 64
    assert job.units[0].detected_map.size == (85, 64)
    assert torch.is_tensor(job.extension.units[0].image) and job.extension.units[0].image.shape == (1, 3, 64, 64)


def test_inpaint_with_a_unit_changes_only_the_masked_region(app) -> None:
    """Units work in inpaint too; with the inpaint preprocessor the unit reads the job's mask (RGBA hint, -1 inside)."""
    init = Image.fromarray(np.full((64, 64, 3), (30, 60, 200), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    base = dict(prompt="a red circle", negative_prompt="blue", steps=3, width=64, height=64, seed=5,
                sampler_name="Euler", cfg_scale=6.0, init_image=init, mask=mask, mask_blur=0, denoising_strength=0.9)
    runner = Img2ImgRunner(app.samplers)
    with_unit = app.generation.run(app.jobs.create("t", "img2img"), Img2ImgRequest(
        **base, extensions={"controlnet": {"args": [unit(image=None, module="inpaint_only")]}}), runner)
    plain = app.generation.run(app.jobs.create("t", "img2img"), Img2ImgRequest(**base), runner)
    ours, other = np.asarray(with_unit.images[0], dtype=int), np.asarray(plain.images[0], dtype=int)
    inside = np.asarray(mask) > 127
    assert np.abs(ours - other)[inside].max() > 10
    assert np.array_equal(ours[~inside], np.asarray(init, dtype=int)[~inside])
    assert "Module: inpaint_only" in with_unit.infotexts[0]


def test_inpaint_hint_marks_masked_pixels_minus_one() -> None:
    hint = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    hint.paste((10, 20, 30, 255), (0, 0, 4, 8))
    tensor = control_image(hint, 8, 8, 0)
    assert tensor.shape == (1, 3, 8, 8)
    assert torch.all(tensor[..., :4] == -1.0) and torch.all(tensor[..., 4:] == 1.0)


def test_outpaint_passes_the_units_on(app) -> None:
    """Outpainting samples through the same extensions: a unit changes the new border."""
    from webui.services.img2img import OutpaintRunner

    init = Image.fromarray(np.full((64, 48, 3), (30, 60, 200), dtype=np.uint8))
    base = dict(prompt="a red circle", negative_prompt="blue", steps=3, width=64, height=64, seed=5,
                sampler_name="Euler", cfg_scale=6.0, init_image=init, outpaint_right=16, denoising_strength=0.9)
    runner = OutpaintRunner(app.samplers)
    with_unit = app.generation.run(app.jobs.create("t", "img2img"), Img2ImgRequest(
        **base, extensions={"controlnet": {"args": [unit()]}}), runner)
    plain = app.generation.run(app.jobs.create("t", "img2img"), Img2ImgRequest(**base), runner)
    assert np.abs(np.asarray(with_unit.images[0], dtype=int) - np.asarray(plain.images[0], dtype=int)).max() > 10
