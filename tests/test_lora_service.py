"""LoRAs and VAEs per job, through the real app: prompt tags, the builtin extension, infotext, exact restore.

The expected images come from the engine directly (txt2img on the same file with the LoRA patched in by hand, or
with the other VAE's module), so the app path is checked against a run that skips every service layer.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.lora_files import write_kohya_lora
from webui.context import AppPaths, build_context
from webui.engine.export import vae_to_ldm
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.loader import LoadedModel, build_vae, load_checkpoint, read_vae_override
from webui.engine.lora import lora_patches, read_lora
from webui.engine.patching import patched
from webui.engine.synthetic import build_synthetic_model
from webui.services.extra_networks import extract_tags
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext
from webui.services.requests import GenerationRequest, RequestError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_sd1, tiny_sdxl):
    root = tmp_path_factory.mktemp("lora-app")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_sd1.path, models / "Stable-diffusion" / "tiny.safetensors")
    write_kohya_lora(models / "Lora" / "style_a.safetensors", tiny_sd1.model, seed=11,
                     metadata={"ss_output_name": "StyleA", "ss_tag_frequency": '{"10_hexagon": {"hexagon": 30, '
                                                                              '"green": 12}}'})
    write_kohya_lora(models / "Lora" / "sub" / "style_b.safetensors", tiny_sd1.model, seed=12, conv=True)
    write_kohya_lora(models / "Lora" / "xl_only.safetensors", tiny_sdxl.model, seed=13)
    other_vae = build_synthetic_model("sd1", seed=77).vae
    (models / "VAE").mkdir()
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(other_vae).items()},
              str(models / "VAE" / "other.vae.safetensors"))
    paths = AppPaths(models, root / "outputs", root / "data", ())
    return build_context(paths, device="cpu")


def generate(app, prompt: str = PROMPT, negative: str = "blue", **fields):
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, steps=3, width=64, height=64, seed=5,
                                sampler_name="Euler", cfg_scale=6.0, batch_size=2, **fields)
    return app.generation.run(app.jobs.create("test", "txt2img"), request)


def arrays(result) -> list[np.ndarray]:
    return [np.asarray(image, dtype=int) for image in result.images]


def engine_images(model: LoadedModel, prompt: str, negative: str = "blue", loras=()) -> list[np.ndarray]:
    """The same job run on the engine directly, LoRAs patched by hand."""
    patches = [p for path, te, unet in loras for p in lora_patches(read_lora(path), model, te, unet)]
    params = SamplingParams(prompt=prompt, negative_prompt=negative, sampler="Euler", schedule="Automatic", steps=3,
                            cfg_scale=6.0, width=64, height=64, seeds=[5, 6])
    with patched(patches):
        return [np.asarray(image, dtype=int) for image in txt2img(model, params, app_registry())]


def app_registry():
    from webui.engine.samplers import SamplerRegistry

    return SamplerRegistry()


def base_hash(app) -> str:
    digest = hashlib.sha256()
    model = app.models.get("tiny")
    for module in model.modules():
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode() + tensor.detach().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def reference(app) -> LoadedModel:
    return load_checkpoint(app.models.resolve("tiny").path)


def test_lora_registers_through_the_public_extension_api(app) -> None:
    record = {r.name: r for r in app.extensions.records}["lora"]
    assert record.status == "active" and record.builtin
    assert set(record.registrations.extra_networks) == {"lora", "lyco"}
    assert [s.title for s in record.registrations.sections] == ["LoRA"]


def test_tags_are_parsed_with_a1111_rules() -> None:
    text, tags = extract_tags("a <lora:one:0.5> cat, <lora:two:te=0.2:unet=1.5:dyn=8> <hypernet:h:1>")
    assert text == "a  cat,  "
    assert [(t.kind, t.name) for t in tags] == [("lora", "one"), ("lora", "two"), ("hypernet", "h")]
    assert tags[0].number(1, "te", 1.0) == 0.5 and tags[0].number(2, "unet", 0.5) == 0.5
    assert tags[1].number(1, "te", 1.0) == 0.2 and tags[1].number(2, "unet", 0.2) == 1.5
    assert tags[1].number(3, "dyn", 0.0) == 8
    with pytest.raises(RequestError, match="'abc' is not a number"):
        extract_tags("<lora:x:abc>")[1][0].number(1, "te", 1.0)


def test_a_lora_tag_applies_the_lora_for_that_job_only(app, reference: LoadedModel) -> None:
    before = base_hash(app)
    plain = arrays(generate(app))
    tagged_prompt = f"{PROMPT} <lora:style_a:0.8>"
    result = generate(app, prompt=tagged_prompt)
    lora_path = app.loras.resolve("style_a").path
    expected = engine_images(reference, f"{PROMPT} ", loras=[(lora_path, 0.8, 0.8)])
    assert max(int(np.abs(a - b).max()) for a, b in zip(arrays(result), expected)) == 0
    assert max(int(np.abs(a - b).max()) for a, b in zip(arrays(result), plain)) >= 20
    assert base_hash(app) == before  # the cached base model is bit-identical afterwards
    assert all(np.array_equal(a, b) for a, b in zip(arrays(generate(app)), plain))  # and the next job has none

    # The infotext keeps the tag in the prompt and records the LoRA's addnet hash, as A1111 writes it.
    info = read_infotext(Path(result.paths[0]))
    parsed = parse_infotext(info)
    assert parsed["Prompt"] == tagged_prompt
    digest = hashlib.sha256()
    with open(lora_path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + length)
        digest.update(handle.read())
    assert parsed["Lora hashes"] == f"StyleA: {digest.hexdigest()[:12]}"
    assert 'Lora hashes: "StyleA: ' in info


def test_two_jobs_in_a_row_each_get_exactly_their_own_loras(app, reference: LoadedModel) -> None:
    a, b = app.loras.resolve("style_a").path, app.loras.resolve("sub/style_b").path
    first = generate(app, prompt=f"{PROMPT} <lora:StyleA:1>")  # by its ss_output_name alias
    second = generate(app, prompt=f"{PROMPT} <lora:style_b:0.6:-0.4>", negative="blue <lora:style_a:0.3>")
    assert all(np.array_equal(x, y) for x, y in zip(arrays(first),
                                                    engine_images(reference, f"{PROMPT} ", loras=[(a, 1.0, 1.0)])))
    expected = engine_images(reference, f"{PROMPT} ", "blue ", loras=[(b, 0.6, -0.4), (a, 0.3, 0.3)])
    assert all(np.array_equal(x, y) for x, y in zip(arrays(second), expected))
    assert "Lora hashes" in parse_infotext(second.infotexts[0])


def test_bad_lora_tags_stop_the_job_with_a_clear_message_and_change_nothing(app) -> None:
    before = base_hash(app)
    with pytest.raises(RequestError, match=r"LoRA 'missing' not found in .*Lora \(available: .*style_a"):
        generate(app, prompt="x <lora:missing:1>")
    with pytest.raises(RequestError, match=r"'xl_only' was made for SDXL models, but 'tiny'"):
        generate(app, prompt="x <lora:style_a:1> <lora:xl_only:1>")
    with pytest.raises(RequestError, match=r"name the LoRA"):
        generate(app, prompt="x <lora::1>")
    assert base_hash(app) == before
    result = generate(app, prompt="x <hypernet:thing:1>")
    assert any("no extension handles <hypernet" in w for w in result.warnings)
    assert "<hypernet:thing:1>" in parse_infotext(result.infotexts[0])["Prompt"]


def test_vae_is_chosen_per_request_and_recorded(app, reference: LoadedModel) -> None:
    vae_path = app.paths.vae_dir / "other.vae.safetensors"
    own = arrays(generate(app))
    with_other = generate(app, vae="other.vae.safetensors")
    other_model = replace(reference, vae=build_vae(read_vae_override(vae_path), reference, "x"))
    expected = engine_images(other_model, PROMPT)
    assert all(np.array_equal(x, y) for x, y in zip(arrays(with_other), expected))
    assert not all(np.array_equal(x, y) for x, y in zip(arrays(with_other), own))
    params = parse_infotext(with_other.infotexts[0])
    assert params["VAE"] == "other.vae.safetensors"
    assert params["VAE hash"] == hashlib.sha256(vae_path.read_bytes()).hexdigest()[:10]
    # The next job without a VAE gets the checkpoint's own again: the choice was not process-wide.
    assert all(np.array_equal(x, y) for x, y in zip(arrays(generate(app)), own))
    cached_vae = app.models.get("tiny").vae.state_dict()  # the cached model keeps its own VAE
    assert all(torch.equal(cached_vae[k], v) for k, v in reference.vae.state_dict().items())
    assert "VAE" not in parse_infotext(generate(app).infotexts[0])
    with pytest.raises(Exception, match="VAE 'nope.safetensors' not found"):
        generate(app, vae="nope.safetensors")


def test_a_lora_added_while_running_is_found_without_a_restart(app, tiny_sd1) -> None:
    write_kohya_lora(app.paths.lora_dir / "late.safetensors", tiny_sd1.model, seed=15)
    result = generate(app, prompt=f"{PROMPT} <lora:late:1>")
    assert "late: " in parse_infotext(result.infotexts[0])["Lora hashes"]
    card = app.loras.card(app.loras.resolve("style_a"))
    assert card["tag"] == "<lora:StyleA:1>" and card["trigger_words"][:2] == ["hexagon", "green"]
