"""Textual-inversion embeddings: parity with diffusers' `load_textual_inversion`, A1111's chunking, the app path.

Files are written here in the layouts found in the wild: A1111's `.pt` (`string_to_param`), SDXL `.safetensors`
(`clip_l` + `clip_g`). diffusers adds the embedding as new tokens of its tokenizer, a different mechanism from ours
(vectors put in after the lookup), so equal images mean the vectors land at the same places.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.reference import batch_seeds, load_reference_pipeline, reference_generators, reference_noise, \
    reference_scheduler
from webui.context import AppPaths, build_context
from webui.engine.embeddings import EmbeddingError, embedding_set_for, read_embedding
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.loader import load_checkpoint
from webui.engine.samplers import SamplerRegistry
from webui.engine.tokenizer import BOS_ID, EOS_ID, EmbeddingMatcher, encode_text, tokenize_prompt
from webui.services.infotext import parse_infotext
from webui.services.requests import GenerationRequest

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed)) * 0.5


def write_a1111_pt(path: Path, matrix: torch.Tensor) -> Path:
    """A1111's textual_inversion save format."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": matrix}, "name": path.stem, "step": 500,
                "sd_checkpoint": "abc", "sd_checkpoint_name": "base"}, str(path))
    return path


def write_sdxl(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path


def images(model, prompt: str, negative: str, embeddings, width: int = 64, height: int = 64,
           steps: int = 4) -> list[np.ndarray]:
    params = SamplingParams(prompt=prompt, negative_prompt=negative, sampler="Euler (diffusers)", steps=steps,
                            cfg_scale=6.0, width=width, height=height, seeds=batch_seeds(3, 2), embeddings=embeddings)
    return [np.asarray(i, dtype=int) for i in txt2img(model, params, SamplerRegistry())]


def reference_images(pipe, prompt: str, negative: str, width: int = 64, height: int = 64) -> list[np.ndarray]:
    seeds = batch_seeds(3, 2)
    pipe.scheduler = reference_scheduler("Euler (diffusers)", "Automatic", "epsilon", seeds[0])
    out = pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=4, guidance_scale=6.0, width=width,
               height=height, latents=reference_noise(seeds, height, width), num_images_per_prompt=2,
               generator=reference_generators(seeds)).images
    return [np.asarray(i, dtype=int) for i in out]


def max_diff(a, b) -> int:
    return max(int(np.abs(x - y).max()) for x, y in zip(a, b))


def test_sd1_a1111_embedding_matches_diffusers_load_textual_inversion(tiny_sd1, tmp_path: Path) -> None:
    path = write_a1111_pt(tmp_path / "myemb.pt", vectors(3, 64, seed=1))
    ours_model = load_checkpoint(tiny_sd1.path)
    emb_set, skipped = embedding_set_for(ours_model, {"myemb": read_embedding(path)})
    assert skipped == [] and emb_set.embeddings["myemb"].vector_count == 3
    prompt, negative = "a red circle, myemb on a field", "blurry myemb"
    ours = images(ours_model, prompt, negative, emb_set)
    plain = images(ours_model, prompt, negative, None)
    pipe = load_reference_pipeline(tiny_sd1.path, tiny_sd1.model, tmp_path / "ref")
    pipe.load_textual_inversion(str(path), token="myemb")
    ref = reference_images(pipe, prompt, negative)
    print(f"\nTI sd1: max diff {max_diff(ours, ref)}/255, effect {max_diff(ours, plain)}/255")
    assert max_diff(ours, ref) <= 2
    assert max_diff(ours, plain) >= 10


def test_sdxl_clip_l_clip_g_embedding_matches_diffusers(tiny_sdxl, tmp_path: Path) -> None:
    clip_l, clip_g = vectors(2, 64, seed=2), vectors(2, 128, seed=3)
    path = write_sdxl(tmp_path / "xlemb.safetensors", clip_l, clip_g)
    ours_model = load_checkpoint(tiny_sdxl.path)
    emb_set, skipped = embedding_set_for(ours_model, {"xlemb": read_embedding(path)})
    assert skipped == []
    prompt, negative = "xlemb, a blue square", "noise"
    ours = images(ours_model, prompt, negative, emb_set)
    pipe = load_reference_pipeline(tiny_sdxl.path, tiny_sdxl.model, tmp_path / "ref")
    pipe.load_textual_inversion(clip_l, token="xlemb", text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(clip_g, token="xlemb", text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    ref = reference_images(pipe, prompt, negative)
    assert max_diff(ours, ref) <= 2
    assert max_diff(ours, images(ours_model, prompt, negative, None)) >= 10


def test_an_embedding_is_never_split_across_chunks_and_names_match_as_tokens() -> None:
    matcher = EmbeddingMatcher({"EasyNeg": 4, "easy": 1})
    name_ids = encode_text("easyneg")
    cat = encode_text("cat")[0]
    chunks = tokenize_prompt("cat " * 73 + "easyneg", EOS_ID, matcher)
    assert len(chunks.windows) == 2
    first, second = chunks.windows
    assert first[1:74] == (cat,) * 73 and first[74] == EOS_ID  # 73 cats, then the chunk is closed and padded
    assert second[:6] == (BOS_ID, 0, 0, 0, 0, EOS_ID)  # four placeholder slots for the vectors
    assert [(f.window, f.offset, f.name) for f in chunks.fixes] == [(1, 1, "EasyNeg")]
    # Longest name first: "easyneg" is not read as "easy" + "neg"; a bare "easy" is the 1-vector embedding.
    assert tokenize_prompt("EASYNEG easy", EOS_ID, matcher).fixes[0].name == "EasyNeg"
    assert [f.name for f in tokenize_prompt("so easy", EOS_ID, matcher).fixes] == ["easy"]
    assert tokenize_prompt("easyneg", EOS_ID).windows[0][1:1 + len(name_ids)] == tuple(name_ids)  # no matcher


def test_skipped_broken_and_unsafe_embedding_files(tiny_sd1, tmp_path: Path) -> None:
    model = load_checkpoint(tiny_sd1.path)
    xl = read_embedding(write_sdxl(tmp_path / "xl.safetensors", vectors(1, 64, 4), vectors(1, 128, 5)))
    wide = read_embedding(write_a1111_pt(tmp_path / "wide.pt", vectors(2, 1024, 6)))  # an SD2 embedding
    fits = read_embedding(write_a1111_pt(tmp_path / "fits.pt", vectors(1, 64, 7)))
    emb_set, skipped = embedding_set_for(model, {"xl": xl, "wide": wide, "fits": fits})
    assert list(emb_set.embeddings) == ["fits"] and skipped == ["wide", "xl"]

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"string_to_param": {"*": Payload()}}))
    with pytest.raises(EmbeddingError, match="'evil'"):
        read_embedding(tmp_path / "evil.pt")
    save_file({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(EmbeddingError, match="'two': expected one tensor"):
        read_embedding(tmp_path / "two.safetensors")


def test_embeddings_through_the_app_with_ti_hashes(tiny_sd1, tiny_sdxl, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_sd1.path, models / "Stable-diffusion" / "tiny.safetensors")
    used = write_a1111_pt(models / "embeddings" / "style_emb.pt", vectors(2, 64, 8))
    write_a1111_pt(models / "embeddings" / "sub" / "unused_emb.pt", vectors(1, 64, 9))
    write_sdxl(models / "embeddings" / "xl_emb.safetensors", vectors(1, 64, 10), vectors(1, 128, 11))
    (models / "embeddings" / "junk.pt").write_bytes(b"not a pickle")
    app = build_context(AppPaths(models, tmp_path / "outputs", tmp_path / "data", ()), device="cpu")
    request = GenerationRequest(prompt="a circle, style_emb", negative_prompt="blurry", steps=3, width=64, height=64,
                                seed=3, sampler_name="Euler (diffusers)", cfg_scale=6.0, batch_size=2)
    result = app.generation.run(app.jobs.create("t", "txt2img"), request)
    model = app.models.get("tiny")
    expected = images(model, "a circle, style_emb", "blurry", app.embeddings.for_model(model), steps=3)
    assert all(np.array_equal(np.asarray(a, dtype=int), b) for a, b in zip(result.images, expected))
    import hashlib

    params = parse_infotext(result.infotexts[0])
    assert params["TI hashes"] == f"style_emb: {hashlib.sha256(used.read_bytes()).hexdigest()[:12]}"
    listing = app.embeddings.listing(model)
    assert sorted(listing.loaded) == ["style_emb", "unused_emb"] and listing.skipped == ["xl_emb"]
    assert "junk" in listing.broken
    plain = app.generation.run(app.jobs.create("t", "txt2img"), GenerationRequest(
        prompt="a circle", negative_prompt="blurry", steps=3, width=64, height=64, seed=3, sampler_name="Euler"))
    assert "TI hashes" not in parse_infotext(plain.infotexts[0])
