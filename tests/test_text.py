"""Tokenisation (open_clip's bundled vocabulary) and A1111-style prompt chunking."""

from __future__ import annotations

import torch

from webui.engine.conditioning import encode_prompts
from webui.engine.loader import load_checkpoint
from webui.engine.tokenizer import BOS_ID, EOS_ID, count_tokens, tokenize_prompt


def test_known_token_ids_and_padding() -> None:
    sd1 = tokenize_prompt("a cat on a mat", pad_id=EOS_ID).windows
    assert sd1[0][:7] == (BOS_ID, 320, 2368, 525, 320, 9063, EOS_ID)
    assert set(sd1[0][7:]) == {EOS_ID} and len(sd1[0]) == 77
    openclip = tokenize_prompt("a cat on a mat", pad_id=0).windows
    assert openclip[0][6] == EOS_ID and set(openclip[0][7:]) == {0}


def test_long_prompt_splits_into_77_token_windows() -> None:
    chunks = tokenize_prompt("cat " * 100, pad_id=EOS_ID)
    assert chunks.token_count == 100
    assert len(chunks.windows) == 2
    assert chunks.windows[0].count(2368) == 75 and chunks.windows[1].count(2368) == 25
    assert count_tokens("cat " * 100) == (100, 150)


def test_comma_backtrack_keeps_phrases_whole() -> None:
    prompt = "cat " * 70 + ", red dog on grass here today"
    chunks = tokenize_prompt(prompt, pad_id=EOS_ID)
    first, second = chunks.windows
    comma = tokenize_prompt(",", EOS_ID).windows[0][1]
    assert first[71] == comma and first[72] == EOS_ID  # 70 cats and the comma, then padding
    phrase = tokenize_prompt("red dog on grass here today", EOS_ID).windows[0][1:7]
    assert second[1:7] == phrase  # the phrase after the comma moved whole to the next window


def test_break_starts_a_new_chunk() -> None:
    chunks = tokenize_prompt("a cat BREAK a dog", pad_id=EOS_ID)
    assert len(chunks.windows) == 2


def test_long_prompt_conditioning_concatenates_windows(tiny_sd1) -> None:
    model = load_checkpoint(tiny_sd1.path)
    short = encode_prompts(model, ["a cat"])
    long = encode_prompts(model, ["cat " * 100])
    assert short.context.shape[1] == 77 and long.context.shape[1] == 154
    assert torch.isfinite(long.context).all()
