"""bench/lora_project.py (docs/lora-training.md, runs P1-P2 and the control): the input moments it collects
give the LoRA's output energy that a convolution computed directly gives; its projection keeps a change on the new
inputs' directions, drops it on directions only the old inputs use, and shrinks it evenly where both use the same
ones; the control keeps each change's size and turns its inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.bench_scripts import load_bench_script


def test_moments_give_the_output_energy_of_a_strided_conv_and_a_linear() -> None:
    project = load_bench_script("lora_project")
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    linear = torch.nn.Linear(6, 4)
    moments = project.InputMoments({"conv": conv, "linear": linear})
    images = [torch.randn(2, 3, 9, 7, generator=g) for _ in range(2)]
    tokens = [torch.randn(2, 5, 6, generator=g) for _ in range(2)]
    for image, token in zip(images, tokens):
        conv(image)
        linear(token)
    second = moments.close()
    delta_conv = torch.randn(5, 3, 3, 3, generator=g)
    delta_linear = torch.randn(4, 6, generator=g)
    # the mean squared length of the change's output per position, computed by the convolution itself
    outputs = torch.cat([F.conv2d(x, delta_conv, stride=2, padding=1).permute(0, 2, 3, 1).reshape(-1, 5)
                         for x in images])
    energy = outputs.pow(2).sum(1).mean()
    flat = delta_conv.flatten(1)
    assert torch.allclose(torch.trace(flat @ second["conv"] @ flat.T), energy, rtol=1e-4)
    linear_energy = torch.cat([(t @ delta_linear.T).reshape(-1, 4) for t in tokens]).pow(2).sum(1).mean()
    assert torch.allclose(torch.trace(delta_linear @ second["linear"] @ delta_linear.T), linear_energy, rtol=1e-4)
    assert not conv._forward_pre_hooks  # the hooks are gone after close()


def test_projection_keeps_new_directions_drops_old_ones_and_shrinks_shared_ones() -> None:
    project = load_bench_script("lora_project")
    g = torch.Generator().manual_seed(1)
    down = torch.randn(2, 4, generator=g)
    state = {"lora_unet_x.lora_down.weight": down, "lora_unet_x.lora_up.weight": torch.randn(3, 2, generator=g),
             "lora_unet_x.alpha": torch.tensor(2.0)}
    new = {"lora_unet_x": torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))}
    old = {"lora_unet_x": torch.diag(torch.tensor([0.0, 0.0, 1.0, 1.0]))}
    separated = project.projected(state, new, old, lam=1.0, ridge=1e-9)["lora_unet_x.lora_down.weight"]
    assert torch.allclose(separated[:, :2], down[:, :2], atol=1e-6)
    assert separated[:, 2:].abs().max() < 1e-5
    shared = project.projected(state, new, new, lam=3.0, ridge=1e-9)["lora_unet_x.lora_down.weight"]
    assert torch.allclose(shared[:, :2], down[:, :2] / 4, atol=1e-6)
    kept = {k: v for k, v in state.items() if not k.endswith("lora_down.weight")}
    assert all(torch.equal(project.projected(state, new, old, 1.0)[k], v) for k, v in kept.items())


def test_the_rotation_control_keeps_each_changes_singular_values_and_turns_its_inputs() -> None:
    project = load_bench_script("lora_project")
    g = torch.Generator().manual_seed(2)
    state = {"lora_unet_c.lora_down.weight": torch.randn(3, 4, 3, 3, generator=g),
             "lora_unet_c.lora_up.weight": torch.randn(5, 3, 1, 1, generator=g), "lora_unet_c.alpha": torch.tensor(3.0)}
    turned = project.rotated(state, seed=0)
    before = state["lora_unet_c.lora_up.weight"].flatten(1) @ state["lora_unet_c.lora_down.weight"].flatten(1)
    after = turned["lora_unet_c.lora_up.weight"].flatten(1) @ turned["lora_unet_c.lora_down.weight"].flatten(1)
    assert torch.allclose(torch.linalg.svdvals(before), torch.linalg.svdvals(after), atol=1e-4)
    assert (before - after).abs().max() > 0.1
    assert turned["lora_unet_c.lora_down.weight"].shape == (3, 4, 3, 3)


def test_the_rotation_control_can_turn_where_the_change_is_written_instead() -> None:
    """`--rotate-sides up` keeps what each layer reads (the delta's row space) and turns what it writes; `both` turns
    both; the singular values stay in every case."""
    project = load_bench_script("lora_project")
    g = torch.Generator().manual_seed(3)
    state = {"lora_unet_c.alpha": torch.tensor(3.0),
             "lora_unet_c.lora_down.weight": torch.randn(3, 4, 3, 3, generator=g),
             "lora_unet_c.lora_up.weight": torch.randn(5, 3, 1, 1, generator=g)}

    def delta(turned: dict[str, torch.Tensor]) -> torch.Tensor:
        return turned["lora_unet_c.lora_up.weight"].flatten(1) @ turned["lora_unet_c.lora_down.weight"].flatten(1)

    before = delta(state)
    up = project.rotated(state, seed=0, sides="up")
    assert torch.equal(up["lora_unet_c.lora_down.weight"], state["lora_unet_c.lora_down.weight"])
    assert torch.allclose(delta(up).T @ delta(up), before.T @ before, atol=1e-3)  # reads the same inputs
    assert (delta(up) - before).abs().max() > 0.1
    both = project.rotated(state, seed=0, sides="both")
    assert not torch.equal(both["lora_unet_c.lora_down.weight"], state["lora_unet_c.lora_down.weight"])
    for turned in (up, both):
        assert torch.allclose(torch.linalg.svdvals(delta(turned)), torch.linalg.svdvals(before), atol=1e-4)
        assert turned["lora_unet_c.lora_up.weight"].shape == (5, 3, 1, 1)
        assert torch.equal(turned["lora_unet_c.alpha"], state["lora_unet_c.alpha"])
