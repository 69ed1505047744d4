"""ControlNet images equal diffusers' ControlNet pipelines given the same control image, noise and scheduler.

Our side loads each random-weight ControlNet from a file in a community layout (cldm 1.0 with a whole SD model
beside it, cldm 1.1, diffusers single file); the reference side gets the ground-truth module. Beyond Balanced at
weight 1, the documented rules (webui/engine/controlnet.py) are checked against diffusers with the rule translated
in the test: the step window through `control_guidance_end + 1/N`, and the soft scales of the two non-balanced modes
through a ControlNet whose forward this test wraps (diffusers' own `guess_mode` uses 10 ** (-1/12) steps instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import diffusers
import numpy as np
import pytest
from PIL import Image

from tests.reference import batch_seeds, reference_noise, reference_scheduler
from webui.engine.controlnet import ControlMode, ControlNetExtension, ControlUnit, control_image
from webui.engine.controlnet_loader import load_controlnet
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.samplers import SamplerRegistry
from webui.engine.synthetic import write_synthetic_controlnet

if TYPE_CHECKING:
    from tests.conftest import ParityModels

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_PIXEL_DIFF = 2
REGISTRY = SamplerRegistry()
PROMPT, NEGATIVE = "a red circle on a blue background", "blurry"
STEPS, CFG = 5, 6.0


def control_picture(width: int, height: int) -> Image.Image:
    """A hard-edged map, like a canny or silhouette map."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = 255
    array[:, : width // 8] = 128
    return Image.fromarray(array)


def soft_scales(count: int, weight: float) -> list[float]:
    """sd-webui-controlnet's soft injection, written out: residual k of [down..., mid] gets weight * 0.825**(12-k)."""
    return [weight * 0.825 ** (12 - k) for k in range(count)]


def wrap_soft(controlnet: diffusers.ControlNetModel, weight: float) -> diffusers.ControlNetModel:
    """The reference ControlNet for the non-balanced modes: plain residuals times the soft scales (no guess-mode
    logspace, whatever the pipeline passes)."""
    original = type(controlnet).forward

    def forward(*args, **kwargs):
        kwargs["conditioning_scale"], kwargs["guess_mode"] = 1.0, False
        down, mid = original(controlnet, *args, **kwargs)
        scales = soft_scales(len(down) + 1, weight)
        return [d * s for d, s in zip(down, scales)], mid * scales[len(down)]

    controlnet.forward = forward
    return controlnet


@pytest.fixture(scope="module")
def controlnet_files(tmp_path_factory: pytest.TempPathFactory, tiny_sd1, tiny_sdxl) -> dict[str, tuple[Path, object]]:
    folder = tmp_path_factory.mktemp("ControlNet")
    files = {}
    sd1_extra = tiny_sd1.model.state_dict()  # a 1.0 file often carries a whole SD model beside the control model
    for name, tiny, layout, seed, extra in (
        ("sd1-cldm10", tiny_sd1, "cldm-1.0", 31, sd1_extra),
        ("sd1-cldm11", tiny_sd1, "cldm-1.1", 32, None),
        ("sd1-diffusers", tiny_sd1, "diffusers", 33, None),
        ("sd1-second", tiny_sd1, "cldm-1.1", 34, None),
        ("sdxl-diffusers", tiny_sdxl, "diffusers", 35, None),
        ("sdxl-cldm11", tiny_sdxl, "cldm-1.1", 36, None),
        ("sdxl-second", tiny_sdxl, "diffusers", 37, None),
    ):
        path = folder / f"{name}.safetensors"
        truth = write_synthetic_controlnet(path, tiny.model, layout, seed=seed, extra_state=extra)
        files[name] = (path, truth)
    return files


def _diff(a: list[Image.Image], b: list[Image.Image]) -> int:
    return max(int(np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max()) for x, y in zip(a, b))


def _run(parity_models: ParityModels, tiny, controlnet_files, units: list[dict], width: int = 64, height: int = 96,
         seed: int = 5, reference_overrides: dict | None = None,
         with_plain: bool = False) -> tuple[list[Image.Image], list[Image.Image], list]:
    """Ours through the engine with the units; the reference pipeline with the ground-truth modules; and, with
    `with_plain`, ours without any unit (to show the control had a visible effect)."""
    model, pipe = parity_models.get(tiny, "epsilon")
    seeds = batch_seeds(seed, 2)
    params = SamplingParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler (diffusers)", steps=STEPS,
                            cfg_scale=CFG, width=width, height=height, seeds=seeds)
    ours_units, truths, images = [], [], []
    for unit in units:
        path, truth = controlnet_files[unit["file"]]
        image = unit.get("image") or control_picture(width, height)
        images.append(image)
        truths.append(truth)
        ours_units.append(ControlUnit(
            controlnet=load_controlnet(path).model, image=control_image(image, width, height, 0),
            weight=unit.get("weight", 1.0), guidance_start=unit.get("start", 0.0), guidance_end=unit.get("end", 1.0),
            mode=unit.get("mode", ControlMode.BALANCED),
        ))
    ours = txt2img(model, params, REGISTRY, [ControlNetExtension(ours_units)])
    without = txt2img(model, params, REGISTRY) if with_plain else []

    sdxl = model.family.is_sdxl
    cls = diffusers.StableDiffusionXLControlNetPipeline if sdxl else diffusers.StableDiffusionControlNetPipeline
    single = len(truths) == 1
    reference = cls.from_pipe(pipe, controlnet=truths[0] if single else truths)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = reference_scheduler("Euler (diffusers)", "Automatic", "epsilon", seeds[0])
    kwargs = dict(
        controlnet_conditioning_scale=[u.get("weight", 1.0) for u in units],
        control_guidance_start=[u.get("start", 0.0) for u in units],
        # Our window is start <= i/N <= end; diffusers' is (i+1)/N <= end: the same steps with end + 1/N.
        control_guidance_end=[min(1.0, u.get("end", 1.0) + 1.0 / STEPS) for u in units],
    )
    if single:
        kwargs = {key: value[0] for key, value in kwargs.items()}
    kwargs.update(reference_overrides or {})
    ref = reference(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=images[0] if single else images, num_inference_steps=STEPS,
        guidance_scale=CFG, width=width, height=height, latents=reference_noise(seeds, height, width),
        num_images_per_prompt=2, **kwargs,
    ).images
    return ours, ref, without


@pytest.mark.parametrize("file", ["sd1-cldm10", "sd1-cldm11", "sd1-diffusers", "sdxl-diffusers", "sdxl-cldm11"])
def test_one_unit_matches_diffusers_controlnet_pipeline(
    file: str, parity_models: ParityModels, controlnet_files, request: pytest.FixtureRequest
) -> None:
    tiny = request.getfixturevalue("tiny_sdxl" if file.startswith("sdxl") else "tiny_sd1")
    ours, ref, without = _run(parity_models, tiny, controlnet_files, [{"file": file}], with_plain=True)
    print(f"\ncontrolnet parity {file}: {_diff(ours, ref)}/255, effect {_diff(ours, without)}/255")
    assert _diff(ours, ref) <= MAX_PIXEL_DIFF
    assert _diff(ours, without) > 10  # the control visibly changed the image


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_two_units_match_multicontrolnet(family: str, parity_models: ParityModels, controlnet_files,
                                         request: pytest.FixtureRequest) -> None:
    tiny = request.getfixturevalue(f"tiny_{family}")
    first = "sd1-cldm11" if family == "sd1" else "sdxl-diffusers"
    second_image = control_picture(64, 96).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    units = [{"file": first, "weight": 0.8}, {"file": f"{family}-second", "weight": 0.6, "image": second_image}]
    ours, ref, _ = _run(parity_models, tiny, controlnet_files, units)
    assert _diff(ours, ref) <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("weight,start,end", [(1.3, 0.3, 1.0), (1.0, 0.0, 0.5), (0.9, 0.2, 0.7)])
def test_weight_and_step_window_follow_the_documented_rule(
    weight: float, start: float, end: float, parity_models: ParityModels, controlnet_files, tiny_sd1
) -> None:
    ours, ref, _ = _run(parity_models, tiny_sd1, controlnet_files,
                        [{"file": "sd1-cldm11", "weight": weight, "start": start, "end": end}])
    assert _diff(ours, ref) <= MAX_PIXEL_DIFF


def test_step_window_differs_from_diffusers_rule_at_the_boundary(parity_models, controlnet_files, tiny_sd1) -> None:
    """end = 0.4 of 5 steps: our rule runs steps 0..2 (2/5 <= 0.4), diffusers' runs 0..1; a visible difference
    proves the window is not diffusers' (and the test above proves it is the documented one)."""
    ours, _, _ = _run(parity_models, tiny_sd1, controlnet_files, [{"file": "sd1-cldm11", "end": 0.4}])
    _, diffusers_rule, _ = _run(parity_models, tiny_sd1, controlnet_files, [{"file": "sd1-cldm11", "end": 0.2}])
    assert _diff(ours, diffusers_rule) > MAX_PIXEL_DIFF


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("mode", [ControlMode.PROMPT, ControlMode.CONTROLNET])
def test_control_modes_follow_sd_webui_controlnet(
    family: str, mode: ControlMode, parity_models: ParityModels, controlnet_files, request: pytest.FixtureRequest
) -> None:
    """My prompt: soft scales on both halves. ControlNet: soft scales on the conditional half only (diffusers'
    guess_mode runs the ControlNet on that half and gives the other zeros)."""
    tiny = request.getfixturevalue(f"tiny_{family}")
    file = "sd1-cldm11" if family == "sd1" else "sdxl-diffusers"
    weight = 1.4
    truth = controlnet_files[file][1]
    try:
        wrap_soft(truth, weight)
        ours, ref, _ = _run(
            parity_models, tiny, controlnet_files, [{"file": file, "weight": weight, "mode": mode}],
            reference_overrides={"controlnet_conditioning_scale": 1.0, "guess_mode": mode == ControlMode.CONTROLNET},
        )
    finally:
        del truth.forward  # back to the class's own forward
    balanced, _, _ = _run(parity_models, tiny, controlnet_files, [{"file": file, "weight": weight}])
    assert _diff(ours, ref) <= MAX_PIXEL_DIFF
    assert _diff(ours, balanced) > MAX_PIXEL_DIFF


def test_sd2_unit_matches(parity_models: ParityModels, tiny_sd2, tmp_path: Path) -> None:
    path = tmp_path / "sd2-cldm11.safetensors"
    truth = write_synthetic_controlnet(path, tiny_sd2.model, "cldm-1.1", seed=38)
    files = {"sd2": (path, truth)}
    ours, ref, without = _run(parity_models, tiny_sd2, files, [{"file": "sd2"}], with_plain=True)
    assert _diff(ours, ref) <= MAX_PIXEL_DIFF and _diff(ours, without) > 10


@pytest.mark.parametrize("family,file", [("sd1", "sd1-cldm10"), ("sdxl", "sdxl-diffusers")])
def test_img2img_unit_matches_diffusers_controlnet_img2img(
    family: str, file: str, parity_models: ParityModels, controlnet_files, request: pytest.FixtureRequest
) -> None:
    """img2img at strength 0.7 (A1111 runs 4 of 5 steps): the window counts the steps actually run, as diffusers."""
    from tests.reference import reference_generators, reference_latents
    from webui.engine.img2img import Img2ImgOptions, img2img

    tiny = request.getfixturevalue(f"tiny_{family}")
    model, pipe = parity_models.get(tiny, "epsilon")
    width, height, seeds = 64, 96, batch_seeds(9, 2)
    init = control_picture(width, height).transpose(Image.Transpose.FLIP_TOP_BOTTOM).convert("RGB")
    init = Image.fromarray((np.asarray(init, dtype=np.uint8) // 2 + np.array([90, 20, 60], dtype=np.uint8)))
    path, truth = controlnet_files[file]
    unit = ControlUnit(load_controlnet(path).model, control_image(control_picture(width, height), width, height, 0),
                       weight=0.9, guidance_end=0.6)
    params = SamplingParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler (diffusers)", steps=STEPS,
                            cfg_scale=CFG, width=width, height=height, seeds=seeds)
    ours = img2img(model, params, REGISTRY, init, Img2ImgOptions(denoising_strength=0.7), [ControlNetExtension([unit])])

    cls = (diffusers.StableDiffusionXLControlNetImg2ImgPipeline if model.family.is_sdxl
           else diffusers.StableDiffusionControlNetImg2ImgPipeline)
    reference = cls.from_pipe(pipe, controlnet=truth)
    reference.set_progress_bar_config(disable=True)
    reference.scheduler = reference_scheduler("Euler (diffusers)", "Automatic", "epsilon", seeds[0])
    latents = reference_latents(reference, reference.image_processor.preprocess(init)).repeat(2, 1, 1, 1)
    run = int(0.7 * STEPS) + 1  # A1111's step count, 4; diffusers runs int(steps * strength)
    ref = reference(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=latents, control_image=control_picture(width, height),
        strength=(run + 0.5) / STEPS, num_inference_steps=STEPS, guidance_scale=CFG, width=width, height=height,
        num_images_per_prompt=2, generator=reference_generators(seeds), controlnet_conditioning_scale=0.9,
        control_guidance_end=0.6 + 1.0 / run,
    ).images
    assert _diff(ours, ref) <= MAX_PIXEL_DIFF
