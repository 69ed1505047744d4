"""Which new words could a LoRA teach the shipped model at all? Its autoencoder must reconstruct them first.

A U-Net LoRA can only draw what the autoencoder's decoder can put out. This renders single-object scenes of each
candidate colour (with the colour added to the evaluator's palette) and of each new shape, passes them through the
shipped autoencoder (encode, mean latent, decode), and scores the reconstructions with the adherence evaluator.
The trained colours are scored the same way as the reference.

    python bench/ae_new_words.py [--scenes 40]

Prints one line per candidate; docs/lora-training.md quotes it.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from webui import shapes  # noqa: E402
from webui.engine.loader import load_checkpoint  # noqa: E402
from webui.evaluation import adherence  # noqa: E402

DEFAULT_MODEL = ROOT / "models/Stable-diffusion/latent-studio-shapes.safetensors"
CANDIDATE_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (255, 105, 180), "cyan": (0, 200, 220), "brown": (125, 70, 25), "teal": (0, 128, 128),
    "lime": (160, 235, 40), "navy": (20, 20, 110), "magenta": (230, 0, 200), "gray": (128, 128, 128),
    "maroon": (120, 0, 0), "olive": (128, 128, 0), "gold": (200, 160, 30), "tan": (210, 180, 140),
    "violet": (130, 90, 255), "crimson": (180, 0, 60), "skyblue": (120, 190, 250), "darkgreen": (0, 90, 30),
}


def _scenes(count: int, colour: str | None, shape: str | None) -> list[shapes.Scene]:
    rng = random.Random(5)
    scenes = []
    for _ in range(count):
        obj_colour = colour or rng.choice(list(shapes.COLOURS))
        obj = shapes.ShapeObject(shape or rng.choice(shapes.SHAPES), obj_colour, rng.choice(list(shapes.POSITIONS)),
                                 rng.choice(list(shapes.SIZES)))
        background = (rng.choice([c for c in shapes.BACKGROUND_COLOURS
                                  if c != obj_colour and c not in CANDIDATE_COLOURS]),)
        scenes.append(shapes.Scene((obj,), background, shapes.caption_for((obj,), background)))
    return scenes


@torch.no_grad()
def reconstruction_score(vae: torch.nn.Module, scenes: list[shapes.Scene]) -> float:
    """Share of reconstructions whose shape and colour the evaluator finds right."""
    images = np.stack([np.asarray(shapes.render(scene)) for scene in scenes]).astype(np.float32) / 127.5 - 1
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    decoded = ((decoded.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return float(np.mean([adherence.score(image, scene)["shape_colour"] for scene, image in zip(scenes, decoded)]))


def _set_palette(colours: dict[str, tuple[int, int, int]], backgrounds: dict[str, tuple[int, int, int]]) -> None:
    """Set the renderer's and the evaluator's palettes (the evaluator keeps its own copy as arrays)."""
    shapes.COLOURS.clear()
    shapes.COLOURS.update(colours)
    shapes.BACKGROUND_COLOURS.clear()  # the evaluator's PALETTE is this dict
    shapes.BACKGROUND_COLOURS.update(backgrounds)
    adherence._NAMES[:] = list(shapes.BACKGROUND_COLOURS)
    adherence._RGB = np.array([shapes.BACKGROUND_COLOURS[n] for n in adherence._NAMES], dtype=np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--base", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae = load_checkpoint(args.base).vae.float().eval()
    for colour in shapes.COLOURS:
        print(f"trained colour {colour:10s} {reconstruction_score(vae, _scenes(args.scenes, colour, None)):.0%}")
    for shape in shapes.NEW_SHAPES:
        print(f"new shape      {shape:10s} {reconstruction_score(vae, _scenes(args.scenes, None, shape)):.0%}")
    trained, backgrounds = dict(shapes.COLOURS), dict(shapes.BACKGROUND_COLOURS)
    for colour, rgb in CANDIDATE_COLOURS.items():
        _set_palette({**trained, colour: rgb}, {**backgrounds, colour: rgb})
        print(f"new colour     {colour:10s} {reconstruction_score(vae, _scenes(args.scenes, colour, None)):.0%}")
    _set_palette(trained, backgrounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
