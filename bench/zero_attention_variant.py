r"""Write the shipped model with cross-attention at its full-resolution level too, contributing nothing yet.

The shipped U-Net has attention only at its two lower levels, so a LoRA cannot make a prompt-dependent change where
small shapes are drawn (docs/lora-training.md). This variant adds diffusers' transformer blocks to that level (down
and up, as SD1.5 has them) with a zero output projection, as ControlNet's zero convolutions start: the base images stay
bit-identical, and a LoRA trained on the variant has attention layers there to use.

    python bench/zero_attention_variant.py --out /tmp/fullres.safetensors
    python bench/lora_concept.py --base /tmp/fullres.safetensors --reg-renders --skip-baselines

The new blocks can then be trained alone on the shipped model's data (run T in docs/lora-training.md): `--ae-out`
writes the checkpoint's autoencoder as the stage-1 folder train-ldm reads.

    python bench/zero_attention_variant.py --out /tmp/fullres.safetensors --ae-out /tmp/ae
    python -m webui train-ldm --ae /tmp/ae --init /tmp/fullres.safetensors --unet-attention 1,1,1 \
        --train-only 'unet\.(down_blocks\.0|up_blocks\.2)\.attentions' --out /tmp/ldm --steps 100000 \
        --max-minutes 40 --batch-size 32 --scenes 8000 --lr 5e-4 --warmup 100 --min-snr-gamma 0 --snr-floor 0.5 \
        --signal-free-top 0.15 --offset-noise 0.1 --export /tmp/fullres-trained.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from webui.engine.export import save_checkpoint, unet_to_ldm  # noqa: E402
from webui.engine.families import UNET_PREFIX  # noqa: E402
from webui.engine.loader import load_checkpoint  # noqa: E402

DEFAULT_MODEL = ROOT / "models/Stable-diffusion/latent-studio-shapes.safetensors"


def with_full_resolution_attention(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A copy of `unet` with cross-attention blocks at every level; the new ones have a zero output projection."""
    config = dict(unet.config)
    levels = len(config["block_out_channels"])
    config["down_block_types"] = ["CrossAttnDownBlock2D"] * levels
    config["up_block_types"] = ["CrossAttnUpBlock2D"] * levels
    torch.manual_seed(0)  # the new blocks' other weights are diffusers' random initialisation: the same every time
    variant = UNet2DConditionModel.from_config(config)
    missing, unexpected = variant.load_state_dict(unet.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"the variant lost weights: {unexpected[:3]}")
    new_blocks = {key.split(".proj_out.")[0] for key in missing if ".proj_out." in key}
    with torch.no_grad():
        for name in new_blocks:
            projection = variant.get_submodule(name).proj_out
            projection.weight.zero_()
            projection.bias.zero_()
    return variant


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ae-out", type=Path, default=None,
                        help="also write the checkpoint's autoencoder to AE_OUT/vae (train-ldm's --ae folder)")
    args = parser.parse_args()

    loaded = load_checkpoint(args.base)
    variant = with_full_resolution_attention(loaded.unet)
    if args.ae_out is not None:
        loaded.vae.to(torch.float32).save_pretrained(args.ae_out / "vae")
    with safe_open(str(args.base), "pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(args.base))
    dtype = next(v.dtype for k, v in state.items() if k.startswith(UNET_PREFIX))
    state = {k: v for k, v in state.items() if not k.startswith(UNET_PREFIX)}
    state.update({k: v.to(dtype).contiguous() for k, v in unet_to_ldm(variant).items()})
    save_checkpoint(args.out, state, metadata)
    print(f"wrote {args.out}: {sum(p.numel() for p in variant.parameters()):,} U-Net parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
