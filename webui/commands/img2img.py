"""`python -m webui img2img` and `python -m webui outpaint`: the same runners and upload checks as the UI."""

from __future__ import annotations

import argparse
from pathlib import Path

from webui.commands.generate import add_sampling_arguments, request_fields, run_and_print

RESIZE_MODES = {"just-resize": 0, "crop-and-resize": 1, "resize-and-fill": 2, "latent-upscale": 3}
INPAINT_FILLS = {"fill": 0, "original": 1, "latent-noise": 2, "latent-nothing": 3}


def _add_image_arguments(parser: argparse.ArgumentParser, denoise: float) -> None:
    parser.add_argument("--init", type=Path, required=True, help="the input image (PNG, JPEG, WebP, ...)")
    parser.add_argument("--denoise", type=float, default=denoise, help=f"denoising strength 0..1 (default {denoise})")
    parser.add_argument("--mask-blur", type=int, default=4, help="Gaussian blur of the mask in pixels (default 4)")
    parser.add_argument("--max-image-pixels", type=int, help="refuse larger inputs (default: 50 MP, or "
                                                             "$LATENT_STUDIO_MAX_IMAGE_PIXELS)")


COMMANDS = {"img2img": "img2img, or inpaint with --mask; prints every written file",
            "outpaint": "extend the image on any side; prints every written file"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("img2img", help=COMMANDS["img2img"])
    add_sampling_arguments(parser)
    _add_image_arguments(parser, 0.75)
    parser.add_argument("--mask", type=Path, help="white (or opaque) = repaint; without it: plain img2img")
    parser.add_argument("--resize-mode", choices=[*RESIZE_MODES, "0", "1", "2", "3"], default="just-resize",
                        help="how the image meets --width/--height (default: just-resize)")
    parser.add_argument("--inpaint-fill", choices=list(INPAINT_FILLS), default="original",
                        help="masked content before denoising (default: original)")
    parser.add_argument("--inpaint-area", choices=["whole", "masked"], default="whole",
                        help="whole picture, or only the masked area scaled up to the generation size")
    parser.add_argument("--padding", type=int, default=32, help="padding around the masked area, px (default 32)")
    parser.add_argument("--invert-mask", action="store_true", help="repaint what is NOT masked")
    parser.add_argument("--depth", type=Path, help="depth map for SD 2 depth models (brighter = nearer); without it "
                                                   "one is estimated with depth_midas when its weights are installed")
    parser.set_defaults(run=run_img2img)

    outpaint = subparsers.add_parser("outpaint", help=COMMANDS["outpaint"])
    add_sampling_arguments(outpaint)
    _add_image_arguments(outpaint, 0.75)
    for side in ("left", "right", "up", "down"):
        outpaint.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add {side} (a multiple of 8)")
    outpaint.add_argument("--outpaint-fill", choices=["edge", "noise"], default="edge",
                          help="start the new area from stretched edge pixels or from latent noise (default edge)")
    outpaint.set_defaults(run=run_outpaint)


def _run(args: argparse.Namespace, outpaint: bool) -> int:
    from webui.services.img2img import Img2ImgRequest, Img2ImgRunner, OutpaintRunner
    from webui.services.requests import parse_request
    from webui.services.uploads import UploadLimits, load_image, to_rgb

    limits = UploadLimits(args.max_image_pixels) if args.max_image_pixels else UploadLimits.from_env()
    init = to_rgb(load_image(args.init, "init", limits))
    extra: dict = {}
    if outpaint:
        extra = dict(outpaint_left=args.left, outpaint_right=args.right, outpaint_up=args.up,
                     outpaint_down=args.down, outpaint_fill=args.outpaint_fill)
    else:
        mode = args.resize_mode
        extra = dict(
            mask=load_image(args.mask, "mask", limits) if args.mask else None,
            resize_mode=int(mode) if mode.isdigit() else RESIZE_MODES[mode],
            inpainting_fill=INPAINT_FILLS[args.inpaint_fill],
            inpaint_full_res=args.inpaint_area == "masked",
            inpaint_full_res_padding=args.padding,
            inpainting_mask_invert=int(args.invert_mask),
            depth_image=load_image(args.depth, "depth", limits) if args.depth else None,
        )
    request = parse_request(Img2ImgRequest, dict(
        **request_fields(args), init_image=init, denoising_strength=args.denoise, mask_blur=args.mask_blur, **extra
    ))
    return run_and_print(args, request, OutpaintRunner if outpaint else Img2ImgRunner)


def run_img2img(args: argparse.Namespace) -> int:
    return _run(args, outpaint=False)


def run_outpaint(args: argparse.Namespace) -> int:
    return _run(args, outpaint=True)
