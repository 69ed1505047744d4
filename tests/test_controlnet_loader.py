"""ControlNet files: every community layout loads into a module that computes what the file's author's module did.

Oracles: the ground-truth ControlNetModel a file was written from (all layouts), and for the cldm layouts also a
ControlNetModel loaded through diffusers' own `convert_controlnet_checkpoint` with the ground-truth config. Files are
real: written to tmp_path in the layouts the community ships (1.0 with a whole SD model beside it, 1.1, diffusers).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, convert_controlnet_checkpoint
from safetensors.torch import load_file, save_file

from webui.engine.checkpoint_io import read_key_shapes
from webui.engine.controlnet_loader import (
    ControlNetLoadError,
    ControlNetMismatchError,
    check_compatible,
    controlnet_family_title,
    detect_controlnet_layout,
    load_controlnet,
)
from webui.engine.export import controlnet_to_ldm, save_checkpoint, vae_to_ldm
from webui.engine.families import UnsupportedCheckpointError, detect_family
from webui.engine.loader import LoadedModel, load_checkpoint
from webui.engine.synthetic import SyntheticModel, build_synthetic_controlnet, write_synthetic_controlnet

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LATENT = 8  # latent side; the hint image is larger by the hint encoder's downsampling (8 for the stock one)


def _tiny(request: pytest.FixtureRequest, family: str):
    return request.getfixturevalue(f"tiny_{family}")


def _inputs(config: Any, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    """A fixed random latent, timestep, text context, hint image (and SDXL extras) for a ControlNet config."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, config.in_channels, LATENT, LATENT, generator=generator)
    timestep = torch.tensor([537])
    context = torch.randn(1, 7, config.cross_attention_dim, generator=generator)
    side = LATENT * 2 ** (len(config.conditioning_embedding_out_channels) - 1)
    hint = torch.rand(1, config.conditioning_channels, side, side, generator=generator)
    kwargs: dict[str, Any] = {}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=generator),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
        }
    return (sample, timestep, context, hint), kwargs


def _residuals(model: ControlNetModel, config: Any) -> list[torch.Tensor]:
    args, kwargs = _inputs(config)
    with torch.no_grad():
        down, mid = model(*args, **kwargs, return_dict=False)
    return [*down, mid]


def _assert_same_outputs(actual: ControlNetModel, expected: ControlNetModel) -> None:
    """Down residuals and mid residual agree; computed on the expected model's config (the file author's)."""
    got, want = _residuals(actual, expected.config), _residuals(expected, expected.config)
    assert len(got) == len(want)
    for index, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"residual {index}"
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"residual {index}")
    # The zero convs are random in the fixtures, so a loader that dropped or swapped them could not pass above.
    assert all(float(r.abs().max()) > 1e-2 for r in want)


def _read_plain(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(str(path), weights_only=True)


def _diffusers_reference(path: Path, truth: ControlNetModel) -> ControlNetModel:
    """The file loaded by diffusers' own converter, given the ground-truth config (no inference involved).

    diffusers' converter has no mapping for SDXL's `label_emb`; its unused `addition_embed_type` table names it.
    """
    state = _read_plain(path)
    converted = convert_controlnet_checkpoint(state, dict(truth.config))
    if truth.config.addition_embed_type:
        prefix = "control_model." if any(k.startswith("control_model.") for k in state) else ""
        for diffusers_key, ldm_key in DIFFUSERS_TO_LDM_MAPPING["controlnet"]["addition_embed_type"].items():
            converted[diffusers_key] = state[prefix + ldm_key]
    reference = ControlNetModel.from_config(truth.config)
    reference.load_state_dict(converted, strict=True)
    return reference.eval()


CASES = [
    ("sd1", "cldm-1.0", "full"),
    ("sd1", "cldm-1.1", "full"),
    ("sd1", "diffusers", "full"),
    ("sd1", "diffusers", "small"),
    ("sd2", "cldm-1.0", "full"),
    ("sd2", "cldm-1.1", "full"),
    ("sd2", "diffusers", "full"),
    ("sdxl", "cldm-1.0", "full"),
    ("sdxl", "cldm-1.1", "full"),
    ("sdxl", "diffusers", "full"),
    ("sdxl", "diffusers", "small"),
]


@pytest.mark.parametrize(("family", "layout", "variant"), CASES, ids=["-".join(c) for c in CASES])
def test_loaded_controlnet_computes_like_the_module_it_was_written_from(
    request: pytest.FixtureRequest, tmp_path: Path, family: str, layout: str, variant: str
) -> None:
    tiny = _tiny(request, family)
    # 1.0 files as released: the ControlNet under control_model. beside a whole SD checkpoint, which must be ignored.
    beside = load_file(str(tiny.path)) if layout == "cldm-1.0" else None
    path = tmp_path / f"control_{family}_{layout}.safetensors"
    truth = write_synthetic_controlnet(path, tiny.model, layout, seed=11, variant=variant, extra_state=beside)

    loaded = load_controlnet(path)

    assert (loaded.family, loaded.layout, loaded.name, loaded.path) == (family, layout, path.stem, path)
    assert loaded.hint_channels == 3
    assert detect_controlnet_layout(read_key_shapes(path), path.name) == layout  # header-only classification
    has_text_attention = any(k.endswith("attn2.to_k.weight") for k in truth.state_dict())
    assert loaded.cross_attention_dim == (truth.config.cross_attention_dim if has_text_attention else None)
    assert loaded.model.config.mid_block_type == truth.config.mid_block_type
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    _assert_same_outputs(loaded.model, truth)
    if layout != "diffusers":
        _assert_same_outputs(loaded.model, _diffusers_reference(path, truth))


def test_diffusers_layout_with_attention_but_no_transformer_blocks(tmp_path: Path) -> None:
    """The SDXL "mid"-style reduction: a level keeps its attention frame (norm, proj_in/out) with zero blocks;
    also a non-stock hint encoder (3 stages)."""
    torch.manual_seed(3)
    truth = ControlNetModel(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        layers_per_block=1,
        transformer_layers_per_block=[1, 0, 1],
        cross_attention_dim=48,
        attention_head_dim=[1, 1, 1],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=40 + 6 * 256,
        conditioning_embedding_out_channels=(8, 16, 32, 32),
    ).eval()
    _randomize_zero_convs(truth)
    path = tmp_path / "control_xl_mid.safetensors"
    save_checkpoint(path, {k: v.contiguous() for k, v in truth.state_dict().items()})

    loaded = load_controlnet(path)

    assert loaded.family == "sdxl"
    assert loaded.model.config.transformer_layers_per_block[1] == 0
    _assert_same_outputs(loaded.model, truth)


def test_cldm_hint_encoder_other_than_stock_is_mapped_by_conv_order(tmp_path: Path, tiny_sd1) -> None:
    """diffusers' converter assumes conv_out at input_hint_block.14; a 3-stage encoder has it at 10."""
    torch.manual_seed(4)
    config = dict(build_synthetic_controlnet(tiny_sd1.model, seed=4).config)
    truth = ControlNetModel.from_config({**config, "conditioning_embedding_out_channels": (8, 16, 32)}).eval()
    _randomize_zero_convs(truth)
    state = controlnet_to_ldm(truth)
    assert "input_hint_block.10.weight" in state and "input_hint_block.14.weight" not in state
    path = tmp_path / "control_v11_custom_hint.safetensors"
    save_checkpoint(path, state)

    _assert_same_outputs(load_controlnet(path).model, truth)
    # Why the loader maps the hint encoder itself: diffusers' converter leaves conv_out out for this file.
    assert "controlnet_cond_embedding.conv_out.weight" not in convert_controlnet_checkpoint(dict(state), config)


def _randomize_zero_convs(controlnet: ControlNetModel) -> None:
    generator = torch.Generator().manual_seed(99)
    modules = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for module in [*modules, controlnet.controlnet_cond_embedding.conv_out]:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.2)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


def test_pth_file_loads_through_the_weights_only_path(tmp_path: Path, tiny_sd2) -> None:
    path = tmp_path / "control_sd21_depth.pth"
    beside = load_file(str(tiny_sd2.path))
    truth = write_synthetic_controlnet(path, tiny_sd2.model, "cldm-1.0", seed=5, extra_state=beside)
    loaded = load_controlnet(path)
    assert (loaded.family, loaded.layout) == ("sd2", "cldm-1.0")
    _assert_same_outputs(loaded.model, truth)


def _touch(path: str) -> None:
    Path(path).write_text("the payload ran")


class _Payload:
    """A custom object whose unpickling has a side effect (stands in for code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return (_touch, (str(self.marker),))


def test_pickled_object_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "control_evil.pth"
    torch.save({"input_hint_block.0.weight": torch.zeros(16, 3, 3, 3), "payload": _Payload(marker)}, str(path))

    refused = r"control_evil\.pth: refused: its pickle asks for the forbidden global"
    with pytest.raises(ControlNetLoadError, match=refused):
        load_controlnet(path)
    assert not marker.exists()
    # The oracle is live: an unrestricted unpickler does run it.
    torch.load(str(path), weights_only=False)
    assert marker.read_text() == "the payload ran"


@pytest.fixture(scope="module")
def loaded_models(request: pytest.FixtureRequest) -> dict[str, LoadedModel]:
    """The tiny base checkpoints as the app loads them, once per module."""
    return {family: load_checkpoint(_tiny(request, family).path) for family in ("sd1", "sd2", "sdxl")}


@pytest.mark.parametrize(("family", "variant"), [("sd1", "full"), ("sd2", "full"), ("sdxl", "full"), ("sdxl", "small")])
def test_matching_controlnet_is_accepted_and_its_residuals_fit_the_unet(
    request: pytest.FixtureRequest, tmp_path: Path, loaded_models: dict[str, LoadedModel], family: str, variant: str
) -> None:
    path = tmp_path / f"control_{family}.safetensors"
    write_synthetic_controlnet(path, _tiny(request, family).model, "diffusers", seed=6, variant=variant)
    controlnet = load_controlnet(path)
    model = loaded_models[family]

    check_compatible(controlnet, model)

    residuals = _residuals(controlnet.model, controlnet.model.config)
    (sample, timestep, context, _), kwargs = _inputs(controlnet.model.config)
    with torch.no_grad():
        plain = model.unet(sample, timestep, context, **kwargs).sample
        controlled = model.unet(
            sample,
            timestep,
            context,
            **kwargs,
            down_block_additional_residuals=residuals[:-1],
            mid_block_additional_residual=residuals[-1],
        ).sample
    assert controlled.shape == plain.shape
    assert not torch.allclose(controlled, plain)


@pytest.mark.parametrize(
    ("cn_family", "model_family", "message"),
    [
        (
            "sdxl",
            "sd1",
            "control_x.safetensors is an SDXL ControlNet; the loaded model tiny-sd1.safetensors is SD 1.x "
            "— choose a ControlNet made for SD 1.x",
        ),
        (
            "sd1",
            "sdxl",
            "control_x.safetensors is an SD 1.x ControlNet; the loaded model tiny-sdxl.safetensors is SDXL "
            "— choose a ControlNet made for SDXL",
        ),
        (
            "sd1",
            "sd2",
            "control_x.safetensors is an SD 1.x ControlNet; the loaded model tiny-sd2.safetensors is SD 2.x "
            "— choose a ControlNet made for SD 2.x",
        ),
    ],
)
def test_controlnet_for_another_family_is_refused(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    loaded_models: dict[str, LoadedModel],
    cn_family: str,
    model_family: str,
    message: str,
) -> None:
    path = tmp_path / "control_x.safetensors"
    write_synthetic_controlnet(path, _tiny(request, cn_family).model, "cldm-1.1", seed=7)
    controlnet = load_controlnet(path)
    assert controlnet.family == cn_family
    with pytest.raises(ControlNetMismatchError) as caught:
        check_compatible(controlnet, loaded_models[model_family])
    assert str(caught.value) == message
    assert isinstance(caught.value, ControlNetLoadError)


def _with_unet(model: SyntheticModel, **overrides: Any) -> SyntheticModel:
    """The same synthetic model with a U-Net config changed (a different fine-tune architecture of the family)."""
    config = {k: v for k, v in model.unet.config.items() if not k.startswith("_")}
    return dataclasses.replace(model, unet=UNet2DConditionModel.from_config({**config, **overrides}))


@pytest.mark.parametrize(
    ("family", "overrides", "expected"),
    [
        ("sd1", {"block_out_channels": (64, 128)}, "its block widths are 64, 128, the model's 32, 64"),
        ("sd1", {"cross_attention_dim": 32}, "its text width is 32, the model's 64"),
        (
            "sdxl",
            {"projection_class_embeddings_input_dim": 64 + 6 * 256},
            "addition embedding takes 1600, the model's 1664",
        ),
    ],
)
def test_same_family_with_other_widths_is_refused(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    loaded_models: dict[str, LoadedModel],
    family: str,
    overrides: dict[str, Any],
    expected: str,
) -> None:
    path = tmp_path / "control_other.safetensors"
    write_synthetic_controlnet(path, _with_unet(_tiny(request, family).model, **overrides), "cldm-1.1", seed=8)
    controlnet = load_controlnet(path)
    assert controlnet.family == family
    with pytest.raises(ControlNetMismatchError, match="control_other.safetensors does not fit") as caught:
        check_compatible(controlnet, loaded_models[family])
    assert expected in str(caught.value)


def test_family_titles_come_from_the_family_registry() -> None:
    assert [controlnet_family_title(f) for f in ("sd1", "sd2", "sdxl")] == ["SD 1.x", "SD 2.x", "SDXL"]


def _vae_state(model: SyntheticModel) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in vae_to_ldm(model.vae).items()}


WRONG_KINDS: list[tuple[str, Callable[[SyntheticModel], dict[str, torch.Tensor]], str]] = [
    (
        "kohya-lora",
        lambda m: {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32, 1, 1),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4, 1, 1),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        "this is a LoRA, not a ControlNet; move it to models/Lora",
    ),
    (
        "peft-lora",
        lambda m: {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 32)},
        "this is a LoRA, not a ControlNet; move it to models/Lora",
    ),
    (
        "vae",
        lambda m: {k.removeprefix("first_stage_model."): v for k, v in _vae_state(m).items()},
        "this is a VAE, not a ControlNet; move it to models/VAE",
    ),
    ("vae-with-prefix", _vae_state, "this is a VAE, not a ControlNet; move it to models/VAE"),
    (
        "control-lora",
        lambda m: {"lora_controlnet": torch.tensor([]), "input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)},
        "this is a Control-LoRA; Control-LoRA files are not supported yet",
    ),
    (
        "t2i-adapter-diffusers",
        lambda m: {"adapter.body.0.resnets.0.block1.weight": torch.zeros(32, 32, 3, 3)},
        "this is a T2I-Adapter, not a ControlNet; T2I-Adapters are not supported yet",
    ),
    (
        "t2i-adapter-light",
        lambda m: {"body.0.in_conv.weight": torch.zeros(32, 192, 1, 1)},
        "this is a T2I-Adapter, not a ControlNet; T2I-Adapters are not supported yet",
    ),
    (
        "union",
        lambda m: {
            "control_add_embedding.linear_1.bias": torch.zeros(4),
            "controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3),
        },
        "ControlNet Union files are not supported yet",
    ),
    (
        "text-encoder",
        lambda m: {"text_model.embeddings.token_embedding.weight": torch.zeros(10, 8)},
        "not a ControlNet (no hint encoder",
    ),
    ("empty", lambda m: {}, "the file holds no tensors"),
]


@pytest.mark.parametrize(("kind", "build", "message"), WRONG_KINDS, ids=[w[0] for w in WRONG_KINDS])
def test_other_kinds_of_file_say_what_they_are(
    tmp_path: Path, tiny_sd1, kind: str, build: Callable[[SyntheticModel], dict[str, torch.Tensor]], message: str
) -> None:
    path = tmp_path / f"{kind}.safetensors"
    save_file(build(tiny_sd1.model), str(path))
    with pytest.raises(ControlNetLoadError) as caught:
        load_controlnet(path)
    assert str(caught.value).startswith(f"{path.name}: ")
    assert message in str(caught.value)


def test_stable_diffusion_checkpoint_belongs_in_the_checkpoint_folder(tiny_sd1) -> None:
    with pytest.raises(ControlNetLoadError) as caught:
        load_controlnet(tiny_sd1.path)
    assert str(caught.value) == (
        "tiny-sd1.safetensors: this is a Stable Diffusion checkpoint, not a ControlNet; "
        "move it to models/Stable-diffusion"
    )


def test_controlnet_10_file_is_not_taken_for_a_checkpoint(tmp_path: Path, tiny_sd1) -> None:
    """The whole SD model inside a 1.0 file must not make the checkpoint loader accept it either."""
    path = tmp_path / "control_sd15_canny.safetensors"
    write_synthetic_controlnet(path, tiny_sd1.model, "cldm-1.0", extra_state=load_file(str(tiny_sd1.path)))
    with pytest.raises(UnsupportedCheckpointError, match="models/ControlNet"):
        detect_family(read_key_shapes(path), path.name)


def test_controlnet_without_attention_or_sdxl_embedding_is_not_guessed(tmp_path: Path) -> None:
    """No structural family marker: refuse rather than fall back to SD 1.x."""
    torch.manual_seed(9)
    controlnet = ControlNetModel(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        layers_per_block=1,
        mid_block_type="UNetMidBlock2D",
        cross_attention_dim=32,
    )
    path = tmp_path / "control_plain.safetensors"
    save_checkpoint(path, {k: v.contiguous() for k, v in controlnet.state_dict().items()})
    with pytest.raises(ControlNetLoadError, match="cannot tell which base model"):
        load_controlnet(path)


@pytest.mark.parametrize("layout", ["cldm-1.1", "diffusers"])
def test_missing_and_extra_weights_name_the_file(tmp_path: Path, tiny_sd1, layout: str) -> None:
    source = tmp_path / "source.safetensors"
    write_synthetic_controlnet(source, tiny_sd1.model, layout, seed=10)
    state = load_file(str(source))
    zero_conv = "zero_convs.1.0.weight" if layout == "cldm-1.1" else "controlnet_down_blocks.1.weight"

    missing = tmp_path / "control_missing.safetensors"
    save_file({k: v for k, v in state.items() if k != zero_conv}, str(missing))
    with pytest.raises(ControlNetLoadError, match=r"^control_missing\.safetensors: 1 ControlNet weights are missing"):
        load_controlnet(missing)

    extra = tmp_path / "control_extra.safetensors"
    extra_key = "output_blocks.0.0.in_layers.0.weight" if layout == "cldm-1.1" else "up_blocks.0.resnets.0.norm1.weight"
    save_file({**state, extra_key: torch.ones(64)}, str(extra))
    with pytest.raises(ControlNetLoadError, match=rf"^control_extra\.safetensors: 1 weights .*first: {extra_key}"):
        load_controlnet(extra)


def test_corrupt_or_truncated_files_are_load_errors(tmp_path: Path, tiny_sd1) -> None:
    good = tmp_path / "good.safetensors"
    write_synthetic_controlnet(good, tiny_sd1.model, "cldm-1.1", seed=12)
    data = good.read_bytes()

    truncated = tmp_path / "control_truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ControlNetLoadError, match=r"control_truncated\.safetensors: corrupt or incomplete"):
        load_controlnet(truncated)

    garbage = tmp_path / "control_garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + bytes(64))
    with pytest.raises(ControlNetLoadError, match=r"control_garbage\.safetensors: corrupt"):
        load_controlnet(garbage)

    pth = tmp_path / "good.pth"
    write_synthetic_controlnet(pth, tiny_sd1.model, "cldm-1.1", seed=12)
    truncated_pth = tmp_path / "control_truncated.pth"
    truncated_pth.write_bytes(pth.read_bytes()[:4096])
    with pytest.raises(ControlNetLoadError, match=r"control_truncated\.pth"):
        load_controlnet(truncated_pth)

    with pytest.raises(ControlNetLoadError, match="file not found"):
        load_controlnet(tmp_path / "control_absent.safetensors")


def test_dtype_and_device(tmp_path: Path, tiny_sd1) -> None:
    path = tmp_path / "control_half.safetensors"
    write_synthetic_controlnet(path, tiny_sd1.model, "diffusers", seed=13)
    loaded = load_controlnet(path, dtype=torch.float16)
    assert loaded.dtype == torch.float16 and loaded.device == torch.device("cpu")
    assert loaded.to("cpu", torch.float32) is loaded
    assert loaded.dtype == torch.float32
