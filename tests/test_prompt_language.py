"""A1111's prompt language: parser cases from A1111's documented behaviour, and the conditioning the U-Net sees.

Expected conditionings come from a direct computation in this file: an HF CLIPTokenizer (tests/reference.py) splits
the text as A1111's emphasis rules say it is split, the transformers text encoder runs on hand-built 77-token windows,
and the weights and the mean restore are applied here. The project's parser is never used to make an expected value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from tests.reference import write_clip_tokenizer
from webui.engine.conditioning import Conditioning, TextOptions, encode_prompts, final_layer_norm
from webui.engine.denoise import DenoiseContext, DenoiseExtension, UNetCall
from webui.engine.generation import SamplingParams, generate_latents
from webui.engine.loader import LoadedModel, load_checkpoint
from webui.engine.prompt_parser import parse_emphasis, plan_prompt, prompt_schedule, split_and, text_at
from webui.engine.samplers import SamplerRegistry
from webui.engine.tokenizer import count_tokens

BOS, EOS = 49406, 49407

# ---- parser: A1111 1.10's docstring examples (prompt_parser.py), 10 steps ---------------------------------------

SCHEDULES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
    # Documented as "not handling this right now": A1111's grammar cannot read a `|` outside an alternation, so
    # its code (unlike that doctest's recorded output) uses the prompt unchanged; so do we.
    ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
    ("a | b [c:3]", [(10, "a | b [c:3]")]),
    ("a [b:c]", [(10, "a [b:c]")]),  # `when` must be a number: brackets kept as text
    ("[a::3] [:b:3]", [(3, "a "), (10, " b")]),  # [from::when] removes, [to:when] adds
    ("a [[b|c]|d] e", [(i, "a b e" if i % 2 else "a d e") for i in range(1, 11)]),  # the inner one sees odd steps
]


@pytest.mark.parametrize(("prompt", "expected"), SCHEDULES)
def test_prompt_schedules_match_a1111_docstring(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert prompt_schedule(prompt, 10) == expected


def test_schedule_timing_fractions_steps_and_hires() -> None:
    landscape = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
                 "[ in background:0.25] [shoddy:masterful:0.5]")
    assert prompt_schedule(landscape, 100) == [  # A1111's comment example, 100 steps
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]
    # Hires pass of 10 steps after 10: fractions 1-2 and steps past 10 address it (A1111 1.10 docstring).
    assert prompt_schedule("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:15] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    # An integer is a step even when it is 1 ("1" is not "1.0"); the old rule reads below 1 as a fraction.
    assert prompt_schedule("[a:b:1]", 10) == [(1, "a"), (10, "b")]
    assert prompt_schedule("[a:b:1.0]", 10) == [(10, "a")]
    assert prompt_schedule("[a:b:0.3]", 10, old_scheduling=True) == [(3, "a"), (10, "b")]
    assert prompt_schedule("a [b:1.5] c", 10, 10, old_scheduling=True) == [(1, "a  c"), (10, "a b c")]
    # A1111 compares its 0-based call counter with the end steps: `[a:b:3]` shows `a` for calls 0..3.
    schedule = prompt_schedule("[a:b:3]", 10)
    assert [schedule[text_at(schedule, call)][1] for call in range(6)] == ["a", "a", "a", "a", "b", "b"]


EMPHASIS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("((x))", [("x", 1.2100000000000002)]),
    ("[x]", [("x", 1 / 1.1)]),
    ("(x:-1.5) y", [("x", -1.5), (" y", 1.0)]),
    (r"a \\ b \q", [("a \\ b q", 1.0)]),  # an escaped backslash is one; any other backslash is dropped
]


@pytest.mark.parametrize(("prompt", "expected"), EMPHASIS)
def test_emphasis_matches_a1111_docstring(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert [(s.text, s.weight) for s in parse_emphasis(prompt)] == expected


def test_break_and_composable_prompts() -> None:
    segments = parse_emphasis("a cat BREAK (a dog)")
    assert [(s.text, s.weight, s.is_break) for s in segments] == [
        ("a cat", 1.0, False), ("BREAK", -1.0, True), ("", 1.0, False), ("a dog", 1.1, False)]
    assert split_and("a cat :1.2 AND a dog AND a bird:0.5") == [("a cat", 1.2), (" a dog", 1.0), (" a bird", 0.5)]
    assert split_and("a cat and a dog ANDROID") == [("a cat and a dog ANDROID", 1.0)]
    plan = plan_prompt("[red:blue:2] cat :0.7 AND dog", 4)
    assert plan.parts == ((0.7, ((2, "red cat"), (4, "blue cat"))), (1.0, ((4, " dog"),)))
    assert plan_prompt("x AND y", 4, positive=False).parts == ((1.0, ((4, "x AND y"),)),)


def test_token_counter_counts_what_the_encoder_sees() -> None:
    assert count_tokens("(cat:1.3), [dog]") == (3, 75)  # cat , dog
    assert count_tokens("a [cat dog bird:fish:5]") == (4, 75)  # the longest text any step shows
    assert count_tokens("a BREAK b") == (76, 150)  # A1111 counts the padding BREAK adds
    assert count_tokens("cat " * 100) == (100, 150)


# ---- conditioning against a direct computation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> CLIPTokenizer:
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    write_clip_tokenizer(folder, "<|endoftext|>")
    return CLIPTokenizer.from_pretrained(str(folder))


def _with_offset_norms(model: LoadedModel) -> LoadedModel:
    """Random-initialised final LayerNorms have zero bias, so every token's mean is 0 and "Original"'s mean restore
    divides noise by noise; a bias makes the mean meaningful, as in trained encoders."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for encoder in model.text_encoders:
            norm = final_layer_norm(encoder)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.5 + 0.3)
    return model


@pytest.fixture(scope="module")
def sd1(tiny_sd1) -> LoadedModel:
    return _with_offset_norms(load_checkpoint(tiny_sd1.path))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl) -> LoadedModel:
    return _with_offset_norms(load_checkpoint(tiny_sdxl.path))


def window(tokenizer: CLIPTokenizer, pieces: list[tuple[str, float]], pad: int) -> tuple[list[int], list[float]]:
    """One 77-token window from (text, weight) pieces, each tokenised on its own as A1111 does."""
    ids, weights = [BOS], [1.0]
    for text, weight in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        weights += [weight] * len(piece)
    ids.append(EOS)
    weights += [1.0] * (77 - len(weights))
    return ids + [pad] * (77 - len(ids)), weights


def hidden(encoder, ids: list[int], layer: str, skip: int = 1) -> torch.Tensor:
    """layer: "final" (last_hidden_state, or with skip > 1 hidden_states[-skip] + final LayerNorm), "penultimate"."""
    with torch.no_grad():
        out = encoder.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    if layer == "penultimate":
        return out.hidden_states[-2]
    if skip > 1:
        return final_layer_norm(encoder)(out.hidden_states[-skip])
    return out.last_hidden_state


def emphasised(z: torch.Tensor, weights: list[float], restore_mean: bool = True) -> torch.Tensor:
    scaled = z * torch.tensor(weights)[None, :, None]
    return scaled * (z.mean() / scaled.mean()) if restore_mean else scaled


def test_sd1_emphasis_modes_against_the_text_encoder(sd1, hf_tokenizer) -> None:
    prompt = "a photo of a (red:1.5) [cat] ((sitting))"
    pieces = [("a photo of a ", 1.0), ("red", 1.5), (" ", 1.0), ("cat", 1 / 1.1), (" ", 1.0), ("sitting", 1.21)]
    ids, weights = window(hf_tokenizer, pieces, EOS)
    z = hidden(sd1.text_encoders[0], ids, "final")
    for mode, expected in [("Original", emphasised(z, weights)), ("No norm", emphasised(z, weights, False)),
                           ("Ignore", z)]:
        got = encode_prompts(sd1, [prompt], options=TextOptions(emphasis=mode)).context
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=mode)
    literal_ids, _ = window(hf_tokenizer, [(prompt, 1.0)], EOS)  # "None": brackets are words
    literal = encode_prompts(sd1, [prompt], options=TextOptions(emphasis="None")).context
    torch.testing.assert_close(literal, hidden(sd1.text_encoders[0], literal_ids, "final"), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(encode_prompts(sd1, [prompt]).context, z, atol=1e-3)  # the weights act


def test_weights_follow_tokens_through_comma_backtrack(sd1, hf_tokenizer) -> None:
    prompt = "cat " * 70 + ", (red dog:1.3) on green grass under a blue sky"  # 80 tokens: the phrase moves whole
    first_ids, first_weights = window(hf_tokenizer, [("cat " * 70 + ",", 1.0)], EOS)  # 71 tokens, then padding
    second_ids, second_weights = window(hf_tokenizer, [(" red dog", 1.3), (" on green grass under a blue sky", 1.0)],
                                        EOS)
    encoder = sd1.text_encoders[0]
    expected = torch.cat([emphasised(hidden(encoder, first_ids, "final"), first_weights),
                          emphasised(hidden(encoder, second_ids, "final"), second_weights)], dim=1)
    torch.testing.assert_close(encode_prompts(sd1, [prompt]).context, expected, rtol=1e-5, atol=1e-5)


def test_clip_skip_takes_an_earlier_layer_and_the_final_norm(sd1, hf_tokenizer) -> None:
    ids, _ = window(hf_tokenizer, [("a red cat", 1.0)], EOS)
    encoder = sd1.text_encoders[0]
    skipped = encode_prompts(sd1, ["a red cat"], options=TextOptions(clip_skip=2)).context
    torch.testing.assert_close(skipped, hidden(encoder, ids, "final", skip=2), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(skipped, hidden(encoder, ids, "final"), atol=1e-3)
    with pytest.raises(ValueError, match="1 to 12"):
        TextOptions(clip_skip=13)


def test_sdxl_both_encoders_get_the_weights_and_pooled_is_unweighted(sdxl, hf_tokenizer) -> None:
    prompt = "a (red:1.4) cat"
    pieces = [("a ", 1.0), ("red", 1.4), (" cat", 1.0)]
    (ids_l, weights), (ids_g, _) = window(hf_tokenizer, pieces, EOS), window(hf_tokenizer, pieces, 0)
    clip_l, clip_g = sdxl.text_encoders
    expected = torch.cat([emphasised(hidden(clip_l, ids_l, "penultimate"), weights),
                          emphasised(hidden(clip_g, ids_g, "penultimate"), weights)], dim=-1)
    got = encode_prompts(sdxl, [prompt])
    torch.testing.assert_close(got.context, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        pooled = clip_g.model(input_ids=torch.tensor([ids_g])).text_embeds
    torch.testing.assert_close(got.pooled, pooled, rtol=1e-5, atol=1e-5)
    # A1111 1.10 leaves SDXL alone under Clip skip unless `sdxl_clip_l_skip`, which takes CLIP-L's hidden_states[-N].
    assert torch.equal(encode_prompts(sdxl, [prompt], options=TextOptions(clip_skip=2)).context, got.context)
    with torch.no_grad():
        layer = clip_l.model(input_ids=torch.tensor([ids_l]), output_hidden_states=True).hidden_states[-3]
    skipped = encode_prompts(sdxl, [prompt], options=TextOptions(clip_skip=3, sdxl_clip_l_skip=True)).context
    torch.testing.assert_close(skipped[..., :layer.shape[-1]], emphasised(layer, weights), rtol=1e-5, atol=1e-5)


# ---- per-step conditioning in the loop ---------------------------------------------------------------------------


class RecordCalls(DenoiseExtension):
    """Every U-Net call's inputs, as the loop hands them over."""

    def __init__(self) -> None:
        self.calls: list[tuple[UNetCall, int]] = []
        self.denoised: list[torch.Tensor] = []

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        self.calls.append((call, ctx.model_calls))

    def after_cfg(self, ctx: DenoiseContext) -> None:
        self.denoised.append(ctx.denoised.clone())


def plain(model: LoadedModel, tokenizer: CLIPTokenizer, text: str) -> torch.Tensor:
    ids, _ = window(tokenizer, [(text, 1.0)], EOS)
    return hidden(model.text_encoders[0], ids, "final")


def test_prompt_editing_switches_the_conditioning_at_the_right_call(sd1, hf_tokenizer) -> None:
    record = RecordCalls()
    params = SamplingParams(prompt="[a red cat:a blue dog:2]", negative_prompt="blurry", sampler="Euler", steps=5,
                            cfg_scale=5.0, width=64, height=64, seeds=[1])
    generate_latents(sd1, params, SamplerRegistry(), [record])
    red, blue, blurry = (plain(sd1, hf_tokenizer, text) for text in ("a red cat", "a blue dog", "blurry"))
    assert [call.halves for call, _ in record.calls] == [("uncond", "cond")] * 5
    for call, number in record.calls:  # A1111: the text ending at step 2 holds for calls 0, 1 and 2
        uncond, cond = call.conditioning.context.chunk(2)
        torch.testing.assert_close(uncond, blurry, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cond, red if number - 1 <= 2 else blue, rtol=1e-5, atol=1e-5)


def test_and_weights_combine_the_predictions(sd1, hf_tokenizer) -> None:
    record = RecordCalls()
    params = SamplingParams(prompt="a red cat :0.7 AND a blue dog :0.4", negative_prompt="", sampler="Euler",
                            steps=1, cfg_scale=5.0, width=64, height=64, seeds=[2])
    generate_latents(sd1, params, SamplerRegistry(), [record])
    (call, _), = record.calls
    assert call.halves == ("uncond", "cond", "cond")
    contexts = call.conditioning.context.chunk(3)
    for got, text in zip(contexts, ("", "a red cat", "a blue dog")):
        torch.testing.assert_close(got, plain(sd1, hf_tokenizer, text), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the U-Net on each conditioning by itself, combined as A1111's combine_denoised
        outputs = [sd1.unet(call.sample[:1], call.timestep, encoder_hidden_states=context).sample
                   for context in contexts]
    uncond, red, blue = outputs
    expected = uncond + 0.7 * 5.0 * (red - uncond) + 0.4 * 5.0 * (blue - uncond)
    torch.testing.assert_close(record.denoised[0], expected, rtol=1e-4, atol=1e-4)


def test_clip_skip_and_emphasis_reach_the_job_and_its_infotext(tiny_sd1, tmp_path: Path) -> None:
    from webui.api.a1111_schema import Txt2ImgBody, request_fields
    from webui.context import AppPaths, build_context
    from webui.services.infotext import parse_infotext
    from webui.services.requests import GenerationRequest, RequestError

    fields, warnings = request_fields(Txt2ImgBody(override_settings={"CLIP_stop_at_last_layers": 2,
                                                                     "emphasis": "No norm"}), None)
    assert fields["clip_skip"] == 2 and fields["emphasis"] == "No norm" and not warnings
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / "tiny.safetensors").write_bytes(tiny_sd1.path.read_bytes())
    app = build_context(AppPaths(models, tmp_path / "outputs", tmp_path / "data", ()), device="cpu")
    base = dict(prompt="a (red:1.3) circle", steps=2, width=64, height=64, seed=5, sampler_name="Euler")
    runs = {}
    for name, extra in [("default", {}), ("pasted", {"clip_skip": 2, "emphasis": "No norm"})]:
        result = app.generation.run(app.jobs.create("t", "txt2img"), GenerationRequest(**base, **extra), save=False)
        runs[name] = result
    default, pasted = (parse_infotext(runs[name].infotexts[0]) for name in ("default", "pasted"))
    assert "Emphasis" not in default and default["Clip skip"] == 1  # omitted, A1111's default filled in
    assert pasted["Clip skip"] == 2 and pasted["Emphasis"] == "No norm"
    assert runs["default"].images[0].tobytes() != runs["pasted"].images[0].tobytes()
    with pytest.raises(RequestError, match="prompt: .*not a number"):
        app.generation.run(app.jobs.create("t", "txt2img"), GenerationRequest(**{**base, "prompt": "(cat:1.2.3)"}))


def test_conditioning_dataclass_is_unchanged_for_plain_prompts(sd1, hf_tokenizer) -> None:
    cond = encode_prompts(sd1, ["a red cat", "a red cat"])
    assert isinstance(cond, Conditioning) and cond.context.shape[0] == 2
    torch.testing.assert_close(cond.context[:1], plain(sd1, hf_tokenizer, "a red cat"), rtol=1e-5, atol=1e-5)


def test_prompt_infotext_keys_follow_a1111() -> None:
    from webui.services.generation import GenerationOptions, prompt_infotext
    from webui.services.requests import GenerationRequest

    request = GenerationRequest(prompt="[a:b:1.0] cat", negative_prompt="(ugly)", steps=10)
    assert prompt_infotext(request, GenerationOptions()) == ({}, {})
    options = GenerationOptions(clip_skip=2, emphasis="Ignore", old_scheduling=True)
    assert prompt_infotext(request, options) == ({"Clip skip": 2},
                                                 {"Emphasis": "Ignore", "Old prompt editing timelines": True})
    unchanged = GenerationRequest(prompt="[a:b:0.5] cat", steps=10)  # the old rule reads it the same way
    assert prompt_infotext(unchanged, GenerationOptions(old_scheduling=True)) == ({}, {})
    assert GenerationOptions().for_request(GenerationRequest(clip_skip=3, emphasis="No norm")).text_options() == \
        TextOptions(emphasis="No norm", clip_skip=3)
