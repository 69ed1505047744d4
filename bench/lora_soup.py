"""Average kohya LoRA files exactly into one ("soup"), with their learned trigger words (docs/lora-training.md).

The exact mean at the sum of the files' ranks (`webui/training/lora_average.py`, which the training tab's *Runs to
average* uses too). The `<file>.embedding.safetensors` beside each file (bench/lora_concept.py --keep), if all have
one, is averaged too.

    python bench/lora_soup.py --out soup.safetensors a.safetensors b.safetensors
    python bench/lora_concept.py --lora soup.safetensors --out soup.json

`bench/lora_concept.py --soup 2` trains the files and soups them in one command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from webui.training.lora_average import average_loras, average_tensors, averaged_metadata  # noqa: E402


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
    save_file(average_loras([load_file(str(path)) for path in loras]), str(out),
              metadata=averaged_metadata(metadata, len(loras)))
    if not embeddings or not all(path is not None and path.exists() for path in embeddings):
        return None
    mean = average_tensors([load_file(str(path)) for path in embeddings])
    embedding = out.with_suffix(".embedding.safetensors")
    save_file(mean, str(embedding))
    return embedding


if __name__ == "__main__":
    raise SystemExit(main())
