"""Write real extension folders (good and broken) for tests."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_extension(
    root: Path, name: str, body: str, requires_app: str = ">=0.1", entry: str = "main.py",
    manifest_name: str | None = None,
) -> Path:
    """`root/<name>/` with a manifest and the entry file. `manifest_name` gives the manifest a different name than the
    folder (duplicate names); an `entry` outside the folder is written where it points, so a refusal is a real one."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extension.toml").write_text(
        f'name = "{manifest_name or name}"\nversion = "1.0"\ndescription = "test extension {name}"\n'
        f'requires_app = "{requires_app}"\nentry = "{entry}"\nrequirements = ["numpy>=1"]\n',
        encoding="utf-8",
    )
    (folder / entry).write_text(textwrap.dedent(body), encoding="utf-8")
    return folder


NEGATE_HOOK = """
    import gradio as gr

    def register(api):
        api.add_setting("strength", 1.0, "How strongly to flip", kind="number")

        def build(mode):
            return {"enabled": gr.Checkbox(label="Flip the prediction", value=False, elem_id=f"{mode}_flip")}

        def flip(state, controls):
            if controls.get("enabled", True):
                state.denoised = -state.denoised * api.setting("strength")

        def tag(params, request, controls):
            if controls.get("enabled", True):
                params["Flipped"] = "yes"

        api.add_section("Flip", build)
        api.on_step(flip)
        api.on_save(tag)
"""

HELLO_TAB = """
    import gradio as gr

    def register(api):
        def build(ui):
            gr.Markdown("hello from a tab", elem_id="hello_markdown")

        api.add_tab("Hello Tab", build)
        api.add_route("ping", lambda: {"pong": api.name})
"""

RAISES_ON_IMPORT = """
    raise ImportError("this extension needs a package that is not installed")
"""

RAISES_IN_REGISTER = """
    def register(api):
        api.add_setting("left_behind", 1, "must be removed again", kind="number")
        raise RuntimeError("registration exploded")
"""

RAISES_IN_HOOK = """
    def register(api):
        def boom(state, controls):
            raise ValueError("per-step hook exploded")

        api.on_step(boom)
"""

RAISES_IN_UI = """
    def register(api):
        def build(ui):
            raise RuntimeError("tab build exploded")

        api.add_tab("Broken Tab", build)
"""

# ----- hooks that change something and then raise: containment must discard the change -----
# (The per-step ones raise unless their control `fail` is False, so the same extension shows that its edit counts.)

NEGATE_THEN_RAISE = """
    def register(api):
        def negate(state, controls):
            state.denoised = -state.denoised
            if controls.get("fail", True):
                raise RuntimeError("negated the prediction, then failed")

        api.on_step(negate)
"""

NEGATE_IN_PLACE_THEN_RAISE = """
    def register(api):
        def negate(state, controls):
            state.denoised.mul_(-1)
            if controls.get("fail", True):
                raise RuntimeError("negated the prediction in place, then failed")

        api.on_step(negate)
"""

EDIT_REQUEST_THEN_RAISE = """
    def register(api):
        def hijack(request, controls):
            request.prompt = "hijacked"
            request.steps = 1
            raise RuntimeError("before-generate hook exploded")

        api.on_before_generate(hijack)
"""

PAINT_IMAGE_THEN_RAISE = """
    def register(api):
        def blacken(images, request, controls):
            images[0].paste((0, 0, 0), (0, 0, images[0].width, images[0].height))
            raise RuntimeError("after-decode hook exploded")

        api.on_after_decode(blacken)
"""

TAG_THEN_RAISE = """
    def register(api):
        def broken(params, request, controls):
            params["Broken"] = "yes"
            raise RuntimeError("on-save hook exploded")

        api.on_save(broken)
"""

RETURNS_A_DICT_NOT_A_REQUEST = """
    def register(api):
        api.on_before_generate(lambda request, controls: {"prompt": "a dict is not a request"})
"""

RETURNS_NO_IMAGES = """
    def register(api):
        api.on_after_decode(lambda images, request, controls: [])
"""

TAGGER = """
    def register(api):
        def before(request, controls):
            request.negative_prompt += ", tagged"

        def after(images, request, controls):
            for image in images:
                image.putpixel((0, 0), (255, 0, 255))

        def tag(params, request, controls):
            params["Tagged"] = "yes"

        api.on_before_generate(before)
        api.on_after_decode(after)
        api.on_save(tag)
"""


def sampler_extension(*names: str) -> str:
    """An extension adding one Euler-based sampler per name, in order."""
    specs = "\n".join(f"        api.add_sampler(SamplerSpec({name!r}, 'EulerDiscreteScheduler'))" for name in names)
    return f"""
    from webui.engine.samplers import SamplerSpec

    def register(api):
{specs}
"""

# A denoise extension that adds residuals in place and then raises: the residuals must not reach the U-Net.
RESIDUALS_THEN_RAISE = """
import torch
from webui.engine.denoise import DenoiseExtension


class Broken(DenoiseExtension):
    def before_unet(self, ctx, call):
        call.channel_inputs.append(torch.zeros_like(call.sample))  # would break the U-Net's input width
        call.down_residuals, call.mid_residual = [torch.ones(1)], torch.ones(1)
        raise RuntimeError("denoise extension exploded")


def register(api):
    api.on_denoise(lambda request, model, controls: Broken() if controls.get("enabled") else None)
"""

# Edits the CFG result, then raises: the edit must be rolled back.
DENOISED_THEN_RAISE = """
from webui.engine.denoise import DenoiseExtension


class Broken(DenoiseExtension):
    def after_cfg(self, ctx):
        ctx.denoised.mul_(-1)
        raise RuntimeError("after-cfg exploded")


def register(api):
    api.on_denoise(lambda request, model, controls: [Broken()] if controls.get("enabled") else [])
"""

DENOISE_FACTORY_RAISES = """
def register(api):
    def factory(request, model, controls):
        raise KeyError("factory exploded")
    api.on_denoise(factory)
"""

DENOISE_FACTORY_WRONG_TYPE = """
def register(api):
    api.on_denoise(lambda request, model, controls: "not an extension")
"""

DENOISE_FACTORY_REFUSES_INPUT = """
from webui.services.requests import RequestError


def register(api):
    def factory(request, model, controls):
        if controls.get("strength", 0) > 1:
            raise RequestError("strength", "must be at most 1")
        return None
    api.on_denoise(factory)
"""
