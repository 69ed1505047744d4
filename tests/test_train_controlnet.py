"""The default model's ControlNet: the trainer runs, saves, resumes and samples on the real default checkpoint, and the
shipped file loads, fits the default model and puts shapes where its control map says."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from webui.engine.controlnet_loader import check_compatible, load_controlnet
from webui.engine.loader import load_checkpoint
from webui.evaluation.controlnet_eval import DEFAULT_CONTROLNET, dominant_object, evaluate, iou
from webui.training import train_controlnet
from webui.shapes import eval_scenes, render, scene_at

BASE = train_controlnet.DEFAULT_BASE
pytestmark = [pytest.mark.skipif(not BASE.exists(), reason="the default model ships with the repo; run from its root"),
              pytest.mark.usefixtures("single_torch_thread")]


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_controlnet.add_arguments(parser)
    return parser.parse_args(argv)


def test_short_captions_name_colour_shape_and_background_but_no_position_or_size() -> None:
    scene = scene_at(3)
    text = train_controlnet.short_caption(scene)
    assert all(o.colour in text and o.shape in text and o.position not in text and o.size not in text
               for o in scene.objects)
    assert text.endswith("background")


def test_the_control_map_is_the_canny_preprocessors_outline_of_the_object() -> None:
    scene = eval_scenes(1)[0]
    image = render(scene)
    edges = train_controlnet.make_control_maps(np.asarray(image)[None])[0] > 127
    silhouette = dominant_object(image).mask
    assert silhouette.sum() > 20 and edges.sum() > 10
    # Every edge pixel lies on or next to the object's boundary (single-object, plain background scenes only).
    if len(scene.background) == 1:
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(silhouette).float()[None, None], 3, 1, 1)[0, 0] > 0
        assert grown.numpy()[edges].all()
    assert iou(silhouette, silhouette) == 1.0 and iou(silhouette, ~silhouette) == 0.0


def test_train_controlnet_smoke_checkpoints_resumes_samples_and_logs(tmp_path: Path) -> None:
    common = ["--out", str(tmp_path), "--batch-size", "2", "--scenes", "4", "--sample-count", "1",
              "--sample-steps", "2", "--checkpoint-every", "2", "--sample-every", "2", "--log-every", "1",
              "--threads", "1", "--warmup", "1"]
    assert train_controlnet.run(_args([*common, "--steps", "2"])) == 0
    first = torch.load(tmp_path / "checkpoint-latest.pt", weights_only=True)
    assert first["step"] == 2 and (tmp_path / "samples" / "step-000002.png").exists()
    assert train_controlnet.run(_args([*common, "--steps", "3", "--resume"])) == 0
    second = torch.load(tmp_path / "checkpoint-latest.pt", weights_only=True)
    assert second["step"] == 3 and (tmp_path / "samples" / "step-000003.png").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert steps == [1, 2, 3]  # the resumed run went on from step 2, it did not start over
    assert (tmp_path / "loss.csv").read_text().splitlines()[0] == "step,loss,smoothed,seconds"
    assert (tmp_path / "loss.png").exists()
    exported = train_controlnet.export_run(tmp_path, tmp_path / "control.safetensors")
    assert load_controlnet(exported).layout == "cldm-1.1"


def test_a_fresh_controlnet_starts_as_a_no_op() -> None:
    # Zero convolutions start at zero, so the untrained ControlNet adds nothing: the paper's recipe.
    model = load_checkpoint(BASE)
    controlnet = train_controlnet.new_controlnet(model.unet)
    down, mid = controlnet(torch.randn(1, 4, 16, 16), 500, encoder_hidden_states=torch.randn(1, 77, 64),
                           controlnet_cond=torch.rand(1, 3, 64, 64), return_dict=False)
    assert all(float(r.abs().max()) == 0.0 for r in [*down, mid])


@pytest.fixture(scope="module")
def shipped():
    # A shipped artefact: a missing file is a failure, not a skip.
    assert DEFAULT_CONTROLNET.exists(), f"{DEFAULT_CONTROLNET} is missing (python -m webui export-controlnet)"
    return load_controlnet(DEFAULT_CONTROLNET), load_checkpoint(BASE)


def test_the_shipped_controlnet_loads_is_small_and_fits_the_default_model(shipped) -> None:
    controlnet, model = shipped
    assert DEFAULT_CONTROLNET.stat().st_size <= 10 * 1024 * 1024
    assert controlnet.layout == "cldm-1.1" and controlnet.family == "sd1" and controlnet.hint_channels == 3
    assert next(controlnet.model.parameters()).dtype == torch.float32  # stored fp16, built at the requested dtype
    check_compatible(controlnet, model)
    assert DEFAULT_CONTROLNET.with_suffix(".md").exists()  # its model card


# Measured: on 100 held-out scenes at 20 steps (bench/results/controlnet-default.json) mean IoU 0.862 on, 0.151 off,
# colour 98%; on these 6 scenes at 10 steps 0.803 on, 0.010 off, colour 6/6. The thresholds leave a margin below that.
def test_the_shipped_controlnet_places_the_shape_where_the_map_says(shipped) -> None:
    controlnet, model = shipped
    result = evaluate(model, controlnet.model, eval_scenes(6), steps=10)["summary"]
    assert result["mean_iou_on"] >= 0.7, result
    assert result["mean_iou_off"] <= 0.4, result
    assert result["colour_on"] >= 5 / 6, result
