"""Semantic segmentation maps for ControlNet "seg" models, with transformers' segmenters.

sd-webui-controlnet's seg preprocessors run OneFormer (seg_ofade20k, seg_ofcoco) through a vendored detectron2 and
UniFormer (seg_ufade20k) through a vendored mmseg; controlnet-aux 0.0.10 has neither. transformers has OneFormer
itself (`OneFormerForUniversalSegmentation`, the same Swin-L ADE20K and COCO checkpoints as `shi-labs/oneformer_*`) and
UperNet (`UperNetForSemanticSegmentation`, the decode head UniFormer's ADE20K model uses, on a ConvNeXt backbone), so
we use those. A seg ControlNet reads colours, not a network: every class is painted in its dataset's palette (ADE20K's
150 colours, COCO panoptic's 133), as sd-webui-controlnet's visualiser paints them.

This module is pure torch/numpy and knows nothing of the preprocessor registry: `preprocessors.py` finds the files
and wraps these functions.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# ImageNet statistics in 0..1 units: what both detectron2's OneFormer configs (PIXEL_MEAN/STD in 0..255) and
# openmmlab's UperNet normalise with; a folder's preprocessor_config.json overrides them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OneFormer is conditioned on a task prompt; a semantic map is asked for with this text (transformers'
# OneFormerProcessor builds the same string).
SEMANTIC_TASK_TEXT = "the task is semantic"
_COCO_CLASSES_FILE = Path(__file__).parent / "data" / "coco_panoptic_classes.json"


class SegmenterError(ValueError):
    """A segmenter folder that cannot be used; the message says which file is wrong and why."""


@dataclass(frozen=True)
class Segmenter:
    """A loaded segmentation network, what kind it is and how its input is normalised."""

    network: Any  # OneFormerForUniversalSegmentation or UperNetForSemanticSegmentation
    kind: str  # "oneformer" or "upernet"
    num_labels: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


# ------------------------------------------------------------------------------------------------------- palettes


@functools.cache
def ade20k_palette() -> np.ndarray:
    """The 150 ADE20K class colours (150 x 3 uint8), from controlnet-aux (the palette the seg ControlNets learnt)."""
    from controlnet_aux.util import ade_palette

    return np.asarray(ade_palette(), dtype=np.uint8)


@functools.cache
def coco_panoptic_palette() -> np.ndarray:
    """The 133 COCO panoptic class colours (133 x 3 uint8), in OneFormer's contiguous class order.

    No installed library ships this table, so it is kept as data (`data/coco_panoptic_classes.json`, taken from
    cocodataset/panopticapi's category list, which detectron2 and sd-webui-controlnet use too).
    """
    classes = json.loads(_COCO_CLASSES_FILE.read_text(encoding="utf-8"))["classes"]
    return np.asarray([c["color"] for c in classes], dtype=np.uint8)


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Paint a class-id map (H x W ints) with a palette: the RGB uint8 map a seg ControlNet reads."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise SegmenterError(f"a label map is H x W, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(palette)):
        raise SegmenterError(f"class ids {labels.min()}..{labels.max()} fall outside the {len(palette)}-colour "
                             "palette")
    return np.ascontiguousarray(palette[labels.astype(np.int64)])


# -------------------------------------------------------------------------------------------------------- loading


def _float_triplet(value: object, default: tuple[float, float, float], what: str) -> tuple[float, float, float]:
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3  # type: ignore[return-value]
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return (float(value[0]), float(value[1]), float(value[2]))
    raise SegmenterError(f"preprocessor_config.json: {what} must be 3 numbers, got {value!r}")


def load_segmenter_network(config: Mapping[str, Any], state: dict[str, torch.Tensor], kind: str,
                           file_name: str) -> torch.nn.Module:
    """Build a transformers segmentation network from its config.json dict and an already safely-read state dict.

    `from_pretrained(None, config=..., state_dict=...)` gives transformers' own key renaming for older files and
    skips the random initialisation a plain constructor would spend seconds on; the state dict comes from our
    weights_only reader, so no pickle is run here. Missing or unexpected keys are an error, not a warning.
    """
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, UperNetConfig, \
        UperNetForSemanticSegmentation

    classes: dict[str, tuple[type, type]] = {
        "oneformer": (OneFormerConfig, OneFormerForUniversalSegmentation),
        "upernet": (UperNetConfig, UperNetForSemanticSegmentation),
    }
    if kind not in classes:
        raise SegmenterError(f"unknown segmenter kind {kind!r}; known: {', '.join(classes)}")
    model_type = config.get("model_type")
    if model_type != kind:
        raise SegmenterError(f"config.json describes a {model_type or 'unnamed'} model, but this folder needs a {kind} "
                             f"model; put the matching Hugging Face folder there")
    config_class, model_class = classes[kind]
    try:
        model_config = config_class.from_dict(dict(config))
    except (TypeError, ValueError, KeyError) as exc:
        raise SegmenterError(f"config.json could not be read as a {kind} config ({exc})") from exc
    try:
        network, info = model_class.from_pretrained(None, config=model_config, state_dict=state,
                                                    output_loading_info=True)
    except (RuntimeError, ValueError) as exc:  # size mismatches
        raise SegmenterError(f"{file_name}: tensor shapes do not match config.json "
                             f"({str(exc).strip().splitlines()[0]})") from exc
    missing, unexpected = list(info.get("missing_keys", ())), list(info.get("unexpected_keys", ()))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys, e.g. {sorted(missing)[0]!r}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys, e.g. {sorted(unexpected)[0]!r}")
        if mismatched:
            detail.append(f"{len(mismatched)} keys of the wrong shape, e.g. {mismatched[0][0]!r}")
        raise SegmenterError(f"{file_name}: not the {model_class.__name__} weights config.json describes "
                             f"({'; '.join(detail)})")
    return network.eval().requires_grad_(False)


def make_segmenter(network: torch.nn.Module, kind: str,
                   preprocessor_config: Mapping[str, Any] | None = None) -> Segmenter:
    """Pair a loaded network with its normalisation (the folder's preprocessor_config.json, else ImageNet's)."""
    pre = preprocessor_config or {}
    return Segmenter(network=network, kind=kind, num_labels=int(network.config.num_labels),
                     image_mean=_float_triplet(pre.get("image_mean"), IMAGENET_MEAN, "image_mean"),
                     image_std=_float_triplet(pre.get("image_std"), IMAGENET_STD, "image_std"))


# ------------------------------------------------------------------------------------------------------ inference


def semantic_task_tokens(seq_len: int) -> torch.Tensor:
    """OneFormer's task input for semantic segmentation: CLIP ids of SEMANTIC_TASK_TEXT with BOS/EOS, zero-padded.

    OneFormerProcessor tokenises the same text with a CLIPTokenizer and multiplies by the attention mask, so padding
    is 0. The project's bundled CLIP BPE (open_clip's vocabulary, the same one) gives these ids offline, so the
    segmenter folder does not need tokenizer files.
    """
    import torch

    from webui.engine.tokenizer import BOS_ID, EOS_ID, encode_text

    ids = [BOS_ID, *encode_text(SEMANTIC_TASK_TEXT), EOS_ID][:seq_len]
    tokens = torch.zeros((1, seq_len), dtype=torch.long)
    tokens[0, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens


def _pixel_values(image: np.ndarray, segmenter: Segmenter) -> torch.Tensor:
    """H x W x 3 uint8 RGB -> 1 x 3 x H x W normalised floats on the network's device.

    Written here rather than with the image processors: their only work at this point would be this normalisation
    (the image is already at processor_res), and OneFormer's processor would try the Hub for a class-info file.
    """
    import torch

    param = next(segmenter.network.parameters())
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device=param.device, dtype=torch.float32) / 255.0
    mean = torch.tensor(segmenter.image_mean, device=x.device)
    std = torch.tensor(segmenter.image_std, device=x.device)
    return ((x - mean) / std).permute(2, 0, 1).unsqueeze(0).to(param.dtype)


def segment(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """Class ids (H x W int64) for an RGB uint8 image, at the image's own size."""
    import torch

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegmenterError(f"segment() takes an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    pixels = _pixel_values(image, segmenter)
    with torch.no_grad():
        if segmenter.kind == "oneformer":
            from transformers import OneFormerImageProcessor

            task = semantic_task_tokens(segmenter.network.config.task_seq_len).to(pixels.device)
            outputs = segmenter.network(pixel_values=pixels, task_inputs=task)
            # transformers' own semantic post-processing: per-class score = sum over queries of class probability
            # (no "no object" column) times mask probability, resized to the image, argmax.
            labels = OneFormerImageProcessor().post_process_semantic_segmentation(
                outputs, target_sizes=[(height, width)])[0]
        else:
            logits = segmenter.network(pixel_values=pixels).logits  # already upsampled to the input size
            labels = logits[0].argmax(dim=0)
    return labels.to("cpu", torch.int64).numpy()
