"""Pivotal tuning: the trigger word learned as a textual-inversion embedding next to the LoRA.

Why: a word the base model never saw has an untrained token embedding (on the shipped model its norm is a fifth of a
trained word's). A LoRA on the text encoder can only reach such a word by changing layers every other word also goes
through, so it either learns the word slowly or changes old prompts. Learning the word's own vectors (as diffusers'
advanced DreamBooth-LoRA script and kohya's pivotal tuning do) gives it a distinct meaning and leaves every other
prompt as it was.

The vectors replace the trigger's tokens after the token-embedding lookup, one vector per token, exactly where the
app's embedding support (`engine.embeddings`) puts an embedding named like the trigger at generation time. The file is
A1111's textual-inversion layout (`emb_params`, or `clip_l` + `clip_g` for SDXL), written to `models/embeddings/`
under the trigger's name, so A1111, Forge, ComfyUI and diffusers' `load_textual_inversion` use it too; the LoRA file
itself stays plain kohya (diffusers refuses a kohya file with extra `bundle_emb.*` keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from webui.engine.conditioning import token_embedding
from webui.engine.embeddings import SDXL_KEYS
from webui.engine.loader import LoadedModel
from webui.engine.tokenizer import encode_text

OWNER_KEY = "latent_studio_lora"  # metadata naming the LoRA run that wrote an embedding (so a rerun may replace it)


class TriggerEmbedding(torch.nn.Module):
    """Learnable vectors for the trigger's tokens, one row per token, per text encoder."""

    def __init__(self, model: LoadedModel, trigger: str, captions: Sequence[str]) -> None:
        super().__init__()
        self.trigger = trigger
        self.token_ids = tuple(encode_text(trigger))
        if not self.token_ids:
            raise ValueError(f"trigger word {trigger!r} has no tokens")
        self.vectors = torch.nn.ParameterList()
        known = sorted({token for caption in captions for token in encode_text(caption)} - set(self.token_ids))
        for encoder in model.text_encoders:
            table = token_embedding(encoder).weight.detach().float()
            start = table[list(self.token_ids)].clone()
            # Start from the word's own vectors, scaled to the typical norm of the other words in the captions (words
            # the model knows): an untrained word starts near zero and would barely move the encoder.
            target = table[known].norm(dim=-1).median() if known else table.norm(dim=-1).median()
            start = start / start.norm(dim=-1, keepdim=True).clamp_min(1e-8) * target
            self.vectors.append(torch.nn.Parameter(start.to(table.device)))

    @contextlib.contextmanager
    def installed(self, model: LoadedModel) -> Iterator[None]:
        """While inside, every text-encoder pass (training, sample images) sees the learned vectors at the trigger."""
        handles = [token_embedding(encoder).register_forward_hook(self._hook(index))
                   for index, encoder in enumerate(model.text_encoders)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int):
        count = len(self.token_ids)

        def put_vectors(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            ids = inputs[0]
            if ids.shape[-1] < count:
                return output
            wanted = torch.tensor(self.token_ids, device=ids.device)
            found = (ids.unfold(-1, count, 1) == wanted).all(-1).nonzero().tolist()
            if not found:
                # A batch without the word (regularisation images) still touches the vectors, with zero weight, so
                # data-parallel training (accelerate launch) finds a gradient for every parameter on every rank.
                return output + 0.0 * self.vectors[index].sum() if torch.is_grad_enabled() else output
            output = output.clone()
            rows = self.vectors[index].to(output.dtype)
            for row, position in found:
                output[row, position:position + count] = rows
            return output

        return put_vectors

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """A1111's textual-inversion layout: `emb_params` for one text encoder, `clip_l` + `clip_g` for SDXL."""
        vectors = [v.detach().float().cpu().contiguous() for v in self.vectors]
        if len(vectors) == 1:
            return {"emb_params": vectors[0]}
        return dict(zip(SDXL_KEYS, vectors))

    def state(self) -> list[torch.Tensor]:
        return [v.detach().cpu().clone() for v in self.vectors]

    def load_state(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.vectors, saved):
                parameter.copy_(value)


def embedding_owner(path: Path) -> str | None:
    """The LoRA run that wrote the embedding at `path` (None: another source, or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get(OWNER_KEY)
    except Exception:  # not ours to judge here: a file we cannot read is simply not ours
        return None


def save_embedding(path: Path, embedding: TriggerEmbedding, lora_name: str) -> Path:
    """Atomic write, as for the LoRA file."""
    return save_embedding_tensors(path, embedding.file_tensors(), embedding.trigger, lora_name)


def save_embedding_tensors(path: Path, tensors: dict[str, torch.Tensor], trigger: str, lora_name: str) -> Path:
    """Atomic write of an embedding file's tensors, marked as made by the LoRA run `lora_name`."""
    from .lora_network import save_safetensors_atomically

    return save_safetensors_atomically(path, tensors, {OWNER_KEY: lora_name, "trigger": trigger})
