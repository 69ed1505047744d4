"""A ControlNet for the shipped default model (`python -m webui train-controlnet`), and its cldm-1.1 export.

The ControlNet paper's recipe (Zhang et al. 2023) on the tiny default model: the base checkpoint (U-Net, VAE, text
encoder) is loaded with the app's own loader and frozen; `diffusers.ControlNetModel.from_unet` copies the U-Net's
encoder and middle block into a trainable copy whose zero convolutions start at zero, so step 0 reproduces the base
model exactly. Only the ControlNet trains, on the same ε-loss, noise schedule and loss options as `train-ldm`.

Control map: Canny edges of the whole scene, made by the project's own `canny` preprocessor (defaults 100/200, at the
image's 64 px), so a user gets the same map from their own image in the ControlNet tab. Canny, not `threshold`:
`threshold` marks pixels whose three channels all exceed a level, which is a silhouette only for light objects on dark
backgrounds (a red square on blue gives an empty map); Canny outlines objects of any palette colour on any background
(all 200 training scenes checked gave a non-empty map; 16 inspected by eye had closed outlines), and filling an
outline is an easy job for the network.

Prompts: 50% empty (the paper's text dropout, so the map alone places the shape and the unconditional CFG half is
controlled too), 25% a short prompt with colour, shape and background but no position or size
(`a red circle on a blue background`, the form the evaluation uses), 25% the full caption.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, DDIMScheduler
from PIL import Image
from tqdm.auto import tqdm

from .common import (
    JsonLog, TimeBudget, load_training_state, lr_at, make_accelerator, save_grid, save_training_state, setup_torch,
    to_tensor, to_uint8,
)
from webui.shapes import EVAL_SEED, TRAIN_SEED, make_arrays_parallel, render, scene_at, short_caption
from .models import SD_TRAIN_TIMESTEPS, count_parameters, sd_noise_scheduler, token_ids
from .diffusion_loss import draw_latents, step_generator, training_noise, weighted_epsilon_loss
from .train_ldm import _ema_update, signal_free_top

DEFAULT_BASE = Path("models/Stable-diffusion/latent-studio-shapes.safetensors")
DEFAULT_EXPORT = Path("models/ControlNet/latent-studio-shapes-control.safetensors")
CONTROL_PREPROCESSOR = "canny"
# The hint encoder must downsample the 64 px map to the 16x16 latent: two stride-2 convs (factor 4), where SD's stock
# 16-32-96-256 encoder has three (factor 8, 512 -> 64).
HINT_CHANNELS = (16, 32, 64)


def make_control_maps(images: np.ndarray, preprocessor: str = CONTROL_PREPROCESSOR) -> np.ndarray:
    """uint8 [N, H, W] maps from the app's own preprocessor at the image size (what "Pixel Perfect" picks for a
    64x64 generation from a 64x64 image)."""
    from webui.engine.preprocessors import preprocess_batch

    return preprocess_batch(images, preprocessor, Path("models/ControlNetPreprocessor"))


def hint_tensor(maps: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 3, H, W] in [0, 1], as `engine.controlnet.control_image` feeds the network."""
    return torch.from_numpy(maps).float().div(255.0)[:, None].expand(-1, 3, -1, -1).contiguous()


@dataclass
class ScenePool:
    """Rendered training scenes, encoded once: posterior mean/std, control maps and both prompt forms."""

    mean: torch.Tensor
    std: torch.Tensor
    maps: np.ndarray
    captions: list[str]
    short: list[str]


@torch.no_grad()
def build_pool(vae, count: int, size: int, seed: int, cache: Path | None) -> ScenePool:
    if cache is not None and cache.exists():
        try:  # tensors, strings and lists only: never a full unpickle, even of our own cache
            data = torch.load(cache, weights_only=True)
            return ScenePool(data["mean"], data["std"], data["maps"].numpy(), data["captions"], data["short"])
        except (pickle.UnpicklingError, KeyError, AttributeError, RuntimeError) as exc:
            print(f"rebuilding the scene cache {cache} ({type(exc).__name__})")
    images, captions = make_arrays_parallel(count, seed, size)
    short = [short_caption(scene_at(i, seed)) for i in range(count)]
    maps = make_control_maps(images)
    means, stds = [], []
    device = next(vae.parameters()).device
    for start in tqdm(range(0, count, 64), desc="encoding latents", disable=count <= 64):
        dist = vae.encode(to_tensor(images[start:start + 64]).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    pool = ScenePool(torch.cat(means), torch.cat(stds), maps, captions, short)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        torch.save({**vars(pool), "maps": torch.from_numpy(pool.maps)}, temp)
        os.replace(temp, cache)
    return pool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE,
                        help="the SD1-layout checkpoint to control (frozen)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, samples, log)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--scenes", type=int, default=6000, help="rendered training scenes (latents and maps cached)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--caption-dropout", type=float, default=0.5,
                        help="fraction of empty prompts (the ControlNet paper's 50%%: the map alone places the shape)")
    parser.add_argument("--short-prompts", type=float, default=0.25,
                        help="fraction of prompts without position and size ('a red circle on a blue background')")
    parser.add_argument("--min-snr-gamma", type=float, default=0.0, help="as train-ldm (0 = plain ε-loss)")
    parser.add_argument("--snr-floor", type=float, default=0.5, help="as train-ldm")
    parser.add_argument("--offset-noise", type=float, default=0.1, help="as train-ldm")
    parser.add_argument("--signal-free-top", type=float, default=0.15,
                        help="as train-ldm: the samplers' first steps see pure noise, so the layout must come from the "
                        "map, not from what SD's schedule leaks of the image")
    parser.add_argument("--ema-decay", type=float, default=0.995, help="EMA of the ControlNet (what is exported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0 = torch default)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--sample-count", type=int, default=8, help="held-out scenes per sample grid")
    parser.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the sample grids")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint-latest.pt")
    parser.add_argument("--cpu", action="store_true", help="force the CPU even when CUDA is available")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this much training time (the learning-rate decay follows it)")
    parser.add_argument("--export", type=Path, default=None, help="also write the cldm-1.1 .safetensors here")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, required=True, help="train-controlnet run directory (its --out)")
    parser.add_argument("--out", type=Path, default=DEFAULT_EXPORT, help="output .safetensors path")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")


def new_controlnet(unet) -> ControlNetModel:
    """Encoder + middle block copied from the U-Net, zero convs and the hint encoder's last conv zero."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)


def controlled_eps(unet, controlnet, noisy, timesteps, context, hint, scale: float = 1.0) -> torch.Tensor:
    down, mid = controlnet(noisy, timesteps, encoder_hidden_states=context, controlnet_cond=hint,
                           conditioning_scale=scale, return_dict=False)
    return unet(noisy, timesteps, context, down_block_additional_residuals=down,
                mid_block_additional_residual=mid).sample


@torch.no_grad()
def sample_grid(unet, controlnet, text_encoder, vae, scale: float, count: int, steps: int, cfg: float = 5.0,
                seed: int = 0) -> np.ndarray:
    """Rows of [control map | with control | without] for held-out scenes and their short prompts (a quick DDIM
    preview; the evaluator uses the app's own samplers and ControlNet extension instead)."""
    device = next(unet.parameters()).device
    scenes = [scene_at(i, EVAL_SEED, two_object_prob=0.0) for i in range(count)]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    maps = make_control_maps(images)
    hint = hint_tensor(maps).to(device)
    prompts = [short_caption(s) for s in scenes]
    cond = text_encoder(input_ids=token_ids(prompts).to(device)).last_hidden_state
    uncond = text_encoder(input_ids=token_ids([""] * count).to(device)).last_hidden_state
    size = images.shape[1] // 4
    results = []
    for use_control in (True, False):
        scheduler = DDIMScheduler.from_config(sd_noise_scheduler().config, set_alpha_to_one=False, steps_offset=1)
        scheduler.set_timesteps(steps)
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn((count, unet.config.in_channels, size, size), generator=generator).to(device)
        for t in scheduler.timesteps:
            pair = torch.cat([latents, latents])
            context = torch.cat([uncond, cond])
            if use_control:
                eps = controlled_eps(unet, controlnet, pair, t, context, torch.cat([hint, hint]))
            else:
                eps = unet(pair, t, context).sample
            eps_u, eps_c = eps.chunk(2)
            latents = scheduler.step(eps_u + cfg * (eps_c - eps_u), t, latents).prev_sample
        results.append(to_uint8(vae.decode(latents / scale).sample))
    rows = np.stack([np.repeat(maps[..., None], 3, -1), results[0], results[1]], 1)
    return rows.reshape(-1, *rows.shape[2:])


def _prompt_ids(pool: ScenePool, index: torch.Tensor, g: torch.Generator, dropout: float, short: float,
                empty: torch.Tensor) -> torch.Tensor:
    choice = torch.rand(len(index), generator=g)
    prompts = [pool.short[i] if dropout <= c < dropout + short else pool.captions[i]
               for i, c in zip(index.tolist(), choice.tolist())]
    ids = token_ids(prompts)
    ids[choice < dropout] = empty
    return ids


def run(args: argparse.Namespace) -> int:
    from webui.engine.loader import load_checkpoint

    if not 0 <= args.caption_dropout + args.short_prompts <= 1:
        raise SystemExit("--caption-dropout + --short-prompts must be between 0 and 1")
    setup_torch(args.seed, args.threads)
    accelerator = make_accelerator(cpu=args.cpu)
    device = accelerator.device
    out: Path = args.out
    base = load_checkpoint(args.base)
    unet = base.unet.eval().requires_grad_(False).to(device)
    vae = base.vae.eval().requires_grad_(False).to(device)
    text_encoder = base.text_encoders[0].model.eval().requires_grad_(False).to(device)
    scale = base.vae_scale
    pool = build_pool(vae, args.scenes, args.size, TRAIN_SEED, out / f"pool-{args.scenes}-{args.size}.pt")
    hints_all = hint_tensor(pool.maps)
    scheduler = sd_noise_scheduler()
    empty_ids = token_ids([""])[0]

    controlnet = new_controlnet(unet.cpu()).train()
    unet.to(device)
    ema = copy.deepcopy(controlnet).requires_grad_(False)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=0.0)
    state = load_training_state(out) if args.resume else None
    start_step = 0
    if state is not None:
        controlnet.load_state_dict(state["controlnet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
    ema.to(device).eval()
    controlnet, optimizer = accelerator.prepare(controlnet, optimizer)
    raw = accelerator.unwrap_model(controlnet)
    alphas = scheduler.alphas_cumprod.to(device)
    log = JsonLog(out / "log.jsonl")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({
            "base": str(args.base), "scale_factor": scale, "hint_channels": list(HINT_CHANNELS),
            "preprocessor": CONTROL_PREPROCESSOR, "args": {k: str(v) for k, v in vars(args).items() if k != "run"},
        }, indent=2))
        print(f"ControlNet {count_parameters(raw):,} params (U-Net {count_parameters(unet):,}, frozen); "
              f"{len(pool.captions)} scenes; device {device}; steps {start_step}->{args.steps}")

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = slice(rank * args.batch_size, (rank + 1) * args.batch_size)  # this process's share of a global batch
    progress = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps,
                    disable=not accelerator.is_main_process)
    started = time.time()
    budget = TimeBudget(args.max_minutes)
    running = None
    done = start_step
    for step in progress:
        # Each process of a multi-process run draws the whole global batch (batch size x processes) and keeps its
        # share, so the run equals one process with the global batch.
        g = step_generator(args.seed, step)
        whole = args.batch_size * world
        index, latents = draw_latents(pool.mean, pool.std, scale, whole, g)
        ids = _prompt_ids(pool, index, g, args.caption_dropout, args.short_prompts, empty_ids)
        noise = training_noise(latents.shape, args.offset_noise, g)
        timesteps = torch.randint(0, SD_TRAIN_TIMESTEPS, (whole,), generator=g)
        noise, timesteps = signal_free_top(noise, timesteps, latents, alphas.cpu(), args.signal_free_top, g)
        latents, noise, timesteps, ids = (t[mine].to(device) for t in (latents, noise, timesteps, ids))
        hint = hints_all[index[mine]].to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            context = text_encoder(input_ids=ids.to(device)).last_hidden_state
        for group in optimizer.param_groups:
            group["lr"] = lr_at(budget.schedule_step(step, args.steps), args.lr, args.warmup, args.steps)
        pred = controlled_eps(unet, controlnet, noisy, timesteps, context, hint)
        loss = weighted_epsilon_loss(pred, noise, alphas[timesteps], args.min_snr_gamma, args.snr_floor)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        _ema_update(ema, raw, min(args.ema_decay, (1 + step) / (10 + step)))
        batch_loss = accelerator.reduce(loss.detach(), reduction="mean") if world > 1 else loss.detach()
        running = batch_loss if running is None else 0.98 * running + 0.02 * batch_loss
        done = step + 1
        stop = budget.expired()  # read once, so the last step taken is always sampled and saved
        if accelerator.is_main_process and (done % args.log_every == 0 or done == args.steps or stop):
            progress.set_postfix(loss=f"{running.item():.4f}")
            log.write(step=done, loss=round(batch_loss.item(), 5), smoothed=round(running.item(), 5),
                      lr=round(optimizer.param_groups[0]["lr"], 7), seconds=round(time.time() - started, 1))
        if accelerator.is_main_process and (done % args.checkpoint_every == 0 or done == args.steps or stop):
            save_training_state(out, done, {"controlnet": raw.state_dict(), "ema": ema.state_dict(),
                                            "optimizer": optimizer.state_dict(), "scale_factor": scale,
                                            "controlnet_config": dict(raw.config)})
        if accelerator.is_main_process and (done % args.sample_every == 0 or done == args.steps or stop):
            grid = sample_grid(unet, ema, text_encoder, vae, scale, args.sample_count, args.sample_steps)
            save_grid(grid, out / "samples" / f"step-{done:06d}.png", columns=3)
        if stop:
            break
    if accelerator.is_main_process:
        log.write(finished=done, train_seconds_this_session=round(time.time() - started, 1))
        plot_loss(out)
        if args.export:
            path = export_run(out, args.export)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def plot_loss(run_dir: Path, width: int = 600, height: int = 300) -> Path | None:
    """`loss.csv` (step, loss, smoothed, seconds) and a `loss.png` line plot of the smoothed loss, from the JSON-lines
    log (drawn with PIL: matplotlib is not a dependency)."""
    from PIL import ImageDraw

    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    if not rows:
        return None
    csv = Path(run_dir) / "loss.csv"
    csv.write_text("step,loss,smoothed,seconds\n" + "".join(
        f"{r['step']},{r['loss']},{r['smoothed']},{r['seconds']}\n" for r in rows))
    steps = [r["step"] for r in rows]
    values = [r["smoothed"] for r in rows]
    low, high = min(values), max(values)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    margin = 40

    def point(step: float, value: float) -> tuple[float, float]:
        x = margin + (step - steps[0]) / max(1, steps[-1] - steps[0]) * (width - 2 * margin)
        y = height - margin - (value - low) / max(high - low, 1e-12) * (height - 2 * margin)
        return x, y

    draw.rectangle([margin, margin, width - margin, height - margin], outline=(160, 160, 160))
    if len(rows) > 1:
        draw.line([point(s, v) for s, v in zip(steps, values)], fill=(30, 70, 220), width=2)
    draw.text((margin, 10), f"smoothed loss {high:.4f} .. {low:.4f}", fill=(0, 0, 0))
    draw.text((margin, height - margin + 8), f"step {steps[0]}", fill=(0, 0, 0))
    draw.text((width - margin - 70, height - margin + 8), f"step {steps[-1]}", fill=(0, 0, 0))
    image.save(Path(run_dir) / "loss.png")
    return csv


def export_run(run_dir: Path, path: Path = DEFAULT_EXPORT, use_ema: bool = True) -> Path:
    """The run's ControlNet as one fp16 cldm-1.1 file (the community layout `load_controlnet` reads)."""
    from webui.engine.export import controlnet_to_ldm, save_checkpoint

    state = load_training_state(Path(run_dir))
    if state is None:
        raise FileNotFoundError(f"no checkpoint-latest.pt in {run_dir}")
    config = {k: v for k, v in state["controlnet_config"].items() if not k.startswith("_")}
    controlnet = ControlNetModel.from_config(config)
    controlnet.load_state_dict(state["ema" if use_ema else "controlnet"])
    tensors = {k: v.to(torch.float16).contiguous() for k, v in controlnet_to_ldm(controlnet).items()}
    run_config = json.loads((Path(run_dir) / "config.json").read_text())
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/controlnet",
        "modelspec.title": "Latent Studio Shapes ControlNet (canny)",
        "modelspec.author": "Latent Studio project",
        "modelspec.description": "ControlNet for latent-studio-shapes: Canny edges of a 64x64 shape scene (the "
        "app's canny preprocessor) place the shape; the prompt gives colour and background.",
        "modelspec.date": _dt.date.today().isoformat(),
        "modelspec.resolution": "64x64",
        "modelspec.license": "same as this project",
        "latent_studio.base_model": Path(run_config.get("base", str(DEFAULT_BASE))).name,
        "latent_studio.preprocessor": CONTROL_PREPROCESSOR,
        "latent_studio.training_steps": str(state["step"]),
        "latent_studio.weights": "ema" if use_ema else "raw",
    }
    return save_checkpoint(Path(path), tensors, metadata)


def run_export(args: argparse.Namespace) -> int:
    path = export_run(args.run_dir, args.out, use_ema=not args.no_ema)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
