"""Prompt text -> the tensors the U-Net is conditioned on, following each family's text-encoder rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .loader import LoadedModel, TextEncoder
from .prompt_parser import DEFAULT_EMPHASIS, EMPHASIS_MODES, PromptPlan, Segment, prompt_segments, text_at
from .tokenizer import EmbeddingFix, TokenChunks, tokenize_segments

if TYPE_CHECKING:
    from .embeddings import EmbeddingSet

MAX_CLIP_SKIP = 12


@dataclass(frozen=True)
class TextOptions:
    """How prompt text becomes conditioning, A1111's settings: the emphasis mode (`emphasis`) and CLIP skip
    (`CLIP_stop_at_last_layers`; `sdxl_clip_l_skip` applies it to SDXL's CLIP-L, off by default as in A1111 1.10)."""

    emphasis: str = DEFAULT_EMPHASIS
    clip_skip: int = 1
    sdxl_clip_l_skip: bool = False

    def __post_init__(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis mode {self.emphasis!r} is unknown; use one of {', '.join(EMPHASIS_MODES)}")
        if not 1 <= self.clip_skip <= MAX_CLIP_SKIP:
            raise ValueError(f"CLIP skip {self.clip_skip} is out of range (1 to {MAX_CLIP_SKIP})")


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


def final_layer_norm(encoder: TextEncoder) -> torch.nn.Module:
    """The encoder's last LayerNorm (transformers 5 keeps it on the model, earlier versions under `text_model`)."""
    model = encoder.model
    norm = getattr(model, "final_layer_norm", None)
    return norm if norm is not None else model.text_model.final_layer_norm


def _wants_hidden_states(encoder: TextEncoder, options: TextOptions) -> bool:
    return encoder.slot.hidden_state == "penultimate" or (options.clip_skip > 1 and _skips_layers(encoder, options))


def _skips_layers(encoder: TextEncoder, options: TextOptions) -> bool:
    """Where A1111 1.10 applies CLIP skip: SD1's CLIP-L, and SDXL's CLIP-L with `sdxl_clip_l_skip`. SD2's OpenCLIP
    and SDXL's OpenCLIP-G always use their penultimate layer."""
    if encoder.slot.layout != "hf":
        return False
    return encoder.slot.hidden_state == "final" or options.sdxl_clip_l_skip


def _select_hidden(encoder: TextEncoder, output, options: TextOptions) -> torch.Tensor:
    """The hidden state the U-Net sees. SD1 with Clip skip N: the output N-1 layers before the last, then the final
    LayerNorm (A1111; diffusers' `clip_skip = N - 1`). SDXL's CLIP-L with `sdxl_clip_l_skip`: hidden_states[-N] as
    is (no LayerNorm, as A1111 does); otherwise the slot's own rule."""
    skip = options.clip_skip
    if encoder.slot.hidden_state == "final":
        if skip > 1 and _skips_layers(encoder, options):
            layer = output.hidden_states[-min(skip, len(output.hidden_states))]
            return final_layer_norm(encoder)(layer)
        return output.last_hidden_state
    if _skips_layers(encoder, options):
        return output.hidden_states[-min(skip, len(output.hidden_states))]
    return output.hidden_states[-2]


def _encode_windows(encoder: TextEncoder, windows: torch.Tensor, fixes: Sequence[EmbeddingFix] = (),
                    vectors: dict[str, torch.Tensor] | None = None, options: TextOptions = TextOptions()
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        output = encoder.model(input_ids=windows, output_hidden_states=_wants_hidden_states(encoder, options))
    finally:
        if handle is not None:
            handle.remove()
    hidden = _select_hidden(encoder, output, options)
    pooled = output.text_embeds if encoder.slot.pooled else None
    return hidden, pooled


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor, mode: str, counts: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """A1111's emphasis on one chunk position of a batch of texts, hidden [n, 77, D], weights [n, 77].

    "Original" scales each token's hidden state by its weight, then rescales the whole batch so its mean is what it
    was; "No norm" only scales; "Ignore" and "None" leave it. `counts` weighs each row in the mean: A1111 encodes a
    schedule's texts as one batch, repeats included, and we encode each distinct text once.
    """
    if mode in ("Ignore", "None") or bool((weights == 1).all()):
        return hidden  # (A1111 multiplies by 1 and by a mean ratio of 1: the same values)
    scaled = hidden * weights.to(hidden.dtype).unsqueeze(-1)
    if mode == "No norm":
        return scaled

    def mean(values: torch.Tensor) -> torch.Tensor:
        if counts is None:
            return values.mean()
        per_row = values.mean(dim=tuple(range(1, values.ndim)))
        return (per_row * counts.to(per_row.dtype)).sum() / counts.sum().to(per_row.dtype)

    return scaled * (mean(hidden) / mean(scaled))


def encode_training_windows(encoder: TextEncoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, 77] ids -> (hidden state the U-Net sees, pooled or None), with gradients: the trainers' text path, by the
    same slot rule as generation so that a trained LoRA sees at inference exactly what it saw in training."""
    return _encode_windows(encoder, ids)


def _empty_chunk(pad_id: int) -> TokenChunks:
    """The window A1111 gives a text that has fewer chunks than the others in its batch: an empty prompt's."""
    return tokenize_segments([Segment("")], pad_id)


@torch.inference_mode()
def encode_text_group(model: LoadedModel, texts: Sequence[str], options: TextOptions = TextOptions(),
                      embeddings: EmbeddingSet | None = None, zero_if_empty: bool = False) -> dict[str, Conditioning]:
    """Encode texts together, as A1111 encodes the texts of one prompt's schedule: chunk by chunk, each chunk
    position as one batch; emphasis "Original" restores the mean of that whole batch (repeats in `texts` count);
    a text with fewer chunks gets empty-prompt chunks, so every result has the same length. Returns
    {text: Conditioning [1, 77*k, D]} in the model's dtype.

    `zero_if_empty` gives SDXL's zeroed negative conditioning when every text is empty (A1111 and diffusers agree).
    `embeddings` are the textual-inversion embeddings that fit this model; their names in a prompt become their vectors.
    """
    unique = list(dict.fromkeys(texts))
    repeats = torch.tensor([texts.count(text) for text in unique], dtype=torch.float32)
    counts = None if bool((repeats == 1).all()) else repeats.to(model.device)
    matcher = embeddings.matcher if embeddings else None
    segments = [prompt_segments(text, options.emphasis) for text in unique]
    per_encoder: list[torch.Tensor] = []
    first_pooled: torch.Tensor | None = None
    for index, encoder in enumerate(model.text_encoders):
        chunked = [tokenize_segments(parts, encoder.slot.pad_token_id, matcher) for parts in segments]
        empty = _empty_chunk(encoder.slot.pad_token_id)
        outputs: list[torch.Tensor] = []
        for position in range(max(len(chunks.windows) for chunks in chunked)):
            rows = [chunks if position < len(chunks.windows) else empty for chunks in chunked]
            at = [position if position < len(chunks.windows) else 0 for chunks in chunked]
            ids = torch.tensor([row.windows[i] for row, i in zip(rows, at)], dtype=torch.long, device=model.device)
            weights = torch.tensor([row.window_weights()[i] for row, i in zip(rows, at)], device=model.device)
            fixes = [EmbeddingFix(row_index, fix.offset, fix.name)
                     for row_index, (row, i) in enumerate(zip(rows, at)) for fix in row.fixes if fix.window == i]
            vectors = {fix.name: embeddings.vectors(fix.name, index) for fix in fixes} if embeddings else None
            hidden, pooled = _encode_windows(encoder, ids, fixes, vectors, options)
            outputs.append(apply_emphasis(hidden, weights, options.emphasis, counts))
            if position == 0 and pooled is not None:
                first_pooled = pooled  # the first chunk's pooled output, as A1111 does
        per_encoder.append(torch.cat(outputs, dim=1))
    context = torch.cat(per_encoder, dim=-1)
    pooled = first_pooled
    if zero_if_empty and all(not text for text in unique):
        context = torch.zeros_like(context)
        pooled = torch.zeros_like(pooled) if pooled is not None else None
    return {
        text: Conditioning(context[row:row + 1].to(model.dtype),
                           pooled[row:row + 1].to(model.dtype) if pooled is not None else None)
        for row, text in enumerate(unique)
    }


def pad_to_length(cond: Conditioning, tokens: int) -> Conditioning:
    """Lengthen [B, T, D] to `tokens` by repeating the last token vector: how A1111 stacks conditionings of different
    lengths into one batch (`stack_conds`)."""
    missing = tokens - cond.context.shape[1]
    if missing <= 0:
        return cond
    extra = cond.context[:, -1:].repeat(1, missing, 1)
    return Conditioning(torch.cat([cond.context, extra], dim=1), cond.pooled)


def stack_conditionings(conds: Sequence[Conditioning]) -> Conditioning:
    """Rows of possibly different lengths as one batch, padded as A1111 pads them."""
    longest = max(cond.context.shape[1] for cond in conds)
    padded = [pad_to_length(cond, longest) for cond in conds]
    pooled = [cond.pooled for cond in padded]
    return Conditioning(
        torch.cat([cond.context for cond in padded]),
        torch.cat(pooled) if all(p is not None for p in pooled) else None,  # type: ignore[arg-type]
    )


@torch.inference_mode()
def encode_prompts(model: LoadedModel, prompts: list[str], zero_if_empty: bool = False,
                   embeddings: EmbeddingSet | None = None, options: TextOptions = TextOptions()) -> Conditioning:
    """Encode a batch of prompts (each one text, emphasis parsed; no prompt editing). Long prompts become several
    77-token windows, concatenated as in A1111; each distinct prompt is encoded once, on its own as A1111 does, and
    rows of different lengths are padded by repeating the last token vector.

    `zero_if_empty` gives SDXL's zeroed negative conditioning for an empty negative prompt (A1111 and diffusers agree).
    `embeddings` are the textual-inversion embeddings that fit this model; their names in a prompt become their vectors.
    """
    encoded = {prompt: encode_text_group(model, [prompt], options, embeddings, zero_if_empty)[prompt]
               for prompt in dict.fromkeys(prompts)}
    return stack_conditionings([encoded[prompt] for prompt in prompts])


def repeat_rows(cond: Conditioning, batch: int) -> Conditioning:
    """One prompt's [1, T, D] conditioning for every image of a batch."""
    return Conditioning(cond.context.repeat(batch, 1, 1),
                        cond.pooled.repeat(batch, 1) if cond.pooled is not None else None)


@dataclass
class ScheduledConditioning:
    """A prompt's conditioning over one sampling run (A1111's prompt editing, alternation and AND): its parts, each
    a weight and a schedule [(end_at_step, Conditioning [B, T, D])]. Steps count model calls from 0, as A1111's
    CFG denoiser does (`prompt_parser.text_at`)."""

    parts: list[tuple[float, list[tuple[int, Conditioning]]]]

    def at(self, call: int) -> list[tuple[Conditioning, float]]:
        """Each part's conditioning at model call `call` (0-based), with its weight."""
        chosen = []
        for weight, schedule in self.parts:
            index = text_at([(end, "") for end, _ in schedule], call)
            chosen.append((schedule[index][1], weight))
        return chosen

    @property
    def first(self) -> Conditioning:
        """The first part's conditioning at the first call (what code that knows no schedules sees)."""
        return self.parts[0][1][0][1]

    @property
    def is_plain(self) -> bool:
        """One part of weight 1 that never changes: ordinary CFG with fixed conditioning."""
        return len(self.parts) == 1 and self.parts[0][0] == 1.0 and len(self.parts[0][1]) == 1


def encode_plan(model: LoadedModel, plan: PromptPlan, batch: int, options: TextOptions = TextOptions(),
                embeddings: EmbeddingSet | None = None, zero_if_empty: bool = False,
                cache: dict | None = None) -> ScheduledConditioning:
    """Encode a parsed prompt (`prompt_parser.plan_prompt`) for a batch. Each part's schedule texts are encoded
    together, once (A1111 encodes a prompt's schedule as one batch, so emphasis "Original" shares its mean); `cache`
    lets the negative prompt and the AND parts reuse what was already encoded for this batch."""
    cache = {} if cache is None else cache
    parts: list[tuple[float, list[tuple[int, Conditioning]]]] = []
    for weight, schedule in plan.parts:
        texts = tuple(text for _, text in schedule)
        key = (texts, zero_if_empty)
        if key not in cache:
            cache[key] = encode_text_group(model, list(texts), options, embeddings, zero_if_empty)
        rows = {text: repeat_rows(cond, batch) for text, cond in cache[key].items()}
        parts.append((weight, [(end, rows[text]) for end, text in schedule]))
    return ScheduledConditioning(parts)
