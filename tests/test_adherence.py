"""The model-free adherence evaluator on ground-truth (rendered) images, whose answers are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.cli import run_cli
from tests.cpu_share import cpu_share
from webui.evaluation.adherence import detect, ground_truth_accuracy, parse_prompt, score
from webui.shapes import Scene, ShapeObject, caption_for, eval_scenes, render, scene_at


def test_evaluator_is_exact_on_single_object_ground_truth():
    accuracy = ground_truth_accuracy(200, objects=1)
    assert accuracy["all"] >= 0.99 and accuracy["background"] >= 0.99


def test_evaluator_on_two_object_ground_truth():
    accuracy = ground_truth_accuracy(100, objects=2)
    assert accuracy["colour"] >= 0.98 and accuracy["position"] >= 0.98 and accuracy["shape"] >= 0.9


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star", "cross"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_every_shape_and_size_is_recognised(shape, size):
    scene = Scene((ShapeObject(shape, "green", "top right", size),), ("white", "gray"))
    found, background = detect(render(scene))
    assert background == {"white", "gray"}
    assert (found[0].shape, found[0].colour, found[0].position, found[0].size) == (shape, "green", "top right", size)


@pytest.mark.parametrize("size", ["small", "large"])
def test_the_new_rectangle_is_recognised_only_where_a_prompt_asks_for_it(size):
    """A prompt naming the new shape (what a LoRA is taught) lets the evaluator answer "rectangle"; trained shapes
    are classified the same with that option on, so their scores cannot move."""
    scene = Scene((ShapeObject("rectangle", "orange", "bottom left", size),), ("purple",))
    found, _ = detect(render(scene), new_shapes=True)
    assert (found[0].shape, found[0].position, found[0].size) == ("rectangle", "bottom left", size)
    assert detect(render(scene))[0][0].shape == "square"  # without the option, the nearest trained shape
    assert score(render(scene),
                 Scene(scene.objects, scene.background, caption_for(scene.objects, scene.background)))["all"]
    wrong = Scene((ShapeObject("square", "orange", "bottom left", size),), ("purple",))
    assert not score(render(wrong), scene)["shape"]
    for shape in ("circle", "square", "triangle", "star", "cross"):
        trained = Scene((ShapeObject(shape, "orange", "center", size),), ("purple",))
        assert detect(render(trained), new_shapes=True)[0][0].shape == shape


@pytest.mark.parametrize("size", ["small", "large"])
def test_the_new_diamond_is_told_from_a_triangle(size):
    """A diamond and a triangle both fill half their bounding box; only the diamond's centroid is at its middle. The
    triangle stays a triangle with the option on, so a model that draws triangles for "diamond" scores no hit."""
    diamond = Scene((ShapeObject("diamond", "yellow", "top left", size),), ("blue",))
    found, _ = detect(render(diamond), new_shapes=True)
    assert (found[0].shape, found[0].position, found[0].size) == ("diamond", "top left", size)
    assert detect(render(diamond))[0][0].shape == "triangle"  # without the option, the nearest trained shape
    triangle = Scene((ShapeObject("triangle", "yellow", "top left", size),), ("blue",))
    assert detect(render(triangle), new_shapes=True)[0][0].shape == "triangle"
    assert not score(render(triangle), diamond)["shape"]
    # Upside down (its centroid a sixth of its height above the middle) a triangle is no diamond either.
    flipped = render(triangle).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    assert detect(flipped, new_shapes=True)[0][0].shape == "triangle"


@pytest.mark.parametrize("size", ["small", "large"])
def test_the_new_ring_is_told_from_a_circle_by_its_hole(size):
    """A ring is a circle with a hole; no trained shape has one, so a model that draws discs for "ring" scores no
    hit, and a filled-in hole is a circle again."""
    ring = Scene((ShapeObject("ring", "red", "bottom right", size),), ("green", "white"))
    image = render(ring)
    assert np.asarray(image)[int(0.75 * 64), int(0.75 * 64)].tolist() == [250, 250, 250]  # the right half shows through
    found, _ = detect(image, new_shapes=True)
    assert (found[0].shape, found[0].position, found[0].size) == ("ring", "bottom right", size)
    disc = Scene((ShapeObject("circle", "red", "bottom right", size),), ("green", "white"))
    assert detect(render(disc), new_shapes=True)[0][0].shape == "circle"
    assert not score(render(disc), ring)["shape"]


@pytest.mark.parametrize("shape", ["rectangle", "diamond", "ring"])
def test_concept_scenes_are_scored_exactly(shape):
    from webui.evaluation.adherence import summarise
    from webui.shapes import concept_scenes

    scenes = concept_scenes(100, shape, seed=3)
    assert {s.objects[0].shape for s in scenes} == {shape}
    assert summarise([score(render(s), s) for s in scenes])["all"] == 1.0


def test_wrong_images_are_scored_wrong():
    asked = Scene((ShapeObject("circle", "red", "top left", "large"),), ("blue",))
    asked = Scene(asked.objects, asked.background, caption_for(asked.objects, asked.background))
    wrong_colour = Scene((ShapeObject("circle", "yellow", "top left", "large"),), ("blue",))
    wrong_place = Scene((ShapeObject("circle", "red", "bottom right", "large"),), ("blue",))
    wrong_shape = Scene((ShapeObject("square", "red", "top left", "large"),), ("blue",))
    assert score(render(asked), asked)["all"]
    result = score(render(wrong_colour), asked)
    assert not result["colour"] and result["shape"] and result["position"]
    result = score(render(wrong_place), asked)
    assert result["shape_colour"] and not result["position"]
    assert not score(render(wrong_shape), asked)["shape"]
    blank = np.full((64, 64, 3), 40, dtype=np.uint8)
    assert not any(score(blank, asked)[k] for k in ("colour", "shape", "position"))


def test_prompts_parse_back_to_their_scenes():
    for i in range(50):
        scene = scene_at(i)
        assert parse_prompt(scene.caption) == scene
    assert len({s.caption for s in eval_scenes(200)}) > 150
    with pytest.raises(ValueError):
        parse_prompt("a photo of a cat")


def test_eval_adherence_command_writes_a_report_on_the_shipped_model(tmp_path):
    """The benchmark's own command, end to end on the real default checkpoint (4 prompts, so it stays fast)."""
    out = tmp_path / "eval"
    done = run_cli("eval-adherence", "--prompts", "4", "--cfg", "1,6", "--ground-truth", "5", "--out", str(out),
                   "--threads", str(cpu_share()))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["evaluator_on_ground_truth"]["single"]["shape_colour"] == 1.0
    for cfg in ("cfg_1", "cfg_6"):
        single = report["results"][cfg]["single"]
        assert set(single) >= {"colour", "shape", "position", "size", "shape_colour"}
        misses = report["results"][cfg]["single_shape_colour_misses"]
        assert sum(misses.values()) == round((1 - single["shape_colour"]) * 4)
        assert (out / f"samples-cfg{cfg[4:]}.png").exists()


def test_eval_adherence_refuses_an_empty_benchmark():
    from webui.cli import main  # in-process: the command above already runs as a subprocess

    with pytest.raises(SystemExit, match="--prompts N and/or --two-object-prompts N"):
        main(["eval-adherence", "--prompts", "0"])
