"""Take out of a trained LoRA what it does to the old words' layer inputs, keeping what it does to the new word's
(a trial for docs/lora-training.md, #14 part 6).

For each patched layer, with the LoRA applied, the sampler's own inputs to that layer are collected while the model
draws the training captions (the new word, C_new = E[x x^T]) and the regularisation captions (old words, C_old).
Then each layer's delta D is replaced by the least-squares compromise

    D' = argmin ||(D' - D) X_new||^2 + lam ||D' X_old||^2 = D C_new (C_new + lam C_old)^-1,

the closed form that model-editing methods (MEMIT, AlphaEdit) use to change a layer's answer for some keys while
holding it for others. For a LoRA D = up @ down, so D' = up @ (down M) with M = C_new (C_new + lam C_old)^-1: the
result is an ordinary kohya file of the same rank. No training prompt is a held-out prompt of the benchmark.

    python bench/lora_project.py --lora KEPT.safetensors --lam 0.5 --lam 2 --out-dir scratch/proj
    python bench/lora_concept.py --lora scratch/proj/lam0.5.safetensors --out scratch/proj0.5.json

`--rotate SEED` writes the control instead (no collection): each layer's down matrix turned by a random rotation of
its inputs, so the same singular values (a change as large as the learned one) read from directions unrelated to the
data; `--rotate-sides up` turns the up matrices' outputs instead (where the change is written), `both` both.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from lora_concept import DEFAULT_MODEL, regularization_scenes  # noqa: E402
from webui.engine.embeddings import embedding_set_for, read_embedding  # noqa: E402
from webui.engine.loader import load_checkpoint  # noqa: E402
from webui.engine.lora import LoraFile, lora_patches, read_lora, target_table  # noqa: E402
from webui.engine.patching import patched  # noqa: E402
from webui.evaluation.adherence import generate_and_score  # noqa: E402
from webui.shapes import CONCEPT_SEED, concept_scenes  # noqa: E402

DOWN = ".lora_down.weight"
UP = ".lora_up.weight"
COLLECTION_SEED = 700_000


class InputMoments:
    """Accumulates E[x x^T] of each watched layer's input, x as the layer's weight sees it (a conv's unfolded patch)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.handles = [module.register_forward_pre_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str):
        def hook(module: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().float()
            if isinstance(module, torch.nn.Conv2d):
                x = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                             stride=module.stride)  # (B, C*k*k, L), ordered as weight.flatten(1)
                x = x.transpose(1, 2).reshape(-1, x.shape[1])
            else:
                x = x.reshape(-1, x.shape[-1])
            gram = x.T @ x
            self.sums[name] = self.sums.get(name, 0) + gram
            self.rows[name] = self.rows.get(name, 0) + x.shape[0]
        return hook

    def close(self) -> dict[str, torch.Tensor]:
        for handle in self.handles:
            handle.remove()
        return {name: total / self.rows[name] for name, total in self.sums.items()}


def collect(model, lora: LoraFile, embeddings, scenes: list, cfg: float) -> tuple[dict[str, torch.Tensor], dict]:
    """Each of the LoRA's layers' input moments while the app's sampler draws `scenes` with the LoRA applied."""
    table = target_table(model)
    modules = {name: table[name].module for name in lora.layers}
    with patched(lora_patches(lora, model, 1.0, 1.0, table)):
        moments = InputMoments(modules)
        try:
            scores = generate_and_score(model, scenes, cfg=cfg, seed_base=COLLECTION_SEED, embeddings=embeddings)
        finally:
            result = moments.close()
    return result, scores


def _downs_times(state: dict[str, torch.Tensor], matrix_for) -> dict[str, torch.Tensor]:
    """`state` with every down matrix (flattened over its inputs) multiplied on the right by `matrix_for(layer,
    width)`: the up matrices, alphas and so the file's rank stay as they are."""
    out = dict(state)
    for key, down in state.items():
        if key.endswith(DOWN):
            matrix = matrix_for(key[: -len(DOWN)], down[0].numel())
            out[key] = (down.flatten(1).double() @ matrix).reshape(down.shape).to(down.dtype)
    return out


def projected(state: dict[str, torch.Tensor], c_new: dict, c_old: dict, lam: float,
              ridge: float = 1e-4) -> dict[str, torch.Tensor]:
    """Each delta D replaced by D C_new (C_new + lam C_old)^-1 (a small ridge keeps the solve well posed)."""
    def projection(layer: str, width: int) -> torch.Tensor:
        new, old = c_new[layer].double(), c_old[layer].double()
        scale = torch.trace(new) / width
        denominator = new + lam * old + ridge * scale * torch.eye(width, dtype=new.dtype)
        return torch.linalg.solve(denominator.T, new.T).T  # M = C_new (C_new + lam C_old)^-1, solved, not inverted
    return _downs_times(state, projection)


def rotated(state: dict[str, torch.Tensor], seed: int, sides: str = "down") -> dict[str, torch.Tensor]:
    """Each down matrix times a random orthogonal matrix of its inputs (`sides` "down"), each up matrix turned by one
    of its outputs ("up"), or both: up @ down keeps its singular values either way. The rotations are QR factors of
    Gaussian matrices, drawn in the file's key order from one generator."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key, weight in state.items():
        turn_down = key.endswith(DOWN) and sides in ("down", "both")
        if not (turn_down or key.endswith(UP) and sides in ("up", "both")):
            continue
        flat = weight.flatten(1).double()
        turned = flat @ _rotation(flat.shape[1], g) if turn_down else _rotation(flat.shape[0], g) @ flat
        out[key] = turned.reshape(weight.shape).to(weight.dtype)
    return out


def _rotation(width: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora", type=Path, required=True)
    parser.add_argument("--base", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--concept", default="rectangle")
    parser.add_argument("--lam", type=float, action="append", default=[])
    parser.add_argument("--rotate", type=int, help="write the random-rotation control with this seed instead")
    parser.add_argument("--rotate-sides", choices=("down", "up", "both"), default="down",
                        help="which side of each layer the control turns: its inputs (down), outputs (up) or both")
    parser.add_argument("--old", type=int, default=120, help="regularisation captions drawn for C_old")
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    embedding_path = args.lora.with_suffix(".embedding.safetensors")
    state = load_file(str(args.lora))
    with safe_open(str(args.lora), "pt") as handle:
        metadata = handle.metadata() or {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.rotate is not None:
        suffix = "" if args.rotate_sides == "down" else f"-{args.rotate_sides}"
        out = args.out_dir / f"rotated{args.rotate}{suffix}.safetensors"
        _write(rotated(state, args.rotate, args.rotate_sides), metadata, embedding_path, out)
        return 0
    if not args.lam:
        parser.error("give --lam (one or more) or --rotate")

    model = load_checkpoint(args.base)
    embeddings = None
    if embedding_path.exists():
        embeddings = embedding_set_for(model, {args.concept: read_embedding(embedding_path)})[0]
    lora = read_lora(args.lora)
    c_new, new_scores = collect(model, lora, embeddings, concept_scenes(30, args.concept, CONCEPT_SEED), args.cfg)
    c_old, old_scores = collect(model, lora, embeddings, regularization_scenes(args.old), args.cfg)
    print(f"collection prompts: new {new_scores['shape_colour']:.3f}, old {old_scores['shape_colour']:.3f}")
    torch.save({"new": c_new, "old": c_old}, args.out_dir / "moments.pt")
    for lam in args.lam:
        _write(projected(state, c_new, c_old, lam), metadata, embedding_path, args.out_dir / f"lam{lam:g}.safetensors")
    return 0


def _write(state: dict[str, torch.Tensor], metadata: dict, embedding_path: Path, out: Path) -> None:
    """The file, and the learned word beside it as bench/lora_concept.py --lora expects."""
    save_file(state, str(out), metadata=metadata)
    if embedding_path.exists():
        shutil.copyfile(embedding_path, out.with_suffix(".embedding.safetensors"))
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
