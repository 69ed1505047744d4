"""CLIP BPE tokenisation with A1111-style 75-token chunking.

The vocabulary is open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`, so this works offline. Chunking (75 tokens per
77-token window, comma backtracking, `BREAK`) is A1111 behaviour that no library provides, hence written here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from open_clip.tokenizer import SimpleTokenizer

BOS_ID = 49406
EOS_ID = 49407
CHUNK_TOKENS = 75
WINDOW = CHUNK_TOKENS + 2
COMMA_BACKTRACK = 20  # A1111's default "prompt word wrap length limit"


@lru_cache(maxsize=1)
def _bpe() -> SimpleTokenizer:
    return SimpleTokenizer()


@lru_cache(maxsize=1)
def _comma_id() -> int:
    return _bpe().encode(",")[0]


@dataclass(frozen=True)
class TokenChunks:
    """Token ids of a prompt split into 77-id windows: BOS, up to 75 tokens, EOS, padding."""

    windows: tuple[tuple[int, ...], ...]
    token_count: int


def encode_text(text: str) -> list[int]:
    return list(_bpe().encode(text))


def _split_chunks(tokens: list[int]) -> list[list[int]]:
    chunks: list[list[int]] = []
    current: list[int] = []
    last_comma = -1
    for token in tokens:
        if token == _comma_id():
            last_comma = len(current)
        elif len(current) == CHUNK_TOKENS and last_comma != -1 and len(current) - last_comma <= COMMA_BACKTRACK:
            # Move the words after the last comma to the next chunk so a phrase is not cut in half.
            chunks.append(current[: last_comma + 1])
            current, last_comma = current[last_comma + 1:], -1
        if len(current) == CHUNK_TOKENS:
            chunks.append(current)
            current, last_comma = [], -1
        current.append(token)
    if current or not chunks:
        chunks.append(current)
    return chunks


def tokenize_prompt(prompt: str, pad_id: int) -> TokenChunks:
    """A1111 chunking: text before/after an uppercase `BREAK` never shares a chunk."""
    pieces = re.split(r"\bBREAK\b", prompt)
    chunks: list[list[int]] = []
    count = 0
    for piece in pieces:
        tokens = encode_text(piece)
        count += len(tokens)
        chunks.extend(_split_chunks(tokens))
    windows = []
    for chunk in chunks:
        window = [BOS_ID, *chunk, EOS_ID]
        window += [pad_id] * (WINDOW - len(window))
        windows.append(tuple(window))
    return TokenChunks(windows=tuple(windows), token_count=count)


def count_tokens(prompt: str) -> tuple[int, int]:
    """(tokens used, capacity) for the UI's `n/75` counter."""
    chunks = tokenize_prompt(prompt, EOS_ID)
    return chunks.token_count, CHUNK_TOKENS * len(chunks.windows)
