"""Benchmark: the project's txt2img against diffusers' own pipeline on the very same modules, in one process.

    .venv/bin/python bench/txt2img_vs_diffusers.py              # CPU, tiny SD1-layout model (or --model FILE)
    .venv/bin/python bench/txt2img_vs_diffusers.py --gpu        # CUDA fp16, SD1.5-size random weights

Three timings per round, interleaved in a shuffled order so machine noise hits all of them alike:
  diffusers  StableDiffusionPipeline built from our loaded unet/vae/text encoder (+ an HF tokenizer of the same vocab)
  engine     webui.engine.generation.txt2img (the loop the app runs)
  service    GenerationService.run: validation, job bookkeeping, infotext and an atomic PNG save per image
Reports medians and the ratios engine/diffusers and service/diffusers (goal: <= 1.05). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webui import offline  # noqa: E402

offline.enforce()

from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

from bench.timing import device_label, interleaved_medians, report  # noqa: E402
from tests.reference import write_clip_tokenizer  # noqa: E402
from webui.context import AppPaths, build_context  # noqa: E402
from webui.engine.generation import SamplingParams, initial_noise, step_generators, txt2img  # noqa: E402
from webui.engine.loader import LoadedModel  # noqa: E402
from webui.engine.synthetic import write_synthetic_checkpoint  # noqa: E402
from webui.services.requests import GenerationRequest  # noqa: E402


def diffusers_twin(model: LoadedModel, scheduler, work: Path):
    """diffusers' own pipeline around the project's loaded modules: the same weights, device and dtype (SD or SDXL),
    with HF tokenizers of the same vocabulary written into `work`."""
    write_clip_tokenizer(work / "tokenizer", "<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(str(work / "tokenizer"))
    if model.family.is_sdxl:
        write_clip_tokenizer(work / "tokenizer_2", "!")
        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0].model, text_encoder_2=model.text_encoders[1].model,
            tokenizer=tokenizer, tokenizer_2=CLIPTokenizer.from_pretrained(str(work / "tokenizer_2")),
            unet=model.unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0].model, tokenizer=tokenizer,
                                       unet=model.unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_image(pipe, model: LoadedModel, prompt: str, negative: str, steps: int, side: int,
                    seeds: list[int]) -> None:
    """One txt2img through `pipe` from the engine's start noise, decoded the way the engine decodes."""
    factor = model.vae_downscale
    noise = initial_noise(seeds, model.latent_channels, side // factor, side // factor).to(model.device, model.dtype)
    with torch.inference_mode():
        # The model manager keeps the VAE in fp32 under fp16 (fp16 VAEs overflow); diffusers' pipeline would feed
        # it fp16 latents, so its latents are decoded here the way the engine decodes them.
        latents = pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=7.0,
                       width=side, height=side, latents=noise, generator=step_generators(seeds),
                       output_type="latent").images
        image = model.vae.decode(latents.to(model.vae.dtype) / model.vae_scale).sample
        pipe.image_processor.postprocess(image, output_type="pil")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="CUDA fp16 with SD1.5-size random weights")
    parser.add_argument("--model", type=Path, help="an SD1-layout checkpoint (default: a synthetic one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, help="image side (default 64 on CPU, 512 on GPU)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sampler", default="DPM++ 2M")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")

    work = Path(tempfile.mkdtemp(prefix="ls-bench-"))
    checkpoints = work / "models" / "Stable-diffusion"
    model_path = args.model
    if model_path is None:
        model_path = checkpoints / "bench.safetensors"
        write_synthetic_checkpoint(model_path, "sd1", size="real" if args.gpu else "tiny",
                                   dtype=torch.float16 if args.gpu else None)
    size = args.size or (512 if args.gpu else 64)
    context = build_context(AppPaths(work / "models", work / "outputs", work / "data"),
                            device="cuda" if args.gpu else "cpu", precision="fp16" if args.gpu else "fp32")
    model = context.models.get(str(model_path))
    device = model.device

    spec, schedule = context.samplers.resolve(args.sampler)
    if spec.function is not None:  # an A1111 (k-diffusion) name: diffusers' pipeline runs its diffusers twin
        spec, schedule = context.samplers.resolve(f"{spec.name} (diffusers)", schedule)
    pipe = diffusers_twin(model, spec.build(schedule, model.prediction_type), work)

    prompt, negative, seeds = "a red circle on a blue background", "blurry", [1]
    params = SamplingParams(prompt=prompt, negative_prompt=negative, sampler=args.sampler, steps=args.steps,
                            cfg_scale=7.0, width=size, height=size, seeds=seeds)
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, sampler_name=args.sampler, steps=args.steps,
                                cfg_scale=7.0, width=size, height=size, seed=seeds[0], model=str(model_path))

    def run_diffusers() -> None:
        diffusers_image(pipe, model, prompt, negative, args.steps, size, seeds)

    def run_engine() -> None:
        txt2img(model, params, context.samplers)

    def run_service() -> None:
        context.generation.run(context.jobs.create("bench", "txt2img"), request)

    runs = {"diffusers": run_diffusers, "engine": run_engine, "service": run_service}
    medians = interleaved_medians(runs, args.rounds, device)
    label = device_label(device)
    print(f"device: {label}; model: {model_path.name}; {size}x{size}, {args.steps} steps {args.sampler}, CFG 7, "
          f"batch 1, {args.rounds} rounds (median)")
    report(medians)


if __name__ == "__main__":
    main()
