"""Pixel-space image and mask operations for img2img, inpainting and outpainting (Pillow, NumPy, OpenCV).

These are the A1111 semantics (resize modes, mask blur, "fill", "only masked" crop regions) re-implemented on
library primitives. Every function takes and returns PIL images; nothing here knows about models or tensors.
Masks are mode "L": 255 = repaint, 0 = keep.
"""

from __future__ import annotations

from enum import IntEnum

import cv2
import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive), as PIL uses


class ResizeMode(IntEnum):
    """A1111's `resize_mode` numbers and labels."""

    JUST_RESIZE = 0
    CROP_AND_RESIZE = 1
    RESIZE_AND_FILL = 2
    LATENT_UPSCALE = 3

    @property
    def label(self) -> str:
        return RESIZE_MODE_LABELS[self]


RESIZE_MODE_LABELS = {
    ResizeMode.JUST_RESIZE: "Just resize",
    ResizeMode.CROP_AND_RESIZE: "Crop and resize",
    ResizeMode.RESIZE_AND_FILL: "Resize and fill",
    ResizeMode.LATENT_UPSCALE: "Just resize (latent upscale)",
}


def resize_image(image: Image.Image, mode: ResizeMode | int, width: int, height: int) -> Image.Image:
    """Bring `image` to width x height the way A1111's resize modes do (latent upscale resizes in pixels here)."""
    mode = ResizeMode(mode)
    if image.size == (width, height):
        return image.copy()
    if mode in (ResizeMode.JUST_RESIZE, ResizeMode.LATENT_UPSCALE):
        return image.resize((width, height), Image.Resampling.LANCZOS)
    w, h = image.size
    target_ratio, source_ratio = width / height, w / h
    cover = mode == ResizeMode.CROP_AND_RESIZE
    # Crop-and-resize scales so the image covers the target; resize-and-fill so that it fits inside it.
    if (target_ratio > source_ratio) == cover:
        new_w, new_h = width, max(1, round(h * width / w))
    else:
        new_w, new_h = max(1, round(w * height / h)), height
    resized = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    if cover:
        return resized.crop((-left, -top, -left + width, -top + height))
    array = np.asarray(resized)
    pad = [(top, height - new_h - top), (left, width - new_w - left)] + [(0, 0)] * (array.ndim - 2)
    return Image.fromarray(np.pad(array, pad, mode="edge"))  # borders = stretched edge pixels


def pad_to(image: Image.Image, width: int, height: int, edge: bool = True) -> Image.Image:
    """Grow to width x height at the right and bottom: edge pixels repeated (images) or zeros (masks)."""
    w, h = image.size
    if (w, h) == (width, height):
        return image.copy()
    array = np.asarray(image)
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (array.ndim - 2)
    return Image.fromarray(np.pad(array, pad, mode="edge" if edge else "constant"))


def binary_mask(mask: Image.Image) -> Image.Image:
    """Any uploaded mask -> L with 0/255: a transparent-background mask uses its alpha, otherwise brightness > 127."""
    if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
        rgba = mask.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:  # a painted layer: whatever is opaque is the mask
            return Image.fromarray(np.where(alpha > 127, 255, 0).astype(np.uint8))
        mask = rgba.convert("RGB")
    grey = np.asarray(mask.convert("L"))
    return Image.fromarray(np.where(grey > 127, 255, 0).astype(np.uint8))


def is_empty(mask: Image.Image) -> bool:
    return mask.getbbox() is None


def blur_mask(mask: Image.Image, blur: int) -> Image.Image:
    """Gaussian blur with sigma = `blur` px and A1111's kernel size; zero stays exactly zero past the kernel."""
    if blur <= 0:
        return mask.copy()
    kernel = 2 * int(2.5 * blur + 0.5) + 1
    blurred = cv2.GaussianBlur(np.asarray(mask), (kernel, kernel), sigmaX=blur, sigmaY=blur)
    return Image.fromarray(blurred)


def blur_reach(blur: int) -> int:
    """How far (px) a blurred mask can extend beyond the painted area: half of A1111's kernel."""
    return int(2.5 * blur + 0.5) if blur > 0 else 0


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": replace the masked area with colours flowing in from its surroundings (OpenCV inpainting)."""
    array = np.asarray(image.convert("RGB"))
    hole = (np.asarray(mask) > 127).astype(np.uint8)
    if not hole.any():
        return image.copy()
    if hole.all():  # nothing to take colours from
        return Image.new("RGB", image.size, (127, 127, 127))
    filled = cv2.inpaint(array, hole, 3, cv2.INPAINT_TELEA)
    return Image.fromarray(filled)


def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """Bounding box of the mask grown by `padding` on every side, clamped to the image; None for an empty mask."""
    box = mask.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    w, h = mask.size
    return max(0, left - padding), max(0, top - padding), min(w, right + padding), min(h, bottom + padding)


def expand_to_ratio(box: Box, width: int, height: int, image_w: int, image_h: int) -> Box:
    """Grow the crop box to the aspect ratio of the generation size, shifting it to stay inside the image."""
    left, top, right, bottom = box
    box_w, box_h = right - left, bottom - top
    if box_w / box_h > width / height:
        grow = min(int(box_w * height / width) - box_h, image_h - box_h)
        top -= grow // 2
        bottom += grow - grow // 2
        shift = max(0, bottom - image_h) - max(0, -top)
        top, bottom = top - shift, bottom - shift
    else:
        grow = min(int(box_h * width / height) - box_w, image_w - box_w)
        left -= grow // 2
        right += grow - grow // 2
        shift = max(0, right - image_w) - max(0, -left)
        left, right = left - shift, right - shift
    return left, top, right, bottom


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Blend through the (blurred) mask in pixel space: where the mask is 0 the result is `original`, exactly."""
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask)


def outpaint_canvas(
    image: Image.Image, left: int, right: int, up: int, down: int, overlap: int
) -> tuple[Image.Image, Image.Image]:
    """The bigger canvas and its mask: new borders pre-filled by edge extension, mask on the new area.

    The mask reaches `overlap` px into the original so the generated border meets it with a soft seam.
    """
    w, h = image.size
    array = np.asarray(image.convert("RGB"))
    canvas = np.pad(array, [(up, down), (left, right), (0, 0)], mode="edge")
    mask = np.full(canvas.shape[:2], 255, np.uint8)
    inner = (
        slice(up + (overlap if up else 0), up + h - (overlap if down else 0)),
        slice(left + (overlap if left else 0), left + w - (overlap if right else 0)),
    )
    mask[inner] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)
