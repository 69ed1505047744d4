"""Training smoke tests: both stages for a few steps on tiny configs (loss goes down), resume, export, load."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from webui.training import train_ae, train_ldm
from webui.training.diffusion_loss import epsilon_loss_weights
from webui.commands.training import run_train_ae
from webui.shapes import COLOURS, POSITIONS, SHAPES, SIZES, make_arrays, scene_at


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ae")
    args = _parse(train_ae, ["--out", str(out), "--steps", "30", "--batch-size", "4", "--scenes", "4", "--size", "16",
                             "--channels", "32,32", "--lr", "3e-3", "--warmup", "2", "--eval-images", "8",
                             "--log-every", "1", "--checkpoint-every", "10", "--sample-every", "30", "--threads", "1"])
    assert run_train_ae(args) == 0  # the command, which wires the evaluator in as a judge
    return out


def test_dataset_is_deterministic_and_covers_the_grammar():
    a, captions_a = make_arrays(6, seed=0, size=64)
    b, captions_b = make_arrays(6, seed=0, size=64)
    assert (a == b).all() and captions_a == captions_b and a.shape == (6, 64, 64, 3)
    scenes = [scene_at(i) for i in range(400)]
    objects = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objects} == set(SHAPES) and len(SHAPES) >= 5
    assert {o.colour for o in objects} == set(COLOURS) and len(COLOURS) >= 8
    assert {o.position for o in objects} == set(POSITIONS) and {o.size for o in objects} == set(SIZES)
    assert {len(s.objects) for s in scenes} == {1, 2} and {len(s.background) for s in scenes} == {1, 2}
    assert all(s.background[0] not in {o.colour for o in s.objects} for s in scenes)


def test_autoencoder_loss_goes_down(tiny_ae):
    losses = _losses(tiny_ae)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert (tiny_ae / "vae" / "config.json").exists() and (tiny_ae / "samples").is_dir()
    metrics = json.loads((tiny_ae / "metrics.json").read_text())
    assert metrics["psnr_db"] > 0 and metrics["steps"] == 30
    # The evaluator's view of the reconstructions: the ceiling for any stage-2 model on this autoencoder.
    assert set(metrics["reconstruction_adherence"]) >= {"shape", "colour", "shape_colour", "position"}


def test_ldm_loss_goes_down_resumes_and_exports_a_loadable_sd1_file(tiny_ae, tmp_path):
    out = tmp_path / "ldm"
    common = ["--ae", str(tiny_ae), "--out", str(out), "--batch-size", "8", "--scenes", "8", "--size", "16",
              "--unet-channels", "32,32", "--unet-attention", "0,1", "--text-hidden", "64", "--text-layers", "1",
              "--text-intermediate", "64", "--lr", "2e-3", "--warmup", "2", "--log-every", "1",
              "--checkpoint-every", "10", "--sample-every", "40", "--threads", "1", "--min-snr-gamma", "0"]
    assert train_ldm.run(_parse(train_ldm, common + ["--steps", "30"])) == 0
    losses = _losses(out)
    assert len(losses) == 30
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    # Resume continues from the saved step rather than starting over.
    export = tmp_path / "tiny.safetensors"
    assert train_ldm.run(_parse(train_ldm, common + ["--steps", "34", "--resume", "--export", str(export)])) == 0
    assert torch.load(out / "checkpoint-latest.pt", weights_only=False)["step"] == 34
    assert len(_losses(out)) == 34
    assert (out / "samples" / "step-000030.png").exists()

    from webui.engine.loader import load_checkpoint

    model = load_checkpoint(export)
    assert model.family.name == "sd1" and model.prediction_type == "epsilon"
    assert model.metadata["modelspec.resolution"] == "64x64"
    config = json.loads((out / "config.json").read_text())
    assert model.vae_scale == pytest.approx(config["scale_factor"], rel=1e-5)
    assert model.unet.config.cross_attention_dim == 64

    # --init starts a new run from the exported checkpoint's weights (lr 0: they stay exactly those weights), and
    # --max-minutes stops it after the first step, still saving and sampling that step.
    tuned = tmp_path / "tuned"
    init_args = [a if a != str(out) else str(tuned) for a in common] + ["--init", str(export), "--lr", "0"]
    assert train_ldm.run(_parse(train_ldm, init_args + ["--steps", "1000", "--max-minutes", "1e-6",
                                                        "--max-timestep", "450"])) == 0
    state = torch.load(tuned / "checkpoint-latest.pt", weights_only=True)
    assert state["step"] == 1 and (tuned / "samples" / "step-000001.png").exists()
    assert state["scale_factor"] == pytest.approx(model.vae_scale, rel=1e-6)
    for name, tensor in model.unet.state_dict().items():
        assert torch.equal(state["ema_unet"][name], tensor), name
    with pytest.raises(SystemExit, match="--init .* architecture differs"):
        train_ldm.run(_parse(train_ldm, init_args + ["--steps", "1", "--unet-channels", "64,64"]))
    with pytest.raises(SystemExit, match="--max-timestep must be between 1 and 1000"):
        train_ldm.run(_parse(train_ldm, init_args + ["--steps", "1", "--max-timestep", "0"]))
    with pytest.raises(SystemExit, match="pass --signal-free-top 0"):
        train_ldm.run(_parse(train_ldm, init_args + ["--steps", "1", "--max-timestep", "450",
                                                     "--signal-free-top", "0.1"]))

    # --train-only trains the matching parameters and leaves every other one exactly as loaded.
    partial = tmp_path / "partial"
    partial_args = [a if a != str(out) else str(partial) for a in common] + ["--init", str(export)]
    pattern = r"unet\.up_blocks\.0\.attentions"
    assert train_ldm.run(_parse(train_ldm, partial_args + ["--steps", "3", "--train-only", pattern])) == 0
    trained = torch.load(partial / "checkpoint-latest.pt", weights_only=True)
    loaded = {**{f"unet.{k}": v for k, v in model.unet.state_dict().items()},
              **{f"text_encoder.{k}": v for k, v in model.text_encoders[0].model.state_dict().items()}}
    changed = {name for name, tensor in loaded.items()
               if not torch.equal(trained[name.split(".")[0]][name.split(".", 1)[1]], tensor)}
    assert changed and all(name.startswith("unet.up_blocks.0.attentions.") for name in changed), sorted(changed)[:5]
    with pytest.raises(SystemExit, match="matches no parameter"):
        train_ldm.run(_parse(train_ldm, partial_args + ["--steps", "1", "--train-only", "no_such_layer"]))
    with pytest.raises(SystemExit, match="is not a regular expression"):
        train_ldm.run(_parse(train_ldm, partial_args + ["--steps", "1", "--train-only", "("]))


def test_parallel_rendering_matches_serial_rendering():
    from webui.shapes import make_arrays_parallel

    serial, serial_captions = make_arrays(2001, seed=3, size=16, start=5)
    parallel, parallel_captions = make_arrays_parallel(2001, seed=3, size=16, start=5, workers=2)
    assert (serial == parallel).all() and serial_captions == parallel_captions


def test_time_budget_drives_the_schedule_and_stops_the_run():
    from webui.training.common import TimeBudget

    unlimited = TimeBudget(None)
    assert not unlimited.expired() and unlimited.schedule_step(7, 100) == 7
    spent = TimeBudget(1e-9)
    assert spent.expired() and spent.schedule_step(7, 100) >= 100  # the cosine decay has reached its end


def test_loss_weights_cap_easy_steps_and_lift_high_noise_steps():
    """Min-SNR caps low-noise steps at gamma/snr; the SNR floor lifts high-noise ones to floor/snr; mid-range
    stays 1."""
    from webui.training.models import sd_noise_scheduler

    alphas = sd_noise_scheduler().alphas_cumprod
    t = torch.tensor([10, 500, 999])
    snr = alphas[t] / (1 - alphas[t])
    weights = epsilon_loss_weights(alphas[t], gamma=5.0, snr_floor=0.05)
    assert weights[0] == pytest.approx(5.0 / snr[0].item(), rel=1e-5) and weights[0] < 0.1
    assert weights[1] == pytest.approx(1.0)
    assert weights[2] == pytest.approx(0.05 / snr[2].item(), rel=1e-5) and weights[2] > 10
    assert torch.equal(epsilon_loss_weights(alphas[t], 0.0, 0.0), torch.ones(3))


def test_offset_noise_adds_a_per_channel_constant():
    plain = train_ldm.training_noise(torch.Size([64, 4, 16, 16]), 0.0, torch.Generator().manual_seed(0))
    offset = train_ldm.training_noise(torch.Size([64, 4, 16, 16]), 0.5, torch.Generator().manual_seed(0))
    shift = offset - plain
    assert (shift - shift[:, :, :1, :1]).abs().max() < 1e-5  # constant over each sample's channel
    assert 0.3 < shift[:, :, 0, 0].std().item() < 0.7


def test_pyramid_noise_adds_power_at_low_frequencies_only():
    """Quadrant means (where an object's position lives) vary more; the per-pixel scale stays close to 1."""
    shape = torch.Size([256, 4, 16, 16])
    plain = train_ldm.training_noise(shape, 0.0, torch.Generator().manual_seed(0))
    pyramid = train_ldm.training_noise(shape, 0.0, torch.Generator().manual_seed(0), pyramid=0.15)
    quadrant_std = lambda n: n[:, :, :8, :8].mean((2, 3)).std().item()  # noqa: E731
    assert quadrant_std(pyramid) > 1.4 * quadrant_std(plain)
    assert 0.95 < pyramid.std().item() < 1.1


def test_signal_free_top_trains_the_first_step_on_pure_noise():
    """Chosen samples get t >= 950 and an x_t that holds none of the image, with an ε target that still decodes to the
    true x0; the rest of the batch is untouched."""
    from webui.training.models import sd_noise_scheduler

    scheduler = sd_noise_scheduler()
    alphas = scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(256, 4, 8, 8, generator=g) * 2
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(0, 500, (256,), generator=g)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target, new_t = train_ldm.signal_free_top(noise, timesteps, latents, alphas, 0.25, g)
    new_noisy = scheduler.add_noise(latents, target, new_t)
    chosen = new_t != timesteps
    assert 0.15 < chosen.float().mean().item() < 0.35 and (new_t[chosen] >= 950).all()
    assert torch.equal(new_noisy[~chosen], noisy[~chosen]) and torch.equal(target[~chosen], noise[~chosen])
    # x_t of the chosen samples is independent of the image: no correlation with the latents.
    correlation = torch.corrcoef(torch.stack([new_noisy[chosen].flatten(), latents[chosen].flatten()]))[0, 1]
    assert abs(correlation.item()) < 0.03
    # ... and the ε target still gives back x0 exactly as the samplers compute it.
    alpha = alphas[new_t[chosen]].view(-1, 1, 1, 1)
    x0 = (new_noisy[chosen] - (1 - alpha).sqrt() * target[chosen]) / alpha.sqrt()
    assert torch.allclose(x0, latents[chosen], atol=1e-3)
    unchanged = train_ldm.signal_free_top(noise, timesteps, latents, alphas, 0.0, g)
    assert unchanged[0] is noise and unchanged[1] is timesteps
