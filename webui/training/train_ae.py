"""Stage 1: a KL-regularised autoencoder (diffusers `AutoencoderKL`) on the synthetic shapes.

Loss = L1 + MSE reconstruction + `kl_weight` * KL (LDM's "KL-f4"-style small KL term). No perceptual or adversarial
term: both would need downloaded weights or far more compute than this run has. Scenes are rendered on the fly from
their index, so the data never repeats and any step can be resumed exactly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .common import (
    JsonLog, TimeBudget, load_training_state, lr_at, make_accelerator, psnr, save_grid, save_training_state,
    setup_torch, to_tensor, to_uint8,
)
from webui.shapes import EVAL_SEED, TRAIN_SEED, make_arrays, make_arrays_parallel
from .models import AEConfig, config_dict, count_parameters


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, samples, log)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--channels", type=str, default="64,64,64", help="VAE block_out_channels (multiples of 32)")
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0 = torch default)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--sample-every", type=int, default=200)
    parser.add_argument("--eval-images", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=0,
                        help="cycle over this many scenes (0 = a fresh scene every time)")
    parser.add_argument("--init", type=Path, default=None, help="start from this saved VAE (a run's vae/ folder)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="freeze encoder + quant_conv (keeps the latent space a stage-2 model was trained on)")
    parser.add_argument("--initial-logvar", type=float, default=-6.0,
                        help="initial posterior log-variance bias of a fresh encoder (0 is close to diffusers' init)")
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after this much training time (the learning-rate decay follows it); "
                             "for GPU sessions")
    parser.add_argument("--render-workers", type=int, default=0,
                        help="processes that pre-render the --scenes pool (0 = one per CPU core)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint-latest.pt")
    parser.add_argument("--cpu", action="store_true", help="force the CPU even when CUDA is available")


class _AutoencoderStep(torch.nn.Module):
    """encode -> sample -> decode in one `forward`, so DDP (multi-GPU accelerate) sees and syncs every gradient."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl()


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """mode() reconstructions of [-1, 1] images, batched, in eval mode, returned on the CPU."""
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    outputs = [vae.decode(vae.encode(images[i:i + batch].to(device)).latent_dist.mode()).sample.cpu()
               for i in range(0, len(images), batch)]
    vae.train(was_training)
    return torch.cat(outputs)


def evaluate_reconstruction(vae, images: torch.Tensor) -> float:
    """Mean PSNR (dB) of mode() reconstructions on held-out images."""
    return float(psnr(reconstruct(vae, images), images).mean())


Judge = Callable[[torch.nn.Module, int], dict]


def run(args: argparse.Namespace, judges: dict[str, Judge] | None = None) -> int:
    """Trains stage 1. `judges` name extra scores of the finished VAE (called with the VAE and the image side) that go
    into metrics.json; the commands layer passes the adherence evaluator, so training never imports its judge."""
    setup_torch(args.seed, args.threads)
    accelerator = make_accelerator(cpu=args.cpu)
    config = AEConfig(block_out_channels=tuple(int(c) for c in args.channels.split(",")),
                      layers_per_block=args.layers_per_block)
    if args.init is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.init, local_files_only=True)
        config = AEConfig(block_out_channels=tuple(vae.config.block_out_channels),
                          layers_per_block=vae.config.layers_per_block, latent_channels=vae.config.latent_channels)
    else:
        vae = config.build()
        # A fresh encoder's posterior has std ~1, which drowns its mean and stalls the decoder for hundreds of
        # steps; starting the log-variance low lets reconstruction learn at once (the KL term still shapes it).
        with torch.no_grad():
            vae.quant_conv.bias[config.latent_channels:].fill_(args.initial_logvar)
    trainable = vae.parameters()
    if args.decoder_only:
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
        trainable = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    out: Path = args.out
    start_step = 0
    if args.resume:
        state = load_training_state(out)
        if state is not None:
            vae.load_state_dict(state["vae"])
            optimizer.load_state_dict(state["optimizer"])
            start_step = state["step"]
    wrapped, optimizer = accelerator.prepare(_AutoencoderStep(vae), optimizer)
    model = vae
    held_out = to_tensor(make_arrays(args.eval_images, EVAL_SEED, args.size)[0])
    # A fixed scene pool is rendered once up front (data is then the same as rendering each batch on the fly).
    pool = (make_arrays_parallel(args.scenes, TRAIN_SEED, args.size, workers=args.render_workers)[0]
            if args.scenes else None)
    log = JsonLog(out / "log.jsonl")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(
            {"ae": config_dict(config), "args": {k: str(v) for k, v in vars(args).items() if k != "run"}}, indent=2))
        print(f"VAE parameters: {count_parameters(model):,}; device {accelerator.device}; "
              f"steps {start_step}->{args.steps}")
    per_process = args.batch_size
    rank, world = accelerator.process_index, accelerator.num_processes
    progress = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps,
                    disable=not accelerator.is_main_process)
    started = time.time()
    budget = TimeBudget(args.max_minutes)
    done = start_step
    for step in progress:
        # Index-addressed data: process `rank` takes its own slice of this step's global batch.
        first = (step * world + rank) * per_process
        if args.scenes:
            first = first % args.scenes
        if pool is not None:
            batch = pool[np.arange(first, first + per_process) % args.scenes]
        else:
            batch = make_arrays(per_process, TRAIN_SEED, args.size, start=first)[0]
        x = to_tensor(batch).to(accelerator.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(budget.schedule_step(step, args.steps), args.lr, args.warmup, args.steps)
        rec, kl_sum = wrapped(x)
        rec_loss = (rec - x).abs().mean() + (rec - x).pow(2).mean()
        # LDM's weighting: its loss is (summed reconstruction + kl_weight * summed KL) per image; dividing both by the
        # pixel count gives per-pixel reconstruction + kl_weight * KL / pixels.
        kl = kl_sum.mean() / x[0].numel()
        loss = rec_loss + args.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_([p for p in wrapped.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        done = step + 1
        stop = budget.expired()  # read once, so the last step taken is always saved
        if accelerator.is_main_process and (done % args.log_every == 0 or done == args.steps):
            # .item() waits for the GPU, so it is only called when logging.
            progress.set_postfix(loss=f"{rec_loss.item():.4f}", kl=f"{kl.item():.4f}")
            log.write(step=done, loss=round(rec_loss.item(), 5), kl=round(kl.item(), 4),
                      seconds=round(time.time() - started, 1))
        if accelerator.is_main_process and (done % args.sample_every == 0 or done == args.steps):
            sample = held_out[:16]
            save_grid(np.concatenate([to_uint8(sample), to_uint8(reconstruct(model, sample))]),
                      out / "samples" / f"recon-{done:06d}.png")
        if accelerator.is_main_process and (done % args.checkpoint_every == 0 or done == args.steps or stop):
            save_training_state(out, done, {"vae": model.state_dict(), "optimizer": optimizer.state_dict(),
                                            "config": config_dict(config)})
        if stop:
            break
    if accelerator.is_main_process:
        score = evaluate_reconstruction(model, held_out)
        model.save_pretrained(out / "vae")
        summary = {"psnr_db": round(score, 2), "held_out_images": len(held_out), "steps": done,
                   "train_seconds_this_session": round(time.time() - started, 1)}
        summary.update({name: judge(model, args.size) for name, judge in (judges or {}).items()})
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        log.write(**summary)
        print(f"held-out reconstruction PSNR: {score:.2f} dB; "
              + "; ".join(f"{name}: {json.dumps(summary[name])}" for name in judges or {}))
    return 0
