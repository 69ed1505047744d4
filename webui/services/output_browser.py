"""The outputs browser (A1111 users know it as the "Image Browser" extension): one user's saved images, newest first,
paged, searchable by the prompt in their infotext.

Only the caller's own folder is looked at (`<outputs>/<user>/` with several logins, the whole outputs folder for a
single user, as `OutputStore` saves them), and only regular files whose real path lies inside it: a symlink is
skipped, so a link planted in the folder never lists, and so never serves, a file from elsewhere (the same rule as
`webui/api/file_guard.py`). Infotexts are read once per file version and kept in a small cache.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from webui.services.infotext import parse_infotext
from webui.services.outputs import OutputStore, read_infotext

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SKIPPED_FOLDERS = frozenset({"lora-training"})  # training runs keep their own samples; not generated outputs
PAGE_SIZE = 24
CACHE_SIZE = 4096


@dataclass(frozen=True)
class OutputItem:
    path: Path
    kind: str  # the top-level folder under the user's outputs: txt2img, img2img, extras, txt2img-grids, ...
    modified: float
    infotext: str


@dataclass(frozen=True)
class OutputPage:
    items: list[OutputItem]
    total: int  # matching images over all pages
    page: int  # 0-based, clamped to the pages there are
    pages: int


class OutputBrowser:
    """Lists a user's images from an `OutputStore`'s folder; one instance per app (it holds the infotext cache)."""

    def __init__(self, store: OutputStore, cache_size: int = CACHE_SIZE) -> None:
        self.store = store
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def user_root(self, owner: str) -> Path | None:
        """The folder holding `owner`'s images, or None when the name could not be a folder of theirs."""
        root = self.store.root
        if not self.store.per_user:
            return root
        if not owner or owner.startswith(".") or "/" in owner or "\\" in owner or "\x00" in owner:
            return None
        return root / owner

    def kinds(self, owner: str) -> list[str]:
        """The top-level folders that hold images of this user (for the filter), in name order."""
        root = self.user_root(owner)
        if root is None or not root.is_dir():
            return []
        return sorted(entry.name for entry in os.scandir(root)
                      if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
                      and entry.name not in SKIPPED_FOLDERS)

    def _files(self, owner: str) -> list[tuple[Path, str, float, int]]:
        """(path, kind, mtime, size) of every image file of this user, newest first."""
        root = self.user_root(owner)
        if root is None or not root.is_dir() or root.is_symlink():
            return []
        real_root = os.path.realpath(root)
        found: list[tuple[Path, str, float, int]] = []
        for folder, dirs, files in os.walk(root, followlinks=False):
            relative = os.path.relpath(folder, root)
            if relative == os.curdir:
                dirs[:] = [d for d in dirs if d not in SKIPPED_FOLDERS and not d.startswith(".")]
                continue  # loose files in the root belong to no mode (and, per user, may be another's folder)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            kind = relative.split(os.sep, 1)[0]
            for name in files:
                if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.lstat(path)
                except OSError:
                    continue
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                if os.path.commonpath([os.path.realpath(path), real_root]) != real_root:
                    continue
                found.append((Path(path), kind, stat.st_mtime, stat.st_size))
        found.sort(key=lambda item: (item[2], str(item[0])), reverse=True)
        return found

    def infotext(self, path: Path, mtime: float = 0.0, size: int = 0) -> str:
        """The file's infotext ("" when it has none or cannot be read), cached by path, mtime and size."""
        key = (str(path), int(mtime * 1e9), size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            text = read_infotext(path) or ""
        except Exception:  # a damaged or foreign file lists without parameters rather than failing the listing
            text = ""
        with self._lock:
            self._cache[key] = text
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return text

    def page(self, owner: str, query: str = "", kind: str = "", page: int = 0,
             page_size: int = PAGE_SIZE) -> OutputPage:
        """One page of this user's images, newest first; `query` keeps those whose prompt (or negative prompt)
        contains it, case-insensitively; `kind` keeps one top-level folder ("" for all)."""
        needle = query.strip().casefold()
        files = [entry for entry in self._files(owner) if not kind or entry[1] == kind]
        if needle:  # a search reads every file's infotext (cached); a plain listing only the shown page's
            files = [entry for entry in files if needle in self._prompts(entry).casefold()]
        size = max(1, int(page_size))
        pages = max(1, -(-len(files) // size))
        page = min(max(0, int(page)), pages - 1)
        items = [OutputItem(path, item_kind, mtime, self.infotext(path, mtime, file_size))
                 for path, item_kind, mtime, file_size in files[page * size:(page + 1) * size]]
        return OutputPage(items, len(files), page, pages)

    def _prompts(self, entry: tuple[Path, str, float, int]) -> str:
        path, _, mtime, size = entry
        text = self.infotext(path, mtime, size)
        parsed = parse_infotext(text) if text else {}
        return f"{parsed.get('Prompt', '')}\n{parsed.get('Negative prompt', '')}"

    def owns(self, owner: str, path: str | Path) -> bool:
        """Whether `path` is one of this user's listed images (real path inside their folder, not a link)."""
        root = self.user_root(owner)
        if root is None:
            return False
        candidate = os.path.abspath(path)
        real_root = os.path.realpath(root)
        if os.path.islink(candidate) or not os.path.isfile(candidate):
            return False
        real = os.path.realpath(candidate)
        return os.path.commonpath([real, real_root]) == real_root and os.path.relpath(real, real_root) != os.curdir

    def latest_infotext(self, owner: str) -> str:
        """The infotext of this user's newest image that has one ("" if none): what A1111's paste button reads from
        `params.txt` when the prompt box is empty."""
        for path, _, mtime, size in self._files(owner):
            text = self.infotext(path, mtime, size)
            if text:
                return text
        return ""
