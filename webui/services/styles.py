"""Prompt styles: A1111's `styles.csv` (columns `name,prompt,negative_prompt`), applied to prompts and edited from
the UI.

The file stays in A1111's format so a `styles.csv` copied from A1111 (or shared online) works here and ours works
there: UTF-8 with a BOM, a header row, csv quoting (a field with a comma, a quote or a newline is quoted). A style's
text holds `{prompt}` where the user's prompt goes; without it the style is appended after ", " (A1111's
`merge_prompts`). Styles apply in the order they are chosen.

Unlike A1111 the file is written atomically (a temp file in the same folder, fsynced, then renamed over the old one),
so a crash or a full disk never leaves a half-written list of styles; the previous file is kept as `styles.csv.bak`.
The file is re-read whenever it changes on disk, so an edit made by hand (or by another process) shows up without a
restart.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from webui.services.requests import RequestError

PROMPT_PLACEHOLDER = "{prompt}"
FIELDS = ("name", "prompt", "negative_prompt")
MAX_STYLE_CHARS = 20_000  # the same order as a prompt's limit; a style is pasted into one


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompts(style_text: str, prompt: str) -> str:
    """One style on one prompt: `{prompt}` replaced by the prompt, else the style appended after ", " (empty parts
    left out, so an empty prompt gives just the style)."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative_prompt: str, styles: list[PromptStyle]) -> tuple[str, str]:
    """Every style in order, each on the result of the one before (A1111's `apply_styles_to_prompt`)."""
    for style in styles:
        prompt = merge_prompts(style.prompt, prompt)
        negative_prompt = merge_prompts(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def parse_styles_csv(text: str) -> dict[str, PromptStyle]:
    """Styles by name from the file's text. A1111's old two-column files (`name,text`) are read too; rows without a
    name are skipped; a later row with the same name wins (as A1111's dict does)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    styles: dict[str, PromptStyle] = {}
    for row in reader:
        name = (row.get("name") or "").strip()
        if not name:
            continue
        prompt = row.get("prompt") if "prompt" in row else row.get("text")
        styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "")
    return styles


def format_styles_csv(styles: list[PromptStyle]) -> str:
    """The file's text (without the BOM, which the writer adds): a header, then one row per style."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for style in styles:
        writer.writerow((style.name, style.prompt, style.negative_prompt))
    return buffer.getvalue()


class StyleStore:
    """The install's styles, kept in `path` (A1111 keeps `styles.csv` next to its config: ours is the data folder).

    One instance per app (the UI edits, the HTTP API reads); a lock keeps concurrent saves from losing each other's
    change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._styles: dict[str, PromptStyle] = {}
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _load(self) -> dict[str, PromptStyle]:
        """The styles as the file now says (re-read only when it changed); call holding the lock."""
        stamp = self._stamp()
        if stamp != self._seen:
            self._styles = parse_styles_csv(self._read()) if stamp else {}
            self._seen = stamp
        return self._styles

    def _read(self) -> str:
        # newline="": a newline inside a quoted field is kept as written (csv needs the raw line ends)
        with open(self.path, encoding="utf-8-sig", newline="") as handle:
            return handle.read()

    def styles(self) -> list[PromptStyle]:
        with self._lock:
            return list(self._load().values())

    def names(self) -> list[str]:
        return [style.name for style in self.styles()]

    def get(self, name: str) -> PromptStyle | None:
        with self._lock:
            return self._load().get(name)

    def resolve(self, names: list[str] | None) -> list[PromptStyle]:
        """The named styles in the given order; an unknown name is refused with the known ones listed (A1111 would
        skip it silently and give a different picture)."""
        with self._lock:
            known = self._load()
            missing = [name for name in names or [] if name not in known]
            if missing:
                listed = ", ".join(repr(name) for name in known) or f"none yet (add some to {self.path.name})"
                raise RequestError("styles", f"no style named {', '.join(repr(m) for m in missing)}; "
                                             f"known styles: {listed}")
            return [known[name] for name in names or []]

    def apply(self, prompt: str, negative_prompt: str, names: list[str] | None) -> tuple[str, str]:
        """The prompt and negative prompt with the named styles applied."""
        return apply_styles(prompt, negative_prompt, self.resolve(names))

    def save(self, style: PromptStyle) -> None:
        """Add a style, or replace the one with its name (keeping its place in the file)."""
        name = style.name.strip()
        if not name:
            raise RequestError("name", "a style needs a name")
        if "\n" in name or "\r" in name:
            raise RequestError("name", "a style's name must be one line")
        for field_name, text in (("prompt", style.prompt), ("negative_prompt", style.negative_prompt)):
            if len(text) > MAX_STYLE_CHARS:
                raise RequestError(field_name, f"{len(text)} characters; a style holds at most {MAX_STYLE_CHARS}")
        with self._lock:
            styles = dict(self._load())
            styles[name] = PromptStyle(name, style.prompt, style.negative_prompt)
            self._write(list(styles.values()))

    def delete(self, name: str) -> bool:
        """Remove a style; False when there was none of that name."""
        with self._lock:
            styles = dict(self._load())
            if styles.pop(name, None) is None:
                return False
            self._write(list(styles.values()))
            return True

    def _write(self, styles: list[PromptStyle]) -> None:
        """Atomically replace the file (temp file, fsync, rename), keeping the previous one as `.bak`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".styles-", suffix=".csv.tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as handle:
                handle.write(format_styles_csv(styles))
                handle.flush()
                os.fsync(handle.fileno())
            if self.path.exists():
                shutil.copy2(self.path, self.path.with_name(self.path.name + ".bak"))
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._styles = {style.name: style for style in styles}
        self._seen = self._stamp()
