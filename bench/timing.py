"""Interleaved timing shared by the benchmarks: every round runs each candidate once, in a shuffled order, so machine
noise (caches, allocator state, other processes) hits all of them alike; the report is medians and ratios."""

from __future__ import annotations

import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_model() -> str:
    """The CPU's name and its widest vector unit: the CPU speed-ups depend on both (docs/performance.md)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    vector = next((unit for unit in ("avx512f", "avx2", "avx") if unit in flags), "none")
    return f"{name}, {vector}"


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(runs: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """One warm-up call each, then `rounds` shuffled rounds; prints every round's times; returns median seconds."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    order_rng = random.Random(0)
    for _ in range(rounds):
        order = list(runs.items())
        order_rng.shuffle(order)  # no run always follows the same one
        for name, fn in order:
            sync_device(device)
            start = time.perf_counter()
            fn()
            sync_device(device)
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"  {name:9s} rounds: " + " ".join(f"{v * 1000:.0f}" for v in values))
    return {name: statistics.median(values) for name, values in times.items()}


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def report(medians: dict[str, float], reference: str = "diffusers") -> dict[str, float]:
    """Print each median and each candidate's ratio to the reference run; returns the ratios."""
    for name, value in medians.items():
        print(f"  {name:9s} {value * 1000:9.1f} ms")
    ratios = {f"{name}/{reference}": medians[name] / medians[reference] for name in medians if name != reference}
    for label, ratio in ratios.items():
        print(f"  ratio {label:20s} = {ratio:.3f}")
    return ratios
