"""A1111's extra-network tags (`<lora:name:0.8>`, `<lora:name:te=0.5:unet=1>`): found in prompts, removed before
encoding, handed to whoever registered the tag's kind.

The rules are A1111's (`extra_networks.py`): the pattern `<(\\w+):([^>]+)>`, arguments split on `:`, a tag applies to
the whole generation wherever it stands, and the text without tags is what the text encoder sees. Written here because
no library parses this syntax.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webui.services.requests import RequestError

TAG_PATTERN = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One tag as written: its kind (`lora`), positional arguments and `key=value` arguments."""

    kind: str
    positional: tuple[str, ...]
    named: Mapping[str, str]
    text: str  # the tag as it appeared, for messages

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""

    def number(self, position: int, key: str, default: float, field_name: str = "prompt") -> float:
        """A numeric argument given by position (after the name) or by `key=`; `default` when absent."""
        raw = self.named.get(key)
        if raw is None and len(self.positional) > position:
            raw = self.positional[position]
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise RequestError(field_name, f"{self.text}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise RequestError(field_name, f"{self.text}: {raw!r} is not a finite number")
        return value


def parse_tag(kind: str, arguments: str, text: str) -> ExtraNetworkTag:
    positional: list[str] = []
    named: dict[str, str] = {}
    for part in arguments.split(":"):
        key, sep, value = part.partition("=")
        if sep and key.strip().isidentifier():
            named[key.strip()] = value.strip()
        else:
            positional.append(part.strip())
    return ExtraNetworkTag(kind=kind, positional=tuple(positional), named=named, text=text)


def extract_tags(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """The prompt without its tags, and the tags in order. Removing a tag leaves the text around it as it was."""
    tags = [parse_tag(m.group(1), m.group(2), m.group(0)) for m in TAG_PATTERN.finditer(prompt)]
    return TAG_PATTERN.sub("", prompt), tags


@dataclass
class ExtraNetworkActivation:
    """What the handlers of a job's tags contribute: weight patches, infotext fields and warnings for the user."""

    patches: list[Any] = field(default_factory=list)  # PatchSource objects (see services.model_manager)
    infotext: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: ExtraNetworkActivation) -> None:
        self.patches.extend(other.patches)
        self.infotext.update(other.infotext)
        self.warnings.extend(other.warnings)


def unhandled(tags: Sequence[ExtraNetworkTag]) -> ExtraNetworkActivation:
    """Tags no extension handles: removed from the prompt like every tag, and reported to the user."""
    return ExtraNetworkActivation(warnings=[f"{tag.text}: no extension handles <{tag.kind}:...> tags; it was "
                                            "removed from the prompt" for tag in tags])


def group_by_kind(tags: Sequence[ExtraNetworkTag]) -> dict[str, list[ExtraNetworkTag]]:
    grouped: dict[str, list[ExtraNetworkTag]] = {}
    for tag in tags:
        grouped.setdefault(tag.kind, []).append(tag)
    return grouped
