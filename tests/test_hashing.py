"""Model hashes as A1111 defines them (a1111-compat.md §2), and their persistent cache."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from webui.services import hashing
from webui.services.hashing import HashCache, legacy_model_hash

REPO = Path(__file__).resolve().parent.parent


def write_safetensors(path: Path, data: bytes, metadata: dict[str, str] | None = None) -> bytes:
    """A real-layout .safetensors file: u64 little-endian header length, JSON header, then the tensor bytes."""
    header: dict[str, object] = {"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw_header = json.dumps(header).encode()
    raw_header += b" " * (-len(raw_header) % 8)
    blob = struct.pack("<Q", len(raw_header)) + raw_header + data
    path.write_bytes(blob)
    return blob


def set_mtime_ns(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_sha256_is_the_whole_file_digest(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    data = os.urandom(3 * 1024 * 1024 + 123)  # spans several 1 MiB blocks
    model.write_bytes(data)
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    expected = hashlib.sha256(data).hexdigest()
    assert cache.sha256(model) == expected
    assert cache.short_hash(model) == expected[:10]
    assert cache.sha256(tmp_path / "." / "model.safetensors") == expected


def test_hash_is_cached_and_recomputed_when_mtime_changes(tmp_path: Path) -> None:
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"A" * 4096)
    cache_file = tmp_path / "hashes.json"
    cache = HashCache(cache_file)
    first = cache.sha256(model)
    assert first == hashlib.sha256(b"A" * 4096).hexdigest()

    # Same size and mtime but different bytes: only a cached value can still give the old digest.
    mtime = model.stat().st_mtime_ns
    model.write_bytes(b"B" * 4096)
    set_mtime_ns(model, mtime)
    assert cache.sha256(model) == first
    assert HashCache(cache_file).sha256(model) == first  # persisted: a new process reuses it

    # Touching the file invalidates the entry.
    set_mtime_ns(model, mtime + 1_000_000_000)
    assert cache.sha256(model) == hashlib.sha256(b"B" * 4096).hexdigest()
    stored = json.loads(cache_file.read_text())
    [entry] = stored["entries"].values()
    assert entry["sha256"] == hashlib.sha256(b"B" * 4096).hexdigest()
    assert entry["mtime_ns"] == mtime + 1_000_000_000
    assert entry["size"] == 4096


def test_size_change_invalidates_too(tmp_path: Path) -> None:
    model = tmp_path / "vae.pt"
    model.write_bytes(b"x" * 100)
    cache = HashCache(tmp_path / "hashes.json")
    cache.sha256(model)
    mtime = model.stat().st_mtime_ns
    model.write_bytes(b"x" * 101)
    set_mtime_ns(model, mtime)
    assert cache.sha256(model) == hashlib.sha256(b"x" * 101).hexdigest()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"[1, 2, 3]", b'{"version": 1, "entries": []}', b"\xff\xfe\x00garbage"],
)
def test_corrupt_cache_file_is_ignored_and_replaced(tmp_path: Path, content: bytes) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 100)
    cache_file = tmp_path / "hashes.json"
    cache_file.write_bytes(content)
    assert HashCache(cache_file).sha256(model) == hashlib.sha256(b"weights" * 100).hexdigest()
    stored = json.loads(cache_file.read_text())
    assert stored["version"] == 1
    assert [entry["sha256"] for entry in stored["entries"].values()] == [hashlib.sha256(b"weights" * 100).hexdigest()]
    # No temp file left; the lock file that serialises writers across processes stays (it is never removed).
    assert sorted(os.listdir(tmp_path)) == [".hashes.json.lock", "hashes.json", "model.safetensors"]


def test_unwritable_cache_is_not_fatal(tmp_path: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"abc")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = HashCache(blocker / "hashes.json")
    assert cache.sha256(model) == hashlib.sha256(b"abc").hexdigest()
    assert cache.sha256(model) == hashlib.sha256(b"abc").hexdigest()  # still served from memory


def test_lora_addnet_hash_skips_the_header(tmp_path: Path) -> None:
    lora = tmp_path / "detail.safetensors"
    tensor_bytes = os.urandom(10_000)
    blob = write_safetensors(lora, tensor_bytes, {"ss_network_dim": "16"})
    (header_length,) = struct.unpack("<Q", blob[:8])
    expected = hashlib.sha256(blob[8 + header_length :]).hexdigest()[:12]
    assert expected == hashlib.sha256(tensor_bytes).hexdigest()[:12]

    cache = HashCache(tmp_path / "hashes.json")
    assert cache.lora_addnet_hash(lora) == expected
    assert len(expected) == 12

    # Editing the metadata changes the file but not the addnet hash (that is its point)...
    retagged = tmp_path / "retagged.safetensors"
    write_safetensors(retagged, tensor_bytes, {"ss_network_dim": "16", "ss_output_name": "renamed"})
    assert cache.lora_addnet_hash(retagged) == expected
    assert cache.sha256(retagged) != cache.sha256(lora)
    # ...and a trainer-recorded sshs_model_hash wins when asked for A1111's display rule.
    recorded = tmp_path / "recorded.safetensors"
    write_safetensors(recorded, tensor_bytes, {"sshs_model_hash": "ABCDEF0123456789" + "0" * 48})
    assert cache.lora_addnet_hash(recorded, use_metadata=True) == "abcdef012345"
    assert cache.lora_addnet_hash(recorded) == expected
    assert cache.lora_addnet_hash(lora, use_metadata=True) == expected


@pytest.mark.parametrize("blob", [b"", b"\x01\x02", struct.pack("<Q", 10**6) + b"{}"])
def test_addnet_hash_rejects_non_safetensors(tmp_path: Path, blob: bytes) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(blob)
    with pytest.raises(ValueError, match="safetensors"):
        HashCache(tmp_path / "hashes.json").lora_addnet_hash(bad)


def test_legacy_model_hash(tmp_path: Path) -> None:
    model = tmp_path / "old.ckpt"
    data = os.urandom(0x100000 + 0x10000 + 5000)
    model.write_bytes(data)
    expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert legacy_model_hash(model) == expected
    assert HashCache(tmp_path / "hashes.json").legacy_model_hash(model) == expected

    small = tmp_path / "small.ckpt"
    small.write_bytes(b"tiny")
    assert legacy_model_hash(small) == hashlib.sha256(b"").hexdigest()[:8]  # A1111 hashes what is there


def test_concurrent_use_from_several_threads(tmp_path: Path) -> None:
    files = []
    for n in range(4):
        path = tmp_path / f"model{n}.safetensors"
        write_safetensors(path, os.urandom(200_000))
        files.append(path)
    cache_file = tmp_path / "hashes.json"
    cache = HashCache(cache_file)
    errors: list[BaseException] = []
    results: dict[tuple[int, Path], str] = {}

    def work(worker: int) -> None:
        try:
            for path in files[worker % 2 :] + files[: worker % 2]:
                results[(worker, path)] = cache.sha256(path)
                cache.lora_addnet_hash(path)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for (_, path), digest in results.items():
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    stored = json.loads(cache_file.read_text())["entries"]
    assert sorted(stored) == sorted(str(path.resolve()) for path in files)
    assert all({"sha256", "addnet"} <= set(entry) for entry in stored.values())


def test_a_file_changed_while_it_is_hashed_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"old" * 1000)
    real = hashing.sha256_file

    def hash_then_overwrite(path: Path) -> str:
        # Another program finishes rewriting the file just as our read ends (timed here so the test is exact).
        digest = real(path)
        model.write_bytes(b"new!" * 1000)
        return digest

    monkeypatch.setattr(hashing, "sha256_file", hash_then_overwrite)
    cache_file = tmp_path / "hashes.json"
    cache = HashCache(cache_file)
    assert cache.sha256(model) == hashlib.sha256(b"old" * 1000).hexdigest()  # what was read, for this call only
    assert not cache_file.exists()  # nothing cached, on disk...
    assert cache.cached_short_hash(model) is None  # ...or in memory
    monkeypatch.setattr(hashing, "sha256_file", real)
    new = hashlib.sha256(b"new!" * 1000).hexdigest()
    assert cache.sha256(model) == new  # a retry after the change hashes the new bytes...
    assert cache.cached_short_hash(model) == new[:10]
    [entry] = json.loads(cache_file.read_text())["entries"].values()  # ...and caches them
    assert entry["sha256"] == new and entry["size"] == 4000


_WRITER_SCRIPT = """
import sys, time
from pathlib import Path
from webui.services.hashing import HashCache
cache_file, go, *files = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.001)
cache = HashCache(Path(cache_file))
for file in files:
    cache.sha256(Path(file))
    cache.lora_addnet_hash(Path(file))
"""


def test_two_processes_writing_one_cache_keep_every_entry(tmp_path: Path) -> None:
    groups: list[list[Path]] = [[], []]
    for n in range(24):
        path = tmp_path / f"model{n:02d}.safetensors"
        write_safetensors(path, os.urandom(2000 + n))
        groups[n % 2].append(path)
    cache_file = tmp_path / "cache" / "hashes.json"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER_SCRIPT, str(cache_file), str(go), *map(str, files)],
                         env=env, stderr=subprocess.PIPE, text=True)
        for files in groups
    ]
    go.touch()  # both start hashing at the same moment
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
    stored = json.loads(cache_file.read_text())  # valid JSON: every replace was whole
    assert stored["version"] == 1
    entries = stored["entries"]
    expected = {str(path.resolve()): path for group in groups for path in group}
    assert sorted(entries) == sorted(expected)  # nobody's entries were dropped
    for key, path in expected.items():
        assert entries[key]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entries[key]["addnet"] == hashing.addnet_sha256_file(path)
    assert [name for name in os.listdir(cache_file.parent) if name.endswith(".tmp")] == []
    # A fresh process reads every hash without touching the files.
    fresh = HashCache(cache_file)
    assert all(fresh.cached_short_hash(path) == entries[key]["sha256"][:10] for key, path in expected.items())


def test_two_caches_on_one_file_unite_their_kinds_of_hash_for_the_same_file(tmp_path: Path) -> None:
    """B read the cache before A saved X's sha256; B then saves X's addnet hash: X must keep both kinds."""
    x, y = tmp_path / "x.safetensors", tmp_path / "y.safetensors"
    write_safetensors(x, os.urandom(1000))
    write_safetensors(y, os.urandom(1000))
    cache_file = tmp_path / "hashes.json"
    b = HashCache(cache_file)
    b.sha256(y)  # B has now read the (empty) file
    HashCache(cache_file).sha256(x)  # A saves X's sha256 behind B's back
    b.lora_addnet_hash(x)
    entries = json.loads(cache_file.read_text())["entries"]
    assert {"sha256", "addnet"} <= set(entries[str(x.resolve())]) and "sha256" in entries[str(y.resolve())]
