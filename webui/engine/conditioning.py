"""Prompt text -> the tensors the U-Net is conditioned on, following each family's text-encoder rule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loader import LoadedModel, TextEncoder
from .tokenizer import tokenize_prompt


@dataclass
class Conditioning:
    """Cross-attention context [B, 77*k, D] and, for SDXL, the pooled text embedding [B, P]."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


def _encode_windows(encoder: TextEncoder, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    output = encoder.model(input_ids=windows, output_hidden_states=encoder.slot.hidden_state == "penultimate")
    hidden = output.last_hidden_state if encoder.slot.hidden_state == "final" else output.hidden_states[-2]
    pooled = output.text_embeds if encoder.slot.pooled else None
    return hidden, pooled


@torch.inference_mode()
def encode_prompts(model: LoadedModel, prompts: list[str], zero_if_empty: bool = False) -> Conditioning:
    """Encode a batch of prompts. Long prompts become several 77-token windows, concatenated as in A1111.

    `zero_if_empty` gives SDXL's zeroed negative conditioning for an empty negative prompt (A1111 and diffusers agree).
    """
    device = model.device
    per_encoder: list[list[torch.Tensor]] = [[] for _ in model.text_encoders]
    pooled_rows: list[torch.Tensor] = []
    token_windows = [
        [tokenize_prompt(prompt, encoder.slot.pad_token_id).windows for encoder in model.text_encoders]
        for prompt in prompts
    ]
    most_windows = max(len(w[0]) for w in token_windows)
    for prompt, windows_per_encoder in zip(prompts, token_windows):
        for index, (encoder, windows) in enumerate(zip(model.text_encoders, windows_per_encoder)):
            ids = torch.tensor(windows, dtype=torch.long, device=device)
            hidden, pooled = _encode_windows(encoder, ids)
            context = hidden.reshape(1, -1, hidden.shape[-1])
            if zero_if_empty and not prompt:
                context = torch.zeros_like(context)
                pooled = torch.zeros_like(pooled) if pooled is not None else None
            if context.shape[1] < most_windows * 77:
                # Same-batch prompts of different lengths: repeat the last window, as padding with empty text would.
                extra = context[:, -77:].repeat(1, most_windows - context.shape[1] // 77, 1)
                context = torch.cat([context, extra], dim=1)
            per_encoder[index].append(context)
            if pooled is not None:
                pooled_rows.append(pooled[:1])  # the first window's pooled output, as A1111 does
    context = torch.cat([torch.cat(rows, dim=0) for rows in per_encoder], dim=-1)
    pooled = torch.cat(pooled_rows, dim=0) if pooled_rows else None
    return Conditioning(context=context.to(model.dtype), pooled=pooled.to(model.dtype) if pooled is not None else None)
