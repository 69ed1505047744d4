"""The img2img and Inpaint tabs (brush mask, uploaded mask, outpaint), and "send to" from txt2img and PNG Info.

Everything here translates widgets into an `Img2ImgRequest` and runs it through the generation service with the
img2img or outpaint runner. Every image field goes through `webui.services.uploads` before anything is decoded:
`gr.Image` fields hand over file paths (Gradio reads only the header), and the brush editor checks each file's header
in its own preprocessing step (`guard_editor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr
import numpy as np
from gradio.data_classes import FileData
from PIL import Image

from webui.context import AppContext
from webui.services.generation import ModeRunner
from webui.services.img2img import (
    INPAINTING_FILL_LABELS, ORIGINAL, RESIZE_MODE_LABELS, Img2ImgRequest, Img2ImgRunner, OutpaintRunner,
)
from webui.services.output_browser import OutputBrowser
from webui.services.requests import RequestError, parse_request
from webui.services.uploads import UploadError, UploadLimits, check_header, load_image, to_rgb
from webui.ui.bridge import UiBridge
from webui.ui.extension_sections import render_sections, with_extension_controls
from webui.ui.script_controls import SCRIPT_KEY, script_controls, script_submitter
from webui.ui.job_stream import (
    JobButtons, job_buttons, result_column, run_job_streaming, snap_size_to_8, wire_interrupt_and_select,
    wire_sampler_schedules,
)
from webui.ui.prompt_tools import seed_row, token_counter, wire_seed_row
from webui.ui.seed_extras import SeedExtras, paste_fields as seed_paste_fields, paste_updates as seed_paste_updates
from webui.ui.seed_extras import request_fields as seed_extra_fields, seed_extras
from webui.ui.paste_params import PasteField, PasteWiring, sampler_check, wire_paste
from webui.ui.styles_ui import prompt_tools, styled_prompts, wire_styles
from webui.ui.session import owner_of

RESIZE_CHOICES = [RESIZE_MODE_LABELS[mode] for mode in sorted(RESIZE_MODE_LABELS)]
FILL_CHOICES = [INPAINTING_FILL_LABELS[i] for i in sorted(INPAINTING_FILL_LABELS)]
MASK_MODES = ["Inpaint masked", "Inpaint not masked"]
AREAS = ["Whole picture", "Only masked"]
SUBMODES = ("brush", "upload", "outpaint")


def guard_editor(editor: gr.ImageEditor, limits: UploadLimits) -> gr.ImageEditor:
    """Check the header of every file this editor receives before Gradio decodes it.

    Wraps the one instance's own converter (no subclass: Gradio writes a .pyi stub next to any module that
    subclasses a component).
    """
    convert = editor.convert_and_format_image

    def checked(file: FileData | None | bytes, flatten_on_white: bool = False) -> Any:
        if file is not None:
            try:
                check_header(file.path if isinstance(file, FileData) else bytes(file), "image", limits)
            except UploadError as exc:
                raise gr.Error(str(exc)) from None
        return convert(file, flatten_on_white)

    editor.convert_and_format_image = checked  # type: ignore[method-assign]
    return editor


# The mask brush paints half-transparent, so the image shows through the mask. The mask is every pixel with alpha > 0
# (`editor_image_and_mask`), so the opacity changes what is seen, never what is sent. White or black, whichever shows.
MASK_COLORS: list[tuple[str, float]] = [("#ffffff", 0.5), ("#000000", 0.5)]


def mask_editor(prefix: str, limits: UploadLimits) -> gr.ImageEditor:
    """The brush sub-tab: the image-and-mask editor and its "Clear mask" button.

    Brush, eraser (it erases the mask layer only; the image is a separate background layer) and undo are Gradio's
    own. `assets/brush.js` adds what Gradio cannot do: a default brush and eraser size that follows the image, a size
    popup that closes once a size is picked (it lies over the image), and a clear that keeps the image and is one step
    of the editor's undo history. No component update is ever sent to this editor for that: Gradio would rebuild the
    session's copy from its constructor arguments, without `guard_editor`.
    """
    editor = guard_editor(gr.ImageEditor(
        label="Image and mask (paint over what to change)", type="pil", image_mode="RGBA",
        sources=["upload", "clipboard"], layers=False, transforms=(),
        brush=gr.Brush(colors=list(MASK_COLORS), color_mode="fixed"), eraser=gr.Eraser(),
        elem_id=f"{prefix}_editor",
    ), limits)
    editor_id = f"'{prefix}_editor'"
    editor.upload(None, js=f"() => {{ window.latentStudioBrush?.fitBrush({editor_id}); }}")
    clear = gr.Button("Clear mask", size="sm", elem_id=f"{prefix}_clear_mask")
    clear.click(None, js=f"() => {{ window.latentStudioBrush?.clearMask({editor_id}); }}")
    return editor


def mask_mode_control(prefix: str, submode: gr.Radio) -> gr.Radio:
    """A1111's "Mask mode" (`inpainting_mask_invert`), right under the mask it inverts (brush or uploaded).

    One control, not a second toggle kept in step with it; hidden in Outpaint, whose mask is always the new area and
    is never inverted.
    """
    mask_mode = gr.Radio(MASK_MODES, value=MASK_MODES[0], type="index", label="Mask mode",
                         info="Inpaint not masked inverts the mask: everything except the painted area is repainted",
                         elem_id=f"{prefix}_mask_mode")
    submode.change(lambda mode: gr.Radio(visible=mode != "outpaint"), inputs=[submode], outputs=[mask_mode],
                   queue=False, show_progress="hidden")
    return mask_mode


@dataclass
class Img2ImgPanel:
    """One tab's widgets: the prompt row, sampling settings, the output column and (inpaint tab) the mask inputs."""

    prefix: str
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    denoise: gr.Slider
    gallery: gr.Gallery
    infotext: gr.Textbox
    image: gr.Image | None = None  # img2img tab
    editor: gr.ImageEditor | None = None  # inpaint tab, brush sub-tab
    submode: gr.Radio | None = None
    subtabs: gr.Tabs | None = None
    mask_blur: gr.Slider | None = None
    masked_content: gr.Radio | None = None
    inpaint_area: gr.Radio | None = None
    padding: gr.Slider | None = None
    outpaint_image: gr.Image | None = None  # inpaint tab, outpaint sub-tab
    buttons: JobButtons | None = None
    seed_extras: SeedExtras | None = None  # the "Extra" seed options (variation seed, resize seed from, RNG)


@dataclass
class Img2ImgControls:
    img2img: Img2ImgPanel
    inpaint: Img2ImgPanel




def editor_image_and_mask(value: dict | None, limits: UploadLimits) -> tuple[Image.Image, Image.Image | None]:
    """ImageEditor value -> (RGB background, brush mask): the mask is every pixel any layer painted (alpha > 0)."""
    background = (value or {}).get("background")
    if background is None:
        raise RequestError("image", "no image: upload one to paint the mask on")
    image = to_rgb(load_image(background, "image", limits))
    painted = None
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        array = np.asarray(load_image(layer, "mask", limits).convert("RGBA"))[..., 3] > 0
        painted = array if painted is None else (painted | array if painted.shape == array.shape else painted)
    mask = Image.fromarray(painted.astype(np.uint8) * 255) if painted is not None and painted.any() else None
    return image, mask


def _size(value: float | None) -> float | None:
    """0 (or empty): the input's own size; anything else goes to the schema as sent (20.5 is refused there)."""
    return value or None


def _panel(
    context: AppContext, prefix: str, inpaint: bool, limits: UploadLimits, bridge: UiBridge
) -> tuple[Img2ImgPanel, list, list, list]:
    """Build one tab; returns the panel, its generate inputs (after the shared ones) and its outputs."""
    samplers = context.samplers
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt")
            token_counter(prompt, f"{prefix}_token_counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt")
            token_counter(negative, f"{prefix}_neg_token_counter")
        with gr.Column(scale=1, min_width=160):
            buttons = job_buttons(prefix)
            tools = prompt_tools(prefix, context.styles)
    panel_inputs: list = []
    with gr.Row(elem_classes=["ls-work-row"]):
        with gr.Column(elem_id=f"{prefix}_settings_col", elem_classes=["ls-settings-col"]):
            image = editor = submode = subtabs = outpaint_image = None
            if not inpaint:
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                 elem_id=f"{prefix}_image")
                panel_inputs.append(image)
            else:
                # Which sub-tab is open; a hidden input (not State) so API clients can choose the mode too.
                submode = gr.Radio(list(SUBMODES), value="brush", visible=False, label="Inpaint mode",
                                   elem_id=f"{prefix}_submode")
                with gr.Tabs(elem_id=f"{prefix}_mode") as subtabs:
                    with gr.Tab("Brush mask", id="brush", elem_id=f"{prefix}_tab_brush") as tab_brush:
                        editor = mask_editor(prefix, limits)
                    with gr.Tab("Upload mask", id="upload", elem_id=f"{prefix}_tab_upload") as tab_upload:
                        with gr.Row():
                            upload_image = gr.Image(label="Image", type="filepath", image_mode=None,
                                                    sources=["upload"], elem_id=f"{prefix}_upload_image")
                            upload_mask = gr.Image(label="Mask (white = repaint)", type="filepath", image_mode=None,
                                                   sources=["upload"], elem_id=f"{prefix}_upload_mask")
                    with gr.Tab("Outpaint", id="outpaint", elem_id=f"{prefix}_tab_outpaint") as tab_outpaint:
                        outpaint_image = gr.Image(label="Image", type="filepath", image_mode=None,
                                                  sources=["upload"], elem_id=f"{prefix}_outpaint_image")
                        with gr.Row():
                            sides = [gr.Slider(0, 1024, value=0, step=8, label=f"Extend {s} (px)",
                                               elem_id=f"{prefix}_outpaint_{s}")
                                     for s in ("left", "right", "up", "down")]
                        outpaint_fill = gr.Radio(["edge", "noise"], value="edge", label="New area starts from",
                                                 elem_id=f"{prefix}_outpaint_fill")
                for tab, name in ((tab_brush, "brush"), (tab_upload, "upload"), (tab_outpaint, "outpaint")):
                    tab.select(lambda n=name: n, outputs=[submode], queue=False)
                mask_mode = mask_mode_control(prefix, submode)
                panel_inputs += [submode, editor, upload_image, upload_mask, outpaint_image, *sides, outpaint_fill]
            resize_mode = gr.Radio(RESIZE_CHOICES, value=RESIZE_CHOICES[0], type="index", label="Resize mode",
                                   elem_id=f"{prefix}_resize_mode")
            with gr.Row():
                sampler = gr.Dropdown(samplers.names(), value=context.settings.get("core.default_sampler"),
                                      label="Sampling method", elem_id=f"{prefix}_sampler")
                schedule = gr.Dropdown(samplers.schedule_names(), value="Automatic", label="Schedule type",
                                       elem_id=f"{prefix}_schedule")
            steps = gr.Slider(1, 150, value=context.settings.get("core.default_steps"), step=1, label="Sampling steps",
                              elem_id=f"{prefix}_steps")
            with gr.Row():
                width = gr.Slider(0, 2048, value=0, step=8, label="Width (0 = the input's)", elem_id=f"{prefix}_width")
                height = gr.Slider(0, 2048, value=0, step=8, label="Height (0 = the input's)",
                                   elem_id=f"{prefix}_height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{prefix}_batch_count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{prefix}_batch_size")
            cfg_scale = gr.Slider(1, 30, value=context.settings.get("core.default_cfg_scale"), step=0.5,
                                  label="CFG Scale", elem_id=f"{prefix}_cfg_scale")
            denoise = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength", elem_id=f"{prefix}_denoise")
            seeds = seed_row(prefix)
            seed = seeds.seed
            extras = seed_extras(prefix)
            extension_controls = render_sections(context, "img2img", prefix)
            if not inpaint:  # A1111's "Script" dropdown; its values reach the handler under SCRIPT_KEY
                extension_controls = [*extension_controls, *script_controls(context, "img2img", prefix).controls]
            mask_blur = masked_content = inpaint_area = padding = None
            if inpaint:
                mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id=f"{prefix}_mask_blur")
                masked_content = gr.Radio(FILL_CHOICES, value=FILL_CHOICES[ORIGINAL], type="index",
                                          label="Masked content", elem_id=f"{prefix}_masked_content")
                with gr.Row():
                    inpaint_area = gr.Radio(AREAS, value=AREAS[0], type="index", label="Inpaint area",
                                            elem_id=f"{prefix}_inpaint_area")
                    padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                        elem_id=f"{prefix}_padding")
                panel_inputs += [mask_blur, mask_mode, masked_content, inpaint_area, padding]
        results = result_column(prefix, bridge)
        gallery, preview, infotext, status = results.gallery, results.preview, results.infotext, results.status
    shared = [prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, batch_count, batch_size,
              denoise, resize_mode]
    panel = Img2ImgPanel(prefix, prompt, negative, sampler, schedule, steps, cfg_scale, seed, denoise, gallery,
                         infotext, image, editor, submode, subtabs, mask_blur, masked_content, inpaint_area, padding,
                         outpaint_image, buttons, extras)

    wire_interrupt_and_select(context, buttons, gallery, infotext)
    wire_seed_row(seeds, infotext)
    wire_sampler_schedules(context.samplers, sampler, schedule)
    for size in (width, height):
        snap_size_to_8(size)
    wire_styles(context.styles, tools, prompt, negative, buttons.message)
    # ↙ and dropped images fill the fields "send to" fills (its table), plus size and batch size
    paste_fields = [PasteField(key, getattr(panel, attribute), sampler_check(context.samplers, attribute))
                    for key, attribute in _PARAM_FIELDS]
    paste_fields += [PasteField("Denoising strength", denoise), PasteField("Size-1", width),
                     PasteField("Size-2", height), PasteField("Batch size", batch_size)]
    paste_fields += seed_paste_fields(extras)
    wire_paste(OutputBrowser(context.outputs), PasteWiring(tools.paste, prompt, tools.drop, buttons.message),
               paste_fields, limits)
    # the selected styles come last, after the tab's own inputs, so positional API callers are unaffected
    return (panel, [buttons.generate, *shared, *panel_inputs, tools.styles, *extras.components()],
            [gallery, preview, infotext, status],
            extension_controls)


def _base_request(checkpoint: str, values: list[Any]) -> dict[str, Any]:
    prompt, negative, sampler, schedule, steps, cfg, w, h, seed, count, size, denoise, resize_mode = values
    return dict(
        prompt=prompt or "", negative_prompt=negative or "", sampler_name=sampler, scheduler=schedule, steps=steps,
        cfg_scale=cfg, width=_size(w), height=_size(h), seed=-1 if seed is None else seed, batch_size=size,
        n_iter=count, model=checkpoint or None, denoising_strength=denoise,
        resize_mode=0 if resize_mode is None else resize_mode,
    )


def build_img2img_tabs(context: AppContext, checkpoint: gr.Dropdown, bridge: UiBridge) -> Img2ImgControls:
    """The "img2img" and "Inpaint" tabs; call inside the app's `gr.Tabs`."""
    limits = UploadLimits.from_env()
    # Depth models estimate their depth map with the depth_midas preprocessor when its weights are installed.
    depth = context.controlnet.preprocessors
    img2img_runner, outpaint_runner = Img2ImgRunner(context.samplers, depth), OutpaintRunner(context.samplers, depth)

    with gr.Tab("img2img", id="img2img"):
        i2i, (generate, *inputs), outputs, i2i_extension_controls = _panel(context, "img2img", False, limits, bridge)

    def on_img2img(
        checkpoint_title: str, prompt: str, negative: str, sampler: str, schedule: str, steps: float, cfg: float,
        w: float, h: float, seed: float, count: float, size: float, denoise: float, resize_mode: int,
        image_path: str | None, styles: list[str] | None, seed_extra: bool = False, subseed: float | None = -1,
        subseed_strength: float = 0.0, seed_resize_from_w: float = 0, seed_resize_from_h: float = 0,
        rng: str | None = None,
        overrides: list[str] | None = None, *,
        extensions: dict, request: gr.Request,
    ) -> Iterator[Any]:
        script_values = extensions.pop(SCRIPT_KEY, {})
        try:
            prompt, negative = styled_prompts(context.styles, prompt, negative, styles)
        except ValueError as exc:
            raise i2i.buttons.notes.refuse(request, exc) from None
        shared = [prompt, negative, sampler, schedule, steps, cfg, w, h, seed, count, size, denoise, resize_mode]
        try:
            if not image_path:
                raise RequestError("init_image", "no image: upload one (or send one from txt2img or PNG Info)")
            image = to_rgb(load_image(image_path, "image", limits))
            gen_request = parse_request(Img2ImgRequest, dict(init_image=image, extensions=extensions,
                                                             **_base_request(checkpoint_title, shared),
                                                             **seed_extra_fields(seed_extra, subseed, subseed_strength,
                                                                                 seed_resize_from_w,
                                                                                 seed_resize_from_h, rng,
                                                                                 overrides)))
            submit = script_submitter(context, "img2img", script_values, gen_request, owner_of(request),
                                      img2img_runner)  # None: no script chosen
        except ValueError as exc:
            raise i2i.buttons.notes.refuse(request, exc) from None
        yield from run_job_streaming(context, gen_request, owner_of(request), i2i.buttons.notes, request,
                                     img2img_runner, submit=submit)

    i2i.buttons.on_generate_failure(generate.click(with_extension_controls(on_img2img, i2i_extension_controls),
                   inputs=[checkpoint, *inputs, *(c for _, _, c in i2i_extension_controls)], outputs=outputs,
                   concurrency_limit=None, api_name="img2img", show_progress="hidden"))

    with gr.Tab("Inpaint", id="inpaint"):
        inp, (generate, *inputs), outputs, inp_extension_controls = _panel(context, "inpaint", True, limits, bridge)

    def on_inpaint(
        checkpoint_title: str, prompt: str, negative: str, sampler: str, schedule: str, steps: float, cfg: float,
        w: float, h: float, seed: float, count: float, size: float, denoise: float, resize_mode: int,
        submode: str, editor: dict | None, upload_image: str | None, upload_mask: str | None,
        outpaint_image: str | None, left: float, right: float, up: float, down: float, fill_from: str,
        mask_blur: float, mask_mode: int, masked_content: int, inpaint_area: int, padding: float,
        styles: list[str] | None, seed_extra: bool = False, subseed: float | None = -1, subseed_strength: float = 0.0,
        seed_resize_from_w: float = 0, seed_resize_from_h: float = 0, rng: str | None = None,
        overrides: list[str] | None = None, *,
        extensions: dict, request: gr.Request,
    ) -> Iterator[Any]:
        try:
            prompt, negative = styled_prompts(context.styles, prompt, negative, styles)
        except ValueError as exc:
            raise inp.buttons.notes.refuse(request, exc) from None
        shared = [prompt, negative, sampler, schedule, steps, cfg, w, h, seed, count, size, denoise, resize_mode]
        fields = dict(
            _base_request(checkpoint_title, shared), mask_blur=mask_blur, inpainting_mask_invert=mask_mode or 0,
            inpainting_fill=ORIGINAL if masked_content is None else masked_content,
            inpaint_full_res=inpaint_area == 1, inpaint_full_res_padding=padding,
        )
        try:
            fields.update(seed_extra_fields(seed_extra, subseed, subseed_strength, seed_resize_from_w,
                                            seed_resize_from_h, rng, overrides))
            runner: ModeRunner = img2img_runner
            if submode == "outpaint":
                if not outpaint_image:
                    raise RequestError("init_image", "no image: upload the image to extend")
                image = to_rgb(load_image(outpaint_image, "image", limits))
                fields.update(outpaint_left=left, outpaint_right=right, outpaint_up=up, outpaint_down=down,
                              outpaint_fill=fill_from or "edge", inpainting_mask_invert=0)
                runner, mask = outpaint_runner, None
            elif submode == "upload":
                if not upload_image:
                    raise RequestError("init_image", "no image: upload the image to inpaint")
                if not upload_mask:
                    raise RequestError("mask", "no mask: upload a mask (white = repaint), "
                                               "or paint one in the Inpaint tab")
                image = to_rgb(load_image(upload_image, "image", limits))
                mask = load_image(upload_mask, "mask", limits)
            else:
                image, mask = editor_image_and_mask(editor, limits)
                if mask is None:
                    raise RequestError("mask", "nothing to inpaint: paint over the part of the image to change")
            gen_request = parse_request(Img2ImgRequest,
                                        dict(init_image=image, mask=mask, extensions=extensions, **fields))
        except ValueError as exc:
            raise inp.buttons.notes.refuse(request, exc) from None
        yield from run_job_streaming(context, gen_request, owner_of(request), inp.buttons.notes, request, runner)

    inp.buttons.on_generate_failure(generate.click(with_extension_controls(on_inpaint, inp_extension_controls),
                   inputs=[checkpoint, *inputs, *(c for _, _, c in inp_extension_controls)], outputs=outputs,
                   concurrency_limit=None, api_name="inpaint", show_progress="hidden"))
    return Img2ImgControls(i2i, inp)


# ---- send to img2img / inpaint ------------------------------------------------------------------------------------

_PARAM_FIELDS = (
    ("Prompt", "prompt"), ("Negative prompt", "negative_prompt"), ("Sampler", "sampler"),
    ("Schedule type", "schedule"), ("Steps", "steps"), ("CFG scale", "cfg_scale"), ("Seed", "seed"),
)


def _param_updates(panel: Img2ImgPanel, parsed: dict[str, Any]) -> list[Any]:
    """Fill a panel from parsed infotext; fields the image lacks are left alone (as PNG Info → txt2img)."""
    updates = [gr.update(value=parsed[key]) if key in parsed else gr.update() for key, _ in _PARAM_FIELDS]
    strength = parsed.get("Denoising strength")
    updates.append(gr.update(value=strength) if isinstance(strength, (int, float)) else gr.update())
    return updates + (seed_paste_updates(parsed) if panel.seed_extras else [])


def _param_outputs(panel: Img2ImgPanel) -> list[Any]:
    extras = panel.seed_extras.components() if panel.seed_extras else []
    return [getattr(panel, attr) for _, attr in _PARAM_FIELDS] + [panel.denoise] + extras


def checked_image_path(path: str, limits: UploadLimits) -> str:
    """The upload check every sent image goes through, as any uploaded file does."""
    try:
        check_header(path, "image", limits)
    except UploadError as exc:
        raise gr.Error(str(exc)) from None
    return path


def _send_updates(panel: Img2ImgPanel, path: str, parsed: dict[str, Any], outpaint: bool) -> list[Any]:
    if panel.image is not None:
        target: list[Any] = [gr.update(value=path)]
    elif outpaint:
        target = [gr.update(value=path), "outpaint", gr.Tabs(selected="outpaint")]
    else:
        # a plain value, not gr.update(): an update makes Gradio build a fresh editor for the session, without
        # guard_editor's upload check
        target = [{"background": path, "layers": [], "composite": path}, "brush", gr.Tabs(selected="brush")]
    return [*target, *_param_updates(panel, parsed)]


def _send_outputs(panel: Img2ImgPanel, outpaint: bool) -> list[Any]:
    if panel.image is not None:
        target = [panel.image]
    else:
        target = [panel.outpaint_image if outpaint else panel.editor, panel.submode, panel.subtabs]
    return [*target, *_param_outputs(panel)]


def register_send_targets(bridge: UiBridge, controls: Img2ImgControls) -> None:
    """"Send to img2img / inpaint / outpaint" targets for every output that has send buttons (galleries, PNG Info,
    extensions): the image and the parameters its infotext holds."""
    for name, label, panel, outpaint in (("img2img", "Send to img2img", controls.img2img, False),
                                         ("inpaint", "Send to inpaint", controls.inpaint, False),
                                         ("outpaint", "Send to outpaint", controls.inpaint, True)):
        def accept(path: str | None, values: dict, panel: Img2ImgPanel = panel, outpaint: bool = outpaint) -> list[Any]:
            return _send_updates(panel, path or "", values or {}, outpaint)

        bridge.register_target(name, label, panel.prefix, _send_outputs(panel, outpaint), accept)
