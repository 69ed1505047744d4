"""Saving images with their infotext, and reading infotext back (a1111-compat.md §1.5, security-cases rows 27-28)."""

from __future__ import annotations

import datetime
import errno
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from webui.services.outputs import OutputSaveError, OutputStore, read_infotext

DAY = datetime.date(2024, 5, 6)
INFOTEXT = "a cat, (sitting:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42"
REPO = Path(__file__).resolve().parent.parent


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, read straight from the bytes (independent of Pillow)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def exif_with_user_comment(comment: bytes) -> bytes:
    """A minimal big-endian EXIF block, built by hand: IFD0 -> Exif IFD -> UserComment (UNDEFINED)."""
    ifd0_offset = 8
    exif_ifd_offset = ifd0_offset + 2 + 12 + 4
    data_offset = exif_ifd_offset + 2 + 12 + 4
    tiff = b"MM" + struct.pack(">HI", 42, ifd0_offset)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", 0x8769, 4, 1, exif_ifd_offset) + struct.pack(">I", 0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", 0x9286, 7, len(comment), data_offset) + struct.pack(">I", 0)
    return b"Exif\x00\x00" + tiff + comment


def small_image(color: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (8, 8), color)


def test_save_writes_parameters_chunk_readable_by_plain_pillow(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, today=lambda: DAY)
    path = store.save_png(small_image(), INFOTEXT, "txt2img-images", 42)
    assert path == tmp_path / "txt2img-images" / "2024-05-06" / "00000-42.png"
    with Image.open(path) as image:
        assert image.text["parameters"] == INFOTEXT
        assert image.size == (8, 8)
    chunks = png_chunks(path.read_bytes())
    text_chunks = [payload for kind, payload in chunks if kind == b"tEXt"]
    assert text_chunks == [b"parameters\x00" + INFOTEXT.encode("latin-1")]
    # Written before the image data, so readers need not decode the image to find it (as A1111 does).
    kinds = [kind for kind, _ in chunks]
    assert kinds.index(b"tEXt") < kinds.index(b"IDAT")
    assert read_infotext(path) == INFOTEXT
    assert read_infotext(path.read_bytes()) == INFOTEXT


def test_non_latin1_prompt_goes_to_itxt(tmp_path: Path) -> None:
    infotext = "猫が座っている, 🐈\nSteps: 20, Sampler: Euler, Seed: 1"
    path = OutputStore(tmp_path, today=lambda: DAY).save_png(small_image(), infotext, "txt2img-images", 1)
    chunks = dict(png_chunks(path.read_bytes()))
    assert b"tEXt" not in chunks
    keyword, rest = chunks[b"iTXt"].split(b"\x00", 1)
    assert keyword == b"parameters"
    compressed, _method = rest[0], rest[1]
    language, translated, text = rest[2:].split(b"\x00", 2)
    body = zlib.decompress(text) if compressed else text
    assert body.decode("utf-8") == infotext
    with Image.open(path) as image:
        assert image.text["parameters"] == infotext
    assert read_infotext(path) == infotext


def test_existing_text_chunks_are_kept(tmp_path: Path) -> None:
    source_file = tmp_path / "source.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "another tool")
    info.add_text("parameters", "stale infotext")
    small_image().save(source_file, pnginfo=info)
    with Image.open(source_file) as source:
        saved = OutputStore(tmp_path, today=lambda: DAY).save_png(source, INFOTEXT, "img2img-images", 2)
    with Image.open(saved) as image:
        assert image.text == {"Software": "another tool", "parameters": INFOTEXT}


def test_sequential_numbering_and_date_folder(tmp_path: Path) -> None:
    days = iter([DAY, DAY, DAY, DAY, DAY + datetime.timedelta(days=1)])
    store = OutputStore(tmp_path, today=lambda: next(days))
    names = [store.save_png(small_image(), INFOTEXT, "txt2img-images", seed).name for seed in (5, 6)]
    assert names == ["00000-5.png", "00001-6.png"]

    folder = tmp_path / "txt2img-images" / "2024-05-06"
    (folder / "00007-123.png").write_bytes(b"placed by hand")
    (folder / "notes.txt").write_text("not numbered")
    (folder / "grid-0001.png").write_bytes(b"")
    assert store.save_png(small_image(), INFOTEXT, "txt2img-images", 9).name == "00008-9.png"

    # A save in progress elsewhere (or one killed mid-save) holds its index through a hidden marker.
    (folder / ".00009.reserved").write_bytes(b"")
    assert store.save_png(small_image(), INFOTEXT, "txt2img-images", 11).name == "00010-11.png"

    next_day = store.save_png(small_image(), INFOTEXT, "txt2img-images", 10)
    assert next_day == tmp_path / "txt2img-images" / "2024-05-07" / "00000-10.png"
    assert [name for name in os.listdir(folder) if name.startswith(".")] == [".00009.reserved"]


def test_flat_store_writes_into_root(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "out", flat=True)
    paths = [store.save_png(small_image(), INFOTEXT, "txt2img", seed) for seed in (3, 4)]
    assert paths == [tmp_path / "out" / "00000-3.png", tmp_path / "out" / "00001-4.png"]


def test_concurrent_saves_get_distinct_numbers(tmp_path: Path) -> None:
    # Two stores (as two processes would have) saving at once must never overwrite each other.
    stores = [OutputStore(tmp_path, today=lambda: DAY) for _ in range(2)]
    saved: list[Path] = []
    lock = threading.Lock()

    def work(store: OutputStore, offset: int) -> None:
        for i in range(8):
            path = store.save_png(small_image(), f"{INFOTEXT}, n{offset + i}", "txt2img-images", offset + i)
            with lock:
                saved.append(path)

    threads = [threading.Thread(target=work, args=(store, 100 * n)) for n, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    folder = tmp_path / "txt2img-images" / "2024-05-06"
    assert len(set(saved)) == 16
    assert sorted(name.split("-")[0] for name in os.listdir(folder)) == [f"{i:05d}" for i in range(16)]
    for path in saved:
        seed = path.stem.split("-")[1]
        assert read_infotext(path) == f"{INFOTEXT}, n{seed}"


def test_without_hard_links_saves_still_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    store = OutputStore(tmp_path, today=lambda: DAY)
    paths = [store.save_png(small_image(), INFOTEXT, "extras-images", seed) for seed in (1, 2)]
    assert [p.name for p in paths] == ["00000-1.png", "00001-2.png"]
    assert sorted(os.listdir(paths[0].parent)) == ["00000-1.png", "00001-2.png"]


def test_save_that_raises_leaves_nothing_behind(tmp_path: Path) -> None:
    store = OutputStore(tmp_path, today=lambda: DAY)
    cmyk = Image.new("CMYK", (8, 8))  # PNG cannot hold CMYK: Pillow raises inside save()
    with pytest.raises(OutputSaveError) as caught:
        store.save_png(cmyk, INFOTEXT, "txt2img-images", 42)
    assert "00000-42.png" in str(caught.value)
    assert os.listdir(tmp_path / "txt2img-images" / "2024-05-06") == []


_FILE_SIZE_LIMIT_SCRIPT = """
import datetime, json, os, resource, signal, sys
from pathlib import Path
from PIL import Image, PngImagePlugin
from webui.services.outputs import OutputSaveError, OutputStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
root = Path(sys.argv[1])
store = OutputStore(root, today=lambda: datetime.date(2024, 5, 6))
noise = Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3))
store.save_png(noise, "before the limit", "txt2img-images", 1)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    store.save_png(noise, "after the limit", "txt2img-images", 2)
except OutputSaveError as exc:
    print(json.dumps({"errno": exc.errno, "message": str(exc), "is_oserror": isinstance(exc, OSError)}))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uses RLIMIT_FSIZE")
def test_case_28_failure_in_the_middle_of_writing_leaves_no_partial_file(tmp_path: Path) -> None:
    # A real write error after 4 KiB of PNG data (EFBIG from the file size limit), as on a disk that fills up.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    folder = tmp_path / "txt2img-images" / "2024-05-06"
    assert report["errno"] == errno.EFBIG
    assert report["is_oserror"]
    assert str(folder / "00001-2.png") in report["message"]
    assert "free space or change --outputs-dir" in report["message"]
    assert os.listdir(folder) == ["00000-1.png"]
    assert read_infotext(folder / "00000-1.png") == "before the limit"


NOBODY = 65534


def _save_as_unprivileged(root: Path, mode: str) -> dict[str, object]:
    """Save one image under `root`, as a user that folder permissions apply to, and report what happened.

    Root ignores folder permissions, so as root the save runs in a forked child that drops to `nobody` first (a fork,
    not a new interpreter: the venv's Python may sit under /root, which nobody cannot enter)."""

    def attempt() -> dict[str, object]:
        try:
            path = OutputStore(root, today=lambda: DAY).save_png(small_image(), INFOTEXT, mode, 1)
        except OutputSaveError as exc:
            return {"error": str(exc), "errno": exc.errno, "path": str(exc.path)}
        return {"saved": str(path)}

    if os.geteuid() != 0:
        return attempt()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome = attempt() if os.geteuid() == NOBODY else {"not_dropped": os.geteuid()}
            os.write(write_end, json.dumps(outcome).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and report, "the unprivileged child failed"
    return json.loads(report)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX folder permissions")
def test_read_only_folder_raises_clear_error() -> None:
    # A fresh world-traversable folder under /tmp (pytest's tmp_path is 0700, closed to the unprivileged user).
    root = Path(tempfile.mkdtemp(prefix="latent-studio-read-only-"))
    try:
        root.chmod(0o755)
        folder = root / "txt2img-images" / "2024-05-06"
        folder.mkdir(parents=True)
        folder.parent.chmod(0o755)
        folder.chmod(0o555)
        writable = root / "writable"
        writable.mkdir(mode=0o777)
        writable.chmod(0o777)

        # Control: the same user can save where it may write, so the failure below is the folder's permissions.
        control = _save_as_unprivileged(writable, "txt2img-images")
        assert control == {"saved": str(writable / "txt2img-images" / "2024-05-06" / "00000-1.png")}

        outcome = _save_as_unprivileged(root, "txt2img-images")
        assert outcome.get("errno") == errno.EACCES, outcome
        assert "writable or change --outputs-dir" in str(outcome["error"])
        assert str(folder / "00000-1.png") in str(outcome["error"])
        assert os.listdir(folder) == []  # no partial or temporary file left
    finally:
        if (root / "txt2img-images" / "2024-05-06").exists():
            (root / "txt2img-images" / "2024-05-06").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_unusable_folder_raises_clear_error(tmp_path: Path) -> None:
    (tmp_path / "txt2img-images").write_text("a file where the folder should be")
    with pytest.raises(OutputSaveError) as caught:
        OutputStore(tmp_path, today=lambda: DAY).save_png(small_image(), INFOTEXT, "txt2img-images", 1)
    assert str(tmp_path / "txt2img-images" / "2024-05-06") in str(caught.value)


def test_disk_full_error_message() -> None:
    path = Path("/data/outputs/txt2img-images/2024-05-06/00003-7.png")
    error = OutputSaveError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert isinstance(error, OSError)
    assert error.errno == errno.ENOSPC
    assert str(path) in str(error)
    assert "free space or change --outputs-dir" in str(error)


@pytest.mark.parametrize("mode", ["", "..", "../escape", "a/b", "a\\b"])
def test_mode_must_be_a_plain_folder_name(tmp_path: Path, mode: str) -> None:
    with pytest.raises(ValueError):
        OutputStore(tmp_path, today=lambda: DAY).save_png(small_image(), INFOTEXT, mode, 1)


def test_case_28_absurd_seed_is_cut_to_the_file_name_limit(tmp_path: Path) -> None:
    path = OutputStore(tmp_path, today=lambda: DAY).save_png(small_image(), INFOTEXT, "txt2img-images", 10**400)
    assert len(path.name) <= 255
    assert path.name.startswith("00000-1") and path.suffix == ".png"
    assert read_infotext(path) == INFOTEXT


@pytest.mark.parametrize(
    ("label", "comment"),
    [
        ("unicode-be", b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")),
        ("unicode-le", b"UNICODE\x00" + INFOTEXT.encode("utf-16-le")),
        ("unicode-non-latin", b"UNICODE\x00" + "猫, 桜\nSteps: 20, Seed: 1, CFG scale: 7".encode("utf-16-be")),
        ("ascii", b"ASCII\x00\x00\x00" + INFOTEXT.encode("ascii")),
        ("undefined", b"\x00" * 8 + INFOTEXT.encode("utf-8")),
    ],
)
def test_jpeg_exif_user_comment(label: str, comment: bytes) -> None:
    buffer = io.BytesIO()
    small_image().save(buffer, format="JPEG", exif=exif_with_user_comment(comment))
    expected = "猫, 桜\nSteps: 20, Seed: 1, CFG scale: 7" if label == "unicode-non-latin" else INFOTEXT
    assert read_infotext(buffer.getvalue()) == expected


def test_webp_exif_and_gif_comment(tmp_path: Path) -> None:
    webp = tmp_path / "image.webp"
    small_image().save(webp, format="WEBP", exif=exif_with_user_comment(b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")))
    assert read_infotext(webp) == INFOTEXT

    gif = io.BytesIO()
    small_image().convert("P").save(gif, format="GIF", comment=INFOTEXT.encode("utf-8"))
    with Image.open(io.BytesIO(gif.getvalue())) as image:
        assert read_infotext(image) == INFOTEXT


def test_no_infotext_gives_none() -> None:
    for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
        buffer = io.BytesIO()
        small_image().convert("P" if fmt == "GIF" else "RGB").save(buffer, format=fmt)
        assert read_infotext(buffer.getvalue()) is None, fmt
    assert read_infotext(small_image()) is None



@pytest.mark.parametrize(("comment", "expected"), [
    # A byte-order mark: trailing spaces and newlines belong to the text; only padding zeros go.
    (b"UNICODE\x00\xff\xfe" + "a prompt \n".encode("utf-16-le") + b"\x00\x00", "a prompt \n"),
    (b"UNICODE\x00\xfe\xff" + "a prompt \n".encode("utf-16-be") + b"\x00\x00", "a prompt \n"),
    # An odd stray byte at the end (a truncating writer) is dropped; the last character survives.
    (b"UNICODE\x00" + "Steps: 20".encode("utf-16-be") + b"\x00", "Steps: 20"),
])
def test_utf16_user_comments_keep_their_text_exactly(comment: bytes, expected: str) -> None:
    buffer = io.BytesIO()
    small_image().save(buffer, format="JPEG", exif=exif_with_user_comment(comment))
    assert read_infotext(buffer.getvalue()) == expected
