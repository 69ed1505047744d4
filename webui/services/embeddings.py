"""Textual-inversion embeddings in `models/embeddings/`: which fit the job's model, which are skipped, `TI hashes`.

Files are read once and kept while their modification time is unchanged, so one dropped into the folder is usable in
the next job without a restart (A1111 rescans on each generation too).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from webui.engine.embeddings import EMBEDDING_SUFFIXES, Embedding, EmbeddingError, EmbeddingSet, embedding_set_for
from webui.engine.loader import LoadedModel
from webui.engine.tokenizer import tokenize_prompt
from webui.services.hashing import HashCache


@dataclass(frozen=True)
class EmbeddingListing:
    """What the picker shows: loaded embeddings for the current model, those skipped, and unreadable files."""

    loaded: dict[str, Embedding]
    skipped: list[str]
    broken: dict[str, str]  # name -> why


class EmbeddingLibrary:
    def __init__(self, folder: Path, hashes: HashCache) -> None:
        self.folder = Path(folder)
        self.hashes = hashes
        self._lock = threading.Lock()
        self._read: dict[Path, tuple[int, int, Embedding | str]] = {}  # path -> (mtime, size, embedding or error)

    def _scan(self) -> tuple[dict[str, Embedding], dict[str, str]]:
        """Every embedding file (recursive), by file stem; the first of duplicate stems wins, as in A1111."""
        from webui.engine.embeddings import read_embedding

        found: dict[str, Embedding] = {}
        broken: dict[str, str] = {}
        paths = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES) \
            if self.folder.is_dir() else []
        with self._lock:
            for path in paths:
                stat = path.stat()
                cached = self._read.get(path)
                if cached is None or cached[:2] != (stat.st_mtime_ns, stat.st_size):
                    try:
                        value: Embedding | str = read_embedding(path)
                    except EmbeddingError as exc:
                        value = str(exc)
                    cached = (stat.st_mtime_ns, stat.st_size, value)
                    self._read[path] = cached
                if isinstance(cached[2], Embedding):
                    found.setdefault(path.stem, cached[2])
                else:
                    broken[path.stem] = cached[2]
            for gone in set(self._read) - set(paths):
                del self._read[gone]
        return found, broken

    def listing(self, model: LoadedModel | None) -> EmbeddingListing:
        embeddings, broken = self._scan()
        if model is None:
            return EmbeddingListing(loaded=embeddings, skipped=[], broken=broken)
        fitting, skipped = embedding_set_for(model, embeddings)
        return EmbeddingListing(loaded=fitting.embeddings, skipped=skipped, broken=broken)

    def for_model(self, model: LoadedModel) -> EmbeddingSet:
        embeddings, _ = self._scan()
        return embedding_set_for(model, embeddings)[0]

    def used(self, embeddings: EmbeddingSet, *prompts: str) -> list[str]:
        """Names of the embeddings these prompts use, in first-use order."""
        if not embeddings:
            return []
        names: list[str] = []
        for prompt in prompts:
            for fix in tokenize_prompt(prompt, 0, embeddings.matcher).fixes:
                if fix.name not in names:
                    names.append(fix.name)
        return names

    def infotext(self, embeddings: EmbeddingSet, *prompts: str) -> dict[str, str]:
        """A1111's `TI hashes: "name: <12 hex of the file's sha256>, ..."` for the embeddings used."""
        used = self.used(embeddings, *prompts)
        if not used:
            return {}
        parts = [f"{name}: {self.hashes.sha256(embeddings.embeddings[name].path)[:12]}" for name in used]
        return {"TI hashes": ", ".join(parts)}
