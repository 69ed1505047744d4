"""Device check: the "NV" noise source equals torch's CUDA randn, and "GPU" is the CUDA generator itself.

    .venv/bin/python bench/gpu_rng_check.py            # needs an NVIDIA GPU; exits 1 on a mismatch, 2 without CUDA

NV computes NVIDIA's Philox4x32-10 + Box-Muller on the CPU (webui/engine/rng.py), so that an infotext made with
`RNG: GPU` on an NVIDIA card reproduces on any machine. On the CPU the tests check it against randomgen's Philox and
the seed-0 values torch's CUDA randn is known to give; this script checks it against the real thing, for SD1 and SDXL
latent shapes and seeds past 2**32. The same check runs as tests/test_rng_sources.py::test_nv_equals_cuda_randn_on_a_gpu
when the suite itself runs on a CUDA machine. Prints one line per case and the largest difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webui.engine.rng import ImageRNG  # noqa: E402

CASES = [(0, (3, 4)), (12345, (4, 64, 64)), (3_000_000_000, (4, 128, 128)), (2**40 + 7, (4, 96, 64))]
TOLERANCE = 1e-5  # float rounding of sin/log between cuRAND's float maths and the float64 emulation


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    worst = 0.0
    for seed, shape in CASES:
        generator = torch.Generator("cuda").manual_seed(seed)
        cuda = torch.randn(shape, generator=generator, device="cuda").cpu()
        nv = ImageRNG(shape[-3:] if len(shape) == 3 else (1, *shape), [seed], source="NV").first()[0].reshape(shape)
        gpu = ImageRNG((1, *shape[-2:]) if len(shape) == 2 else shape, [seed], source="GPU",
                       device=torch.device("cuda")).first()[0].cpu().reshape(shape)
        difference = (nv - cuda).abs().max().item()
        worst = max(worst, difference)
        print(f"seed {seed} shape {shape}: NV vs CUDA max |diff| {difference:.2e}; GPU source identical: "
              f"{torch.equal(gpu, cuda)}")
        if difference > TOLERANCE or not torch.equal(gpu, cuda):
            print("MISMATCH")
            return 1
    print(f"ok: NV reproduces torch CUDA randn (worst {worst:.2e}, tolerance {TOLERANCE:.0e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
