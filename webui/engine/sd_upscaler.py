"""The Stable Diffusion 2.x x4 upscaler (`x4-upscaler-ema`), a text-guided latent super-resolution model.

The single file is in the original LDM layout: `model.diffusion_model.*` a 7-channel U-Net (4 latent channels + the
noised low-resolution RGB image) whose class embedding `label_emb.weight` takes the noise level, `first_stage_model.*`
an f=4 KL autoencoder (latent scale 0.08333), and `cond_stage_model.model.*` OpenCLIP ViT-H (penultimate layer). It
runs through diffusers' `StableDiffusionUpscalePipeline`. The modules are built offline the way `loader.py` builds a
checkpoint (architecture from shapes, diffusers' own `convert_ldm_*` renaming), not with `from_single_file`, which
would need a config folder for the exact sizes (diffusers only knows the published ones, from the Hub).

What shapes cannot show comes from the model's yaml (`x4-upscaling.yaml`): 8 heads, v-prediction, the schedules
(linear 0.0001..0.02), max noise level 350, VAE scale 0.08333. Prompts are tokenised like the generation tabs
(75-token windows, `BREAK`), without emphasis; the negative prompt's windows are padded with empty ones to match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from PIL import Image

from .architecture import ArchitectureError, AttentionRule, infer_unet_config, infer_vae_config, shapes_of, strip_prefix
from .checkpoint_io import CheckpointReadError, assign_state, read_checkpoint
from .families import SD2, UNET_PREFIX, VAE_PREFIX
from .loader import ModelLoadError, TextEncoder, _build_text_encoder
from .tokenizer import tokenize_prompt

SD_UPSCALER_FACTOR = 4
VAE_SCALE = 0.08333  # x4-upscaling.yaml scale_factor
MAX_NOISE_LEVEL = 350  # x4-upscaling.yaml low_scale_config.max_noise_level
DEFAULT_STEPS = 50
DEFAULT_NOISE_LEVEL = 20  # diffusers' and Stability's default
DEFAULT_GUIDANCE = 9.0  # diffusers' default; without a prompt, guidance changes nothing and is skipped
ATTENTION = AttentionRule(fixed_heads=8)  # x4-upscaling.yaml: num_heads 8
TEXT_SLOT = SD2.text_encoders[0]  # OpenCLIP ViT-H, penultimate layer + final LayerNorm, pad id 0
LABEL_EMBEDDING = UNET_PREFIX + "label_emb.weight"
WHAT_TO_DO = "put Stability's x4-upscaler-ema.safetensors (or .ckpt) in models/SD-Upscaler"


class SdUpscalerError(ValueError):
    """An x4 upscaler file or request that cannot be used; the message names the file and says what to do."""


@dataclass
class SdUpscalerModel:
    """The converted x4 upscaler modules."""

    path: Path
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: TextEncoder

    def pipeline(self) -> StableDiffusionUpscalePipeline:
        """diffusers' pipeline over these modules with fresh schedulers (the x4 upscaler's published configs:
        DDIM v-prediction for sampling, DDPM for noising the low-resolution image). No tokenizer: prompts arrive as
        embeddings from `encode_prompt`."""
        scheduler = DDIMScheduler(
            num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
            clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
        )
        low_res_scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
            clip_sample=True, variance_type="fixed_small",
        )
        pipe = StableDiffusionUpscalePipeline(
            vae=self.vae, text_encoder=self.text_encoder.model, tokenizer=None, unet=self.unet,
            low_res_scheduler=low_res_scheduler, scheduler=scheduler, max_noise_level=MAX_NOISE_LEVEL,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "SdUpscalerModel":
        """U-Net and text encoder in `dtype`; the VAE stays fp32 (x4-upscaling.yaml: its decoder breaks in half
        precision; the pipeline casts the latents to the VAE's dtype before decoding)."""
        for module in (self.unet, self.text_encoder.model):
            torch.nn.Module.to(module, device=device, dtype=dtype)
        torch.nn.Module.to(self.vae, device=device, dtype=torch.float32)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def size_multiple(self) -> int:
        """The low-resolution image is the U-Net's input, so each side must survive its downsamplings."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)


def _only_cross_attention(unet_shapes: dict[str, tuple[int, ...]], config: dict) -> list[bool]:
    """Per level: the yaml's `disable_self_attentions`. Such a level's attn1 attends to the text too, so its to_k reads
    the context width instead of the level's; when both widths are equal the file cannot tell, and the level is taken
    to have self-attention (as the real model's last level, 1024 wide, does)."""
    per_level = config["layers_per_block"]
    flags = []
    for level, width in enumerate(config["block_out_channels"]):
        key = f"input_blocks.{1 + level * (per_level + 1)}.1.transformer_blocks.0.attn1.to_k.weight"
        flags.append(key in unet_shapes and unet_shapes[key][1] != width)
    return flags


def sd_upscaler_unet_config(unet_shapes: dict[str, tuple[int, ...]]) -> dict:
    """diffusers `UNet2DConditionModel` config from the x4 U-Net's shapes (`model.diffusion_model.` stripped): the SD
    inference plus the noise-level class embedding and the levels without self-attention."""
    config = infer_unet_config(unet_shapes, ATTENTION, sample_size=128)
    if "label_emb.weight" not in unet_shapes:
        raise ArchitectureError("the noise-level embedding (label_emb.weight) is missing")
    config["num_class_embeds"] = unet_shapes["label_emb.weight"][0]
    config["only_cross_attention"] = _only_cross_attention(unet_shapes, config)
    return config


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    assign_state(module, state,
                 lambda reason: SdUpscalerError(f"{path.name}: the {what} {reason}; download the x4 upscaler again"))


def load_sd_upscaler(path: Path) -> SdUpscalerModel:
    """Read the x4 upscaler file safely (safetensors, or a pickle through `torch.load(weights_only=True)`) and build
    the diffusers modules on the CPU in fp32."""
    path = Path(path)
    if not path.is_file():
        raise SdUpscalerError(f"no x4 upscaler model at {path}; {WHAT_TO_DO}")
    try:
        raw = read_checkpoint(path)
    except CheckpointReadError as exc:
        raise SdUpscalerError(f"{exc}; {WHAT_TO_DO}") from exc
    shapes = shapes_of(raw.state_dict)
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    latent = shapes.get(VAE_PREFIX + "decoder.conv_in.weight")
    if conv_in is None or latent is None or LABEL_EMBEDDING not in shapes or conv_in[1] != latent[1] + 3:
        if VAE_PREFIX + "quantize.embedding.weight" in shapes:
            hint = "it is an LDSR model: move it to models/LDSR"
        elif conv_in is not None and LABEL_EMBEDDING not in shapes:
            hint = "it is a Stable Diffusion checkpoint: move it to models/Stable-diffusion"
        else:
            hint = WHAT_TO_DO
        raise SdUpscalerError(f"{path.name}: not an SD x4 upscaler (it needs a U-Net with a noise-level embedding and "
                              f"latent + 3 input channels); {hint}")
    if not any(k.startswith(TEXT_SLOT.prefix) for k in shapes):
        raise SdUpscalerError(f"{path.name}: the OpenCLIP text encoder (cond_stage_model.model.*) is missing; "
                              f"{WHAT_TO_DO}")
    try:
        unet_config = sd_upscaler_unet_config(strip_prefix(shapes, UNET_PREFIX))
        vae_config = infer_vae_config(strip_prefix(shapes, VAE_PREFIX), VAE_SCALE, 512)
        unet_tensors = convert_ldm_unet_checkpoint(raw.state_dict, unet_config)
        vae_tensors = convert_ldm_vae_checkpoint(raw.state_dict, vae_config)
        text_encoder = _build_text_encoder(raw, shapes, TEXT_SLOT, torch.float32)
    except (ArchitectureError, ModelLoadError, KeyError, RuntimeError) as exc:
        raise SdUpscalerError(f"{path.name}: not a usable x4 upscaler ({str(exc).splitlines()[0][:200]}); "
                              f"{WHAT_TO_DO}") from exc
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
    _assign(unet, unet_tensors, "U-Net", path)
    _assign(vae, vae_tensors, "VAE", path)
    return SdUpscalerModel(path=path, unet=unet, vae=vae, text_encoder=text_encoder)


@torch.no_grad()
def encode_prompt(model: SdUpscalerModel, prompt: str) -> torch.Tensor:
    """(windows, 77, width) hidden states, one row per 75-token window."""
    windows = torch.tensor(tokenize_prompt(prompt, TEXT_SLOT.pad_token_id).windows, dtype=torch.long)
    encoder = model.text_encoder.model
    return encoder(windows.to(model.device)).last_hidden_state


def _same_length(a: torch.Tensor, b: torch.Tensor, empty: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the shorter prompt with empty windows (A1111 does the same), then flatten windows into one sequence."""
    count = max(a.shape[0], b.shape[0])
    a = torch.cat([a, empty.expand(count - a.shape[0], -1, -1)])
    b = torch.cat([b, empty.expand(count - b.shape[0], -1, -1)])
    return a.reshape(1, -1, a.shape[-1]), b.reshape(1, -1, b.shape[-1])


@torch.no_grad()
def sd_x4_sample(model: SdUpscalerModel, image: Image.Image, prompt: str = "", negative_prompt: str = "",
                 steps: int = DEFAULT_STEPS, noise_level: int = DEFAULT_NOISE_LEVEL,
                 guidance_scale: float = DEFAULT_GUIDANCE, generator: torch.Generator | None = None) -> torch.Tensor:
    """4x super-resolution of `image` (sides multiples of `model.size_multiple`): (1, 3, 4H, 4W) in [0, 1].

    With the same prompt and negative prompt (the default: both empty) classifier-free guidance would add zero,
    so it is skipped (half the work)."""
    if steps < 1:
        raise SdUpscalerError(f"the x4 upscaler needs at least 1 step (got {steps})")
    if not 0 <= noise_level <= MAX_NOISE_LEVEL:
        raise SdUpscalerError(f"noise level {noise_level} is out of range; use 0 to {MAX_NOISE_LEVEL}")
    positive = encode_prompt(model, prompt)
    negative = encode_prompt(model, negative_prompt) if negative_prompt != prompt else positive
    empty = encode_prompt(model, "")[:1]
    positive, negative = _same_length(positive, negative, empty)
    guidance = guidance_scale if negative_prompt != prompt else 1.0
    output = model.pipeline()(
        image=image.convert("RGB"), prompt_embeds=positive, negative_prompt_embeds=negative,
        num_inference_steps=steps, guidance_scale=guidance, noise_level=int(noise_level), generator=generator,
        output_type="pt",
    )
    return output.images.float()


def sd_x4_upscale(model: SdUpscalerModel, image: Image.Image, scale: float, prompt: str = "",
                  negative_prompt: str = "", steps: int = DEFAULT_STEPS, noise_level: int = DEFAULT_NOISE_LEVEL,
                  guidance_scale: float = DEFAULT_GUIDANCE, seed: int = 0) -> Image.Image:
    """About `scale` times larger: a Lanczos resize by scale/4 (as A1111 does for LDSR), edge padding to the U-Net's
    size multiple, 4x, crop."""
    if not scale > 0:
        raise SdUpscalerError(f"upscale factor {scale} is not positive")
    image = image.convert("RGB")
    if scale != SD_UPSCALER_FACTOR:
        ratio = scale / SD_UPSCALER_FACTOR
        size = (max(1, math.ceil(image.width * ratio)), max(1, math.ceil(image.height * ratio)))
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
    multiple = model.size_multiple
    array = np.asarray(image)
    pad_h, pad_w = (-array.shape[0]) % multiple, (-array.shape[1]) % multiple
    padded = Image.fromarray(np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))
    generator = torch.Generator("cpu").manual_seed(int(seed))
    result = sd_x4_sample(model, padded, prompt, negative_prompt, steps, noise_level, guidance_scale, generator)
    array = (result[0].clamp(0, 1) * 255).round().permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    upscaled = Image.fromarray(array)
    return upscaled.crop((0, 0, image.width * SD_UPSCALER_FACTOR, image.height * SD_UPSCALER_FACTOR))
