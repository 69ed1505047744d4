"""Saving generated images (with their infotext) and reading the infotext back from any image.

Files follow A1111's layout (`<root>/<mode>/<YYYY-MM-DD>/NNNNN-<seed>.png`, infotext in the PNG `parameters` chunk) so
tools written for A1111 outputs keep working. Unlike A1111, a save is crash-safe: the PNG is written to a hidden temp
file, fsynced, and only then given its final name in one atomic step, so a kill or a full disk never leaves a
half-written image under a final name (security-cases rows 27-28).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import io
import logging
import math
import os
import re
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

SAMPLE_FORMATS = ("png", "jpg", "webp")
_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
_JPEG_EXIF_LIMIT = 65533  # one APP1 segment; a longer infotext cannot go into a JPEG's EXIF
# A1111's `sanitize_filename_part`: these characters never reach a file name, nor a leading space or a trailing ". "
_INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
_MAX_PART = 128
_PROMPT_WORDS = 8
_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")  # A1111's `re_nonletters`
_TOKEN = re.compile(r"\[(\w+)\]")
_FOLDER_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _.\-]*$")


def sanitize_filename_part(text: str, replace_spaces: bool = True) -> str:
    """A1111's rule, so patterns give the same names: drop path and shell characters, cut to 128 characters."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(c): "_" for c in _INVALID_FILENAME_CHARS})
    return text.lstrip(" ")[:_MAX_PART].rstrip(" .")


def _prompt_words(prompt: str) -> str:
    words = [word for word in _NONLETTERS.split(prompt or "") if word]
    return sanitize_filename_part(" ".join(words[:_PROMPT_WORDS]) or "empty", replace_spaces=False)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


# Token -> how its text comes from the image's fields (A1111's FilenameGenerator names; docs/settings.md lists them).
FILENAME_TOKENS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "seed": lambda f: f.get("seed"),
    "seed_first": lambda f: f.get("seed_first", f.get("seed")),
    "seed_last": lambda f: f.get("seed_last", f.get("seed")),
    "steps": lambda f: f.get("steps"),
    "cfg": lambda f: f.get("cfg"),
    "width": lambda f: f.get("width"),
    "height": lambda f: f.get("height"),
    "sampler": lambda f: sanitize_filename_part(str(f.get("sampler") or ""), replace_spaces=False),
    "scheduler": lambda f: sanitize_filename_part(str(f.get("scheduler") or ""), replace_spaces=False),
    "sampler_scheduler": lambda f: sanitize_filename_part(
        str(f.get("sampler") or "") if (f.get("scheduler") or "Automatic") == "Automatic"
        else f"{f.get('sampler')} {f.get('scheduler')}", replace_spaces=False),
    "model_name": lambda f: sanitize_filename_part(str(f.get("model_name") or ""), replace_spaces=False),
    "model_hash": lambda f: f.get("model_hash"),
    "date": lambda f: f["now"].date().isoformat(),
    "datetime": lambda f: f["now"].strftime("%Y%m%d%H%M%S"),
    "job_timestamp": lambda f: f.get("job_timestamp") or f["now"].strftime("%Y%m%d%H%M%S"),
    "prompt": lambda f: sanitize_filename_part(str(f.get("prompt") or "")),
    "prompt_no_styles": lambda f: sanitize_filename_part(str(f.get("prompt") or "")),
    "prompt_spaces": lambda f: sanitize_filename_part(str(f.get("prompt") or ""), replace_spaces=False),
    "prompt_words": lambda f: _prompt_words(str(f.get("prompt") or "")),
    "prompt_hash": lambda f: _short_hash(str(f.get("prompt") or "")),
    "negative_prompt": lambda f: sanitize_filename_part(str(f.get("negative_prompt") or "")),
    "negative_prompt_hash": lambda f: _short_hash(str(f.get("negative_prompt") or "")),
    "batch_number": lambda f: f.get("batch_number"),
    "batch_size": lambda f: f.get("batch_size"),
    "denoising": lambda f: f.get("denoising"),
    "user": lambda f: sanitize_filename_part(str(f.get("user") or ""), replace_spaces=False),
    "none": lambda f: "",
}


def check_filename_pattern(pattern: str) -> str | None:
    """None when every `[token]` is known and no path separator is used; else what is wrong and what is allowed."""
    unknown = sorted({name for name in _TOKEN.findall(pattern) if name not in FILENAME_TOKENS})
    if unknown:
        return (f"unknown token(s) {', '.join(f'[{name}]' for name in unknown)}; known: "
                + " ".join(f"[{name}]" for name in FILENAME_TOKENS))
    if "/" in pattern or "\\" in pattern:
        return "a file-name pattern makes a file name only: no '/' or '\\' (choose the folder in its own setting)"
    if len(pattern) > 200:
        return "longer than 200 characters"
    return None


def expand_pattern(pattern: str, fields: Mapping[str, Any]) -> str:
    """`[seed]-[prompt_words]` -> `42-a_red_circle`: every known token replaced, the rest sanitized."""
    values = {"now": datetime.datetime.now(), **fields}

    def one(match: re.Match[str]) -> str:
        make = FILENAME_TOKENS.get(match.group(1))
        if make is None:
            return match.group(0)
        value = make(values)
        return "" if value is None else str(value)

    return sanitize_filename_part(_TOKEN.sub(one, pattern), replace_spaces=False)


def check_folder(value: str) -> str | None:
    """Output folders are relative paths inside the outputs folder, so no setting (nor `POST /sdapi/v1/options`)
    can make the app write elsewhere (A1111 weakness #5: output dirs redirected into `scripts/`)."""
    text = value.strip()
    if not text:
        return "empty"
    if text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        return "an absolute path; give a folder inside the outputs folder, such as 'txt2img-images'"
    parts = text.replace("\\", "/").split("/")
    for part in parts:
        if part in ("", ".", "..") or not _FOLDER_PART.match(part):
            return (f"the part {part!r} is not allowed; use folder names of letters, digits, space, '-', '_' and '.' "
                    "(not starting with '.'), separated by '/', inside the outputs folder")
    return None


@dataclass(frozen=True)
class SaveOptions:
    """How images are saved (the Saving settings; docs/settings.md). The defaults are the layout before settings:
    `<mode>/<date>/NNNNN-<seed>.png` with the infotext, no grids."""

    folders: Mapping[str, str] = field(default_factory=dict)  # mode -> folder under the root; the mode by default
    grid_folders: Mapping[str, str] = field(default_factory=dict)  # mode -> grid folder; `<mode>-grids` by default
    filename_pattern: str = "[seed]"
    format: str = "png"
    quality: int = 80  # JPEG and WebP
    pnginfo: bool = True  # the infotext in the file (PNG text chunk, EXIF UserComment for JPEG/WebP)
    save_grid: bool = False

    def folder(self, mode: str, grid: bool = False) -> str:
        return (self.grid_folders.get(mode) or f"{mode}-grids") if grid else (self.folders.get(mode) or mode)


def image_grid(images: list[Image.Image]) -> Image.Image:
    """A1111's default grid: rows = the largest divisor of n not above sqrt(n), in order, row by row."""
    rows = max(1, math.floor(math.sqrt(len(images))))
    while len(images) % rows:
        rows -= 1
    columns = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), (0, 0, 0))
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    return grid


def _exif_with_comment(infotext: str) -> bytes:
    """EXIF with the infotext as UserComment, as piexif writes A1111's: `UNICODE\\0` then UTF-16BE."""
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\x00" + infotext.encode("utf-16-be")
    return exif.tobytes()


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
                 per_user: bool = False, options: Callable[[], SaveOptions] | None = None) -> None:
        """`flat=True` writes straight into `root` (the CLI's `--out`), without the mode and date folders.
        `per_user=True` (an app with several logins) puts each owner's images under `<root>/<owner>/`, so one user's
        files can be told from, and kept from, another's. `options` gives the current Saving settings at each save
        (the app passes the settings' reader; without it, the defaults)."""
        self.root = Path(root)
        self._today = today or datetime.date.today
        self.flat = flat
        self.per_user = per_user
        self.options: Callable[[], SaveOptions] = options or SaveOptions

    def folder_for(self, mode: str, owner: str | None = None, folder: str | None = None) -> Path:
        """`<root>/<folder>/<YYYY-MM-DD>`, or `<root>/<owner>/<folder>/<YYYY-MM-DD>` when per user; `folder` (a
        relative path from the settings, `mode` by default), `mode` and `owner` must not escape `root`."""
        if not mode or mode in (".", "..") or _INVALID_MODE.search(mode):
            raise ValueError(f"output mode {mode!r} must be a plain folder name such as 'txt2img-images'")
        if folder is not None and check_folder(folder):
            raise ValueError(f"output folder {folder!r}: {check_folder(folder)}")
        sub = Path(*(folder or mode).strip().replace("\\", "/").split("/"))
        if self.flat:
            return self.root
        if not self.per_user:
            return self.root / sub / self._today().isoformat()
        if not owner or owner.startswith(".") or _INVALID_MODE.search(owner):
            raise ValueError(f"per-user outputs need the job owner's user name as a plain folder name, not {owner!r}")
        return self.root / owner / sub / self._today().isoformat()

    def save_image(self, image: Image.Image, infotext: str, mode: str, seed: int, owner: str | None = None,
                   fields: Mapping[str, Any] | None = None, grid: bool = False) -> Path:
        """Save as the Saving settings say (folder, file-name pattern, format, quality, infotext on or off), with the
        same atomic, race-free numbering as `save_png`. `fields` fill the pattern's tokens (prompt, model_name, ...);
        a grid goes to the mode's grid folder as `NNNNN-grid-<pattern>`."""
        options = self.options()
        values = {"seed": seed, "user": owner, **(fields or {})}
        stem = expand_pattern(options.filename_pattern, values)
        if grid:
            stem = f"grid-{stem}" if stem else "grid"
        return self._save(image, infotext if options.pnginfo else None, mode, owner, stem, options.format,
                          options.quality, options.folder(mode, grid))

    def save_grid(self, images: list[Image.Image], infotext: str, mode: str, owner: str | None = None,
                  fields: Mapping[str, Any] | None = None) -> Path | None:
        """The batch as one grid image, when grid saving is on and there is more than one image (A1111's rule)."""
        if len(images) < 2 or not self.options().save_grid:
            return None
        return self.save_image(image_grid(images), infotext, mode, int((fields or {}).get("seed_first", 0)), owner,
                               fields, grid=True)

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
    def _final_name(folder: Path, index: int, stem: str, extension: str = "png") -> str:
        base = f"{index:0{_INDEX_WIDTH}d}-{stem}" if stem else f"{index:0{_INDEX_WIDTH}d}"
        name = f"{base}.{extension}"
        limit = _name_max(folder)
        if len(name.encode()) > limit:
            # An absurd seed or a long prompt: keep the index (unique) and the extension, cut the rest (by bytes).
            cut = base.encode()[: limit - len(extension) - 1].decode("utf-8", errors="ignore")
            name = f"{cut}.{extension}"
        return name

    def save_png(self, image: Image.Image, infotext: str, mode: str, seed: int, owner: str | None = None) -> Path:
        """Save `image` with `infotext` as `<root>/[<owner>/]<mode>/<date>/NNNNN-<seed>.png` and return that path.

        Raises OutputSaveError (with the path and advice) on any failure; no file is left behind then.
        """
        return self._save(image, infotext, mode, owner, str(seed), "png", 100, None)

    def _save(self, image: Image.Image, infotext: str | None, mode: str, owner: str | None, stem: str, extension: str,
              quality: int, subfolder: str | None) -> Path:
        folder = self.folder_for(mode, owner, subfolder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputSaveError(folder, exc) from exc

        temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        target = folder / self._final_name(folder, self.next_index(folder), stem, extension)
        try:
            self._write_temp(temp, image, infotext, extension, quality)
            target = self._publish(temp, folder, stem, extension)
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
    def _write_temp(temp: Path, image: Image.Image, infotext: str | None, extension: str = "png",
                    quality: int = 80) -> None:
        """`infotext=None`: no generation parameters in the file (the "PNG info" setting off)."""
        # O_EXCL: never write through a pre-existing file or link; 0o666 so the umask applies as for any file.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            if extension == "png":
                image.save(handle, format="PNG", pnginfo=_png_info(image, infotext) if infotext is not None else None)
            else:
                kwargs: dict[str, Any] = {"quality": int(quality)}
                if infotext is not None:
                    exif = _exif_with_comment(infotext)
                    if extension != "jpg" or len(exif) <= _JPEG_EXIF_LIMIT:
                        kwargs["exif"] = exif
                    else:
                        logger.warning("infotext of %d characters is too long for a JPEG's EXIF; saved without it",
                                       len(infotext))
                flat = image.convert("RGB") if extension == "jpg" or image.mode not in ("RGB", "RGBA") else image
                flat.save(handle, format=_PIL_FORMATS[extension], **kwargs)
            handle.flush()
            os.fsync(handle.fileno())

    def _publish(self, temp: Path, folder: Path, stem: str, extension: str = "png") -> Path:
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
                target = folder / self._final_name(folder, index, stem, extension)
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
