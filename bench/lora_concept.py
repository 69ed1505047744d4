"""Teach the shipped default model a shape word it never saw ("rectangle") with a LoRA, and measure what it learned.

1. Render 30 captioned scenes of the new shape (`--concept`: rectangle, diamond or ring; `shapes.concept_scenes`,
   training seed) into a folder.
2. Train a LoRA on it through `train_lora` with the training tab's defaults (any override is recorded).
3. Score, with the adherence evaluator at CFG 6 / Euler a / 20 steps:
   - held-out prompts of the new shape (another seed) with the LoRA at weight 1 (and without it, for reference);
   - the standard held-out prompts of the trained colours, with and without the LoRA.

    python bench/lora_concept.py [--reg 120] [--reg-renders] [--concept diamond] [--base MODEL] \\
        [--prompts 200] [--concept-prompts 100] [--set epochs=40 ...] [--keep KEPT.safetensors]
    python bench/lora_concept.py --lora KEPT.safetensors [--seed-base 100000] [--old-scene-seed 1000020]
    python bench/lora_concept.py [--lora KEPT.safetensors] --seed-sets 3
    python bench/lora_concept.py --soup 2 [--set prior_loss_weight=1.5] --seed-sets 3

The second form scores a kept file (or a soup of them, bench/lora_soup.py) without training, on other sampling seeds
or other trained-word prompts if asked. `--seed-sets 3` scores on the three seed sets of docs/lora-training.md (the
benchmark's; its prompts with other sampling seeds; other prompts), 300 new-word and 600 old-word prompts, and
reports them pooled: one set of 200 is worth about +-4 points. `--soup 2` trains two LoRAs (training seeds seed and
seed + 1) and scores their exact average (bench/lora_soup.py), as the docs' soup runs do.

Writes bench/results/lora_concept.json; docs/lora-training.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from webui.engine.embeddings import embedding_set_for, read_embedding  # noqa: E402
from webui.engine.loader import load_checkpoint  # noqa: E402
from webui.engine.lora import lora_patches, read_lora  # noqa: E402
from webui.engine.patching import patched  # noqa: E402
from webui.evaluation.adherence import generate_and_score  # noqa: E402
from webui.shapes import (  # noqa: E402
    CONCEPT_SEED, EVAL_SEED, NEW_SHAPES, concept_scenes, eval_scenes, scene_at, write_captioned_folder,
)
from webui.training.train_lora import LoraTrainingSettings, train_lora  # noqa: E402

DEFAULT_MODEL = ROOT / "models/Stable-diffusion/latent-studio-shapes.safetensors"
HELD_OUT_CONCEPT_SEED = CONCEPT_SEED + 1
REGULARIZATION_SEED = 3_000_017
# (first sampling seed, old-word scene seed) of the measurement sets in docs/lora-training.md: the benchmark's, its
# prompts with other sampling seeds, other prompts with other seeds.
SEED_SETS = ((0, EVAL_SEED), (100_000, EVAL_SEED), (200_000, 1_000_020))


def _override(settings: LoraTrainingSettings, assignments: list[str]) -> dict[str, object]:
    types = {f.name: type(getattr(settings, f.name)) for f in fields(settings)}
    changed = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        kind = types[key]
        parsed = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        setattr(settings, key, parsed)
        changed[key] = parsed
    return changed


def regularization_scenes(count: int, like: list | None = None) -> list:
    """Ordinary single-object scenes of the trained words. With `like` (the training scenes), each is a training
    scene with the new shape swapped for a trained one (DreamBooth's class prompt), so the only difference the LoRA
    can learn is the new word."""
    import random

    from webui.shapes import SHAPES, Scene, ShapeObject, caption_for

    scenes = []
    for index in range(count):
        scene = scene_at(index, REGULARIZATION_SEED, two_object_prob=0.0)
        if like:
            source = like[index % len(like)]
            old = source.objects[0]
            swapped = (ShapeObject(random.Random(index).choice(SHAPES), old.colour, old.position, old.size),)
            scene = Scene(swapped, source.background, caption_for(swapped, source.background))
        scenes.append(scene)
    return scenes


def draw_regularization(model_path: Path, folder: Path, scenes: list, cfg: float) -> None:
    """DreamBooth's prior preservation: the base model's own images for prompts it knows, with those captions."""
    from webui.engine.generation import SamplingParams, txt2img
    from webui.engine.samplers import SamplerRegistry

    model = load_checkpoint(model_path)
    registry = SamplerRegistry()
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes):
        params = SamplingParams(prompt=scene.caption, sampler="Euler a", steps=20, cfg_scale=cfg, width=64, height=64,
                                seeds=[index])
        txt2img(model, params, registry)[0].save(folder / f"{index:04d}.png")
        (folder / f"{index:04d}.txt").write_text(scene.caption + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200, help="held-out prompts in the trained colours")
    parser.add_argument("--concept-prompts", type=int, default=100, help="held-out prompts of the new shape")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--concept", default="rectangle", choices=NEW_SHAPES, help="the new shape word to teach")
    parser.add_argument("--base", type=Path, default=DEFAULT_MODEL,
                        help="the model to teach (default: the shipped one)")
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--set", action="append", default=[], help="override a training setting: key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/lora_concept.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reg", type=int, default=120,
                        help="regularisation images the base model draws for trained-grammar prompts first (timed "
                        "with the training; every documented run uses 120); 0 = none")
    parser.add_argument("--reg-renders", action="store_true",
                        help="regularisation images are renders of the prompts' scenes (the data the shipped model "
                             "was trained on) instead of the base model's drawings")
    parser.add_argument("--reg-like-training", action="store_true",
                        help="regularisation prompts are the training captions with a trained shape swapped in")
    parser.add_argument("--skip-baselines", action="store_true", help="score only with the LoRA (quick sweeps)")
    parser.add_argument("--keep", type=Path, help="copy the trained LoRA here (to look at its images afterwards)")
    parser.add_argument("--lora", type=Path,
                        help="score this kept LoRA (and the .embedding.safetensors beside it) instead of training one")
    parser.add_argument("--seed-base", type=int, default=0, help="first sampling seed (one seed per prompt)")
    parser.add_argument("--old-scene-seed", type=int, default=EVAL_SEED,
                        help="scene seed of the trained-word prompts (another seed: other prompts)")
    parser.add_argument("--seed-sets", type=int, default=1, choices=range(1, len(SEED_SETS) + 1),
                        help="score on this many of the documented seed sets and pool them (overrides --seed-base "
                             "and --old-scene-seed)")
    parser.add_argument("--soup", type=int, default=1,
                        help="train this many LoRAs (training seeds seed, seed+1, ...) and score their exact average "
                             "(bench/lora_soup.py); the training time is theirs together")
    args = parser.parse_args()
    if args.soup < 1:
        parser.error("--soup must be at least 1")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        if args.lora:
            embedding = args.lora.with_suffix(".embedding.safetensors")
            report = {"lora": str(args.lora)}
            lora_path, embedding_path = args.lora, embedding if embedding.exists() else None
        else:
            trained = train_soup if args.soup > 1 else train
            lora_path, embedding_path, report = trained(args, Path(scratch))
            _keep(args, lora_path, embedding_path)
        sets = SEED_SETS[:args.seed_sets] if args.seed_sets > 1 else ((args.seed_base, args.old_scene_seed),)
        scored = [score(args, lora_path, embedding_path, seed_base, scene_seed) for seed_base, scene_seed in sets]
        report.update(scored[0] if len(scored) == 1 else pooled(scored))
    key = "shape_colour"
    if args.skip_baselines:
        print(json.dumps({k: report.get(k) for k in ("concept_with_lora", "old_with_lora", "old_misses_with_lora",
                                                      "train_seconds", "steps")}))
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    report["summary"] = {
        "concept_adherence_with_lora": report["concept_with_lora"][key],
        "concept_adherence_without_lora": report["concept_without_lora"][key],
        "old_adherence_without_lora": report["old_without_lora"][key],
        "old_adherence_with_lora": report["old_with_lora"][key],
        "old_drop_points": round(100 * (report["old_without_lora"][key] - report["old_with_lora"][key]), 1),
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def train_soup(args: argparse.Namespace, scratch_path: Path) -> tuple[Path, Path | None, dict[str, object]]:
    """`args.soup` LoRAs on consecutive training seeds, averaged exactly into one (the soup is what gets kept)."""
    from bench.lora_soup import soup_files

    members = [train(args, scratch_path / f"member{index}", seed_offset=index) for index in range(args.soup)]
    soup = scratch_path / f"{args.concept}-soup.safetensors"
    embedding = soup_files([path for path, _, _ in members], soup, [emb for _, emb, _ in members])
    facts = [member_facts for _, _, member_facts in members]
    return soup, embedding, {
        "soup_of": facts, "train_seconds": round(sum(float(f["train_seconds"]) for f in facts), 1),
        "steps": sum(int(f["steps"]) for f in facts),
    }


def _keep(args: argparse.Namespace, lora: Path, embedding: Path | None) -> None:
    if args.keep:
        args.keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lora, args.keep)
        if embedding:
            shutil.copyfile(embedding, args.keep.with_suffix(".embedding.safetensors"))


def train(args: argparse.Namespace, scratch_path: Path,
          seed_offset: int = 0) -> tuple[Path, Path | None, dict[str, object]]:
    """Train the LoRA on rendered scenes of the new word; returns it, its learned word (or None) and the facts.
    `seed_offset` is added to the training seed (a soup's members)."""
    training_scenes = concept_scenes(args.images, args.concept, CONCEPT_SEED)
    write_captioned_folder(scratch_path / "data", training_scenes)
    settings = LoraTrainingSettings(base=args.base, data=scratch_path / "data", name=args.concept,
                                    trigger=args.concept, output_dir=scratch_path / "lora",
                                    run_dir=scratch_path / "run", sample_every=0, save_every=0, threads=args.threads)
    overrides = _override(settings, args.set)
    if args.soup > 1 and "average_runs" not in overrides:
        settings.average_runs = 1  # the soup's members are single runs; the soup averages them
    settings.seed += seed_offset
    started = time.time()
    if args.reg:
        settings.reg_data = scratch_path / "reg"
        scenes = regularization_scenes(args.reg, like=training_scenes if args.reg_like_training else None)
        if args.reg_renders:
            write_captioned_folder(settings.reg_data, scenes)
        else:
            draw_regularization(args.base, settings.reg_data, scenes, args.cfg)
    result = train_lora(settings)
    train_seconds = time.time() - started
    # The trigger word's learned embedding (pivotal tuning, on by default) is used as the app would: by its name
    embedding = settings.embedding_path if settings.learns_trigger else None
    facts: dict[str, object] = {
        "settings_overrides": overrides, "training_seed": settings.seed, "steps": result.steps,
        "train_seconds": round(train_seconds, 1),
        "samples_per_second": round(result.samples_per_second, 2), "final_loss": round(result.final_loss, 5),
        "regularization_images": args.reg, "regularization_like_training": args.reg_like_training,
        "regularization_source": "renders" if args.reg_renders else f"base model at CFG {args.cfg:g}",
        "trigger_embedding": settings.learns_trigger,
    }
    return result.output, embedding, facts


def score(args: argparse.Namespace, lora_path: Path, embedding_path: Path | None, seed_base: int,
          old_scene_seed: int) -> dict[str, object]:
    """Adherence on the new word's held-out prompts and on the trained words, with the LoRA (and without it)."""
    model = load_checkpoint(args.base)
    learned = {args.concept: read_embedding(embedding_path)} if embedding_path else {}
    embeddings = embedding_set_for(model, learned)[0] if learned else None
    concept = concept_scenes(args.concept_prompts, args.concept, HELD_OUT_CONCEPT_SEED)
    old = eval_scenes(args.prompts, objects=1, seed=old_scene_seed)
    report: dict[str, object] = {
        "model": args.base.name, "concept": args.concept, "training_images": args.images, "threads": args.threads,
        "cfg": args.cfg, "sampler": "Euler a", "sampling_steps": 20, "seed_base": seed_base,
        "old_scene_seed": old_scene_seed,
    }
    # Misses by "size shape" show where the old words suffer (a new shape can pull its neighbours).
    misses_without: dict[str, int] = {}
    misses_with: dict[str, int] = {}
    sampling = {"cfg": args.cfg, "seed_base": seed_base}
    if not args.skip_baselines:
        report["concept_without_lora"] = generate_and_score(model, concept, **sampling)
        report["old_without_lora"] = generate_and_score(model, old, misses=misses_without, **sampling)
        report["old_misses_without_lora"] = dict(sorted(misses_without.items()))
    with patched(lora_patches(read_lora(lora_path), model, 1.0, 1.0)):
        report["concept_with_lora"] = generate_and_score(model, concept, embeddings=embeddings, **sampling)
        report["old_with_lora"] = generate_and_score(model, old, embeddings=embeddings, misses=misses_with,
                                                     **sampling)
    report["old_misses_with_lora"] = dict(sorted(misses_with.items()))
    return report


def pooled(reports: list[dict[str, object]]) -> dict[str, object]:
    """Several seed sets' reports as one: each adherence figure averaged (the sets hold equally many prompts), the
    misses summed, the seeds listed, and every set's own report kept under "seed_sets"."""
    first = reports[0]
    merged: dict[str, object] = {key: value for key, value in first.items() if not isinstance(value, dict)}
    merged["seed_base"] = [report["seed_base"] for report in reports]
    merged["old_scene_seed"] = [report["old_scene_seed"] for report in reports]
    for key, value in first.items():
        if not isinstance(value, dict):
            continue
        if key.startswith("old_misses"):
            totals = sum((Counter(report[key]) for report in reports), Counter())
            merged[key] = dict(sorted(totals.items()))
        else:
            merged[key] = {metric: round(sum(report[key][metric] for report in reports) / len(reports), 4)
                           for metric in value}
    merged["seed_sets"] = reports
    return merged


if __name__ == "__main__":
    raise SystemExit(main())
