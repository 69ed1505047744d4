"""A1111 infotext: the "parameters" text stored in every image and pasted back into the UI.

Images made here must read back in A1111 (and A1111 images here), so the layout, key order and quoting follow
A1111 1.10.1 `processing.create_infotext` / `infotext_utils.parse_generation_parameters` (see
`shared/reference/a1111-compat.md` §1). The parser is a linear-time scanner with the same matching rules as A1111's
regex, because that regex backtracks quadratically on long lines and pasted text can be arbitrarily long.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

# §1.3: the core keys in the order A1111 writes them, then Version and User. Any other ("extra") key keeps the
# caller's insertion order between the two groups, as A1111's `extra_generation_params` dict does.
_CORE_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
_TRAILING_KEYS: tuple[str, ...] = ("Version", "User")
INFOTEXT_KEY_ORDER: tuple[str, ...] = _CORE_KEYS + _TRAILING_KEYS

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# §4.2 labels, used to split pre-1.9 combined sampler names ("DPM++ 2M Karras"). Longest first so that
# "SGM Uniform" wins over "Uniform" (A1111 checks in table order and would cut only " Uniform").
SCHEDULE_LABELS: tuple[str, ...] = (
    "Uniform",
    "Karras",
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
)
_LABELS_LONGEST_FIRST = tuple(sorted(SCHEDULE_LABELS, key=len, reverse=True))

# Defaults A1111 fills for keys an infotext leaves out because they were at their default (§1.4).
_DEFAULTS: dict[str, object] = {"Clip skip": 1, "RNG": "GPU"}

# Values of these keys are names or hashes: "Model: 1234" or "Model hash: 0123456789" must stay strings.
_TEXT_KEYS = frozenset(
    {
        "Prompt",
        "Negative prompt",
        "Sampler",
        "Schedule type",
        "Model",
        "VAE",
        "Version",
        "User",
        "Refiner",
        "Hires upscaler",
        "Hires sampler",
        "Hires schedule type",
        "Hires checkpoint",
        "Hires prompt",
        "Hires negative prompt",
        "Face restoration",
        "RNG",
        "Emphasis",
        "Masked content",
        "Inpaint area",
    }
)

_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
# Leading zeros are not numbers ("007" stays text): converting them would lose information.
_INT_RE = re.compile(r"^-?(?:0|[1-9]\d*)$")
_FLOAT_RE = re.compile(r"^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?$|^-?(?:0|[1-9]\d*)?\.\d+(?:[eE][-+]?\d+)?$")
# A1111's value alternatives: a JSON string (escapes allowed, not empty), else everything up to the next comma.
_QUOTED_RE = re.compile(r'"(?:\\.|[^\\"])+"')
_KEY_CHARS = re.compile(r"[\w \-/]*")
_SPACES = re.compile(r"\s*")
_WORD_CHAR = re.compile(r"\w")


def _format_value(value: object) -> str:
    """A1111 writes Python values with str(); integral floats are shown without ".0" (CFG `7`, not `7.0`)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def quote(value: str) -> str:
    """A1111's quoting rule: a value holding `,`, `:` or a newline becomes a JSON string, so the line still parses."""
    if "," in value or ":" in value or "\n" in value:
        return json.dumps(value, ensure_ascii=False)
    return value


def unquote(value: str) -> str:
    """Undo `quote`; anything that is not valid JSON is kept as written, as A1111 does."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        result = json.loads(value)
    except ValueError:
        return value
    return result if isinstance(result, str) else value


def _ordered_items(params: Mapping[str, object]) -> list[tuple[str, object]]:
    core = [(key, params[key]) for key in _CORE_KEYS if key in params]
    extras = [(key, value) for key, value in params.items() if key not in INFOTEXT_KEY_ORDER]
    trailing = [(key, params[key]) for key in _TRAILING_KEYS if key in params]
    return core + extras + trailing


def format_parameter_line(params: Mapping[str, object]) -> str:
    """The last infotext line: `Key: value` pairs joined by ", " in A1111's key order; `None` values left out."""
    parts = []
    for key, value in _ordered_items(params):
        if value is None:
            continue
        if any(ch in key for ch in ",:\n"):
            raise ValueError(f"infotext key {key!r} contains ',', ':' or a newline and could not be parsed back")
        text = _format_value(value)
        # A1111 writes a key whose value equals the key as the bare key (used by flags such as extension names).
        parts.append(key if text == key else f"{key}: {quote(text)}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build the exact A1111 infotext: prompt, optional `Negative prompt:` line, parameter line.

    Like A1111 the whole text is stripped, so an empty prompt leaves no empty first line.
    """
    negative = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_parameter_line(params)}".strip()


def _scan_parameters(line: str) -> list[tuple[str, str]]:
    """All `key: value` matches of A1111's `re_param` on `line`, in linear time.

    Same result as `re.findall(r'\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)', line)`. Where a key
    fails to match, every start position inside the same run of key characters fails the same way, so the scan
    jumps past the run instead of retrying each position (which is what makes the regex quadratic).
    """
    pairs: list[tuple[str, str]] = []
    pos, end = 0, len(line)
    while pos < end:
        start = _SPACES.match(line, pos).end()
        if start >= end or not _WORD_CHAR.match(line, start):
            pos = start + 1
            continue
        run_end = _KEY_CHARS.match(line, start + 1).end()
        if run_end - start < 2 or run_end >= end or line[run_end] != ":":
            pos = run_end
            continue
        key = line[start:run_end]
        value_start = _SPACES.match(line, run_end + 1).end()
        quoted = _QUOTED_RE.match(line, value_start) if line.startswith('"', value_start) else None
        if quoted is not None and (quoted.end() == end or line[quoted.end()] == ","):
            value_end = quoted.end()
        else:
            comma = line.find(",", value_start)
            value_end = end if comma < 0 else comma
        pairs.append((key, line[value_start:value_end]))
        pos = value_end + 1 if value_end < end else end
    return pairs


def _convert(key: str, value: str) -> object:
    """Numbers become int/float so callers can use them directly; names and hashes stay text."""
    if key in _TEXT_KEYS or "hash" in key.lower():
        return value
    if _INT_RE.match(value):
        return int(value)
    if _FLOAT_RE.match(value):
        return float(value)
    return value


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """Split a pre-1.9 combined name ("DPM++ 2M Karras") into sampler and schedule label; (name, None) otherwise."""
    for label in _LABELS_LONGEST_FIRST:
        suffix = " " + label
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], label
    return name, None


def _split_infotext(text: str) -> tuple[list[str], list[str], list[tuple[str, str]], bool]:
    """(prompt lines, negative prompt lines, raw `key: value` pairs, whether a `Negative prompt:` line exists)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    last = lines[-1]
    pairs = _scan_parameters(last)
    if len(pairs) >= 3:
        lines = lines[:-1]
    else:
        pairs = []

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX) :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return prompt_lines, negative_lines, pairs, in_negative


def infotext_fields(text: str) -> dict[str, object]:
    """Only what the text holds, as written (values unquoted, numbers converted): "Prompt" if there is one,
    "Negative prompt" if that line exists, then the parameter-line keys in their order. No defaults and no derived
    keys (`Size-1`, `Clip skip: 1`, a schedule split off the sampler): for showing a file's contents (PNG Info)."""
    prompt_lines, negative_lines, pairs, has_negative = _split_infotext(text)
    fields: dict[str, object] = {}
    if any(line for line in prompt_lines):
        fields["Prompt"] = "\n".join(prompt_lines)
    if has_negative:
        fields["Negative prompt"] = "\n".join(negative_lines)
    for key, raw_value in pairs:
        value = unquote(raw_value)
        fields[key] = value if _SIZE_RE.match(value) else _convert(key, value)
    return fields


def parse_infotext(text: str) -> dict[str, object]:
    """Parse an infotext the way A1111's `parse_generation_parameters` does.

    Returns the parameter-line keys (JSON-quoted values unquoted, numbers converted, `AxB` values also split into
    `<Key>-1`/`<Key>-2`), plus "Prompt" and "Negative prompt", plus A1111's defaults for keys left out.
    """
    prompt_lines, negative_lines, pairs, _ = _split_infotext(text)
    result: dict[str, object] = {}
    for key, raw_value in pairs:
        value = unquote(raw_value)
        size = _SIZE_RE.match(value)
        if size is not None:
            result[f"{key}-1"] = int(size.group(1))
            result[f"{key}-2"] = int(size.group(2))
            result[key] = value
        else:
            result[key] = _convert(key, value)

    result["Prompt"] = "\n".join(prompt_lines)
    result["Negative prompt"] = "\n".join(negative_lines)

    for key, default in _DEFAULTS.items():
        result.setdefault(key, default)
    sampler = result.get("Sampler")
    if isinstance(sampler, str) and sampler:
        if "Schedule type" not in result:
            base, label = split_sampler_name(sampler)
            result["Sampler"] = base
            result["Schedule type"] = label or "Automatic"
    return result


def has_parameter_line(text: str | None) -> bool:
    """Whether `text` is an infotext rather than a plain prompt: its last line holds at least 3 `Key: value` pairs
    (A1111's rule). Pasting fills the fields only then, so a prompt that merely contains a colon is never taken
    apart."""
    return bool(text and text.strip()) and len(_split_infotext(text)[2]) >= 3
