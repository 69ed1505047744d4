"""Prompt text -> the tensors the U-Net is conditioned on, following each family's text-encoder rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .loader import LoadedModel, TextEncoder
from .tokenizer import EmbeddingFix, tokenize_prompt

if TYPE_CHECKING:
    from .embeddings import EmbeddingSet


@dataclass
class Conditioning:
    """Cross-attention context [B, 77*k, D] and, for SDXL, the pooled text embedding [B, P]."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None


def token_embedding(encoder: TextEncoder) -> torch.nn.Embedding:
    """The lookup table an embedding's vectors replace rows of (here and in pivotal-tuning training)."""
    for name, module in encoder.model.named_modules():
        if name.endswith("token_embedding") and isinstance(module, torch.nn.Embedding):
            return module
    raise ValueError("the text encoder has no token embedding")


def _encode_windows(encoder: TextEncoder, windows: torch.Tensor, fixes: Sequence[EmbeddingFix] = (),
                    vectors: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the text encoder on [k, 77] windows; embedding vectors replace the token lookup at their `fixes`."""
    handle = None
    if fixes:
        def put_vectors(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            for fix in fixes:
                rows = vectors[fix.name]  # type: ignore[index]
                output[fix.window, fix.offset:fix.offset + rows.shape[0]] = rows.to(output.device, output.dtype)
            return output

        handle = token_embedding(encoder).register_forward_hook(put_vectors)
    try:
        output = encoder.model(input_ids=windows, output_hidden_states=encoder.slot.hidden_state == "penultimate")
    finally:
        if handle is not None:
            handle.remove()
    hidden = output.last_hidden_state if encoder.slot.hidden_state == "final" else output.hidden_states[-2]
    pooled = output.text_embeds if encoder.slot.pooled else None
    return hidden, pooled


def encode_training_windows(encoder: TextEncoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, 77] ids -> (hidden state the U-Net sees, pooled or None), with gradients: the trainers' text path, by the
    same slot rule as generation so that a trained LoRA sees at inference exactly what it saw in training."""
    return _encode_windows(encoder, ids)


@torch.inference_mode()
def encode_prompts(model: LoadedModel, prompts: list[str], zero_if_empty: bool = False,
                   embeddings: EmbeddingSet | None = None) -> Conditioning:
    """Encode a batch of prompts. Long prompts become several 77-token windows, concatenated as in A1111.

    `zero_if_empty` gives SDXL's zeroed negative conditioning for an empty negative prompt (A1111 and diffusers agree).
    `embeddings` are the textual-inversion embeddings that fit this model; their names in a prompt become their vectors.
    """
    matcher = embeddings.matcher if embeddings else None
    device = model.device
    per_encoder: list[list[torch.Tensor]] = [[] for _ in model.text_encoders]
    pooled_rows: list[torch.Tensor] = []
    token_chunks = [
        [tokenize_prompt(prompt, encoder.slot.pad_token_id, matcher) for encoder in model.text_encoders]
        for prompt in prompts
    ]
    most_windows = max(len(chunks[0].windows) for chunks in token_chunks)
    for prompt, chunks_per_encoder in zip(prompts, token_chunks):
        for index, (encoder, chunks) in enumerate(zip(model.text_encoders, chunks_per_encoder)):
            ids = torch.tensor(chunks.windows, dtype=torch.long, device=device)
            vectors = {fix.name: embeddings.vectors(fix.name, index) for fix in chunks.fixes} if embeddings else None
            hidden, pooled = _encode_windows(encoder, ids, chunks.fixes, vectors)
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
