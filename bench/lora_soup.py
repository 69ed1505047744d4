"""Average kohya LoRA files exactly into one ("soup"), with their learned trigger words (docs/lora-training.md).

Each file's delta is (alpha / rank) x up @ down. Stacking the files' down matrices (rows) and up matrices (columns),
each up scaled by its alpha / rank / n, and setting alpha to the total rank gives one ordinary kohya file whose delta is
exactly the mean of theirs, at the sum of their ranks (a merge down to a lower rank, by SVD, would only approximate
it). The `<file>.embedding.safetensors` beside each file (bench/lora_concept.py --keep), if all have one, is averaged
too.

    python bench/lora_soup.py --out soup.safetensors a.safetensors b.safetensors
    python bench/lora_concept.py --lora soup.safetensors --out soup.json

`bench/lora_concept.py --soup 2` trains the files and soups them in one command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DOWN, UP = ".lora_down.weight", ".lora_up.weight"


def average_loras(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One kohya state dict whose every module's delta is the mean of `states`' deltas."""
    count = len(states)
    unknown = sorted({key for state in states for key in state if not key.endswith((DOWN, UP, ".alpha"))})
    if unknown:
        raise ValueError(f"only plain LoRA/LoCon files average exactly; these keys do not: {unknown[:3]}")
    merged: dict[str, torch.Tensor] = {}
    for key in states[0]:
        if not key.endswith(DOWN):
            continue
        module = key[: -len(DOWN)]
        if any(module + DOWN not in state for state in states):
            raise ValueError(f"{module} is not in every file: only LoRAs of the same modules can be averaged")
        downs = [state[module + DOWN].float() for state in states]
        ranks = [down.shape[0] for down in downs]
        ups = [state[module + UP].float() * (float(state.get(module + ".alpha", rank)) / rank / count)
               for state, rank in zip(states, ranks)]
        dtype = states[0][key].dtype
        merged[module + DOWN] = torch.cat(downs, 0).to(dtype)
        merged[module + UP] = torch.cat(ups, 1).to(dtype)
        merged[module + ".alpha"] = torch.tensor(float(sum(ranks)), dtype=dtype)
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("loras", type=Path, nargs="+")
    args = parser.parse_args()
    soup_files(args.loras, args.out, [path.with_suffix(".embedding.safetensors") for path in args.loras])
    print(f"wrote {args.out}: the mean of {len(args.loras)} LoRAs")
    return 0


def soup_files(loras: list[Path], out: Path, embeddings: list[Path | None]) -> Path | None:
    """Write the soup of `loras` to `out` (the first file's metadata kept) and, when every LoRA has a learned word
    (`embeddings`), their mean beside it as `<out>.embedding.safetensors`; returns that embedding's path or None."""
    with safe_open(str(loras[0]), "pt") as handle:
        metadata = handle.metadata() or {}
    save_file(average_loras([load_file(str(path)) for path in loras]), str(out), metadata=metadata)
    if not embeddings or not all(path is not None and path.exists() for path in embeddings):
        return None
    vectors = [load_file(str(path)) for path in embeddings]
    mean = {key: (sum(v[key].float() for v in vectors) / len(vectors)).to(vectors[0][key].dtype) for key in vectors[0]}
    embedding = out.with_suffix(".embedding.safetensors")
    save_file(mean, str(embedding))
    return embedding


if __name__ == "__main__":
    raise SystemExit(main())
