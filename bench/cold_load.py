"""Benchmark: loading a full-size checkpoint tensor by tensor, memory-mapped (before), or in one read, packed.

    .venv/bin/python bench/cold_load.py [--family sd1] [--dtype fp16] [--rounds 3] [--device cpu]

Writes a random-weight checkpoint in the real single-file layout (SD 1.5-sized by default, fp16 like most shared
files) into a scratch folder, then times one load per fresh process (after its imports, so that only the load is
timed and the allocator starts empty, as in the app), each round in a shuffled order:
- "mmap, tensor by tensor (before)": `safetensors.load_file` (a private memory map, pages faulted in as the loader
  touches them), `build_model` converting to fp32, then `LoadedModel.to` (one copy per tensor);
- "mmap, packed (today)": `read_checkpoint` (the same memory map), then the model manager's path: views of the file,
  packed and converted into one buffer per module (`weight_packing`), which moves to a device in one copy;
- "single read, packed": the file read front to back in one pass into one buffer (`read_whole_file` below; no page
  faults on the file per tensor), then the same packing. Tried for the model manager and not kept: on this machine
  it is the slowest of the three, cold or warm (the extra copy of the whole file costs more than the sequential read
  saves); kept here to be measured again on other hardware.
- each "cold" (the page cache dropped first; needs root) and "warm" (the file cached).
The weights of every variant are checked equal to the first's. Writes bench/results/cold_load-<family>-<device>.json.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.timing import sync_device  # noqa: E402
from webui.engine.checkpoint_io import RawCheckpoint, read_checkpoint, read_safetensors_header  # noqa: E402
from webui.engine.export import save_checkpoint  # noqa: E402
from webui.engine.loader import LoadedModel, build_model  # noqa: E402
from webui.engine.synthetic import build_synthetic_model  # noqa: E402
from webui.services.hashing import HashCache  # noqa: E402
from webui.services.model_manager import ModelManager  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def drop_page_cache() -> bool:
    """Evict the file from the page cache, so the next read comes from the disk; False where not permitted."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _packed(manager: ModelManager, path: Path, raw: RawCheckpoint) -> LoadedModel:
    model = build_model(raw, dtype=None, name=path.stem)
    return manager._place(model)


def load(variant: str, path: Path, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """One way of loading `path` onto `device` as `dtype` (see the module docstring)."""
    manager = ModelManager(path.parent, path.parent / "VAE", HashCache(path.parent / "hashes.json"), device, dtype,
                           ram_cache_size=0)
    if variant == "mmap, tensor by tensor (before)":
        _, metadata = read_safetensors_header(path)
        raw = RawCheckpoint(path=path, state_dict=load_file(str(path), device="cpu"), metadata=metadata)
        return build_model(raw, dtype=torch.float32).to(device, dtype)
    if variant == "mmap, packed (today)":
        return _packed(manager, path, read_checkpoint(path))
    if variant == "single read, packed":
        header, metadata = read_safetensors_header(path)  # checks every offset against the file's size
        data = read_whole_file(path, path.stat().st_size)
        base = 8 + int(data[:8].numpy().view("<u8")[0])
        state = {key: data[base + info["data_offsets"][0]:base + info["data_offsets"][1]].view(
            SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"]) for key, info in header.items()}
        return _packed(manager, path, RawCheckpoint(path=path, state_dict=state, metadata=metadata))
    raise ValueError(variant)


VARIANTS = ["mmap, tensor by tensor (before)", "mmap, packed (today)", "single read, packed"]
SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "I64": torch.int64}


def read_whole_file(path: Path, size: int) -> torch.Tensor:
    """The file's bytes in one uint8 tensor, read front to back in 64 MiB chunks (aligned offsets assumed: the
    official writer pads the header and sorts tensors by alignment)."""
    data = torch.empty(size, dtype=torch.uint8)
    view = memoryview(data.numpy())
    with path.open("rb", buffering=0) as handle:
        done = 0
        while done < size:
            done += handle.readinto(view[done:done + 64 * 2**20])
    return data


def trial(variant: str, path: Path, device: torch.device, dtype: torch.dtype, cold: bool) -> float:
    """In this (fresh) process, after its imports: drop the page cache if `cold`, then time one load."""
    if cold and not drop_page_cache():
        raise SystemExit("cannot drop the page cache (run as root)")
    sync_device(device)
    start = time.perf_counter()
    load(variant, path, device, dtype)
    sync_device(device)
    return time.perf_counter() - start


def _fingerprint(model: LoadedModel) -> list[torch.Tensor]:
    return [tensor for module in model.modules() for tensor in module.state_dict().values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd1", choices=["sd1", "sd2", "sdxl"])
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES), help="of the file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--trial", help=argparse.SUPPRESS)  # internal: one timed load in this process
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    compute = torch.float16 if device.type == "cuda" else torch.float32
    if args.trial:
        print(json.dumps({"seconds": trial(args.trial, args.file, device, compute, args.cold)}))
        return
    folder = Path(tempfile.mkdtemp(prefix="cold-load-"))
    path = folder / f"random-{args.family}.safetensors"
    started = time.perf_counter()
    save_checkpoint(path, build_synthetic_model(args.family, size="real", seed=0).state_dict(DTYPES[args.dtype]))
    print(f"wrote {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - started:.0f} s", flush=True)
    reference = _fingerprint(load(VARIANTS[0], path, device, compute))
    same = {variant: all(torch.equal(a, b)
                         for a, b in zip(reference, _fingerprint(load(variant, path, device, compute))))
            for variant in VARIANTS[1:]}
    del reference
    can_drop = drop_page_cache()
    states = ["cold", "warm"] if can_drop else ["warm"]
    times: dict[str, list[float]] = {f"{variant} | {state}": [] for variant in VARIANTS for state in states}
    order = random.Random(0)
    for round_index in range(args.rounds):
        trials = list(times)
        order.shuffle(trials)
        for name in trials:
            variant, state = name.split(" | ")
            if state == "warm":
                path.read_bytes()  # make sure the file is in the page cache
            command = [sys.executable, __file__, "--trial", variant, "--file", str(path), "--device", str(device)]
            output = subprocess.run(command + (["--cold"] if state == "cold" else []), check=True,
                                    capture_output=True, text=True).stdout
            times[name].append(json.loads(output.strip().splitlines()[-1])["seconds"])
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    result = {
        "what": f"load a random-weight {args.family} checkpoint ({args.dtype} file) onto {device} as {compute}, "
                "each load in a fresh process after its imports",
        "file_gib": round(path.stat().st_size / 2**30, 3),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "page_cache_dropped_for_cold": can_drop,
        "weights_equal_to_before": same,
        "median_s": medians,
        "rounds": args.rounds,
    }
    print(json.dumps(result, indent=1))
    out = args.out or ROOT / "bench" / "results" / f"cold_load-{args.family}-{device.type}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    path.unlink()


if __name__ == "__main__":
    main()
