"""LoRA training speed: `train_lora` against a plain diffusers + peft loop on the same weights and images.

The reference is the loop of diffusers' `examples/text_to_image/train_text_to_image_lora.py`, reduced to its core:
`unet.add_adapter` / text encoder adapters through peft, images loaded and VAE-encoded every step, AdamW, MSE on ε.
Both sides train the same layers at the same ranks, batch size, resolution and step count, from copies of one loaded
checkpoint, in one process, interleaved (so the machine is the same), for two layer sets:
- "attention": kohya's LoRA (the U-Net's transformer blocks and the text encoder), rank 16 everywhere;
- "attention+conv": the training tab's default, LoCon: also the ResNet and sampler convolutions, the 3x3 ones at
  rank 4 (peft's `rank_pattern`; kohya's conv_dim), the 1x1 shortcuts at rank 16 (the same trainable parameter
  count on both sides).
Timing covers everything after the model is in memory: adding the adapters, reading images, caching latents (ours),
every step, saving (ours).

    python bench/lora_train_vs_peft.py [--model PATH] [--steps 60] [--batch-size 4] [--rank 16] [--conv-rank 4] \
        [--device cpu|cuda]

Writes bench/results/lora_training.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402
from PIL import Image  # noqa: E402

from webui.engine.loader import LoadedModel, load_checkpoint  # noqa: E402
from webui.engine.tokenizer import tokenize_prompt  # noqa: E402
from webui.shapes import concept_scenes, write_captioned_folder  # noqa: E402
from webui.training.models import sd_noise_scheduler  # noqa: E402
from webui.training.train_lora import LoraTrainingSettings, train_lora  # noqa: E402

DEFAULT_MODEL = ROOT / "models/Stable-diffusion/latent-studio-shapes.safetensors"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


class Silent:
    def started(self, *args) -> None: ...
    def stepped(self, progress) -> None: ...
    def sampled(self, *args) -> None: ...
    def message(self, text: str) -> None: ...


def conv_targets(model: LoadedModel) -> tuple[list[str], list[str]]:
    """The U-Net's LoCon layers, named in full: every convolution of the ResNet blocks and the down/up samplers; and
    which of them take kohya's conv_dim (the 3x3 ones; a 1x1 shortcut takes the linear layers' rank, as in kohya)."""
    convs = [(name, module) for name, module in model.unet.named_modules()
             if isinstance(module, torch.nn.Conv2d) and any(part in name for part in ("resnets.", "samplers."))]
    return [name for name, _ in convs], [name for name, module in convs if module.kernel_size != (1, 1)]


def reference_loop(model: LoadedModel, folder: Path, steps: int, batch_size: int, rank: int, resolution: int,
                   device: str, conv_rank: int = 0) -> float:
    """samples/s of the plain loop (diffusers' example, without its logging and validation); `conv_rank` > 0 adds
    the LoCon convolutions at that rank."""
    unet = copy.deepcopy(model.unet).to(device).train()
    text_encoder = copy.deepcopy(model.text_encoders[0].model).to(device).train()
    vae = model.vae.to(device)
    started = time.time()  # from here, as for ours: adding the adapters, reading images, every step
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    vae.requires_grad_(False)
    convs, spatial = conv_targets(model) if conv_rank else ([], [])
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=UNET_TARGETS + convs, rank_pattern={name: conv_rank for name in spatial},
                                alpha_pattern={name: conv_rank for name in spatial}))
    from peft import inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS), text_encoder)
    params = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = sd_noise_scheduler()
    files = sorted(folder.glob("*.png"))
    captions = [f.with_suffix(".txt").read_text().strip() for f in files]
    pad = model.text_encoders[0].slot.pad_token_id
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        index = torch.randint(0, len(files), (batch_size,), generator=generator).tolist()
        pixels = np.stack([np.asarray(Image.open(files[i]).convert("RGB").resize((resolution, resolution)))
                           for i in index])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * model.vae_scale
        ids = torch.tensor([tokenize_prompt(captions[i], pad).windows[0] for i in index], device=device)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,), device=device)
        noisy = scheduler.add_noise(latents, noise, t.cpu()).to(device)
        context = text_encoder(ids).last_hidden_state
        loss = torch.nn.functional.mse_loss(unet(noisy, t, context).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.time() - started)


def ours(model_path: Path, model: LoadedModel, folder: Path, steps: int, batch_size: int, rank: int, scratch: Path,
         cache_latents: bool, conv_rank: int = 0) -> float:
    settings = LoraTrainingSettings(base=model_path, data=folder, name=f"bench-{cache_latents}",
                                    unet_layers="attention+conv" if conv_rank else "attention", conv_rank=conv_rank,
                                    conv_alpha=float(conv_rank),
                                    output_dir=scratch / "lora", run_dir=scratch / f"run-{cache_latents}",
                                    max_steps=steps, batch_size=batch_size, rank=rank, alpha=float(rank),
                                    cache_latents=cache_latents, sample_every=0, save_every=0, caption_dropout=0.0,
                                    network_dropout=0.0, min_snr_gamma=0.0, warmup_steps=0, lr_scheduler="constant",
                                    learning_rate=1e-4, average_runs=1)  # one run against one plain loop
    started = time.time()
    result = train_lora(settings, Silent(), model=model)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result.steps * batch_size / (time.time() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--conv-rank", type=int, default=LoraTrainingSettings.conv_rank,
                        help="the LoCon convolutions' rank in the attention+conv comparison (the tab's default)")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/lora_training.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_checkpoint(args.model)
    resolution = base.default_resolution[0]
    report: dict[str, object] = {"model": args.model.name, "device": args.device, "threads": args.threads,
                                 "steps": args.steps, "batch_size": args.batch_size, "rank": args.rank,
                                 "conv_rank": args.conv_rank, "resolution": resolution, "images": args.images}
    layer_sets = {"attention": 0, "attention+conv": args.conv_rank}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        write_captioned_folder(scratch / "data", concept_scenes(args.images), size=resolution)
        # Warm-up (first-call allocations and kernel choices) on both paths, not timed.
        reference_loop(base, scratch / "data", 2, args.batch_size, args.rank, resolution, args.device)
        ours(args.model, load_checkpoint(args.model), scratch / "data", 2, args.batch_size, args.rank, scratch, True)
        runs: dict[str, dict[str, list[float]]] = {
            layers: {"reference": [], "ours_cached": [], "ours_uncached": []} for layers in layer_sets}
        for _ in range(2):  # interleaved, so drift in machine load hits every side alike
            for layers, conv_rank in layer_sets.items():
                runs[layers]["reference"].append(reference_loop(
                    base, scratch / "data", args.steps, args.batch_size, args.rank, resolution, args.device,
                    conv_rank))
                for cached, key in ((True, "ours_cached"), (False, "ours_uncached")):
                    runs[layers][key].append(ours(args.model, load_checkpoint(args.model), scratch / "data",
                                                  args.steps, args.batch_size, args.rank, scratch, cached, conv_rank))
    for layers, sides in runs.items():
        best = {name: max(values) for name, values in sides.items()}
        report[layers] = {
            "samples_per_second": {name: [round(v, 2) for v in values] for name, values in sides.items()},
            "ratio_cached_vs_reference": round(best["ours_cached"] / best["reference"], 3),
            "ratio_uncached_vs_reference": round(best["ours_uncached"] / best["reference"], 3),
        }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
