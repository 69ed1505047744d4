"""Segmentation preprocessors (seg_ofade20k, seg_ofcoco, seg_ufade20k) from Hugging Face model folders.

The folders are written here with `save_pretrained` (config.json + model.safetensors, or pytorch_model.bin), from
tiny seeded random OneFormer and UperNet models: the real file layout, small sizes. The oracle is transformers' own
path computed in this file: `from_pretrained` on the folder, open_clip's `tokenize` for OneFormer's task text,
sd-webui-controlnet's resize-and-pad, argmax, then colours from palettes written out below. Bad folders must get a
message naming the folder and what to put there.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.preprocessors import (
    PreprocessorRunner,
    PreprocessorWeightsInvalid,
    PreprocessorWeightsMissing,
    default_preprocessors,
)

WIDTH, HEIGHT = 96, 64
ADE_FOLDER, COCO_FOLDER, UPERNET_FOLDER = ("oneformer_ade20k_swin_large", "oneformer_coco_swin_large",
                                           "upernet-convnext-small")
# A few entries of each palette, as published (ADE20K: mmseg/OneFormer's ADE20K_150_CATEGORIES; COCO: panopticapi).
ADE_COLOURS = {0: (120, 120, 120), 1: (180, 120, 120), 2: (6, 230, 230), 4: (4, 200, 3), 12: (150, 5, 61),
               149: (92, 0, 255)}  # wall, building, sky, tree, person, flag
# person, car, toothbrush (last "thing"), banner (first "stuff"), rug-merged (last)
COCO_COLOURS = {0: (220, 20, 60), 2: (0, 0, 142), 79: (191, 162, 208), 80: (255, 255, 128), 132: (250, 141, 255)}


def _oneformer(num_labels: int, seed: int) -> torch.nn.Module:
    from transformers import OneFormerConfig, OneFormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    config = OneFormerConfig(backbone_config=swin, num_labels=num_labels, hidden_dim=32, conv_dim=32, mask_dim=32,
                             num_queries=8, encoder_layers=1, decoder_layers=2, dim_feedforward=64,
                             num_attention_heads=2, text_encoder_num_layers=1, text_encoder_width=32,
                             text_encoder_proj_layers=1, encoder_feedforward_dim=64, text_encoder_n_ctx=4,
                             is_training=False)
    torch.manual_seed(seed)
    model = OneFormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # sharpen the random class scores and masks, so several classes win somewhere in a small map
        model.model.transformer_module.decoder.class_embed.weight.mul_(40.0)
        for param in model.model.transformer_module.decoder.mask_embed.parameters():
            param.mul_(8.0)
    return model


def _upernet(seed: int) -> torch.nn.Module:
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    torch.manual_seed(seed)
    return UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=150, hidden_size=32,
                                                        use_auxiliary_head=False)).eval()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ControlNetPreprocessor")
    _oneformer(150, seed=1).save_pretrained(folder / ADE_FOLDER)
    _oneformer(133, seed=2).save_pretrained(folder / COCO_FOLDER)
    # openmmlab's folders hold pytorch_model.bin (a plain state dict); that spelling must work too (weights_only=True).
    upernet = _upernet(seed=2)
    upernet.save_pretrained(folder / UPERNET_FOLDER)
    (folder / UPERNET_FOLDER / "model.safetensors").unlink()
    torch.save(upernet.state_dict(), folder / UPERNET_FOLDER / "pytorch_model.bin")
    (folder / UPERNET_FOLDER / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
         "image_processor_type": "SegformerImageProcessor"}))
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted during a segmentation test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], f"something tried to reach the network: {attempts}"


def picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    return Image.fromarray(base)


def padded(image: Image.Image, resolution: int) -> tuple[np.ndarray, int, int]:
    """sd-webui-controlnet's resize_image_with_pad: short side to `resolution`, edge-pad to multiples of 64."""
    array = np.asarray(image)
    k = resolution / min(array.shape[:2])
    h, w = int(np.round(array.shape[0] * k)), int(np.round(array.shape[1] * k))
    resized = cv2.resize(array, (w, h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad_h, pad_w = -h % 64, -w % 64
    return np.pad(resized, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge"), h, w


def oracle_labels(folder: Path, kind: str, image: np.ndarray, mean: tuple[float, ...] = (0.485, 0.456, 0.406),
                  std: tuple[float, ...] = (0.229, 0.224, 0.225)) -> np.ndarray:
    """transformers' own loading and semantic post-processing, and open_clip's tokenizer for the task text."""
    import open_clip
    from transformers import OneFormerForUniversalSegmentation, OneFormerImageProcessor, \
        UperNetForSemanticSegmentation

    x = (torch.tensor(image, dtype=torch.float32) / 255.0 - torch.tensor(mean)) / torch.tensor(std)
    pixels = x.permute(2, 0, 1)[None]
    with torch.no_grad():
        if kind == "oneformer":
            model = OneFormerForUniversalSegmentation.from_pretrained(folder, local_files_only=True).eval()
            task = open_clip.tokenize(["the task is semantic"], context_length=model.config.task_seq_len)
            out = model(pixel_values=pixels, task_inputs=task)
            scores = torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1],
                                  out.masks_queries_logits.sigmoid())
            scores = torch.nn.functional.interpolate(scores, size=image.shape[:2], mode="bilinear",
                                                     align_corners=False)
            labels = scores[0].argmax(0)
            processed = OneFormerImageProcessor().post_process_semantic_segmentation(
                out, target_sizes=[image.shape[:2]])[0]
            assert torch.equal(labels, processed)
        else:
            model = UperNetForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
            labels = model(pixel_values=pixels).logits[0].argmax(0)
    return labels.numpy()


@pytest.mark.parametrize(("name", "folder", "kind", "palette"), [
    ("seg_ofade20k", ADE_FOLDER, "oneformer", "ade"),
    ("seg_ofcoco", COCO_FOLDER, "oneformer", "coco"),
    ("seg_ufade20k", UPERNET_FOLDER, "upernet", "ade"),
])
def test_segmentation_map_equals_transformers_and_the_dataset_palette(weights_dir: Path, no_network: list[object],
                                                                       name: str, folder: str, kind: str,
                                                                       palette: str) -> None:
    from webui.engine.segmentation import ade20k_palette, coco_panoptic_palette

    runner = PreprocessorRunner(default_preprocessors(), weights_dir)
    image = picture()
    out = runner.run(name, image, 64)
    assert out.size == (WIDTH, HEIGHT) and out.mode == "RGB"  # short side = processor_res, aspect kept

    colours = ade20k_palette() if palette == "ade" else coco_panoptic_palette()
    assert len(colours) == (150 if palette == "ade" else 133)
    for index, colour in (ADE_COLOURS if palette == "ade" else COCO_COLOURS).items():
        assert tuple(colours[index]) == colour
    stats = ((0.5,) * 3, (0.25,) * 3) if kind == "upernet" else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pad, h, w = padded(image, 64)
    labels = oracle_labels(weights_dir / folder, kind, pad, *stats)[:h, :w]
    assert len(np.unique(labels)) >= 2, "the test model should predict more than one class"
    np.testing.assert_array_equal(np.asarray(out), colours[labels])

    # Aliases sd-webui-controlnet's API uses reach the same preprocessor, and the network stays cached.
    alias = {"seg_ofade20k": "oneformer_ade20k", "seg_ofcoco": "oneformer_coco", "seg_ufade20k": "segmentation"}[name]
    np.testing.assert_array_equal(np.asarray(runner.run(alias, image, 64)), np.asarray(out))
    assert len(runner.loaded_files()) == 1


def test_segmentation_at_a_higher_processor_res(weights_dir: Path) -> None:
    runner = PreprocessorRunner(default_preprocessors(), weights_dir)
    out = runner.run("seg_ufade20k", picture(1), 128)
    assert out.size == (192, 128)
    pad, h, w = padded(picture(1), 128)
    from webui.engine.segmentation import ade20k_palette

    labels = oracle_labels(weights_dir / UPERNET_FOLDER, "upernet", pad, (0.5,) * 3, (0.25,) * 3)[:h, :w]
    np.testing.assert_array_equal(np.asarray(out), ade20k_palette()[labels])


def _copy_folder(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())


def test_wrong_or_broken_folders_get_a_message_naming_what_to_put_there(weights_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "ControlNetPreprocessor"
    registry = default_preprocessors()
    runner = PreprocessorRunner(registry, root)

    # Nothing there: the message names both files, the folder and the Hugging Face repo.
    with pytest.raises(PreprocessorWeightsMissing) as err:
        runner.run("seg_ofade20k", picture(), 64)
    message = str(err.value)
    assert f"{ADE_FOLDER}/config.json" in message and f"{ADE_FOLDER}/model.safetensors" in message
    assert "shi-labs/oneformer_ade20k_swin_large" in message and str(root) in message

    # The COCO model (133 classes) in the ADE20K folder.
    _copy_folder(weights_dir / COCO_FOLDER, root / ADE_FOLDER)
    with pytest.raises(PreprocessorWeightsInvalid, match="133 classes.*ADE20K's 150"):
        runner.run("seg_ofade20k", picture(), 64)

    # An UperNet folder where a OneFormer one belongs.
    _copy_folder(weights_dir / UPERNET_FOLDER, root / COCO_FOLDER)
    with pytest.raises(PreprocessorWeightsInvalid, match=f"{COCO_FOLDER}: config.json describes a upernet model"):
        runner.run("seg_ofcoco", picture(), 64)

    # A config.json that is not JSON.
    _copy_folder(weights_dir / UPERNET_FOLDER, root / UPERNET_FOLDER)
    (root / UPERNET_FOLDER / "config.json").write_text("{not json")
    with pytest.raises(PreprocessorWeightsInvalid, match="config.json: not readable JSON"):
        runner.run("seg_ufade20k", picture(), 64)

    # A config that does not match the weights (another hidden size).
    config = json.loads((weights_dir / UPERNET_FOLDER / "config.json").read_text())
    config["hidden_size"] = 48
    (root / UPERNET_FOLDER / "config.json").write_text(json.dumps(config))
    with pytest.raises(PreprocessorWeightsInvalid, match=UPERNET_FOLDER):
        runner.run("seg_ufade20k", picture(), 64)
    assert runner.loaded_files() == ()
