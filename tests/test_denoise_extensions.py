"""The denoise loop's extension points: call order, CFG halves, residual injection, and CFG rescale against
diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from tests.reference import batch_seeds, reference_noise, reference_scheduler
from webui.engine.denoise import DenoiseContext, DenoiseExtension, UNetCall
from webui.engine.denoise_extensions import CfgRescale
from webui.engine.generation import SamplingParams, generate_latents, txt2img
from webui.engine.samplers import SamplerRegistry

if TYPE_CHECKING:
    from tests.conftest import ParityModels

pytestmark = pytest.mark.usefixtures("single_torch_thread")
REGISTRY = SamplerRegistry()


def params(prompt: str = "a red circle", negative: str = "blurry", cfg: float = 6.0, steps: int = 3,
           seeds: tuple[int, ...] = (7, 8)) -> SamplingParams:
    return SamplingParams(prompt=prompt, negative_prompt=negative, sampler="Euler (diffusers)", steps=steps,
                          cfg_scale=cfg, width=64, height=64, seeds=list(seeds))


class Recorder(DenoiseExtension):
    """Writes down every callback with what it saw."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def before_loop(self, ctx: DenoiseContext) -> None:
        self.events.append(("before_loop", ctx.total_steps))

    def before_step(self, ctx: DenoiseContext) -> None:
        self.events.append(("before_step", ctx.step))

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        self.events.append(("before_unet", ctx.step, call.halves, call.sample.shape[0], call.sample.shape[1]))

    def after_cfg(self, ctx: DenoiseContext) -> None:
        self.events.append(("after_cfg", ctx.step))

    def after_step(self, ctx: DenoiseContext) -> None:
        self.events.append(("after_step", ctx.step))

    def after_loop(self, ctx: DenoiseContext) -> None:
        self.events.append(("after_loop",))


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    from webui.engine.loader import load_checkpoint

    return load_checkpoint(tiny_sd1.path)


def test_callbacks_run_in_documented_order_with_one_batched_cfg_call(sd1) -> None:
    recorder = Recorder()
    generate_latents(sd1, params(), REGISTRY, [recorder])
    expected = [("before_loop", 3)]
    for step in range(3):
        expected += [("before_step", step), ("before_unet", step, ("uncond", "cond"), 4, 4),
                     ("after_cfg", step), ("after_step", step)]
    assert recorder.events == [*expected, ("after_loop",)]


def test_prompts_of_different_lengths_make_two_calls_one_per_half(sd1) -> None:
    recorder = Recorder()
    long_negative = " ".join(["blurry grainy dark"] * 30)  # two 77-token windows against the prompt's one
    generate_latents(sd1, params(negative=long_negative, steps=1), REGISTRY, [recorder])
    calls = [event for event in recorder.events if event[0] == "before_unet"]
    assert calls == [("before_unet", 0, ("uncond",), 2, 4), ("before_unet", 0, ("cond",), 2, 4)]


def test_cfg_off_makes_one_conditional_call(sd1) -> None:
    recorder = Recorder()
    generate_latents(sd1, params(cfg=1.0, steps=1), REGISTRY, [recorder])
    assert [e for e in recorder.events if e[0] == "before_unet"] == [("before_unet", 0, ("cond",), 2, 4)]


def test_nine_channel_inputs_reach_the_unet_but_not_the_extensions(tiny_sd1_inpaint) -> None:
    """A ControlNet must see the 4-channel latents; the U-Net gets 9 channels."""
    from webui.engine.loader import load_checkpoint

    model = load_checkpoint(tiny_sd1_inpaint.path)
    recorder, seen = Recorder(), []
    handle = model.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    try:
        generate_latents(model, params(steps=1), REGISTRY, [recorder])
    finally:
        handle.remove()
    assert [e[-1] for e in recorder.events if e[0] == "before_unet"] == [4]
    assert seen == [9]


class Residuals(DenoiseExtension):
    """Adds a constant to every down/mid residual of the rows of one CFG half (or all rows)."""

    def __init__(self, value: float, half: str | None = None) -> None:
        self.value, self.half = value, half
        self.uncond_outputs: list[torch.Tensor] = []

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        unet = ctx.model.unet
        mask = call.half_mask(self.half) if self.half else torch.ones_like(call.half_mask("cond"))
        # The shapes diffusers' U-Net expects: one residual per down-block output, plus the mid block's.
        sample = torch.zeros_like(call.sample)
        with torch.no_grad():
            down = [unet.conv_in(sample)]
            emb = unet.time_embedding(unet.time_proj(call.timestep.expand(sample.shape[0])).to(sample.dtype))
            hidden = down[0]
            for block in unet.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    hidden, states = block(hidden, emb, encoder_hidden_states=call.conditioning.context)
                else:
                    hidden, states = block(hidden, emb)
                down.extend(states)
        call.add_residuals([torch.full_like(d, self.value) * mask for d in down],
                           torch.full_like(hidden, self.value) * mask)

    def after_cfg(self, ctx: DenoiseContext) -> None:
        self.uncond_outputs.append(ctx.uncond_output.clone())


def test_zero_residuals_change_nothing_and_residuals_add_up(sd1) -> None:
    base = generate_latents(sd1, params(), REGISTRY)
    assert torch.equal(generate_latents(sd1, params(), REGISTRY, [Residuals(0.0)]), base)
    one = generate_latents(sd1, params(), REGISTRY, [Residuals(0.3)])
    assert (one - base).abs().max() > 1e-3
    halves = generate_latents(sd1, params(), REGISTRY, [Residuals(0.15), Residuals(0.15)])
    assert torch.allclose(halves, one, atol=1e-4)


def test_residuals_on_the_cond_half_only_leave_the_uncond_prediction_alone(sd1) -> None:
    plain, cond_only = Residuals(0.0), Residuals(0.5, half="cond")
    generate_latents(sd1, params(steps=1), REGISTRY, [plain])
    generate_latents(sd1, params(steps=1), REGISTRY, [cond_only])
    assert torch.allclose(plain.uncond_outputs[0], cond_only.uncond_outputs[0], atol=1e-5)


@pytest.mark.parametrize("family,prediction", [("tiny_sd1", "epsilon"), ("tiny_sd2", "v_prediction")])
def test_cfg_rescale_matches_diffusers_guidance_rescale(
    family: str, prediction: str, request: pytest.FixtureRequest, parity_models: ParityModels
) -> None:
    ours_model, pipe = parity_models.get(request.getfixturevalue(family), prediction)
    seeds = batch_seeds(21, 2)
    p = params(prompt="a blue square", negative="noise", cfg=9.0, steps=4, seeds=tuple(seeds))
    ours = txt2img(ours_model, p, REGISTRY, [CfgRescale(0.7)])
    plain = txt2img(ours_model, p, REGISTRY)
    pipe.scheduler = reference_scheduler("Euler (diffusers)", "Automatic", prediction, seeds[0])
    ref = pipe(prompt="a blue square", negative_prompt="noise", num_inference_steps=4, guidance_scale=9.0,
               guidance_rescale=0.7, width=64, height=64, latents=reference_noise(seeds, 64, 64),
               num_images_per_prompt=2).images

    def diff(a, b) -> int:
        return max(int(np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max()) for x, y in zip(a, b))

    assert diff(ours, ref) <= 2
    assert diff(ours, plain) > 2  # the rescale did something the comparison can see
