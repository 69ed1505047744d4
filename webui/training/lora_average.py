"""Average LoRA runs exactly into one file (a "soup"): several runs of the same setting on different seeds.

Each run's delta is (alpha / rank) x up @ down. Stacking the runs' down matrices (rows) and up matrices (columns),
each up scaled by its alpha / rank / n, and setting alpha to the total rank gives one ordinary kohya file whose delta
is exactly the mean of theirs, at the sum of their ranks. A merge back down to one run's rank (by SVD) would only
approximate it. Written by hand: kohya's `merge_lora.py` and diffusers' adapter weighting merge into a model or
re-factorise; neither writes the exact mean as a LoRA file.

Why average at all (docs/lora-training.md): two runs of one setting share little of their change (a cosine of 0.27
between their deltas on the shipped model) but all of what they learned; the mean keeps the shared part and halves
each run's own noise.
"""

from __future__ import annotations

import json

import torch

DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


def average_loras(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One kohya state dict whose every module's delta is the mean of `states`' deltas."""
    count = len(states)
    unknown = sorted({key for state in states for key in state if not key.endswith((DOWN, UP, ALPHA))})
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
        ups = [state[module + UP].float() * (float(state.get(module + ALPHA, rank)) / rank / count)
               for state, rank in zip(states, ranks)]
        dtype = states[0][key].dtype
        merged[module + DOWN] = torch.cat(downs, 0).to(dtype)
        merged[module + UP] = torch.cat(ups, 1).to(dtype)
        merged[module + ALPHA] = torch.tensor(float(sum(ranks)), dtype=dtype)
    return merged


def average_tensors(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The plain mean of same-keyed tensors (the runs' learned trigger-word vectors)."""
    return {key: (sum(state[key].float() for state in states) / len(states)).to(states[0][key].dtype)
            for key in states[0]}


def averaged_metadata(metadata: dict[str, str], runs: int, seeds: list[int] | None = None) -> dict[str, str]:
    """The first run's kohya metadata, with the network's shape as the averaged file has it: every rank and alpha
    `runs` times as large (so alpha / rank is 1; the up matrices carry each run's scale)."""
    if runs <= 1:
        return metadata
    out = dict(metadata)
    if "ss_network_dim" in out:
        dim = int(out["ss_network_dim"]) * runs
        out["ss_network_dim"] = out["ss_network_alpha"] = str(dim)
    args = json.loads(out.get("ss_network_args") or "{}")
    if "conv_dim" in args:
        conv = int(args["conv_dim"]) * runs
        args.update(conv_dim=str(conv), conv_alpha=str(conv))
        out["ss_network_args"] = json.dumps(args)
    out["latent_studio.average_of_runs"] = str(runs)
    if seeds:
        out["latent_studio.run_seeds"] = json.dumps(seeds)
    return out
