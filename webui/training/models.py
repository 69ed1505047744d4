"""Model configurations for the default model, chosen to satisfy the loader's SD1-family inference rules.

- U-Net: `attention_head_dim=8` (SD1's 8 heads), `use_linear_projection=False`, GroupNorm 32 (channels multiples of
  32), the same `layers_per_block` at every level, cross-attention in the middle block, last-level depth = middle depth.
- VAE: GroupNorm 32, downsampling factor 2**(levels-1).
- Text encoder: CLIP architecture, vocab 49408, 77 positions, quick_gelu, heads = hidden // 64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from webui.engine.tokenizer import EOS_ID, tokenize_prompt


@dataclass
class AEConfig:
    block_out_channels: tuple[int, ...] = (64, 64, 64)  # factor 4; 64 (not 32) channels on top, see docs
    layers_per_block: int = 1
    latent_channels: int = 4

    def build(self) -> AutoencoderKL:
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * len(self.block_out_channels),
            up_block_types=["UpDecoderBlock2D"] * len(self.block_out_channels),
            block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=32,
            sample_size=64,
        )


@dataclass
class LDMConfig:
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_attention: tuple[bool, ...] = (False, True, True)
    layers_per_block: int = 1
    text_hidden: int = 128
    text_layers: int = 3
    text_intermediate: int = 256

    def build_unet(self, latent_channels: int, sample_size: int, ) -> UNet2DConditionModel:
        for c in self.unet_channels:
            if c % 32:
                raise ValueError("U-Net channels must be multiples of 32 (GroupNorm 32, 8 heads)")
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=latent_channels,
            out_channels=latent_channels,
            down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.unet_attention],
            up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.unet_attention)],
            block_out_channels=list(self.unet_channels),
            layers_per_block=self.layers_per_block,
            cross_attention_dim=self.text_hidden,
            attention_head_dim=8,
            use_linear_projection=False,
            norm_num_groups=32,
            transformer_layers_per_block=1,
        )

    def build_text_encoder(self) -> CLIPTextModel:
        config = CLIPTextConfig(
            vocab_size=49408,
            hidden_size=self.text_hidden,
            intermediate_size=self.text_intermediate,
            num_hidden_layers=self.text_layers,
            num_attention_heads=max(1, self.text_hidden // 64),
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            pad_token_id=1,
            bos_token_id=49406,
            eos_token_id=EOS_ID,
        )
        return CLIPTextModel(config)


def config_dict(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


SD_TRAIN_TIMESTEPS = 1000


def sd_noise_scheduler() -> DDPMScheduler:
    """SD's training schedule: ε-prediction, scaled-linear β 0.00085 -> 0.012 over 1000 steps."""
    return DDPMScheduler(
        num_train_timesteps=SD_TRAIN_TIMESTEPS, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False,
    )


def token_ids(prompts: list[str]) -> torch.Tensor:
    """The 77 ids exactly as the app feeds an SD1 text encoder (EOS padding)."""
    return torch.tensor([tokenize_prompt(p, pad_id=EOS_ID).windows[0] for p in prompts], dtype=torch.long)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
