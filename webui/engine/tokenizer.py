"""CLIP BPE tokenisation with A1111-style 75-token chunking.

The vocabulary is open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`, so this works offline. Chunking (75 tokens per
77-token window, comma backtracking, `BREAK`, emphasis weights that follow their tokens) is A1111 behaviour
(`sd_hijack_clip.tokenize_line`) that no library provides, hence written here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from open_clip.tokenizer import SimpleTokenizer

from .prompt_parser import (
    BREAK_SEGMENT,
    DEFAULT_EMPHASIS,
    PromptSyntaxError,
    Segment,
    plan_prompt,
    prompt_segments,
)

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


EMBEDDING_PLACEHOLDER_ID = 0  # what A1111 puts where an embedding's vectors go; the vectors replace its lookup


@dataclass(frozen=True)
class EmbeddingFix:
    """Where an embedding's vectors go: window index, position in the window (BOS is position 0), and its name."""

    window: int
    offset: int
    name: str


@dataclass(frozen=True)
class TokenChunks:
    """Token ids of a prompt split into 77-id windows: BOS, up to 75 tokens, EOS, padding; and where textual-inversion
    embeddings replace the placeholder ids."""

    windows: tuple[tuple[int, ...], ...]
    token_count: int
    fixes: tuple[EmbeddingFix, ...] = ()
    weights: tuple[tuple[float, ...], ...] = ()  # per window position: the emphasis weight (1 for BOS/EOS/padding)

    def window_weights(self) -> tuple[tuple[float, ...], ...]:
        return self.weights or tuple((1.0,) * WINDOW for _ in self.windows)


def encode_text(text: str) -> list[int]:
    return list(_bpe().encode(text))


class EmbeddingMatcher:
    """Finds embeddings in a token sequence by the token ids of their names (A1111 matches names as token sequences,
    so `EasyNegative` and `easynegative` are the same), longest name first."""

    def __init__(self, vector_counts: dict[str, int]) -> None:
        self._by_first: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}
        for name, count in vector_counts.items():
            ids = tuple(encode_text(name))
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name, count))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda item: -len(item[0]))

    def at(self, tokens: list[int], position: int) -> tuple[str, int, int] | None:
        """(name, vector count, name length in tokens) of the embedding starting at `position`, if any."""
        for ids, name, count in self._by_first.get(tokens[position], ()):
            if tuple(tokens[position:position + len(ids)]) == ids:
                return name, count, len(ids)
        return None


class _Chunker:
    """A1111's `tokenize_line`: 75-token chunks, comma backtracking, embeddings never split across chunks; each token
    keeps the emphasis weight of the text it came from, wherever the chunking moves it."""

    def __init__(self, matcher: EmbeddingMatcher | None) -> None:
        self.matcher = matcher
        self.chunks: list[tuple[list[int], list[float], list[tuple[int, str]]]] = []
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.fixes: list[tuple[int, str]] = []  # (offset in chunk tokens, name)
        self.last_comma = -1

    def next_chunk(self) -> None:
        self.chunks.append((self.tokens, self.weights, self.fixes))
        self.tokens, self.weights, self.fixes, self.last_comma = [], [], [], -1

    def add(self, tokens: list[int], weight: float = 1.0) -> None:
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == _comma_id():
                self.last_comma = len(self.tokens)
            elif len(self.tokens) == CHUNK_TOKENS and self.last_comma != -1 and \
                    len(self.tokens) - self.last_comma <= COMMA_BACKTRACK:
                # Move the words after the last comma to the next chunk so a phrase is not cut in half.
                cut = self.last_comma + 1
                moved, moved_weights = self.tokens[cut:], self.weights[cut:]
                moved_fixes = [(o - cut, n) for o, n in self.fixes if o >= cut]
                self.tokens, self.weights = self.tokens[:cut], self.weights[:cut]
                self.fixes = [(o, n) for o, n in self.fixes if o < cut]
                self.next_chunk()
                self.tokens, self.weights, self.fixes = moved, moved_weights, moved_fixes
            if len(self.tokens) == CHUNK_TOKENS:
                self.next_chunk()
            found = self.matcher.at(tokens, position) if self.matcher else None
            if found is None:
                self.tokens.append(token)
                self.weights.append(weight)
                position += 1
                continue
            name, vectors, name_length = found
            if vectors > CHUNK_TOKENS:
                raise ValueError(f"embedding {name!r} has {vectors} vectors; at most {CHUNK_TOKENS} fit a prompt chunk")
            if len(self.tokens) + vectors > CHUNK_TOKENS:
                self.next_chunk()
            self.fixes.append((len(self.tokens), name))
            self.tokens += [EMBEDDING_PLACEHOLDER_ID] * vectors
            self.weights += [weight] * vectors
            position += name_length


def tokenize_segments(segments: Sequence[Segment], pad_id: int, embeddings: EmbeddingMatcher | None = None
                      ) -> TokenChunks:
    """Chunk weighted segments (from `prompt_parser.prompt_segments`). Each segment is tokenised on its own, as A1111
    does, so a bracket inside a word splits the word. `token_count` is A1111's: 75 for every full chunk, then the
    tokens of the last one (so `BREAK` and comma backtracking count the padding they cause)."""
    chunker = _Chunker(embeddings)
    for segment in segments:
        if segment.is_break:
            chunker.next_chunk()
            continue
        chunker.add(encode_text(segment.text), segment.weight)
    count = CHUNK_TOKENS * len(chunker.chunks) + len(chunker.tokens)
    if chunker.tokens or not chunker.chunks:
        chunker.next_chunk()
    windows, weights, fixes = [], [], []
    for window_index, (chunk, chunk_weights, chunk_fixes) in enumerate(chunker.chunks):
        window = [BOS_ID, *chunk, EOS_ID]
        window += [pad_id] * (WINDOW - len(window))
        windows.append(tuple(window))
        weights.append(tuple([1.0, *chunk_weights, *[1.0] * (WINDOW - 1 - len(chunk_weights))]))
        fixes += [EmbeddingFix(window_index, offset + 1, name) for offset, name in chunk_fixes]
    return TokenChunks(windows=tuple(windows), token_count=count, fixes=tuple(fixes), weights=tuple(weights))


def tokenize_prompt(prompt: str, pad_id: int, embeddings: EmbeddingMatcher | None = None) -> TokenChunks:
    """A1111 chunking of plain text (no emphasis parsing): text before/after an uppercase `BREAK` never shares a
    chunk. With `embeddings`, an embedding's name is replaced by placeholder ids, one per vector, and its place is
    recorded in `fixes`."""
    segments: list[Segment] = []
    for index, piece in enumerate(re.split(r"\bBREAK\b", prompt)):
        if index:
            segments.append(BREAK_SEGMENT)
        segments.append(Segment(piece))
    return tokenize_segments(segments, pad_id, embeddings)


def count_tokens(prompt: str, steps: int = 20, emphasis: str = DEFAULT_EMPHASIS, positive: bool = True
                 ) -> tuple[int, int]:
    """(tokens used, capacity) for the UI's `n/75` counter, as A1111 counts: the prompt is parsed (AND parts for a
    positive prompt, prompt editing for `steps` steps, emphasis brackets removed) and the longest text any step shows
    is counted. A prompt the parser refuses is counted as plain text (generation reports the problem)."""
    try:
        texts = plan_prompt(prompt, max(1, steps), positive=positive).texts
        counts = [tokenize_segments(prompt_segments(text, emphasis), EOS_ID).token_count for text in texts]
    except PromptSyntaxError:
        counts = [tokenize_prompt(prompt, EOS_ID).token_count]
    used = max(counts)
    return used, CHUNK_TOKENS * max(1, -(-used // CHUNK_TOKENS))
