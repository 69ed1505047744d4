"""Stage 2: a text-conditioned latent diffusion model on the stage-1 autoencoder's latents, and the SD1-layout export.

- U-Net: diffusers `UNet2DConditionModel` with cross-attention; text encoder: transformers `CLIPTextModel` trained
  jointly from scratch, fed the real CLIP BPE ids exactly as the app tokenises (`tokenize_prompt`, EOS padding).
- ε-prediction with SD's scaled-linear β schedule (1000 steps, 0.00085 -> 0.012), so every sampler in the app works.
- ~10% caption dropout (empty prompt) for classifier-free guidance; Min-SNR-γ loss weighting (Hang et al. 2023) to
  converge faster; an EMA of the weights is what gets exported.
- Latents of a fixed set of rendered scenes are encoded once (posterior mean and std cached), a fresh posterior sample
  is drawn each time; the latent scale is 1/std of those samples (LDM's `scale_by_std`), stored as `scale_factor`.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from tqdm.auto import tqdm

from .common import (
    JsonLog, TimeBudget, load_training_state, lr_at, make_accelerator, save_grid, save_training_state, setup_torch,
    to_tensor,
    to_uint8,
)
from webui.shapes import TRAIN_SEED, make_arrays_parallel
from .diffusion_loss import draw_latents, step_generator, training_noise, weighted_epsilon_loss
from .models import SD_TRAIN_TIMESTEPS, LDMConfig, config_dict, count_parameters, sd_noise_scheduler, token_ids

TEXT_PREFIX = "cond_stage_model.transformer."
SAMPLE_PROMPTS = [
    "a large red circle at the center on a blue background",
    "a small yellow star at the top left on a black background",
    "a large green square at the bottom right on a white background",
    "a large white triangle at the top right on a purple background",
    "a small blue cross at the bottom left on a yellow background",
    "a large orange star at the center on a gray background",
    "a small black circle at the top left and a large red square at the bottom right on a white background",
    "a large purple triangle at the center on a green and white background",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ae", type=Path, required=True, help="stage-1 run directory (contains vae/)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, samples, log, model)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--scenes", type=int, default=6000, help="rendered training scenes (latents cached)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--caption-dropout", type=float, default=0.1)
    parser.add_argument("--min-snr-gamma", type=float, default=5.0,
                        help="0 disables Min-SNR weighting (plain ε-loss). Min-SNR gives the low-noise steps little "
                        "weight, and CFG multiplies what they get wrong: the shipped model's last fine-tunes used 0 "
                        "(docs/default-model.md)")
    parser.add_argument("--snr-floor", type=float, default=0.0,
                        help="weight high-noise steps as if their SNR were at least this (0 = plain Min-SNR)")
    parser.add_argument("--pyramid-noise", type=float, default=0.0,
                        help="add this much smooth noise on 2x2/4x4/8x8 grids (stops the model reading object "
                        "positions from the starting noise)")
    parser.add_argument("--offset-noise", type=float, default=0.0,
                        help="add this much per-channel constant noise (SD's schedule leaks the mean colour at t=999; "
                        "offset noise stops the model trusting it, so colours follow the prompt)")
    parser.add_argument("--signal-free-top", type=float, default=0.0,
                        help="train this fraction of each batch at t>=950 on pure noise, as the samplers' first step "
                        "sees it (SD's schedule leaks ~7%% of the image at t=999, so otherwise the model reads the "
                        "layout from the starting noise and ignores the prompt's positions)")
    parser.add_argument("--max-timestep", type=int, default=SD_TRAIN_TIMESTEPS,
                        help="train only timesteps below this (1-1000). For short fine-tunes aimed at the low-noise "
                        "steps, where CFG multiplies the model's errors (t=400 is sigma 1.16); use with "
                        "--signal-free-top 0")
    parser.add_argument("--ema-decay", type=float, default=0.998)
    parser.add_argument("--unet-channels", default="64,128,128")
    parser.add_argument("--unet-attention", default="0,1,1", help="cross-attention per level (1/0)")
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--text-hidden", type=int, default=64)
    parser.add_argument("--text-layers", type=int, default=3)
    parser.add_argument("--text-intermediate", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0 = torch default)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--sample-every", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint-latest.pt")
    parser.add_argument("--cpu", action="store_true", help="force the CPU even when CUDA is available")
    parser.add_argument("--export", type=Path, default=None, help="also write the final .safetensors here")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from the U-Net and text encoder of this SD1-layout checkpoint (e.g. the shipped "
                        "model); its architecture must match the --unet-*/--text-* options, and --ae must be the "
                        "autoencoder whose latents it was trained on")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this much training time (the learning-rate decay follows it); "
                        "for GPU sessions")
    parser.add_argument("--train-only", default=None, metavar="REGEX",
                        help="train only the parameters whose name matches (re.search), e.g. "
                        "'unet\\.(down_blocks\\.0|up_blocks\\.2)\\.attentions' for attention blocks added to an "
                        "--init model; the rest stays frozen. Names start with 'unet.' or 'text_encoder.'")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ldm", type=Path, required=True, help="stage-2 run directory")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors path")
    parser.add_argument("--title", default="Latent Studio Shapes")
    parser.add_argument("--vae", type=Path, default=None,
                        help="a stage-1 run whose decoder was fine-tuned with --decoder-only (default: the run's --ae)")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")


def load_vae(ae_dir: Path) -> AutoencoderKL:
    vae = AutoencoderKL.from_pretrained(Path(ae_dir) / "vae", local_files_only=True)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_scenes(
    vae: AutoencoderKL, count: int, size: int, batch: int = 64,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(posterior mean, posterior std, captions) of training scenes 0..count-1."""
    means, stds = [], []
    device = next(vae.parameters()).device
    images, captions = make_arrays_parallel(count, TRAIN_SEED, size)
    for start in tqdm(range(0, count, batch), desc="encoding latents"):
        dist = vae.encode(to_tensor(images[start:start + batch]).to(device)).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return torch.cat(means), torch.cat(stds), captions


def cached_latents(
    vae: AutoencoderKL, ae_dir: Path, count: int, size: int,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    path = Path(ae_dir) / f"latents-{count}-{size}.pt"
    if path.exists():
        data = torch.load(path, weights_only=True)
        return data["mean"], data["std"], data["captions"]
    mean, std, captions = encode_scenes(vae, count, size)
    # Written under a unique name and renamed: runs started side by side on one autoencoder may race here.
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"mean": mean, "std": std, "captions": captions}, temp)
    os.replace(temp, path)
    return mean, std, captions


class _DenoiserStep(torch.nn.Module):
    """Text encoder + U-Net in one `forward` (so multi-GPU DDP syncs both)."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, noisy, timesteps, ids):
        context = self.text_encoder(input_ids=ids).last_hidden_state
        return self.unet(noisy, timesteps, context).sample


@torch.no_grad()
def sample_images(unet, text_encoder, vae, scale: float, prompts: list[str], steps: int = 20, cfg: float = 5.0,
                  seed: int = 0, latent_size: int = 16) -> np.ndarray:
    """A quick DDIM preview for the training grids (the evaluator uses the app's own samplers instead)."""
    device = next(unet.parameters()).device
    scheduler = DDIMScheduler.from_config(sd_noise_scheduler().config, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(steps)
    generator = torch.Generator("cpu").manual_seed(seed)
    channels = unet.config.in_channels
    latents = torch.randn((len(prompts), channels, latent_size, latent_size), generator=generator).to(device)
    cond = text_encoder(input_ids=token_ids(prompts).to(device)).last_hidden_state
    uncond = text_encoder(input_ids=token_ids([""] * len(prompts)).to(device)).last_hidden_state
    for t in scheduler.timesteps:
        both = unet(torch.cat([latents, latents]), t, torch.cat([uncond, cond])).sample
        eps_u, eps_c = both.chunk(2)
        latents = scheduler.step(eps_u + cfg * (eps_c - eps_u), t, latents).prev_sample
    return to_uint8(vae.decode(latents / scale).sample)


SIGNAL_FREE_FROM = 950


def signal_free_top(noise: torch.Tensor, timesteps: torch.Tensor, latents: torch.Tensor, alphas_cumprod: torch.Tensor,
                    fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a `fraction` of the batch into signal-free examples at t in [950, 999]: their ε becomes
    (n - sqrt(ᾱ)·x0) / sqrt(1-ᾱ) for fresh noise n, so the scheduler's `add_noise` gives x_t = n, pure noise, and the
    target still decodes to the true x0.

    Samplers start from pure noise (DDIM's first step at t~950, k-diffusion's at t=999), but SD's schedule trains
    those steps on x_t that still hold 7% of the image. The model then learns to find the object in x_t, and at
    sampling time finds it wherever the random noise suggests: the object's position follows the seed, not the
    prompt. Training the first steps on exactly what the samplers feed them makes the layout come from the text.
    The schedule, the ε parameterisation and every sampler stay as they are. Returns (noise, timesteps).
    """
    if fraction <= 0:
        return noise, timesteps
    batch = noise.shape[0]
    chosen = (torch.rand(batch, generator=generator) < fraction).to(noise.device)
    top = torch.randint(SIGNAL_FREE_FROM, SD_TRAIN_TIMESTEPS, (batch,), generator=generator).to(timesteps.device)
    pure = torch.randn(noise.shape, generator=generator).to(noise.device, noise.dtype)
    timesteps = torch.where(chosen, top, timesteps)
    alpha = alphas_cumprod[timesteps].view(-1, 1, 1, 1).to(noise.dtype)
    leak_free = (pure - alpha.sqrt() * latents) / (1 - alpha).sqrt()
    return torch.where(chosen.view(-1, 1, 1, 1), leak_free, noise), timesteps


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # One fused call for all tensors: a per-parameter loop costs hundreds of kernel launches per step on a GPU.
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


def load_init_weights(path: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> float:
    """Copy the U-Net and text encoder of an SD1-layout checkpoint into freshly built modules (read through the app's
    own loader, so any checkpoint it can load works); returns the checkpoint's latent scale factor."""
    from webui.engine.loader import load_checkpoint

    loaded = load_checkpoint(Path(path))
    try:
        unet.load_state_dict(loaded.unet.state_dict())
        text_encoder.load_state_dict(loaded.text_encoders[0].model.state_dict())
    except RuntimeError as exc:
        raise SystemExit(f"--init {path}: its architecture differs from this run's options "
                         f"(set --unet-channels/--unet-attention/--layers-per-block/--text-* to match): "
                         f"{str(exc).splitlines()[0]}") from exc
    return loaded.vae_scale


def trainable_parameters(unet: torch.nn.Module, text_encoder: torch.nn.Module, pattern: str | None) -> list:
    """All parameters, or only those whose prefixed name matches `pattern` (the others are frozen in place)."""
    named = [(f"unet.{n}", p) for n, p in unet.named_parameters()]
    named += [(f"text_encoder.{n}", p) for n, p in text_encoder.named_parameters()]
    if pattern is None:
        return [p for _, p in named]
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise SystemExit(f"--train-only {pattern!r} is not a regular expression: {exc}") from exc
    chosen = []
    for name, parameter in named:
        parameter.requires_grad_(bool(regex.search(name)))
        if parameter.requires_grad:
            chosen.append(parameter)
    if not chosen:
        raise SystemExit(f"--train-only {pattern!r} matches no parameter (names look like "
                         f"'{named[0][0]}' and 'text_encoder.text_model.final_layer_norm.weight')")
    return chosen


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.max_timestep <= SD_TRAIN_TIMESTEPS:
        raise SystemExit(f"--max-timestep must be between 1 and {SD_TRAIN_TIMESTEPS} (got {args.max_timestep})")
    if args.signal_free_top > 0 and args.max_timestep < SD_TRAIN_TIMESTEPS:
        raise SystemExit(f"--signal-free-top trains t >= {SIGNAL_FREE_FROM}, which --max-timestep excludes: "
                         "pass --signal-free-top 0")
    setup_torch(args.seed, args.threads)
    accelerator = make_accelerator(cpu=args.cpu)
    device = accelerator.device
    out: Path = args.out
    vae = load_vae(args.ae).to(device)
    mean, std, captions = cached_latents(vae, args.ae, args.scenes, args.size)
    config = LDMConfig(
        unet_channels=tuple(int(c) for c in args.unet_channels.split(",")),
        unet_attention=tuple(bool(int(a)) for a in args.unet_attention.split(",")),
        layers_per_block=args.layers_per_block,
        text_hidden=args.text_hidden,
        text_layers=args.text_layers,
        text_intermediate=args.text_intermediate,
    )
    latent_size = mean.shape[-1]
    unet = config.build_unet(mean.shape[1], latent_size)
    text_encoder = config.build_text_encoder()
    scheduler = sd_noise_scheduler()
    ids_all = token_ids(captions)
    empty_ids = token_ids([""])[0]

    state = load_training_state(out) if args.resume else None
    if state is None and args.init is not None:
        scale = load_init_weights(args.init, unet, text_encoder)
    elif state is None:
        # LDM's scale_by_std: 1 / std of (sampled) latents of the training set.
        g = torch.Generator().manual_seed(args.seed)
        sample = mean + std * torch.randn(mean.shape, generator=g)
        scale = float(1.0 / sample.flatten().std())
    else:
        scale = float(state["scale_factor"])
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = trainable_parameters(unet, text_encoder, args.train_only)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    start_step = 0
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
    ema_unet.to(device)
    ema_text.to(device)
    wrapped, optimizer = accelerator.prepare(_DenoiserStep(unet, text_encoder), optimizer)
    alphas = scheduler.alphas_cumprod.to(device)
    log = JsonLog(out / "log.jsonl")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({
            "ldm": config_dict(config), "scale_factor": scale, "latent_shape": list(mean.shape[1:]),
            "args": {k: str(v) for k, v in vars(args).items() if k != "run"},
        }, indent=2))
        print(f"U-Net {count_parameters(unet):,} params, text encoder {count_parameters(text_encoder):,}; "
              f"latents {tuple(mean.shape[1:])}, scale_factor {scale:.5f}; device {device}; "
              f"steps {start_step}->{args.steps}")

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
        index, latents = draw_latents(mean, std, scale, whole, g)
        ids = ids_all[index].clone()
        drop = torch.rand(whole, generator=g) < args.caption_dropout
        ids[drop] = empty_ids
        noise = training_noise(latents.shape, args.offset_noise, g, args.pyramid_noise)
        timesteps = torch.randint(0, args.max_timestep, (whole,), generator=g)
        noise, timesteps = signal_free_top(noise, timesteps, latents, alphas.cpu(), args.signal_free_top, g)
        latents, noise, timesteps, ids = (t[mine].to(device) for t in (latents, noise, timesteps, ids))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(budget.schedule_step(step, args.steps), args.lr, args.warmup, args.steps)
        pred = wrapped(noisy, timesteps, ids)
        loss = weighted_epsilon_loss(pred, noise, alphas[timesteps], args.min_snr_gamma, args.snr_floor)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(wrapped.parameters(), 1.0)
        optimizer.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        # Kept on the device: .item() waits for the GPU, so it is only called when logging.
        batch_loss = accelerator.reduce(loss.detach(), reduction="mean") if world > 1 else loss.detach()
        running = batch_loss if running is None else 0.98 * running + 0.02 * batch_loss
        done = step + 1
        stop = budget.expired()  # read once, so the last step taken is always sampled and saved
        if accelerator.is_main_process and (done % args.log_every == 0 or done == args.steps):
            progress.set_postfix(loss=f"{running.item():.4f}")
            log.write(step=done, loss=round(batch_loss.item(), 5), smoothed=round(running.item(), 5),
                      seconds=round(time.time() - started, 1))
        if accelerator.is_main_process and (done % args.sample_every == 0 or done == args.steps or stop):
            grid = sample_images(ema_unet, ema_text, vae, scale, SAMPLE_PROMPTS, latent_size=latent_size)
            save_grid(grid, out / "samples" / f"step-{done:06d}.png")
        if accelerator.is_main_process and (done % args.checkpoint_every == 0 or done == args.steps or stop):
            save_training_state(out, done, {
                "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
                "ema_text": ema_text.state_dict(), "optimizer": optimizer.state_dict(), "scale_factor": scale,
                "config": config_dict(config),
            })
        if stop:
            break
    if accelerator.is_main_process:
        log.write(finished=done, train_seconds_this_session=round(time.time() - started, 1))
        if args.export:
            export_run(out, args.ae, args.export)
    return 0


def build_state_dict(run_dir: Path, ae_dir: Path, use_ema: bool = True) -> tuple[dict, dict]:
    """The run's weights as one SD1-layout state dict (fp16) plus facts for the metadata."""
    from webui.engine.export import to_ldm_state_dict

    state = load_training_state(run_dir)
    if state is None:
        raise FileNotFoundError(f"no checkpoint-latest.pt in {run_dir}")
    config = LDMConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    vae = load_vae(ae_dir)
    unet = config.build_unet(vae.config.latent_channels, 16)
    text_encoder = config.build_text_encoder()
    unet.load_state_dict(state["ema_unet" if use_ema else "unet"])
    text_encoder.load_state_dict(state["ema_text" if use_ema else "text_encoder"])
    sd = to_ldm_state_dict(unet, vae, [(TEXT_PREFIX, "hf", text_encoder)], dtype=torch.float16)
    sd["scale_factor"] = torch.tensor(float(state["scale_factor"]), dtype=torch.float32)
    facts = {"steps": state["step"], "scale_factor": float(state["scale_factor"]), "config": state["config"]}
    return sd, facts


def export_run(
    run_dir: Path, ae_dir: Path, path: Path, title: str = "Latent Studio Shapes", use_ema: bool = True,
) -> Path:
    from webui.engine.export import save_checkpoint

    sd, facts = build_state_dict(Path(run_dir), Path(ae_dir), use_ema=use_ema)
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.implementation": "https://github.com/CompVis/stable-diffusion",
        "modelspec.title": title,
        "modelspec.author": "Latent Studio project",
        "modelspec.description": "Tiny text-to-image latent diffusion model trained from scratch on synthetic "
        "captioned shapes (both LDM stages: KL-f4 autoencoder, then a CLIP-text-conditioned U-Net). Prompts like "
        "'a large red circle at the top left on a blue background'.",
        "modelspec.date": _dt.date.today().isoformat(),
        "modelspec.resolution": "64x64",
        "modelspec.prediction_type": "epsilon",
        "modelspec.license": "same as this project",
        "latent_studio.training_steps": str(facts["steps"]),
        "latent_studio.scale_factor": f"{facts['scale_factor']:.6f}",
        "latent_studio.weights": "ema" if use_ema else "raw",
        "latent_studio.config": json.dumps(facts["config"]),
    }
    return save_checkpoint(Path(path), sd, metadata)


def run_export(args: argparse.Namespace) -> int:
    config = json.loads((Path(args.ldm) / "config.json").read_text())
    path = export_run(args.ldm, Path(args.vae or config["args"]["ae"]), args.out, args.title, use_ema=not args.no_ema)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
