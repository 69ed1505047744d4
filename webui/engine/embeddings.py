"""Textual-inversion embeddings: files as A1111 reads them, and which of them fit a loaded model.

An embedding is used by writing its file stem in the prompt. The tokenizer swaps the name's tokens for placeholder
ids, one per vector (`tokenizer.EmbeddingMatcher`), and `conditioning` puts the vectors in at those places after the
token-embedding lookup, as A1111's `EmbeddingsWithFixes` does. diffusers' `load_textual_inversion` instead adds tokens
to a pipeline's tokenizer; our tokenizer is open_clip's fixed vocabulary, so the vectors go in beside it.

Formats: A1111/SD-scripts `.pt` (`string_to_param`), `.safetensors` with one tensor (`emb_params`) or SDXL's
`clip_l` + `clip_g`, and diffusers' `learned_embeds.bin` (`{token: vector}`). Pickle files are read with
`weights_only=True` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint_io import CheckpointReadError, read_checkpoint
from .loader import LoadedModel
from .tokenizer import EmbeddingMatcher

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
SDXL_KEYS = ("clip_l", "clip_g")  # vectors for SDXL's first and second text encoder


class EmbeddingError(ValueError):
    """An embedding file that cannot be read; the message names it."""


@dataclass(frozen=True)
class Embedding:
    """One embedding: its name (the file stem) and its vectors, [n, width] per text encoder slot."""

    name: str
    path: Path
    vectors: Mapping[str, torch.Tensor]  # {"": [n, w]} for one encoder; {"clip_l": ..., "clip_g": ...} for SDXL

    @property
    def vector_count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def for_encoder(self, index: int, encoder_count: int) -> torch.Tensor | None:
        if encoder_count == 1:
            return self.vectors.get("")  # an SDXL embedding (clip_l + clip_g) is skipped on SD 1.x/2.x, as in A1111
        if encoder_count == 2 and index < 2:
            return self.vectors.get(SDXL_KEYS[index])
        return None

    def fits(self, model: LoadedModel) -> bool:
        """Every text encoder of `model` gets vectors of its width, the same number for each."""
        count = len(model.text_encoders)
        for index, encoder in enumerate(model.text_encoders):
            vectors = self.for_encoder(index, count)
            if vectors is None or vectors.shape[-1] != encoder.model.config.hidden_size:
                return False
        return len({int(v.shape[0]) for v in self.vectors.values()}) == 1


def _as_matrix(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 2 or not tensor.is_floating_point() or tensor.shape[0] < 1:
        raise EmbeddingError(f"embedding {name!r}: expected [vectors, width] floats, got {tuple(tensor.shape)}")
    return tensor.detach().to(torch.float32)


def read_embedding(path: Path) -> Embedding:
    """Read one embedding file; unknown layouts and unsafe pickles are refused with the file's name."""
    path = Path(path)
    name = path.stem
    try:
        if path.suffix.lower() == ".safetensors":
            data: object = read_checkpoint(path).state_dict
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except (CheckpointReadError, RuntimeError, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EmbeddingError(f"embedding {name!r}: could not be read safely ({first})") from exc
    except Exception as exc:  # pickle.UnpicklingError for forbidden globals
        raise EmbeddingError(f"embedding {name!r}: refused, it holds more than tensors ({type(exc).__name__})") \
            from exc
    if not isinstance(data, Mapping):
        raise EmbeddingError(f"embedding {name!r}: not a dictionary of tensors")
    if all(key in data for key in SDXL_KEYS):
        vectors = {key: _as_matrix(data[key], name) for key in SDXL_KEYS}
    elif isinstance(data.get("string_to_param"), Mapping) and data["string_to_param"]:
        vectors = {"": _as_matrix(next(iter(data["string_to_param"].values())), name)}
    else:
        tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1:
            raise EmbeddingError(f"embedding {name!r}: expected one tensor (or clip_l and clip_g), found "
                                 f"{len(tensors)}; is this a textual-inversion embedding?")
        vectors = {"": _as_matrix(tensors[0], name)}
    return Embedding(name=name, path=path, vectors=vectors)


class EmbeddingSet:
    """The embeddings that fit one model, ready for the tokenizer and the text encoders."""

    def __init__(self, embeddings: Mapping[str, Embedding], encoder_count: int) -> None:
        self.embeddings = dict(embeddings)
        self.encoder_count = encoder_count
        self.matcher = EmbeddingMatcher({name: e.vector_count for name, e in self.embeddings.items()})

    def vectors(self, name: str, encoder_index: int) -> torch.Tensor:
        vectors = self.embeddings[name].for_encoder(encoder_index, self.encoder_count)
        assert vectors is not None  # only embeddings that fit are in the set
        return vectors

    def __bool__(self) -> bool:
        return bool(self.embeddings)


def embedding_set_for(model: LoadedModel, embeddings: Mapping[str, Embedding]) -> tuple[EmbeddingSet, list[str]]:
    """Split embeddings into those that fit `model` and the names of those skipped (A1111 lists them as skipped)."""
    fitting = {name: e for name, e in embeddings.items() if e.fits(model)}
    skipped = sorted(name for name in embeddings if name not in fitting)
    return EmbeddingSet(fitting, len(model.text_encoders)), skipped
