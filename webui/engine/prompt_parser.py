"""A1111's prompt language: emphasis, prompt editing, alternation and composable `AND`, as pure text functions.

What the text encoder sees for a prompt at a given sampling step follows A1111 1.10 (`prompt_parser.py`):

- `p1 :1.2 AND p2` splits into sub-prompts with weights (composable diffusion); only the positive prompt is split.
- `[from:to:when]`, `[to:when]`, `[from::when]` switch text during sampling; `[a|b|c]` alternates every step.
  `when` with a decimal point is a fraction of the steps, an integer an absolute step; with a hires pass, fractions
  1-2 and integers past the first pass address the hires pass. The pre-1.8 rule ("below 1 is a fraction") is kept
  behind `old_scheduling` (A1111's "Use old prompt editing timelines").
- `(x)`, `[x]`, `(x:w)`, escapes and `BREAK` give (text, weight) segments for the encoder (`parse_emphasis`).

A1111 parses schedules with a Lark grammar. This is a small hand-written recursive-descent parser instead: the
language is tiny, A1111's exact tolerance rules (stray brackets kept as text, a stray `|` disabling scheduling for the
whole prompt) are easier to state directly than through a general parser's ambiguity resolution, and no library
implements this syntax. Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
DEFAULT_EMPHASIS = "Original"
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# A1111 model calls per step for its second-order samplers: their prompt schedules are counted in model calls.
SECOND_ORDER_SAMPLERS = frozenset({"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "Restart"})


class PromptSyntaxError(ValueError):
    """A prompt A1111 would fail on (e.g. `(cat:1.2.3)`); the message says what to change."""


# ---- prompt editing and alternation ------------------------------------------------------------------------------


@dataclass
class _Scheduled:
    before: list[_Node] | None
    after: list[_Node]
    when_text: str  # the number as written: a decimal point decides fraction vs absolute step
    when: int = 0  # filled in for a given step count


@dataclass
class _Alternate:
    options: list[list[_Node]]


_Node = Union[str, _Scheduled, _Alternate]

# Lark's SIGNED_NUMBER, with the optional whitespace A1111's rule allows around it.
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*")
_STOPS = "[]():|\\"


class _Unparsable(Exception):
    """The prompt is outside the schedule grammar: A1111 then uses it unchanged at every step."""


class _ScheduleParser:
    """Recursive descent over A1111's schedule grammar.

    Inside a construct everything must be well formed; at the top level, brackets and colons that open or close no
    construct are plain text (A1111: "unbalanced brackets are tolerated"). A `|` outside an alternation, or a lone
    backslash at the end, makes the whole prompt unparsable, which A1111 treats as "no scheduling".
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._constructs: dict[int, tuple[_Node | list[_Node], int] | None] = {}  # by start: each is read once

    def parse(self) -> list[_Node]:
        nodes, position = self.sequence(0, top=True)
        if position != len(self.text):  # pragma: no cover - the top level consumes everything or raises
            raise _Unparsable
        return nodes

    def sequence(self, position: int, top: bool) -> tuple[list[_Node], int]:
        """Plain text and constructs up to a character that ends a prompt (`:`, `|`, `]`, `)`)."""
        text, nodes, plain = self.text, [], []
        while position < len(text):
            char = text[position]
            if char == "\\":
                if position + 1 >= len(text) or text[position + 1] == "\n":
                    raise _Unparsable  # the grammar's escape needs a following character (not a newline)
                plain.append(text[position:position + 2])
                position += 2
            elif char in "[(":
                construct = self.construct(position)
                if construct is not None:
                    node, position = construct
                    if plain:
                        nodes.append("".join(plain))
                        plain = []
                    if isinstance(node, list):
                        nodes.extend(node)
                    else:
                        nodes.append(node)
                elif top:
                    plain.append(char)
                    position += 1
                else:
                    break
            elif char in "]):":
                if not top:
                    break
                plain.append(char)
                position += 1
            elif char == "|":
                if top:
                    raise _Unparsable
                break
            else:
                end = position + 1
                while end < len(text) and text[end] not in _STOPS:
                    end += 1
                plain.append(text[position:end])
                position = end
        if plain:
            nodes.append("".join(plain))
        return nodes, position

    def construct(self, start: int) -> tuple[_Node | list[_Node], int] | None:
        """The construct opening at `start`, or None when the bracket opens none (then it is text at the top)."""
        if start not in self._constructs:
            self._constructs[start] = self._read_construct(start)
        return self._constructs[start]

    def _read_construct(self, start: int) -> tuple[_Node | list[_Node], int] | None:
        opening = self.text[start]
        closing = "]" if opening == "[" else ")"
        parts: list[tuple[list[_Node], int, int]] = []  # (nodes, start, end) of each part
        separators: list[str] = []
        position = start + 1
        try:
            while True:
                nodes, end = self.sequence(position, top=False)
                parts.append((nodes, position, end))
                if end >= len(self.text):
                    return None
                char = self.text[end]
                if char in ":|":
                    separators.append(char)
                    position = end + 1
                    continue
                if char != closing:
                    return None
                position = end + 1
                break
        except _Unparsable:
            return None
        if opening == "(":
            if len(separators) > 1 or "|" in separators:
                return None
            return self._verbatim(opening, parts, separators, closing), position
        if not separators:
            return self._verbatim(opening, parts, separators, closing), position
        if all(s == "|" for s in separators):
            return _Alternate([nodes for nodes, _, _ in parts]), position
        if all(s == ":" for s in separators) and len(separators) in (1, 2):
            when = _WHEN.fullmatch(self.text, parts[-1][1], parts[-1][2])
            if when is None or not _plain_only(parts[-1][0]):
                return None
            before = parts[0][0] if len(separators) == 2 else None
            after = parts[-2][0]
            return _Scheduled(before, after, when.group(1)), position
        return None

    @staticmethod
    def _verbatim(opening: str, parts: list[tuple[list[_Node], int, int]], separators: list[str],
                  closing: str) -> list[_Node]:
        """Emphasis brackets are kept as text here; `parse_emphasis` reads them after scheduling."""
        nodes: list[_Node] = [opening]
        for index, (part, _, _) in enumerate(parts):
            if index:
                nodes.append(separators[index - 1])
            nodes.extend(part)
        nodes.append(closing)
        return nodes


def _plain_only(nodes: list[_Node]) -> bool:
    return all(isinstance(node, str) for node in nodes)


def _walk(nodes: list[_Node]):
    for node in nodes:
        if isinstance(node, _Scheduled):
            yield node
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _render(nodes: list[_Node], step: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = (node.before or []) if step <= node.when else node.after
            out.append(_render(chosen, step))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step))
    return "".join(out)


def _switch_step(when_text: str, steps: int, base_steps: int, hires: bool, old_scheduling: bool) -> int:
    """The last step (1-based, as A1111 counts) that shows the `before` text; may be 0 or negative (never)."""
    value = float(when_text)
    if old_scheduling:
        value = value * steps if value < 1 else value
    elif "." in when_text:
        value = (value - (1.0 if hires else 0.0)) * steps
    else:
        value = value - (base_steps if hires else 0)
    return min(steps, int(value))


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None,
                    old_scheduling: bool = False) -> list[tuple[int, str]]:
    """[(end_at_step, text)]: the text in force up to and including each end step (A1111's
    `get_learned_conditioning_prompt_schedules` for one prompt).

    `steps` is the first pass's step count. With `hires_steps` the schedule is the hires pass's: it has
    `hires_steps` steps, fractions 1-2 and integers above `steps` address it (unless `old_scheduling`).
    """
    hires = hires_steps is not None and not old_scheduling
    total = hires_steps if hires else steps
    try:
        tree = _ScheduleParser(prompt).parse()
    except (_Unparsable, RecursionError):  # (brackets nested hundreds deep: used unchanged rather than failing)
        return [(total, prompt)]
    ends = {total}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            node.when = _switch_step(node.when_text, total, steps, hires, old_scheduling)
            if node.when >= 1:
                ends.add(node.when)
        else:
            ends.update(range(1, total + 1))
    return [(end, _render(tree, end)) for end in sorted(ends)]


def text_at(schedule: list[tuple[int, str]], step: int) -> int:
    """Index into `schedule` for a 0-based model call: the first entry whose end step is not below it (A1111 compares
    its 0-based call counter with the 1-based end steps, so the first text holds one call longer than it reads)."""
    for index, (end, _) in enumerate(schedule):
        if step <= end:
            return index
    return 0  # past the end (more calls than planned): A1111 falls back to the first entry


def schedule_steps(sampler: str, steps: int) -> int:
    """Steps as A1111 counts them for prompt schedules: model calls, two per step for its second-order samplers."""
    return steps * 2 if sampler in SECOND_ORDER_SAMPLERS else steps


# ---- composable diffusion ----------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Sub-prompts and their weights: split on uppercase whole-word `AND`; a trailing `:number` is the weight (1 when
    absent). A1111 applies this to every positive prompt, so `a cat :2` alone is `a cat` at weight 2."""
    parts: list[tuple[str, float]] = []
    for piece in _AND.split(prompt):
        # A1111's pattern `^(.*?)(?:\s*:\s*(number))?\s*$`, read from the last colon (the regex can take quadratic time)
        colon = piece.rfind(":")
        weight = _WEIGHT.fullmatch(piece, colon + 1) if colon >= 0 else None
        if weight is not None:
            parts.append((_rstrip(piece[:colon]), float(weight.group(1))))
        else:
            parts.append((_rstrip(piece), 1.0))
    return parts


def _rstrip(text: str) -> str:
    """Without trailing whitespace as the regex's `\s` sees it."""
    end = len(text)
    while end and _SPACE.match(text, end - 1):
        end -= 1
    return text[:end]


def _lstrip(text: str) -> str:
    start = 0
    while start < len(text) and _SPACE.match(text, start):
        start += 1
    return text[start:]


_SPACE = re.compile(r"\s")


# ---- emphasis ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A run of prompt text and its attention weight; `is_break` marks a BREAK (start a new 75-token chunk)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK_SEGMENT = Segment("BREAK", -1.0, is_break=True)
_BREAK = re.compile(r"\bBREAK\b")
_EMPHASIS_TOKEN = re.compile(
    r"\\[()\[\]\\]"  # an escaped bracket or backslash: the character itself
    r"|\\"  # any other backslash is dropped
    r"|[(\[]"
    r"|:\s*([+-]?[.\d]+)\s*\)"  # `:weight)` closes the innermost round bracket with that weight
    r"|[)\]]"
    r"|[^\\()\[\]:]+"
    r"|:"
)


def parse_emphasis(text: str) -> list[Segment]:
    """(text, weight) runs of a prompt, A1111's `parse_prompt_attention`: each `(` level multiplies by 1.1, each `[`
    divides by 1.1, `(x:w)` multiplies by w; brackets left open still apply to the rest; runs of equal weight merge."""
    runs: list[list] = []  # [text, weight, is_break]
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    def add_text(piece: str) -> None:
        parts = _BREAK.split(piece)
        for index, part in enumerate(parts):  # A1111 splits on `\s*\bBREAK\b\s*` (a regex that can take quadratic time)
            if index:
                runs.append(["BREAK", -1.0, True])
                part = _lstrip(part)
            runs.append([_rstrip(part) if index < len(parts) - 1 else part, 1.0, False])

    for match in _EMPHASIS_TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0, False])
        elif token == "(":
            open_round.append(len(runs))
        elif token == "[":
            open_square.append(len(runs))
        elif weight is not None and open_round:
            try:
                factor = float(weight)
            except ValueError:
                raise PromptSyntaxError(f"{token!r}: the weight {weight!r} is not a number; write e.g. (word:1.2), "
                                        r"or escape the bracket as \)") from None
            scale_from(open_round.pop(), factor)
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_MULTIPLIER)
        else:
            add_text(token)
    for start in open_round:
        scale_from(start, ROUND_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_MULTIPLIER)
    if not runs:
        runs = [["", 1.0, False]]
    merged: list[list] = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1] and run[2] == merged[-1][2]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [Segment(text, weight, is_break) for text, weight, is_break in merged]


def prompt_segments(text: str, emphasis: str = DEFAULT_EMPHASIS) -> list[Segment]:
    """What the tokenizer gets for one schedule text in an emphasis mode: "None" reads brackets (and BREAK) as
    plain text, as A1111 does; "Ignore" parses them and drops the weights."""
    if emphasis not in EMPHASIS_MODES:
        raise PromptSyntaxError(f"emphasis mode {emphasis!r} is unknown; use one of {', '.join(EMPHASIS_MODES)}")
    if emphasis == "None":
        return [Segment(text)]
    segments = parse_emphasis(text)
    if emphasis == "Ignore":
        return [segment if segment.is_break else Segment(segment.text) for segment in segments]
    return segments


# ---- whole prompts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptPlan:
    """A prompt as the sampler uses it: AND parts, each with its weight and its schedule of texts."""

    parts: tuple[tuple[float, tuple[tuple[int, str], ...]], ...]

    @property
    def texts(self) -> list[str]:
        """Every distinct text any part shows at any step, in first-seen order (each is encoded once)."""
        seen: dict[str, None] = {}
        for _, schedule in self.parts:
            for _, text in schedule:
                seen.setdefault(text)
        return list(seen)

    @property
    def is_plain(self) -> bool:
        """One part of weight 1 with one text: ordinary CFG, conditioning fixed for the whole run."""
        return len(self.parts) == 1 and self.parts[0][0] == 1.0 and len(self.parts[0][1]) == 1


def plan_prompt(prompt: str, steps: int, hires_steps: int | None = None, old_scheduling: bool = False,
                positive: bool = True) -> PromptPlan:
    """The AND parts (positive prompts only, as A1111) and each part's schedule, for `steps` sampling steps (or the
    hires pass's `hires_steps`, see `prompt_schedule`)."""
    pieces = split_and(prompt) if positive else [(prompt, 1.0)]
    return PromptPlan(tuple(
        (weight, tuple(prompt_schedule(text, steps, hires_steps, old_scheduling))) for text, weight in pieces
    ))
