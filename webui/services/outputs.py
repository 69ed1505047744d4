"""Saving generated images (with their infotext) and reading the infotext back from any image.

Files follow A1111's layout (`<root>/<mode>/<YYYY-MM-DD>/NNNNN-<seed>.png`, infotext in the PNG `parameters` chunk) so
tools written for A1111 outputs keep working. Unlike A1111, a save is crash-safe: the PNG is written to a hidden temp
file, fsynced, and only then given its final name in one atomic step, so a kill or a full disk never leaves a
half-written image under a final name (security-cases rows 27-28).
"""

from __future__ import annotations

import datetime
import errno
import io
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image, PngImagePlugin

logger = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".png.tmp"
RESERVATION_SUFFIX = ".reserved"
_INDEX_WIDTH = 5
_MAX_INDEX_ATTEMPTS = 1000
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_INVALID_MODE = re.compile(r"[/\\\x00]")
# errnos meaning "this filesystem cannot make hard links": fall back to os.replace.
_NO_LINK_ERRNOS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


class OutputSaveError(OSError):
    """An image could not be saved; the message names the file and tells the user what to do.

    The caller can still show the image in the UI: nothing was left behind on disk.
    """

    def __init__(self, path: Path, cause: BaseException) -> None:
        code = cause.errno if isinstance(cause, OSError) and cause.errno is not None else errno.EIO
        super().__init__(code, _advice(path, cause))
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def _advice(path: Path, cause: BaseException) -> str:
    code = getattr(cause, "errno", None)
    reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free space or change --outputs-dir"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make the folder writable or change --outputs-dir"
    elif code == errno.ENAMETOOLONG:
        hint = "choose a shorter --outputs-dir"
    else:
        hint = "check the folder or change --outputs-dir"
    return f"could not save image to {path}: {reason}; {hint}"


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _fsync_dir(folder: Path) -> None:
    """Make the new directory entry durable too; not possible on every platform, so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _png_info(image: Image.Image, infotext: str) -> PngImagePlugin.PngInfo:
    """The `parameters` chunk plus any text chunks the image already had (A1111 keeps them)."""
    info = PngImagePlugin.PngInfo()
    for key, value in getattr(image, "text", {}).items():
        if key != PARAMETERS_KEY and isinstance(value, str):
            info.add_text(key, value)
    # add_text writes tEXt when the text is Latin-1 and iTXt (UTF-8) otherwise.
    info.add_text(PARAMETERS_KEY, infotext)
    return info


class OutputStore:
    """Writes generated images under `root`, A1111-style, atomically and with race-free numbering."""

    def __init__(self, root: Path, today: Callable[[], datetime.date] | None = None, *, flat: bool = False,
                 per_user: bool = False) -> None:
        """`flat=True` writes straight into `root` (the CLI's `--out`), without the mode and date folders.
        `per_user=True` (an app with several logins) puts each owner's images under `<root>/<owner>/`, so one user's
        files can be told from, and kept from, another's."""
        self.root = Path(root)
        self._today = today or datetime.date.today
        self.flat = flat
        self.per_user = per_user

    def folder_for(self, mode: str, owner: str | None = None) -> Path:
        """`<root>/<mode>/<YYYY-MM-DD>`, or `<root>/<owner>/<mode>/<YYYY-MM-DD>` when per user; `mode` and `owner`
        must be plain folder names (they must not escape `root`)."""
        if not mode or mode in (".", "..") or _INVALID_MODE.search(mode):
            raise ValueError(f"output mode {mode!r} must be a plain folder name such as 'txt2img-images'")
        if self.flat:
            return self.root
        if not self.per_user:
            return self.root / mode / self._today().isoformat()
        if not owner or owner.startswith(".") or _INVALID_MODE.search(owner):
            raise ValueError(f"per-user outputs need the job owner's user name as a plain folder name, not {owner!r}")
        return self.root / owner / mode / self._today().isoformat()

    def remove_stale_temporaries(self, older_than_s: float = 300.0) -> list[Path]:
        """Delete the temporary files and index markers a killed save left behind (called at start-up).

        Only files older than `older_than_s` go: another process (the CLI) may be saving into the same folder right
        now, and a save takes well under a second. Final images are never touched."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        removed = []
        for path in self.root.rglob(".*"):
            name = path.name
            leftover = ((name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX))
                        or name.endswith(RESERVATION_SUFFIX))
            try:
                if leftover and path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except OSError as exc:  # reported, never fatal: the app still starts
                logger.warning("could not remove the leftover %s: %s", path, exc)
        return removed

    @staticmethod
    def _indices(folder: Path) -> tuple[set[int], set[int]]:
        """Indices used by `NNNNN-...` files, and by the hidden `.NNNNN.reserved` markers of saves in progress."""
        files: set[int] = set()
        markers: set[int] = set()
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return files, markers
        for name in names:
            is_marker = name.startswith(".") and name.endswith(RESERVATION_SUFFIX)
            head = name[1 : -len(RESERVATION_SUFFIX)] if is_marker else name.split(".", 1)[0].split("-", 1)[0]
            if head.isdigit() and head.isascii():
                (markers if is_marker else files).add(int(head))
        return files, markers

    @classmethod
    def next_index(cls, folder: Path) -> int:
        """One past the highest index in `folder`, counting `NNNNN-...` files (A1111's rule: gaps are not reused)
        and the markers of saves in progress."""
        files, markers = cls._indices(folder)
        return max(files | markers, default=-1) + 1

    @staticmethod
    def _final_name(folder: Path, index: int, seed: int) -> str:
        name = f"{index:0{_INDEX_WIDTH}d}-{seed}.png"
        limit = _name_max(folder)
        if len(name.encode()) > limit:
            # Only an absurd seed can get here; keep the index (unique) and the extension, cut the seed.
            stem = f"{index:0{_INDEX_WIDTH}d}-{seed}"[: limit - len(".png")]
            name = stem + ".png"
        return name

    def save_png(self, image: Image.Image, infotext: str, mode: str, seed: int, owner: str | None = None) -> Path:
        """Save `image` with `infotext` as `<root>/[<owner>/]<mode>/<date>/NNNNN-<seed>.png` and return that path.

        Raises OutputSaveError (with the path and advice) on any failure; no file is left behind then.
        """
        folder = self.folder_for(mode, owner)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputSaveError(folder, exc) from exc

        temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        target = folder / self._final_name(folder, self.next_index(folder), seed)
        try:
            self._write_temp(temp, image, infotext)
            target = self._publish(temp, folder, seed)
        except Exception as exc:
            raise OutputSaveError(target, exc) from exc
        finally:
            # After a successful hard link the temp name is just a second link; after a failure it is debris.
            try:
                temp.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # pragma: no cover - nothing more we can do
                logger.warning("could not remove temporary file %s: %s", temp, exc)
        _fsync_dir(folder)
        return target

    @staticmethod
    def _write_temp(temp: Path, image: Image.Image, infotext: str) -> None:
        # O_EXCL: never write through a pre-existing file or link; 0o666 so the umask applies as for any file.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=_png_info(image, infotext))
            handle.flush()
            os.fsync(handle.fileno())

    def _publish(self, temp: Path, folder: Path, seed: int) -> Path:
        """Give the finished temp file the next free index, atomically and without overwriting anything.

        The index (not just the name, which also holds the seed) is claimed by creating `.NNNNN.reserved` with
        O_EXCL and then checking that no file has taken it; a save removes its marker only after its file exists,
        so concurrent saves, in threads or other processes, never share a number. The final name then
        appears in one step: `os.link` (fails rather than overwrite), or `os.replace` where hard links are not
        supported. A marker is left behind only if the process dies mid-save; it is hidden and costs one index.
        """
        for _ in range(_MAX_INDEX_ATTEMPTS):
            index = self.next_index(folder)
            marker = folder / f".{index:0{_INDEX_WIDTH}d}{RESERVATION_SUFFIX}"
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                continue
            try:
                # A save that finished between our scan and our claim has dropped its marker but left its file.
                if index in self._indices(folder)[0]:
                    continue
                target = folder / self._final_name(folder, index, seed)
                try:
                    os.link(temp, target)
                    return target
                except FileExistsError:
                    continue  # a file with this exact name was put there by something else
                except OSError as exc:
                    if exc.errno not in _NO_LINK_ERRNOS:
                        raise
                if not target.exists():
                    os.replace(temp, target)
                    return target
            finally:
                marker.unlink(missing_ok=True)
        raise FileExistsError(errno.EEXIST, f"no free file name after {_MAX_INDEX_ATTEMPTS} attempts", str(folder))


def _decode_user_comment(raw: bytes | str) -> str:
    """Decode an EXIF UserComment: 8-byte character-code prefix, then the text (how piexif writes A1111's)."""
    if isinstance(raw, str):
        return raw.rstrip("\x00")
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        return _decode_utf16(body)
    if prefix == b"JIS\x00\x00\x00\x00\x00":
        return body.decode("shift_jis", errors="replace").rstrip("\x00")
    if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        pass
    else:
        body = raw  # no recognised prefix: some writers store bare text
    try:
        return body.decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError:
        return body.decode("latin-1").rstrip("\x00")


def _decode_utf16(body: bytes) -> str:
    """UTF-16BE as piexif writes; little-endian when a BOM or the zero-byte pattern says so (other writers)."""
    if body.startswith(b"\xfe\xff"):
        return body[2:].decode("utf-16-be", errors="replace").rstrip("\x00")
    if body.startswith(b"\xff\xfe"):
        return body[2:].decode("utf-16-le", errors="replace").rstrip("\x00")
    if len(body) % 2:
        body = body[:-1]
    # Text that is mostly ASCII has its zero bytes at even offsets in BE and at odd offsets in LE.
    even_zeros = body[0::2].count(0)
    odd_zeros = body[1::2].count(0)
    encoding = "utf-16-le" if odd_zeros > even_zeros else "utf-16-be"
    try:
        return body.decode(encoding).rstrip("\x00")
    except UnicodeDecodeError:
        other = "utf-16-be" if encoding == "utf-16-le" else "utf-16-le"
        try:
            return body.decode(other).rstrip("\x00")
        except UnicodeDecodeError:
            return body.decode(encoding, errors="replace").rstrip("\x00")


def _infotext_from_image(image: Image.Image) -> str | None:
    text = image.info.get(PARAMETERS_KEY)
    if text is None and image.format == "PNG":
        # Chunks after IDAT only show up once the image is loaded (`.text` does that); A1111 writes them before.
        text = getattr(image, "text", {}).get(PARAMETERS_KEY)
    if isinstance(text, str) and text:
        return str(text)

    try:
        comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # a damaged EXIF block must not stop reading the image
        logger.debug("unreadable EXIF data", exc_info=True)
        comment = None
    if comment:
        decoded = _decode_user_comment(comment)
        if decoded:
            return decoded

    gif_comment = image.info.get("comment")
    if isinstance(gif_comment, bytes):
        gif_comment = gif_comment.decode("utf-8", errors="replace")
    if isinstance(gif_comment, str) and gif_comment:
        return gif_comment
    return None


def read_infotext(source: Image.Image | Path | bytes) -> str | None:
    """The A1111 infotext stored in an image (PNG text chunk, JPEG/WebP EXIF UserComment, GIF comment), or None.

    A file that is not an image raises PIL.UnidentifiedImageError.
    """
    if isinstance(source, Image.Image):
        return _infotext_from_image(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(source))) as image:
            return _infotext_from_image(image)
    with Image.open(Path(source)) as image:
        return _infotext_from_image(image)


def png_bytes(image: Image.Image, infotext: str) -> bytes:
    """The image as PNG bytes carrying its infotext, exactly as a saved file would (the HTTP API returns these)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(image, infotext))
    return buffer.getvalue()
