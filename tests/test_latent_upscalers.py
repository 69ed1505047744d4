"""LDSR and the SD 2.x x4 upscaler: random-weight files in each real layout, loaded by the project and compared with
diffusers' own pipelines built directly from the ground-truth modules.

The files are written here through test-side tables of the original (CompVis / Stability) key names, independent of
the project's readers: openaimodel's `input_blocks` / `middle_block` / `output_blocks` numbering, LDM's fused
head-interleaved `qkv` attention (checked against a direct computation of QKVAttentionLegacy below), the LDM
autoencoder's `down.i.block.j` / reversed `up.i` naming, `label_emb.weight` for the noise-level embedding, LitEma's
dot-less `model_ema.*` names. Schedulers for the references are built from the published configs, written out here.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import yaml
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    LDMSuperResolutionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tests.reference import write_clip_tokenizer
from webui.engine.export import hf_clip_to_open_clip
from webui.engine.ldsr import LdsrError, convert_ldsr_unet, ldsr_unet_config, ldsr_upscale, ldsr_vq_config, load_ldsr
from webui.engine.sd_upscaler import SdUpscalerError, load_sd_upscaler, sd_upscaler_unet_config, sd_x4_sample, \
    sd_x4_upscale

HEAD_CHANNELS = 16  # written into the test's project.yaml (A1111's real one says 32)
LINEAR_START, LINEAR_END = 0.0015, 0.0155  # bsr_sr's schedule

# --- original key names (test-side tables) -------------------------------------------------------------------
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "class_embedding": "label_emb"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def original_unet_module(module: str, per_level: int, up_attention: list[bool]) -> tuple[str, str]:
    """(openaimodel module name, kind) of a diffusers U-Net module path; kind is resnet / attention / other."""
    if module in UNET_FIXED:
        return UNET_FIXED[module], "other"
    parts = module.split(".")
    if parts[0] == "down_blocks":
        level, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * (per_level + 1)}.0.op", "other"
        index = 1 + level * (per_level + 1) + int(parts[3])
        return f"input_blocks.{index}.{0 if kind == 'resnets' else 1}", kind[:-1]
    if parts[0] == "mid_block":
        return (f"middle_block.{2 * int(parts[2])}", "resnet") if parts[1] == "resnets" else ("middle_block.1",
                                                                                              "attention")
    level, kind = int(parts[1]), parts[2]
    if kind == "upsamplers":
        return f"output_blocks.{level * (per_level + 1) + per_level}.{2 if up_attention[level] else 1}", "other"
    return f"output_blocks.{level * (per_level + 1) + int(parts[3])}.{0 if kind == 'resnets' else 1}", kind[:-1]


def _module_of(key: str) -> tuple[str, str]:
    """Split a diffusers key into the block module it belongs to and the rest."""
    parts = key.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        cut = 4 if parts[2] in ("resnets", "attentions") else 3
        if parts[2] in ("downsamplers", "upsamplers"):
            cut = 5  # ...samplers.0.conv
        return ".".join(parts[:cut]), ".".join(parts[cut:])
    if parts[0] == "mid_block":
        return ".".join(parts[:3]), ".".join(parts[3:])
    return ".".join(parts[:-1]), parts[-1]


def fuse_legacy_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_channels: int) -> torch.Tensor:
    """LDM's fused qkv: per head, that head's q rows, then k rows, then v rows (QKVAttentionLegacy's layout)."""
    channels = q.shape[0]
    heads = channels // head_channels
    parts = [t.reshape(heads, head_channels, *t.shape[1:]) for t in (q, k, v)]
    return torch.stack(parts, dim=1).reshape(3 * channels, *q.shape[1:])


def unet_to_original(unet: torch.nn.Module, legacy_attention_heads: int | None) -> dict[str, torch.Tensor]:
    """`model.diffusion_model.*` tensors of a diffusers U-Net. With `legacy_attention_heads` (LDSR), attention blocks
    are openaimodel's AttentionBlock (norm, qkv conv1d, proj_out conv1d); otherwise SpatialTransformer, whose inner
    names equal diffusers'."""
    config = unet.config
    per_level = config.layers_per_block
    up_attention = [hasattr(block, "attentions") for block in unet.up_blocks]
    state = unet.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, rest = _module_of(key)
        if module.endswith(("downsamplers.0.conv", "upsamplers.0.conv")):
            module = module.removesuffix(".conv")
            name, _ = original_unet_module(module, per_level, up_attention)
            out[f"{name}.{'conv.' if 'upsamplers' in module else ''}{rest}"] = tensor
            continue
        name, kind = original_unet_module(module, per_level, up_attention)
        if kind == "resnet":
            out[f"{name}.{_rename(rest, RESNET)}"] = tensor
        elif kind == "attention" and legacy_attention_heads:
            if rest.startswith(("to_k", "to_v")):
                continue
            kind_of = rest.split(".")[-1]
            if rest.startswith("group_norm"):
                out[f"{name}.norm.{kind_of}"] = tensor
            elif rest.startswith("to_q"):
                q, k, v = (state[f"{module}.{p}.{kind_of}"] for p in ("to_q", "to_k", "to_v"))
                fused = fuse_legacy_qkv(q, k, v, legacy_attention_heads)
                out[f"{name}.qkv.{kind_of}"] = fused[..., None] if kind_of == "weight" else fused
            elif rest.startswith("to_out.0"):
                out[f"{name}.proj_out.{kind_of}"] = tensor[..., None] if kind_of == "weight" else tensor
        else:  # fixed parts, and SpatialTransformer attention (same inner names as diffusers')
            out[f"{name}.{rest}"] = tensor
    return {"model.diffusion_model." + k: v.detach().clone().contiguous() for k, v in out.items()}


def autoencoder_to_original(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`first_stage_model.*` tensors of a diffusers AutoencoderKL / VQModel in LDM's naming."""
    levels = len(vae.config.block_out_channels)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in vae.state_dict().items():
        parts = key.split(".")
        side, section = parts[0], parts[1] if len(parts) > 1 else ""
        if side in ("quant_conv", "post_quant_conv", "quantize"):
            new = key
        elif section in ("conv_in", "conv_out"):
            new = key
        elif section == "conv_norm_out":
            new = f"{side}.norm_out.{parts[-1]}"
        elif section in ("down_blocks", "up_blocks"):
            level = int(parts[2]) if section == "down_blocks" else levels - 1 - int(parts[2])
            where = "down" if section == "down_blocks" else "up"
            if parts[3] == "resnets":
                new = f"{side}.{where}.{level}.block.{parts[4]}.{_rename('.'.join(parts[5:]), VAE_RESNET)}"
            else:
                new = f"{side}.{where}.{level}.{'downsample' if where == 'down' else 'upsample'}.conv.{parts[-1]}"
        elif section == "mid_block":
            rest = ".".join(parts[4:])
            if parts[2] == "resnets":
                new = f"{side}.mid.block_{int(parts[3]) + 1}.{_rename(rest, VAE_RESNET)}"
            else:
                new = f"{side}.mid.attn_1.{_rename(rest, VAE_ATTENTION)}"
                if tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        else:
            raise AssertionError(f"unexpected autoencoder key {key}")
        out[new] = tensor
    return {"first_stage_model." + k: v.detach().clone().contiguous() for k, v in out.items()}


def ldm_betas(start: float, end: float, steps: int = 1000) -> torch.Tensor:
    """LDM's `linear` schedule (make_beta_schedule): linear in sqrt(beta), computed in float64."""
    return torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2


def ddpm_buffers(start: float, end: float) -> dict[str, torch.Tensor]:
    betas = ldm_betas(start, end)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(),
            "alphas_cumprod_prev": torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).float(),
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt().float()}


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norms near 1), so a mis-mapped tensor cannot hide behind an init value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                fan_in = parameter[0].numel() if parameter.ndim > 1 else 1
                parameter.copy_(noise / math.sqrt(fan_in) * (1.0 if parameter.ndim > 1 else 0.05))
    return module.eval()


# --- LDSR -------------------------------------------------------------------------------------------------------


class TinyLdsr:
    def __init__(self, folder) -> None:
        torch.manual_seed(0)
        self.unet = _randomise(UNet2DModel(
            sample_size=32, in_channels=6, out_channels=3, block_out_channels=(32, 32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            attention_head_dim=HEAD_CHANNELS, norm_num_groups=32,
        ), 1)
        self.vqvae = _randomise(VQModel(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 32, 32), layers_per_block=1,
            latent_channels=3, num_vq_embeddings=64, vq_embed_dim=3, norm_num_groups=32, scaling_factor=1.0,
            # The real VQ has a middle attention at the latent size (>= 128x128 after A1111's padding): 16k tokens,
            # too slow for a unit test; diffusers converts that block for every SD VAE already.
            mid_block_add_attention=False,
        ), 2)
        ema = unet_to_original(self.unet, HEAD_CHANNELS)
        # The main copy differs from the EMA copy; LDM samples with the EMA one (A1111 runs inside ema_scope).
        main = {k: v + 0.5 * torch.randn_like(v) for k, v in ema.items()}
        state = {**main, **autoencoder_to_original(self.vqvae), **ddpm_buffers(LINEAR_START, LINEAR_END)}
        state.update({"model_ema." + k.removeprefix("model.").replace(".", ""): v for k, v in ema.items()})
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
        state["logvar"] = torch.zeros(1000)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "model.ckpt"
        torch.save({"state_dict": state, "global_step": 1000, "epoch": 3}, str(self.path))  # a Lightning checkpoint
        config = {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
            "linear_start": LINEAR_START, "linear_end": LINEAR_END, "timesteps": 1000, "concat_mode": True,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                "in_channels": 6, "out_channels": 3, "model_channels": 32, "attention_resolutions": [4],
                "num_res_blocks": 1, "channel_mult": [1, 1, 2], "num_head_channels": HEAD_CHANNELS}}}}}
        (folder / "project.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    def reference(self, generator: torch.Generator) -> LDMSuperResolutionPipeline:
        """The pipeline gives `step()` only eta, so its eta noise would come from the global RNG; here the step is
        handed the same generator the pipeline draws the start latent from (as the project does)."""
        scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=LINEAR_START, beta_end=LINEAR_END,
                                  beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                  steps_offset=1)
        scheduler.step = functools.partial(scheduler.step, generator=generator)
        pipe = LDMSuperResolutionPipeline(vqvae=self.vqvae, unet=self.unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe


@pytest.fixture(scope="module")
def tiny_ldsr(tmp_path_factory: pytest.TempPathFactory) -> TinyLdsr:
    return TinyLdsr(tmp_path_factory.mktemp("latent-upscalers") / "LDSR")


def test_fused_qkv_table_is_ldm_legacy_attention(tiny_ldsr: TinyLdsr) -> None:
    """The test's own table is the real layout: openaimodel's AttentionBlock computed directly from the file's
    `norm` / `qkv` / `proj_out` tensors (QKVAttentionLegacy) equals the ground-truth diffusers attention."""
    state = torch.load(str(tiny_ldsr.path), weights_only=True)["state_dict"]
    prefix = "model_ema.diffusion_modelmiddle_block1"
    x = torch.randn(1, 64, 4, 4, generator=torch.Generator().manual_seed(3))
    h = torch.nn.functional.group_norm(x, 32, state[prefix + "normweight"], state[prefix + "normbias"])
    qkv = torch.nn.functional.conv1d(h.reshape(1, 64, 16), state[prefix + "qkvweight"], state[prefix + "qkvbias"])
    heads = 64 // HEAD_CHANNELS
    q, k, v = qkv.reshape(heads, 3 * HEAD_CHANNELS, 16).split(HEAD_CHANNELS, dim=1)
    scale = 1 / math.sqrt(math.sqrt(HEAD_CHANNELS))
    weights = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    attended = torch.einsum("bts,bcs->bct", weights, v).reshape(1, 64, 16)
    expected = x + torch.nn.functional.conv1d(attended, state[prefix + "proj_outweight"],
                                              state[prefix + "proj_outbias"]).reshape(1, 64, 4, 4)
    with torch.no_grad():
        actual = tiny_ldsr.unet.mid_block.attentions[0](x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_ldsr_matches_diffusers_ldm_super_resolution(tiny_ldsr: TinyLdsr) -> None:
    """A1111's LDSR path (edge padding to 128, DDIM eta 1, truncation to 8 bits, crop) on our converted model equals
    diffusers' LDMSuperResolutionPipeline on the ground-truth modules with the same seed."""
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    model = load_ldsr(tiny_ldsr.path)
    ours = np.asarray(ldsr_upscale(model, image, 4, steps=2, seed=11))

    padded = np.pad(np.asarray(image), ((0, 128 - 40), (0, 128 - 48), (0, 0)), mode="edge")
    pixels = torch.from_numpy(padded.astype(np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    generator = torch.Generator().manual_seed(11)
    reference = tiny_ldsr.reference(generator)(image=pixels, num_inference_steps=2, eta=1.0, output_type="pt",
                                               generator=generator).images
    expected = (reference[0] * 255).permute(1, 2, 0).numpy().astype(np.uint8)[:160, :192]
    assert ours.shape == expected.shape == (160, 192, 3)
    difference = np.abs(ours.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())
    assert expected.std() > 5  # a real picture, not a constant


# --- SD x4 upscaler -------------------------------------------------------------------------------------------

TE_WIDTH = 32
DDIM_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "scaled_linear",
               "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "v_prediction"}
LOW_RES_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                  "beta_schedule": "scaled_linear", "clip_sample": True, "variance_type": "fixed_small"}


class TinyX4:
    def __init__(self, folder) -> None:
        self.unet = _randomise(UNet2DConditionModel(
            sample_size=16, in_channels=7, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            only_cross_attention=[False, True, False],  # x4-upscaling.yaml disable_self_attentions, shrunk
            cross_attention_dim=TE_WIDTH, attention_head_dim=8, use_linear_projection=True, num_class_embeds=1000,
        ), 3)
        self.vae = _randomise(AutoencoderKL(
            block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4, scaling_factor=0.08333,
        ), 4)
        config = CLIPTextConfig(vocab_size=49408, hidden_size=TE_WIDTH, intermediate_size=4 * TE_WIDTH,
                                num_hidden_layers=3, num_attention_heads=1, max_position_embeddings=77,
                                hidden_act="gelu", projection_dim=TE_WIDTH)
        full_text = _randomise(CLIPTextModel(config), 5)
        # diffusers' x4 text encoder stops at the penultimate layer (then the final LayerNorm), as LDM's
        # FrozenOpenCLIPEmbedder(layer="penultimate") does; the file holds all layers.
        self.text_encoder = CLIPTextModel(CLIPTextConfig(**{**config.to_dict(), "num_hidden_layers": 2})).eval()
        self.text_encoder.load_state_dict(full_text.state_dict(), strict=False)
        state = {**unet_to_original(self.unet, None), **autoencoder_to_original(self.vae),
                 **hf_clip_to_open_clip(full_text, "cond_stage_model.model."), **ddpm_buffers(0.0001, 0.02)}
        state.update({"low_scale_model." + k: v for k, v in ddpm_buffers(0.0001, 0.02).items()})
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "x4-upscaler-ema.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(self.path))
        write_clip_tokenizer(folder.parent / "x4-tokenizer", "!")
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder.parent / "x4-tokenizer"))

    def reference(self) -> StableDiffusionUpscalePipeline:
        pipe = StableDiffusionUpscalePipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            low_res_scheduler=DDPMScheduler(**LOW_RES_CONFIG), scheduler=DDIMScheduler(**DDIM_CONFIG),
            max_noise_level=350,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


@pytest.fixture(scope="module")
def tiny_x4(tmp_path_factory: pytest.TempPathFactory) -> TinyX4:
    return TinyX4(tmp_path_factory.mktemp("latent-upscalers") / "SD-Upscaler")


def test_sd_x4_matches_diffusers_upscale_pipeline_with_a_prompt(tiny_x4: TinyX4) -> None:
    image = Image.fromarray(np.random.default_rng(6).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    model = load_sd_upscaler(tiny_x4.path)
    ours = sd_x4_sample(model, image, "a red fox in the snow", "blurry", steps=3, noise_level=40,
                        guidance_scale=7.5, generator=torch.Generator().manual_seed(9))
    expected = tiny_x4.reference()(prompt="a red fox in the snow", negative_prompt="blurry", image=image,
                                   num_inference_steps=3, noise_level=40, guidance_scale=7.5, output_type="pt",
                                   generator=torch.Generator().manual_seed(9)).images
    assert ours.shape == expected.shape == (1, 3, 96, 128)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)
    assert expected.std() > 0.02


def test_sd_x4_default_upscale_matches_diffusers(tiny_x4: TinyX4) -> None:
    """No prompt, noise level 20: the upscale an Extras user gets, padded to the U-Net's multiple and cropped."""
    image = Image.fromarray(np.random.default_rng(7).integers(0, 256, (18, 26, 3), dtype=np.uint8))
    model = load_sd_upscaler(tiny_x4.path)
    ours = np.asarray(sd_x4_upscale(model, image, 4, steps=3, seed=4))
    # The tiny U-Net has 3 levels: the low-resolution sides must be multiples of 4 (the real one's, of 8).
    padded = Image.fromarray(np.pad(np.asarray(image), ((0, 2), (0, 2), (0, 0)), mode="edge"))
    expected = tiny_x4.reference()(prompt="", image=padded, num_inference_steps=3, noise_level=20, guidance_scale=9.0,
                                   output_type="np", generator=torch.Generator().manual_seed(4)).images[0]
    expected = np.round(expected * 255).astype(np.uint8)[:72, :104]
    assert ours.shape == expected.shape == (72, 104, 3)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


# --- the real sizes, without weights ------------------------------------------------------------------------


def _shapes(state: dict[str, torch.Tensor], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k.removeprefix(prefix): tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


def test_real_sizes_give_the_published_architectures() -> None:
    """Meta-device modules at the published sizes (CompVis bsr_sr: project.yaml; Stability's x4: x4-upscaling.yaml and
    diffusers' stabilityai/stable-diffusion-x4-upscaler configs), written in the original names: the project infers
    the same architectures, and LDSR's converter yields every tensor of the real U-Net at its shape."""
    with init_empty_weights():
        ldsr_unet = UNet2DModel(in_channels=6, out_channels=3, block_out_channels=(160, 320, 320, 640),
                                layers_per_block=2, attention_head_dim=32,
                                down_block_types=("DownBlock2D",) * 3 + ("AttnDownBlock2D",),
                                up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * 3)
        vq = VQModel(block_out_channels=(128, 256, 512), down_block_types=("DownEncoderBlock2D",) * 3,
                     up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, latent_channels=3,
                     num_vq_embeddings=8192, vq_embed_dim=3)
        x4_unet = UNet2DConditionModel(
            in_channels=7, out_channels=4, block_out_channels=(256, 512, 512, 1024), layers_per_block=2,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
            up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",), attention_head_dim=8,
            cross_attention_dim=1024, num_class_embeds=1000, only_cross_attention=[True, True, True, False],
            use_linear_projection=True)
    unet_shapes = _shapes(unet_to_original(ldsr_unet, 32), "model.diffusion_model.")
    assert unet_shapes["middle_block.1.qkv.weight"] == (1920, 640, 1)
    config = ldsr_unet_config(unet_shapes, 32)
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        assert list(config[key]) == list(ldsr_unet.config[key]), key
    assert (config["layers_per_block"], config["in_channels"], config["attention_head_dim"]) == (2, 6, 32)
    meta = {k: torch.empty(v, device="meta") for k, v in unet_shapes.items()}
    converted = {k: tuple(v.shape) for k, v in convert_ldsr_unet(meta, config).items()}
    assert converted == {k: tuple(v.shape) for k, v in ldsr_unet.state_dict().items()}
    vq_config = ldsr_vq_config(_shapes(autoencoder_to_original(vq), "first_stage_model."))
    assert (vq_config["block_out_channels"], vq_config["num_vq_embeddings"], vq_config["latent_channels"]) == \
        ([128, 256, 512], 8192, 3)

    x4 = sd_upscaler_unet_config(_shapes(unet_to_original(x4_unet, None), "model.diffusion_model."))
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        assert list(x4[key]) == list(x4_unet.config[key]), key
    assert (x4["in_channels"], x4["cross_attention_dim"], x4["num_class_embeds"], x4["use_linear_projection"]) == \
        (7, 1024, 1000, True)
    assert set(x4["attention_head_dim"]) == {8}
    # Level 0 has no attention (the flag is moot there); levels 1-2 attend only to the text, level 3 to itself too.
    assert x4["only_cross_attention"][1:] == [True, True, False]


# --- refusals ---------------------------------------------------------------------------------------------------


def test_missing_and_wrong_files_say_what_to_do(tmp_path, tiny_ldsr: TinyLdsr, tiny_x4: TinyX4) -> None:
    with pytest.raises(LdsrError, match="models/LDSR"):
        load_ldsr(tmp_path / "LDSR" / "model.ckpt")
    with pytest.raises(SdUpscalerError, match="models/SD-Upscaler"):
        load_sd_upscaler(tmp_path / "x4.safetensors")
    with pytest.raises(LdsrError, match="not an LDSR checkpoint.*SD x4 upscaler: move it to models/SD-Upscaler"):
        load_ldsr(tiny_x4.path)
    with pytest.raises(SdUpscalerError, match="not an SD x4 upscaler.*LDSR model: move it to models/LDSR"):
        load_sd_upscaler(tiny_ldsr.path)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(tiny_x4.path.read_bytes()[:5000])
    with pytest.raises(SdUpscalerError, match="corrupt or incomplete"):
        load_sd_upscaler(truncated)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_that_needs_code_is_refused(tmp_path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callback": _Payload()}, str(path))
    with pytest.raises(LdsrError, match="refused.*forbidden global.*print"):
        load_ldsr(path)


# --- in the upscaler library (Extras, hires fix, API) --------------------------------------------------------


def test_library_lists_both_and_upscales_to_the_exact_size(tmp_path, tiny_x4: TinyX4) -> None:
    from webui.context import AppPaths
    from webui.services.latent_upscalers import LatentUpscaleOptions, register_latent_upscalers
    from webui.services.upscalers import UpscalerError, UpscalerLibrary

    models = tmp_path / "models"
    (models / "SD-Upscaler").mkdir(parents=True)
    (models / "SD-Upscaler" / tiny_x4.path.name).symlink_to(tiny_x4.path)
    library = UpscalerLibrary(AppPaths(models_dir=models, outputs_dir=tmp_path / "out", data_dir=tmp_path / "data"))
    register_latent_upscalers(library, models, torch.device("cpu"), torch.float32,
                              options=lambda: LatentUpscaleOptions(ldsr_steps=2, sd_x4_steps=2))
    assert {"LDSR", "SD x4"} <= set(library.names())
    listed = {entry.name: entry for entry in library.describe()}
    assert listed["SD x4"].model_name == "x4-upscaler-ema" and listed["LDSR"].model_path is None

    image = Image.fromarray(np.random.default_rng(8).integers(0, 256, (21, 30, 3), dtype=np.uint8))
    result = library.upscale(image, 2.5, "sd X4")  # names match without regard to case, as infotexts need
    assert result.size == (75, 52)  # round(30 * 2.5) x round(21 * 2.5), after the 4x model and a Lanczos resize
    assert np.asarray(result).std() > 5
    with pytest.raises(UpscalerError, match=r"LDSR: no model file in .*LDSR; put A1111's LDSR model.ckpt"):
        library.upscale(image, 2, "LDSR")
