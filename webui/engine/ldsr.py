"""LDSR: the latent-diffusion 4x super-resolution model (CompVis `bsr_sr`) that A1111 ships as an upscaler.

The file is A1111's `models/LDSR/model.ckpt` (or a `.safetensors` conversion) in the original CompVis layout:
`model.diffusion_model.*` a pixel-space U-Net (openaimodel `UNetModel`, no text conditioning) that sees the noisy
latent concatenated with the low-resolution image, `first_stage_model.*` a VQ autoencoder (f=4), the DDPM buffers
(`betas`, `alphas_cumprod`, ...) and usually `model_ema.*` (the EMA copy of the U-Net, which is what LDM samples with).
It runs through diffusers' `LDMSuperResolutionPipeline` (UNet2DModel + VQModel + DDIMScheduler).

diffusers' library has no converter for this layout: its single-file loaders only know the text-conditioned SD U-Net
(spatial transformers), and the one converter for `UNetModel` with plain attention blocks is an unpackaged script in
its repository. So the renaming below is ours. The U-Net's attention keeps LDM's fused, head-interleaved `qkv`
projection (QKVAttentionLegacy: per head q, k, v), which has to be split head by head into to_q / to_k / to_v.

A1111's behaviour followed here (extensions-builtin/LDSR): the image is first resized with Lanczos by scale/4, padded
with its edge pixels to a multiple of 64 (at least 128) on each side, sampled with DDIM at eta 1 (100 steps by
default, setting "LDSR processing steps"), decoded through the VQ codebook, truncated to 8 bits and cropped back.
A1111 additionally splits latents larger than 128x128 into overlapping 128-pixel windows; this runs the whole image at
once (same result for inputs up to 128x128 after the first resize, and no window seams above that).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from accelerate import init_empty_weights
from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from PIL import Image

from .architecture import ArchitectureError, infer_vae_config, shapes_of, strip_prefix
from .checkpoint_io import CheckpointReadError, assign_state, read_checkpoint

UNET_PREFIX = "model.diffusion_model."
VQ_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
LDSR_FACTOR = 4  # the network's own factor (VQ f=4, the latent has the low-resolution image's size)
PAD_MULTIPLE = 64  # A1111 pads each side to a multiple of 64 ...
MIN_PADDED = 128  # ... and to at least 128
DEFAULT_STEPS = 100  # A1111's "LDSR processing steps"
ETA = 1.0  # A1111 samples LDSR with DDIM at eta 1
# What A1111's project.yaml (CompVis bsr_sr) says, used when no yaml lies beside the checkpoint.
DEFAULT_HEAD_CHANNELS = 32
DEFAULT_LINEAR_START, DEFAULT_LINEAR_END, DEFAULT_TIMESTEPS = 0.0015, 0.0155, 1000
GROUP_NORM_GROUPS = 32  # openaimodel's GroupNorm32; shapes cannot show it
WHAT_TO_DO = "put A1111's LDSR model.ckpt (with its project.yaml) in models/LDSR"


class LdsrError(ValueError):
    """An LDSR file or request that cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class LdsrSchedule:
    """The DDPM noise schedule of the checkpoint (its stored `betas` when present, as A1111 uses the stored table)."""

    num_train_timesteps: int = DEFAULT_TIMESTEPS
    linear_start: float = DEFAULT_LINEAR_START
    linear_end: float = DEFAULT_LINEAR_END
    trained_betas: tuple[float, ...] | None = None

    def scheduler(self, noise: torch.Generator | None = None) -> "SeededDDIMScheduler":
        """A fresh DDIM scheduler with LDM's "uniform" discretisation: timesteps 1, 1+k, ... (leading spacing,
        offset 1) and alpha_prev of the last step = alphas_cumprod[0]. LDM's `linear` schedule is diffusers'
        `scaled_linear` (linear in sqrt(beta)). `noise` feeds the eta noise of each step."""
        scheduler = SeededDDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.linear_start,
            beta_end=self.linear_end,
            beta_schedule="scaled_linear",
            trained_betas=list(self.trained_betas) if self.trained_betas is not None else None,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="leading",
        )
        scheduler.noise_generator = noise
        return scheduler


class SeededDDIMScheduler(DDIMScheduler):
    """DDIM whose per-step eta noise comes from a given generator.

    `LDMSuperResolutionPipeline` hands `step()` only `eta`, so at eta 1 the step noise would come from torch's global
    RNG: not reproducible, and shared with every other thread. Here it continues the pipeline's own generator
    (latent noise first, then each step's noise in order)."""

    noise_generator: torch.Generator | None = None

    def step(  # the full signature: the pipeline passes `eta` only to a step() that names it
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        return super().step(model_output, timestep, sample, eta, use_clipped_model_output,
                            generator if generator is not None else self.noise_generator, variance_noise, return_dict)


@dataclass
class LdsrModel:
    """The converted LDSR networks, ready to sample."""

    path: Path
    unet: UNet2DModel
    vqvae: VQModel
    schedule: LdsrSchedule = field(default_factory=LdsrSchedule)

    def pipeline(self, noise: torch.Generator | None = None) -> LDMSuperResolutionPipeline:
        """diffusers' pipeline over these modules with a fresh scheduler (schedulers keep per-run state) whose step
        noise comes from `noise` (pass the generator given to the pipeline call)."""
        pipe = LDMSuperResolutionPipeline(vqvae=self.vqvae, unet=self.unet, scheduler=self.schedule.scheduler(noise))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LdsrModel":
        for module in (self.unet, self.vqvae):
            torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device


# --- key conversion: openaimodel UNetModel (plain attention blocks) -> diffusers UNet2DModel --------------------

_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _indices(keys: Mapping[str, Any], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in keys for m in [regex.match(key)] if m})


def _need(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ArchitectureError(f"{what} is missing (no tensor {key!r})")
    return shapes[key]


@dataclass(frozen=True)
class _UNetLayout:
    """Where each LDM block sits: per input block (level, index in level) or a downsampler, and per level whether
    it has attention."""

    channels: list[int]
    layers_per_block: int
    attention: list[bool]
    in_channels: int
    out_channels: int


def _unet_layout(shapes: Mapping[str, tuple[int, ...]]) -> _UNetLayout:
    base, in_channels = _need(shapes, "input_blocks.0.0.weight", "the U-Net input convolution")[:2]
    out_channels = _need(shapes, "out.2.weight", "the U-Net output convolution")[0]
    levels: list[dict[str, Any]] = [{"width": None, "blocks": 0, "attention": set()}]
    for index in _indices(shapes, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in shapes:
            levels.append({"width": None, "blocks": 0, "attention": set()})
            continue
        width = _need(shapes, f"input_blocks.{index}.0.out_layers.3.weight", f"res block input_blocks.{index}")[0]
        levels[-1]["width"] = width
        levels[-1]["blocks"] += 1
        levels[-1]["attention"].add(f"input_blocks.{index}.1.qkv.weight" in shapes)
    blocks = {level["blocks"] for level in levels}
    if len(blocks) != 1 or 0 in blocks:
        raise ArchitectureError("U-Net levels have different (or no) numbers of res blocks")
    if any(len(level["attention"]) != 1 for level in levels):
        raise ArchitectureError("attention on only some res blocks of a U-Net level")
    layout = _UNetLayout(
        channels=[level["width"] for level in levels],
        layers_per_block=blocks.pop(),
        attention=[level["attention"].pop() for level in levels],
        in_channels=in_channels,
        out_channels=out_channels,
    )
    if layout.channels[0] != base:
        raise ArchitectureError("the U-Net input convolution does not match its first level")
    if "middle_block.1.qkv.weight" not in shapes:
        raise ArchitectureError("the U-Net middle block has no attention")
    expected_outputs = len(layout.channels) * (layout.layers_per_block + 1)
    if len(_indices(shapes, r"output_blocks\.(\d+)\.")) != expected_outputs:
        raise ArchitectureError("the U-Net output blocks do not mirror its input blocks")
    return layout


def ldsr_unet_config(shapes: Mapping[str, tuple[int, ...]], head_channels: int) -> dict[str, Any]:
    """diffusers `UNet2DModel` config from LDM U-Net shapes (prefix stripped). Heads and norm groups come from the
    yaml / openaimodel defaults; everything else from the tensors."""
    layout = _unet_layout(shapes)
    if any(width % head_channels for width in layout.channels):
        raise ArchitectureError(f"level widths {layout.channels} are not multiples of {head_channels} head channels")
    return {
        "sample_size": 64,
        "in_channels": layout.in_channels,
        "out_channels": layout.out_channels,
        "block_out_channels": layout.channels,
        "layers_per_block": layout.layers_per_block,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in layout.attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(layout.attention)],
        "attention_head_dim": head_channels,
        "norm_num_groups": GROUP_NORM_GROUPS,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,  # openaimodel's timestep embedding is [cos, sin]
        "freq_shift": 0,
        "downsample_padding": 1,
        "add_attention": True,
    }


def _resnet_keys(src: str, dst: str, state: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor]) -> None:
    for key, tensor in state.items():
        if key.startswith(src + "."):
            rest = key[len(src) + 1:]
            for old, new in _RESNET.items():
                if rest.startswith(old + "."):
                    out[f"{dst}.{new}{rest[len(old):]}"] = tensor
                    break
            else:
                raise ArchitectureError(f"unexpected res block tensor {key!r}")


def _attention_keys(src: str, dst: str, state: Mapping[str, torch.Tensor], head_channels: int,
                    out: dict[str, torch.Tensor]) -> None:
    """`norm`, fused `qkv` (conv1d, [3C, C, 1]) and `proj_out` (conv1d) -> group_norm, to_q/k/v, to_out.0 (linear).

    QKVAttentionLegacy reshapes qkv to (heads, 3 * head_channels, ...) and splits each head's rows into q, k, v, so the
    rows are interleaved per head; splitting the whole tensor in thirds would mix heads."""
    for kind in ("weight", "bias"):
        out[f"{dst}.group_norm.{kind}"] = state[f"{src}.norm.{kind}"]
        qkv = state[f"{src}.qkv.{kind}"]
        channels = qkv.shape[0] // 3
        heads = channels // head_channels
        per_head = qkv.reshape(heads, 3, head_channels, *qkv.shape[1:])
        for index, name in enumerate(("to_q", "to_k", "to_v")):
            part = per_head[:, index].reshape(channels, *qkv.shape[1:])
            out[f"{dst}.{name}.{kind}"] = part[..., 0] if part.ndim == 3 else part
        proj = state[f"{src}.proj_out.{kind}"]
        out[f"{dst}.to_out.0.{kind}"] = proj[..., 0] if proj.ndim == 3 else proj


def convert_ldsr_unet(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """LDM `UNetModel` tensors (prefix stripped) -> diffusers `UNet2DModel` state dict for `config`."""
    per_level = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    attention = [kind.startswith("Attn") for kind in config["down_block_types"]]
    head_channels = config["attention_head_dim"]
    out: dict[str, torch.Tensor] = {}
    for kind in ("weight", "bias"):
        out[f"time_embedding.linear_1.{kind}"] = state[f"time_embed.0.{kind}"]
        out[f"time_embedding.linear_2.{kind}"] = state[f"time_embed.2.{kind}"]
        out[f"conv_in.{kind}"] = state[f"input_blocks.0.0.{kind}"]
        out[f"conv_norm_out.{kind}"] = state[f"out.0.{kind}"]
        out[f"conv_out.{kind}"] = state[f"out.2.{kind}"]
    for level in range(levels):
        for j in range(per_level):
            index = 1 + level * (per_level + 1) + j
            _resnet_keys(f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{j}", state, out)
            if attention[level]:
                _attention_keys(f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{j}", state,
                                head_channels, out)
        if level < levels - 1:
            index = (level + 1) * (per_level + 1)
            for kind in ("weight", "bias"):
                out[f"down_blocks.{level}.downsamplers.0.conv.{kind}"] = state[f"input_blocks.{index}.0.op.{kind}"]
    _resnet_keys("middle_block.0", "mid_block.resnets.0", state, out)
    _attention_keys("middle_block.1", "mid_block.attentions.0", state, head_channels, out)
    _resnet_keys("middle_block.2", "mid_block.resnets.1", state, out)
    for up in range(levels):
        has_attention = attention[levels - 1 - up]
        for j in range(per_level + 1):
            index = up * (per_level + 1) + j
            _resnet_keys(f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{j}", state, out)
            if has_attention:
                _attention_keys(f"output_blocks.{index}.1", f"up_blocks.{up}.attentions.{j}", state,
                                head_channels, out)
        if up < levels - 1:
            index = up * (per_level + 1) + per_level
            slot = 2 if has_attention else 1
            for kind in ("weight", "bias"):
                out[f"up_blocks.{up}.upsamplers.0.conv.{kind}"] = state[f"output_blocks.{index}.{slot}.conv.{kind}"]
    return out


def ema_unet_tensors(raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The U-Net's EMA weights under their `model.diffusion_model.` names, when the file has a complete EMA copy.

    LDM's LitEma stores each parameter as `model_ema.` + its name inside the wrapper with the dots removed
    (`model_ema.diffusion_modelinput_blocks00weight`); LDM samples inside `ema_scope`, i.e. with these weights."""
    unet_keys = [key for key in raw if key.startswith(UNET_PREFIX)]
    ema = {}
    for key in unet_keys:
        stored = EMA_PREFIX + key.removeprefix("model.").replace(".", "")
        if stored not in raw:
            return None
        ema[key] = raw[stored]
    return ema if ema else None


def read_ldsr_yaml(path: Path | None) -> tuple[int, LdsrSchedule]:
    """(head channels, schedule) from A1111's project.yaml; the bsr_sr values when there is none."""
    if path is None or not path.is_file():
        return DEFAULT_HEAD_CHANNELS, LdsrSchedule()
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        params = document["model"]["params"]
        unet = params.get("unet_config", {}).get("params", {})
        heads = int(unet.get("num_head_channels", DEFAULT_HEAD_CHANNELS))
        schedule = LdsrSchedule(
            num_train_timesteps=int(params.get("timesteps", DEFAULT_TIMESTEPS)),
            linear_start=float(params.get("linear_start", DEFAULT_LINEAR_START)),
            linear_end=float(params.get("linear_end", DEFAULT_LINEAR_END)),
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LdsrError(f"{path.name}: not a readable LDSR config ({type(exc).__name__}); replace it with "
                        "A1111's project.yaml or delete it to use the built-in LDSR settings") from exc
    if heads <= 0:
        raise LdsrError(f"{path.name}: num_head_channels must be positive (A1111's LDSR uses 32)")
    return heads, schedule


def yaml_beside(checkpoint: Path) -> Path | None:
    """A1111 reads `project.yaml` next to `model.ckpt`; a same-stem `.yaml` is accepted too."""
    for candidate in (checkpoint.with_suffix(".yaml"), checkpoint.with_name("project.yaml")):
        if candidate.is_file():
            return candidate
    return None


def ldsr_vq_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """diffusers `VQModel` config from LDM `first_stage_model.*` shapes (prefix stripped)."""
    base = infer_vae_config(shapes, scaling_factor=1.0, sample_size=256)
    codebook = _need(shapes, "quantize.embedding.weight", "the VQ codebook")
    return {
        "in_channels": base["in_channels"],
        "out_channels": base["out_channels"],
        "down_block_types": base["down_block_types"],
        "up_block_types": base["up_block_types"],
        "block_out_channels": base["block_out_channels"],
        "layers_per_block": base["layers_per_block"],
        "latent_channels": base["latent_channels"],
        "num_vq_embeddings": codebook[0],
        "vq_embed_dim": codebook[1],
        "norm_num_groups": GROUP_NORM_GROUPS,
        "mid_block_add_attention": "decoder.mid.attn_1.q.weight" in shapes,  # always there in CompVis files
        "scaling_factor": 1.0,  # bsr_sr has no scale_factor: the latent is decoded as sampled
        "sample_size": 256,
    }


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    assign_state(module, state,
                 lambda reason: LdsrError(f"{path.name}: the {what} {reason}; download the LDSR checkpoint again"))


def load_ldsr(path: Path, config_path: Path | None = None, use_ema: bool = True) -> LdsrModel:
    """Read an LDSR checkpoint safely (safetensors, or a pickle through `torch.load(weights_only=True)`) and build
    the diffusers modules on the CPU in fp32. `config_path` defaults to the yaml beside the file."""
    path = Path(path)
    if not path.is_file():
        raise LdsrError(f"no LDSR model at {path}; {WHAT_TO_DO}")
    try:
        raw = read_checkpoint(path).state_dict
    except CheckpointReadError as exc:
        raise LdsrError(f"{exc}; {WHAT_TO_DO}") from exc
    if UNET_PREFIX + "input_blocks.0.0.weight" not in raw or VQ_PREFIX + "quantize.embedding.weight" not in raw:
        if UNET_PREFIX + "label_emb.weight" in raw:
            hint = "it is the SD x4 upscaler: move it to models/SD-Upscaler"
        elif any(k.startswith(("cond_stage_model.", "conditioner.")) for k in raw):
            hint = "it is a Stable Diffusion checkpoint: move it to models/Stable-diffusion"
        else:
            hint = WHAT_TO_DO
        raise LdsrError(f"{path.name}: not an LDSR checkpoint (no LDSR U-Net with a VQ codebook); {hint}")
    head_channels, schedule = read_ldsr_yaml(config_path if config_path is not None else yaml_beside(path))
    if "betas" in raw and raw["betas"].ndim == 1:
        betas = raw["betas"].double().tolist()
        schedule = LdsrSchedule(len(betas), schedule.linear_start, schedule.linear_end, tuple(betas))

    unet_source = (ema_unet_tensors(raw) if use_ema else None) or raw
    unet_state = {k[len(UNET_PREFIX):]: v for k, v in unet_source.items() if k.startswith(UNET_PREFIX)}
    vq_state = {k[len(VQ_PREFIX):]: v for k, v in raw.items() if k.startswith(VQ_PREFIX)}
    try:
        unet_config = ldsr_unet_config(shapes_of(unet_state), head_channels)
        vq_config = ldsr_vq_config(strip_prefix(shapes_of(raw), VQ_PREFIX))
        unet_tensors = convert_ldsr_unet(unet_state, unet_config)
        vq_tensors = convert_ldm_vae_checkpoint({VQ_PREFIX + k: v for k, v in vq_state.items()}, vq_config)
    except (ArchitectureError, KeyError) as exc:
        raise LdsrError(f"{path.name}: not a usable LDSR checkpoint ({str(exc).strip(chr(39))}); {WHAT_TO_DO}") from exc
    vq_tensors["quantize.embedding.weight"] = vq_state["quantize.embedding.weight"]
    with init_empty_weights(include_buffers=False):
        unet = UNet2DModel(**unet_config)
        vqvae = VQModel(**vq_config)
    _assign(unet, unet_tensors, "U-Net", path)
    _assign(vqvae, vq_tensors, "VQ autoencoder", path)
    return LdsrModel(path=path, unet=unet, vqvae=vqvae, schedule=schedule)


# --- sampling -------------------------------------------------------------------------------------------------


@torch.no_grad()
def ldsr_sample(model: LdsrModel, low_res: torch.Tensor, steps: int = DEFAULT_STEPS,
                generator: torch.Generator | None = None, eta: float = ETA) -> torch.Tensor:
    """4x super-resolution of `low_res` ((B, 3, H, W) in [-1, 1], H and W multiples of 4): (B, 3, 4H, 4W) in [0, 1]."""
    if steps < 1:
        raise LdsrError(f"LDSR needs at least 1 step (got {steps}); raise 'LDSR processing steps'")
    parameter = next(model.unet.parameters())
    image = low_res.to(device=parameter.device, dtype=parameter.dtype)
    output = model.pipeline(generator)(image=image, num_inference_steps=steps, eta=eta, generator=generator,
                              output_type="pt")
    return output.images.float()


def padded_for_ldsr(image: Image.Image) -> Image.Image:
    """A1111's padding: each side up to a multiple of 64 (at least 128), repeating the edge pixels."""
    array = np.asarray(image.convert("RGB"))
    height, width = array.shape[:2]
    target_w = max(MIN_PADDED, math.ceil(width / PAD_MULTIPLE) * PAD_MULTIPLE)
    target_h = max(MIN_PADDED, math.ceil(height / PAD_MULTIPLE) * PAD_MULTIPLE)
    return Image.fromarray(np.pad(array, ((0, target_h - height), (0, target_w - width), (0, 0)), mode="edge"))


def ldsr_upscale(model: LdsrModel, image: Image.Image, scale: float, steps: int = DEFAULT_STEPS,
                 seed: int = 0) -> Image.Image:
    """A1111's `super_resolution`: about `scale` times larger (4x after a Lanczos resize by scale/4)."""
    if not scale > 0:
        raise LdsrError(f"upscale factor {scale} is not positive")
    image = image.convert("RGB")
    if scale != LDSR_FACTOR:
        ratio = scale / LDSR_FACTOR
        size = (max(1, math.ceil(image.width * ratio)), max(1, math.ceil(image.height * ratio)))
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
    padded = padded_for_ldsr(image)
    pixels = torch.from_numpy(np.asarray(padded, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    generator = torch.Generator("cpu").manual_seed(int(seed))
    result = ldsr_sample(model, pixels, steps, generator)
    # A1111 converts with (x + 1) / 2 * 255 and a truncating cast to uint8.
    array = (result[0].clamp(0, 1) * 255).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    upscaled = Image.fromarray(array)
    return upscaled.crop((0, 0, image.width * LDSR_FACTOR, image.height * LDSR_FACTOR))
