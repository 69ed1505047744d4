"""The security and reliability cases of ../shared/reference/security-cases.md that no other test file covers in full.

Every case has at least one test named `test_case_NN_...` (here or in the file docs/security.md names), so
`pytest -k case_07` runs it. The HTTP cases share one real server (`launch.py --listen` with two logins, alice an
admin, a queue of 2 and a 2 MB body limit); the file-format cases write real malformed files; the pickle gadgets are
proved live by running them once with the plain `pickle` module in a child process (their canary file appears) before
the loader refuses them.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import marshal
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.extension_folders import RAISES_ON_IMPORT, write_extension
from tests.server_process import ROOT, AppServer
from tests.test_uploads import png_header_only
from webui.engine.checkpoint_io import CheckpointReadError, UnsafeTorchError, read_checkpoint, read_key_shapes
from webui.engine.synthetic import write_synthetic_checkpoint
from webui.launcher import LaunchError, check_torch

USERS = {"alice": "alice-pw-1", "bob": "bob-pw-22"}
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "cfg_scale": 5.0}
CASES_DOC = ROOT / "docs" / "security.md"


# --- pickle gadgets, written opcode by opcode (protocol 2) ------------------------------------------------------------

def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"


def gadgets(canary: Path) -> dict[str, bytes]:
    """Pickles that create `canary` when unpickled, in the shapes that slipped past pickle scanners."""
    code = f"open({str(canary)!r}, 'w').close()"
    compiled = marshal.dumps(compile(code, "<pickle>", "exec"))
    module = _call(_global("importlib", "import_module"), _text("marshal"))
    loads = _call(_global("builtins", "getattr"), module, _text("loads"))
    code_object = _call(loads, b"B" + struct.pack("<I", len(compiled)) + compiled)
    runner = f"__import__('builtins').exec({code!r})"
    return {
        "os.system": _call(_global("os", "system"), _text(f"touch {canary}")),
        "importlib+marshal": _call(_global("types", "FunctionType"), code_object, b"}") + b")R",
        "timeit": _call(_global("timeit", "timeit"), _text(code), _text("pass"), _global("time", "perf_counter"),
                        b"K\x01"),  # number=1
        "idlelib": _call(_global("idlelib.calltip", "get_entity"), _text(runner)),
        "numpy.f2py": _call(_global("numpy.f2py.crackfortran", "myeval"), _text(runner)),
    }


def torch_archive(path: Path, members: dict[str, bytes] | None = None, pickle_body: bytes | None = None) -> Path:
    """A real `torch.save` zip, with its data.pkl replaced by `pickle_body` and/or `members` added or replaced."""
    torch.save({"x": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as archive:
        contents = {info.filename: archive.read(info) for info in archive.infolist()}
    prefix = next(name for name in contents if name.endswith("/data.pkl")).rsplit("/", 1)[0]
    if pickle_body is not None:
        contents[f"{prefix}/data.pkl"] = b"\x80\x02" + pickle_body + b"."
    contents.update({name.replace("{prefix}", prefix): data for name, data in (members or {}).items()})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return path


# --- the shared server ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security")
    checkpoints = root / "models" / "Stable-diffusion"
    write_synthetic_checkpoint(checkpoints / "tiny.safetensors", "sd1", seed=7,
                               metadata={"modelspec.resolution": "64x64"})
    # named to sort after tiny, which stays the server's default model
    torch_archive(checkpoints / "untrusted.ckpt", pickle_body=gadgets(root / "pwned")["os.system"])
    write_extension(root / "extensions", "bad-import", RAISES_ON_IMPORT)
    return root


@pytest.fixture(scope="module")
def server(site: Path) -> Iterator[AppServer]:
    auth = ",".join(f"{name}:{password}" for name, password in USERS.items())
    app = AppServer(site / "models", site / "outputs", "--listen", "--auth", auth, "--admin", "alice",
                    "--queue-size", "2", "--max-body-mb", "2", "--no-preload", "--extensions-dir",
                    str(site / "extensions"), "--data-dir", str(site / "data")).wait_ready()
    yield app
    app.stop()


def _api(server: AppServer, user: str | None) -> httpx.Client:
    """A script's client: HTTP Basic, no Origin header."""
    return httpx.Client(base_url=server.url, auth=(user, USERS[user]) if user else None, timeout=300)


@contextlib.contextmanager
def _browser(server: AppServer, user: str) -> Iterator[httpx.Client]:
    """A browser's session: logged in through Gradio's login form, so every request carries the login cookie."""
    with httpx.Client(base_url=server.url, timeout=300) as client:
        assert client.post("login", data={"username": user, "password": USERS[user]}).status_code == 200
        yield client


def _gradio_call(client: httpx.Client, api_name: str, data: list[Any], **headers: str) -> tuple[int, str, Any]:
    """Gradio's HTTP API: POST the inputs, then read the event stream; (POST status, event, payload)."""
    posted = client.post(f"gradio_api/call/{api_name}", json={"data": data}, headers=headers)
    if posted.status_code != 200:
        return posted.status_code, "", posted.json()
    stream = client.get(f"gradio_api/call/{api_name}/{posted.json()['event_id']}").text
    events = re.findall(r"event: (\w+)\ndata: (.*)", stream)
    event, payload = events[-1]
    return posted.status_code, event, json.loads(payload)


def _png_b64(color: tuple[int, int, int] = (200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def alice_png(server: AppServer, site: Path) -> Path:
    """One image alice generated and saved (outputs/alice/...)."""
    with _api(server, "alice") as api:
        answer = api.post("sdapi/v1/txt2img", json={**SMALL, "prompt": "alice's private prompt", "seed": 3,
                                                    "save_images": True})
    assert answer.status_code == 200, answer.text
    (path,) = (site / "outputs" / "alice").rglob("*.png")
    return path


# --- 1-4: request values -------------------------------------------------------------------------------------------

def test_case_01_an_overlong_prompt_is_refused_a_10k_token_one_finishes_and_neither_is_logged(server: AppServer
                                                                                             ) -> None:
    huge = "a red circle on a blue square, " * 1800  # 55,800 characters
    words = "a " * 9_999  # 9,999 tokens: 134 chunks of 75, under the 20,000-character limit
    with _api(server, "bob") as api:
        refused = api.post("sdapi/v1/txt2img", json={**SMALL, "prompt": huge})
        started = time.monotonic()
        finished = api.post("sdapi/v1/txt2img", json={**SMALL, "prompt": words, "seed": 1})
        elapsed = time.monotonic() - started
    assert refused.status_code == 422
    assert refused.json()["detail"] == "prompt: is 55800 characters long; the limit is 20000"
    assert finished.status_code == 200 and elapsed < 120
    info = json.loads(finished.json()["info"])
    assert info["prompt"] == words and len(info["all_seeds"]) == 1
    log = server.log.read_text(errors="replace")
    assert huge[:200] not in log and words[:400] not in log  # at most a short excerpt reaches the log


def test_case_02_sides_that_are_not_a_multiple_of_8_get_422_naming_the_side(server: AppServer) -> None:
    with _api(server, "bob") as api:
        for width, height, message in ((699, 700, "width: 699 is not a multiple of 8 (use 696 or 704)"),
                                       (990, 316, "width: 990 is not a multiple of 8 (use 984 or 992)"),
                                       (704, 316, "height: 316 is not a multiple of 8 (use 312 or 320)")):
            answer = api.post("sdapi/v1/txt2img", json={**SMALL, "width": width, "height": height})
            assert answer.status_code == 422 and answer.json()["detail"] == message


def test_case_03_zero_steps_are_refused_and_a_strength_that_leaves_no_step_is_not_a_500(server: AppServer) -> None:
    image = _png_b64()
    with _api(server, "bob") as api:
        for route, extra in (("txt2img", {}), ("img2img", {"init_images": [image]})):
            answer = api.post(f"sdapi/v1/{route}", json={**SMALL, **extra, "steps": 0})
            assert answer.status_code == 422 and answer.json()["detail"].startswith("steps: 0 is out of range"), route
        for strength in (0.01, 0.0):  # int(3 x 0.01) = 0 steps left: A1111's rule runs one; strength 0 runs none
            answer = api.post("sdapi/v1/img2img", json={**SMALL, "init_images": [image], "steps": 3,
                                                        "denoising_strength": strength, "seed": 2})
            assert answer.status_code == 200, answer.text
            assert json.loads(answer.json()["info"])["denoising_strength"] == strength
            assert Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0]))).size == (64, 64)


# --- 6-12: model files ---------------------------------------------------------------------------------------------

def _safetensors(path: Path, header: dict[str, Any] | bytes, data: bytes = b"", declared: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if declared is None else declared) + raw + data)
    return path


def test_case_07_header_length_2_63_larger_than_the_file_and_a_99_mb_header(tmp_path: Path) -> None:
    for name, declared in (("huge-length", 2**63), ("past-the-end", 4096)):
        path = _safetensors(tmp_path / f"{name}.safetensors", b"{}", declared=declared)
        for read in (read_key_shapes, read_checkpoint):
            with pytest.raises(CheckpointReadError, match=f"{name}.safetensors: corrupt or incomplete file "
                                                          r"\(invalid safetensors header length\)"):
                read(path)
    # 100,000 entries in ~99 MB of JSON, just under safetensors' 100,000,000-byte limit: parsed in bounded time
    entries = {f"t{index:06d}." + "w" * 900: {"dtype": "F32", "shape": [1], "data_offsets": [4 * index, 4 * index + 4]}
               for index in range(100_000)}
    raw = json.dumps(entries).encode()
    assert 95_000_000 < len(raw) < 100_000_000
    path = _safetensors(tmp_path / "wide.safetensors", raw, b"\0" * 400_000)
    started = time.monotonic()
    assert len(read_key_shapes(path)) == 100_000
    assert time.monotonic() - started < 60
    too_big = tmp_path / "too-big.safetensors"  # one byte over the limit, in a sparse file of that size
    with too_big.open("wb") as handle:
        handle.write(struct.pack("<Q", 100_000_001))
        handle.truncate(100_000_100)
    started = time.monotonic()
    with pytest.raises(CheckpointReadError, match="invalid safetensors header length"):
        read_key_shapes(too_big)
    assert time.monotonic() - started < 1  # refused from the length alone


BAD_TABLES = {
    "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12,
                "tensor 'b' overlaps another tensor"),
    "gap": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
             "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, 12, "tensor 'b' leaves a gap before it"),
    "zero-size": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 0]}}, 0,
                  r"tensor 'a': shape \[4\] of F32 does not match its 0 bytes"),
    "out-of-range": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8, "tensor 'a' lies past the end"),
    "reversed": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}, 8,
                 "tensor 'a' has invalid data offsets"),
    "shape-vs-bytes": ({"a": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}}, 16,
                       r"shape \[2147483648, 2147483648\] of F32 does not match its 16 bytes"),
    "negative-dim": ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4,
                     "tensor 'a' has an invalid shape"),
    "unknown-dtype": ({"a": {"dtype": "PY_OBJECT", "shape": [1], "data_offsets": [0, 4]}}, 4, "unknown dtype"),
    "trailing-bytes": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 12, "8 bytes after the last"),
}


@pytest.mark.parametrize("kind", BAD_TABLES)
def test_case_08_inconsistent_offsets_and_shapes_are_refused_from_the_header(tmp_path: Path, kind: str) -> None:
    """Refused by the header check that folder scans and architecture inference use too, so no shape the bytes do not
    back is ever trusted (a 2^31 x 2^31 tensor would need 16 EiB if anything tried to allocate it)."""
    header, data_size, message = BAD_TABLES[kind]
    path = _safetensors(tmp_path / f"{kind}.safetensors", header, b"\0" * data_size)
    for read in (read_key_shapes, read_checkpoint):
        with pytest.raises(CheckpointReadError, match=f"^{kind}.safetensors: corrupt .*{message}"):
            read(path)
    fine = _safetensors(tmp_path / "empty-tensor.safetensors", {"a": {"dtype": "F32", "shape": [0],
                                                                      "data_offsets": [0, 0]}})
    assert read_key_shapes(fine) == {"a": (0,)}  # a zero-element tensor is legal


def test_case_09_a_ckpt_that_runs_a_shell_command_is_refused_and_the_server_stays_up(server: AppServer,
                                                                                   site: Path) -> None:
    with _api(server, "bob") as api:
        refused = api.post("sdapi/v1/txt2img",
                           json={**SMALL, "override_settings": {"sd_model_checkpoint": "untrusted"}})
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("untrusted.ckpt: refused: its pickle asks for the forbidden global "
                                                   "os.system")
        assert not (site / "pwned").exists()
        after = api.post("sdapi/v1/txt2img", json={**SMALL, "seed": 4})
    assert after.status_code == 200 and len(after.json()["images"]) == 1


@pytest.mark.parametrize(("version", "safe"), [
    ("2.5.1", False), ("2.5.1+cu121", False), ("1.13.1", False), ("2.6.0a0+git1234", False),
    ("2.6.0.dev20241201", False),
    ("2.6.0", True), ("2.6.0+cu124", True), ("2.14.1+cu130", True), ("3.0.0", True),
])
def test_case_10_torch_older_than_2_6_is_refused_at_startup(version: str, safe: bool) -> None:
    if safe:
        check_torch(version)
        return
    with pytest.raises(LaunchError, match=rf"torch {re.escape(version)} is too old: .*CVE-2025-32434"):
        check_torch(version)


def test_case_10_the_installed_torch_passes_and_pickles_are_never_opened_on_an_old_one() -> None:
    check_torch()  # the pinned torch
    from webui.engine.checkpoint_io import require_safe_torch

    with pytest.raises(UnsafeTorchError):
        require_safe_torch("2.5.1")


@pytest.mark.parametrize("name", ["os.system", "importlib+marshal", "timeit", "idlelib", "numpy.f2py"])
def test_case_11_scanner_evading_pickles_are_refused_by_the_allowlist_loader(tmp_path: Path, name: str) -> None:
    canary = tmp_path / "canary"
    payload = gadgets(canary)[name]
    control = subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                             input=b"\x80\x02" + payload + b".", capture_output=True, timeout=60)
    assert canary.exists(), f"the {name} gadget is not live: {control.stderr.decode()[-300:]}"
    canary.unlink()
    path = torch_archive(tmp_path / f"{name}.ckpt", pickle_body=payload)
    with pytest.raises(CheckpointReadError, match=rf"^{re.escape(name)}.ckpt: refused: its pickle asks for the "
                                                  r"forbidden global [\w.]+ \(code, not weights"):
        read_checkpoint(path)
    assert not canary.exists()


@pytest.mark.parametrize(("members", "message"), [
    ({"{prefix}/evil.py": b"import os"}, "a file a checkpoint never has: '.*/evil.py'"),
    ({"../x": b"x"}, "a file a checkpoint never has: '../x'"),
    ({"other/data.pkl": b"\x80\x02}."}, "exactly one data.pkl in one folder"),
    ({"{prefix}/data/0/../../x": b"x"}, "a file a checkpoint never has"),
    ({"/etc/cron.d/x": b"x"}, "a file a checkpoint never has: '/etc/cron.d/x'"),
], ids=["extra-member", "parent-path", "two-data-pkl", "dotdot-in-data", "absolute"])
def test_case_12_zip_checkpoints_with_foreign_members_are_refused(tmp_path: Path, members: dict[str, bytes],
                                                                   message: str) -> None:
    path = torch_archive(tmp_path / "odd.ckpt", members)
    with pytest.raises(CheckpointReadError, match=f"^odd.ckpt: refused, .*{message}"):
        read_checkpoint(path)
    assert read_checkpoint(torch_archive(tmp_path / "plain.ckpt")).state_dict.keys() == {"x"}


# --- 14-20: uploads, files and URLs --------------------------------------------------------------------------------

def test_case_14_a_20000x20000_png_sent_to_the_api_is_refused_from_its_header(server: AppServer) -> None:
    huge = base64.b64encode(png_header_only(20000, 20000)).decode()
    with _api(server, "bob") as api:
        answer = api.post("sdapi/v1/img2img", json={**SMALL, "init_images": [huge]})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("init_images: refused: the image "
                                                                            "declares too many pixels")


def test_case_15_oversized_uploads_bodies_and_file_counts_are_refused(server: AppServer) -> None:
    with _browser(server, "bob") as browser:
        big = browser.post("gradio_api/upload", files={"files": ("big.bin", b"\0" * (50 * 1024 * 1024 + 1))})
        assert big.status_code == 413 and "maximum allowed size" in big.text
        many = browser.post("gradio_api/upload", files=[("files", (f"{i}.txt", b"x")) for i in range(1001)])
        assert many.status_code in (400, 413) and "Too many files" in many.text
    body = b'{"init_images": ["' + b"A" * (3 * 1024 * 1024) + b'"]}'

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    with _api(server, "bob") as api:
        for content in (body, chunked()):
            answer = api.post("sdapi/v1/img2img", content=content, headers={"content-type": "application/json"})
            assert answer.status_code == 413
            assert answer.json()["detail"] == "request body too large: the limit is 2 MB (--max-body-mb)"


TRAVERSALS = [
    "gradio_api/file=../../../../../../etc/passwd",
    "gradio_api/file=/etc/passwd",
    "gradio_api/file=..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "gradio_api/file=%2Fetc%2Fpasswd",
    "gradio_api/file=..\\..\\..\\..\\etc\\passwd",
    "gradio_api/file=C:\\x::$DATA",
    "gradio_api/file=C:\\Windows\\win.ini",
    "gradio_api/file=/ETC/PASSWD",
    "gradio_api/file=/proc/self/environ",
    "gradio_api/file/etc/passwd",
    "gradio_api/file//etc/passwd",
    "file=/etc/passwd",
    "static//etc/passwd",
    "static//windows/win.ini",
    "static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "assets//etc/passwd",
    "view?filename=passwd&subfolder=../../etc",
    "favicon.ico/../../etc/passwd",
]


def test_case_16_path_traversal_spellings_get_403_or_404(server: AppServer, site: Path) -> None:
    model = site / "models" / "Stable-diffusion" / "tiny.safetensors"
    blocked = [f"gradio_api/file={model}", f"gradio_api/file={str(model).upper()}",
               f"gradio_api/file={site}/outputs/../models/Stable-diffusion/tiny.safetensors",
               f"gradio_api/file={ROOT / 'launch.py'}", f"gradio_api/file={site / 'data'}"]
    secret = model.read_bytes()[:64]
    with _browser(server, "bob") as browser, _api(server, None) as anonymous:
        for client in (browser, anonymous):
            for path in TRAVERSALS + blocked:
                answer = client.get(path)
                assert answer.status_code in (401, 403, 404), (path, answer.status_code)
                assert "root:" not in answer.text and secret not in answer.content, path


def test_case_17_links_in_the_outputs_folder_are_judged_by_where_they_point(server: AppServer, site: Path,
                                                                         alice_png: Path) -> None:
    folder = site / "outputs" / "bob" / "txt2img" / "links"
    folder.mkdir(parents=True)
    targets = {"passwd.png": Path("/etc/passwd"), "alice.png": alice_png,
               "model.png": site / "models" / "Stable-diffusion" / "tiny.safetensors"}
    for name, target in targets.items():
        (folder / name).symlink_to(target)
    (folder / "dir").symlink_to(site / "models", target_is_directory=True)
    own = folder / "own.png"
    Image.new("RGB", (8, 8)).save(own)
    with _browser(server, "bob") as bob:
        assert bob.get(f"gradio_api/file={own}").status_code == 200  # the control: bob's own file is served
        for name in targets:
            answer = bob.get(f"gradio_api/file={folder / name}")
            assert answer.status_code == 403 and "root:" not in answer.text, name
        assert bob.get(f"gradio_api/file={folder}/dir/Stable-diffusion/tiny.safetensors").status_code == 403


def test_case_18_server_paths_in_component_values_are_neither_copied_nor_served(server: AppServer,
                                                                              alice_png: Path) -> None:
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    before = {p for p in cache.rglob("*") if p.is_file()} if cache.exists() else set()
    with _browser(server, "bob") as bob:
        for path in ("/etc/passwd", str(alice_png), str(ROOT / "launch.py")):
            value = {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
            status, event, payload = _gradio_call(bob, "pnginfo", [value])
            assert (status, event) == (200, "error"), (path, payload)
            assert "was not uploaded by a user" in payload["error"]
        # the gallery "Send to ..." buttons are no API endpoints at all (they only move values between tabs)
        endpoints = bob.get("gradio_api/info").json()["named_endpoints"]
        assert "/pnginfo" in endpoints and not any("send" in name for name in endpoints)
    after = {p for p in cache.rglob("*") if p.is_file()} if cache.exists() else set()
    assert not any(p.name in ("passwd", alice_png.name, "launch.py") for p in after - before)


class _Recorder(BaseHTTPRequestHandler):
    """Records every request; `/redirect` answers 302 to `/image.png`, anything else a small PNG."""

    hits: list[str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/image.png")
            self.end_headers()
            return
        body = base64.b64decode(_png_b64())
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("Handler", (_Recorder,), {"hits": hits})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def test_case_19_image_urls_are_never_fetched_whichever_input_carries_them(server: AppServer,
                                                                          recorder: tuple[str, list[str]]) -> None:
    where, hits = recorder
    urls = [f"http://{where}/image.png", f"http://{where}/redirect", f"HTTP://{where}/upper.png",
            f"http://localhost:{where.split(':')[1]}/name.png", f"ftp://{where}/x.png", "file:///etc/passwd",
            f"{server.url}sdapi/v1/options", "http://169.254.169.254/latest/meta-data/", "https://huggingface.co/x.png"]
    image = _png_b64()
    with _api(server, "bob") as api, _browser(server, "bob") as browser:
        for url in urls:
            bodies = [
                ("img2img", {"init_images": [url]}, "init_images"),
                ("img2img", {"init_images": [image], "mask": url}, "mask"),
                *(("txt2img", {"alwayson_scripts": {"controlnet": {"args": [
                    {"enabled": True, "module": "none", "model": "None", field: value}]}}}, f"controlnet unit 0 {name}")
                  for field, value, name in (("image", url, "image"), ("mask_image", url, "mask_image"),
                                             ("input_image", url, "image"), ("image", {"image": url}, "image"))),
            ]
            for route, extra, field in bodies:
                answer = api.post(f"sdapi/v1/{route}", json={**SMALL, **extra})
                assert answer.status_code == 422, (route, field, url, answer.text)
                assert answer.json()["detail"].startswith(f"{field}: image URLs are not fetched"), answer.text
            value = {"path": url, "url": url, "meta": {"_type": "gradio.FileData"}}
            status, _, payload = _gradio_call(browser, "pnginfo", [value])
            assert status == 422 and payload["detail"].startswith("file and image URLs are not fetched")
    assert hits == []


def test_case_20_uploaded_html_and_svg_are_served_as_attachments(server: AppServer) -> None:
    script = b"<script>document.title='owned'</script>"
    files = {"page.html": (b"<html>" + script + b"</html>", "text/html"),
             "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg">' + script + b"</svg>", "image/svg+xml"),
             "page.htm": (script, "text/html"), "image.png": (base64.b64decode(_png_b64()), "image/png")}
    with _browser(server, "bob") as bob:
        for name, (content, kind) in files.items():
            (path,) = bob.post("gradio_api/upload", files={"files": (name, content, kind)}).json()
            served = bob.get(f"gradio_api/file={path}")
            assert served.status_code == 200 and served.content == content
            if name == "image.png":  # the control: a real image is shown inline, as an <img> needs
                assert served.headers["content-type"] == "image/png"
                continue
            assert served.headers["content-type"] == "application/octet-stream", name
            assert served.headers["content-disposition"].startswith("attachment"), name


# --- 21-24: exposure -----------------------------------------------------------------------------------------------

FOREIGN_ORIGINS = ["https://evil.example", "null", "http://127.0.0.1:1", "http://localhost:8080"]


def test_case_21_cross_site_requests_with_a_login_cookie_get_403(server: AppServer) -> None:
    own_origin = server.url.rstrip("/")
    with _browser(server, "alice") as alice:
        for origin in FOREIGN_ORIGINS:
            attempts = [
                alice.post("gradio_api/call/settings_apply", content=json.dumps({"data": [0, ""]}),
                           headers={"Origin": origin, "Content-Type": "text/plain"}),  # a form-like simple request
                alice.post("gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"},
                           headers={"Origin": origin}),
                alice.post("gradio_api/upload", files={"files": ("a.txt", b"x")}, headers={"Origin": origin}),
                alice.post("sdapi/v1/interrupt", headers={"Origin": origin}),
                alice.post("sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, headers={"Origin": origin}),
                alice.post("login", data={"username": "bob", "password": USERS["bob"]}, headers={"Origin": origin}),
                alice.get("sdapi/v1/options", headers={"Origin": origin}),  # a cross-site read of the answer
                alice.get("config", headers={"Origin": origin}),
            ]
            for answer in attempts:
                assert answer.status_code == 403, (origin, answer.request.url, answer.status_code)
                assert answer.json()["detail"].startswith("cross-site request refused")
        # the controls: the app's own page, and scripts (no Origin), still work
        assert alice.get("sdapi/v1/options", headers={"Origin": own_origin}).status_code == 200
        assert _gradio_call(alice, "pnginfo", [None], Origin=own_origin)[0] == 200
    with _api(server, "bob") as script:
        assert script.post("sdapi/v1/interrupt").json() == {"interrupted": 0}
        for path in ("sdapi/v1/txt2img", "sdapi/v1/interrupt", "sdapi/v1/skip", "sdapi/v1/refresh-checkpoints",
                     "sdapi/v1/jobs/job-1/cancel", "api/token", "api/server/stop"):
            assert script.get(path).status_code == 405, path  # state-changing routes are never GET


def test_case_22_remote_users_cannot_change_settings_install_or_reach_admin_actions(server: AppServer) -> None:
    with _browser(server, "bob") as bob:
        apply_inputs = bob.get("gradio_api/info").json()["named_endpoints"]["/settings_apply"]["parameters"]
        every_setting = [p.get("parameter_default") for p in apply_inputs]  # one value per registered setting
        for api_name, data, words in (("settings_apply", every_setting, "Only an admin can change settings"),
                                      ("extensions_set_enabled", [[]], "Only an admin can enable or disable"),
                                      ("refresh_checkpoints", [], "Only an admin can refresh the model list")):
            status, event, payload = _gradio_call(bob, api_name, data)
            assert (status, event) == (200, "error") and words in payload["error"], api_name
    with _api(server, "bob") as bob, _api(server, "alice") as alice:
        assert bob.post("sdapi/v1/options", json={"samples_save": False}).status_code == 403
        assert bob.post("sdapi/v1/refresh-checkpoints").status_code == 403
        assert bob.post("api/server/stop").status_code == 403
        for path_setting in ("outdir_samples", "outdir_txt2img_samples", "ckpt_dir"):  # A1111's path settings
            refused = alice.post("sdapi/v1/options", json={path_setting: "/tmp/elsewhere"})
            assert refused.status_code == 422 and "no such setting" in refused.text
        paths = set(alice.get("openapi.json").json()["paths"])
    with _browser(server, "alice") as alice:
        endpoints = set(alice.get("gradio_api/info").json()["named_endpoints"])
    assert not any("install" in p or "pip" in p for p in paths | endpoints), sorted(paths | endpoints)


def test_case_23_config_and_flags_need_a_login_and_flags_hide_secrets(server: AppServer) -> None:
    with _api(server, None) as anonymous:
        for path in ("config", "gradio_api/info", "sdapi/v1/cmd-flags", "sdapi/v1/options", "sdapi/v1/sd-models",
                     "sdapi/v1/queue", "sdapi/v1/progress", "sdapi/v1/memory", "sdapi/v1/extensions"):
            assert anonymous.get(path).status_code == 401, path
        schema = anonymous.get("openapi.json")
        assert all(password not in schema.text for password in USERS.values())
    with _api(server, "bob") as bob:
        flags = bob.get("sdapi/v1/cmd-flags").json()
    assert flags["listen"] is True and flags["auth"] in (None, "<redacted>")
    assert all(password not in json.dumps(flags) for password in USERS.values())


def test_case_24_an_extension_that_fails_to_import_is_listed_in_the_ui_and_the_log(server: AppServer) -> None:
    with _browser(server, "bob") as bob:
        components = bob.get("config").json()["components"]
        assert bob.get("sdapi/v1/options").status_code == 200  # the app itself is up
    status = next(c["props"]["value"] for c in components if c["props"].get("elem_id") == "extensions_status")
    assert "bad-import" in status and "this extension needs a package that is not installed" in status
    log = server.log.read_text(errors="replace")
    assert "extension bad-import disabled" in log and "ImportError" in log


def test_case_24_a_known_malicious_package_blocks_startup_with_cleanup_steps(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's own `main` (what launch.py runs), with a real installed-package record (a dist-info folder on
    the import path, found by importlib.metadata) and a real extension folder; it stops before loading anything."""
    from webui.launcher import main

    site_dir = tmp_path / "site"
    dist = site_dir / "ultralytics-8.3.41.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ultralytics\nVersion: 8.3.41\n", encoding="utf-8")
    (tmp_path / "extensions" / "ComfyUI_LLMVISION").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site_dir))
    with pytest.raises(LaunchError) as refused:
        main(["--models-dir", str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "outputs"),
              "--extensions-dir", str(tmp_path / "extensions"), "--data-dir", str(tmp_path / "data")])
    message = str(refused.value)
    assert "known-malicious software is installed" in message
    assert "package ultralytics 8.3.41" in message and "pip uninstall -y ultralytics" in message
    assert "ComfyUI_LLMVISION" in message and "delete the folder" in message
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "data").exists()  # nothing was started
    from webui.services.supply_chain import find_known_malicious

    assert find_known_malicious([("Ultralytics", "8.3.40"), ("ultralytics", "8.3.46"), ("numpy", "2.4.6")]) \
        == find_known_malicious([("ultralytics", "8.3.46")])  # other releases and packages pass


# --- 25-26: sharing the device -------------------------------------------------------------------------------------

def test_case_25_one_job_at_a_time_a_full_queue_says_so_and_each_user_sees_their_own(server: AppServer) -> None:
    answers: dict[str, httpx.Response] = {}

    def generate(label: str, user: str, body: dict[str, Any]) -> None:
        with _api(server, user) as api:
            answers[label] = api.post("sdapi/v1/txt2img", json={**SMALL, **body})

    def waiting_jobs(admin: httpx.Client) -> list[dict[str, Any]]:
        return admin.get("sdapi/v1/queue").json()

    slow = threading.Thread(target=generate, args=("slow", "alice", {"steps": 40, "n_iter": 30, "seed": 11}))
    slow.start()
    with _api(server, "alice") as alice, _api(server, "bob") as bob:
        deadline = time.time() + 120
        while time.time() < deadline and alice.get("sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
            time.sleep(0.1)
        queued = [threading.Thread(target=generate, args=("bob", "bob", {"seed": 21})),
                  threading.Thread(target=generate, args=("alice-2", "alice", {"seed": 31}))]
        for thread in queued:
            thread.start()
        while time.time() < deadline and len(waiting_jobs(alice)) < 3:
            time.sleep(0.05)
        jobs = waiting_jobs(alice)  # alice is an admin: she sees every job
        assert sorted(j["status"] for j in jobs) == ["queued", "queued", "running"]  # one job on the device
        full = bob.post("sdapi/v1/txt2img", json={**SMALL, "seed": 41})
        assert full.status_code == 503 and full.headers["retry-after"]
        assert full.json()["detail"].startswith("queue full: 2 jobs are waiting (the limit is 2)")
        mine = bob.get("sdapi/v1/progress").json()
        assert mine["textinfo"].startswith("queued:") and mine["current_image"] is None
        bobs_job = next(j for j in jobs if j["owner"] == "bob")
        assert mine["state"]["job"] == bobs_job["id"]  # his own job, not alice's running one
        assert {j["owner"] for j in bob.get("sdapi/v1/queue").json()} == {"bob"}
        running = next(j for j in jobs if j["status"] == "running")
        assert bob.post(f"sdapi/v1/jobs/{running['id']}/cancel").status_code == 404  # not his to stop
        assert alice.post("sdapi/v1/interrupt").json() == {"interrupted": 2}
    slow.join(120)
    for thread in queued:
        thread.join(120)
    assert json.loads(answers["slow"].json()["info"])["interrupted"] is True
    assert json.loads(answers["alice-2"].json()["info"])["interrupted"] is True  # cancelled before it started
    after = answers["bob"]
    assert after.status_code == 200 and len(after.json()["images"]) == 1  # the next job runs normally
    info = json.loads(after.json()["info"])
    assert info["interrupted"] is False and info["all_seeds"] == [21] and info["queue_seconds"] > 0


# --- 28-30: faults and exposure ------------------------------------------------------------------------------------

ENOSPC_CHILD = """
import errno, json, os, sys
from pathlib import Path
from PIL import Image
from webui.services.outputs import OutputSaveError, OutputStore
root = Path(sys.argv[1])
filler = root / "filler"
with filler.open("wb", buffering=0) as handle:  # fill the file system, then leave about 8 KB free
    try:
        while True:
            handle.write(b"\\0" * 4096)
    except OSError:
        pass
filler.write_bytes(b"\\0" * (filler.stat().st_size - 8192))
store = OutputStore(root, flat=True)
noise = Image.frombytes("RGB", (96, 96), os.urandom(96 * 96 * 3))
try:
    store.save_png(noise, "x", "txt2img", 5)
    print(json.dumps({"saved": True}))
except OutputSaveError as exc:
    left = sorted(p.name for p in root.iterdir() if p.name != "filler")
    print(json.dumps({"errno": exc.errno, "message": str(exc), "left": left}))
"""


def test_case_28_a_real_full_filesystem_names_the_path_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """ENOSPC from a real 256 KB tmpfs, mounted in a private user and mount namespace (no root needed). The
    generation-level behaviour (image still returned) is test_faults.py's full-disk test."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("this kernel does not allow user namespaces (test_faults.py covers EFBIG instead)")
    mount = tmp_path / "small"
    mount.mkdir()
    script = (f"mount -t tmpfs -o size=256k tmpfs {mount} && "
              f"exec {sys.executable} -c \"$CHILD\" {mount}")
    result = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CHILD": ENOSPC_CHILD, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report.get("errno") == 28, report  # ENOSPC
    assert str(mount / "00000-5.png") in report["message"] and "free space" in report["message"]
    assert report["left"] == []  # no half-written image, no temporary file


def test_case_29_a_vae_that_gives_nan_even_in_fp32_fails_clearly_and_saves_nothing(tmp_path: Path) -> None:
    from webui.context import AppPaths, build_context
    from webui.services.requests import GenerationRequest

    path = tmp_path / "models" / "Stable-diffusion" / "nan-vae.safetensors"
    write_synthetic_checkpoint(path, "sd1", seed=5, metadata={"modelspec.resolution": "64x64"})
    state = load_file(str(path))
    state["first_stage_model.decoder.conv_out.bias"] = torch.full_like(state["first_stage_model.decoder.conv_out.bias"],
                                                                       math.nan)
    save_file(state, str(path), metadata={"modelspec.resolution": "64x64"})
    context = build_context(AppPaths(tmp_path / "models", tmp_path / "outputs", tmp_path / "data"), device="cpu",
                            load_extensions=False)
    job = context.generation.submit("alice", GenerationRequest(prompt="x", sampler_name="Euler", steps=2, width=64,
                                                               height=64, seed=1, model="nan-vae"))
    assert context.queue.wait(job, 300)
    context.queue.shutdown()
    assert job.status == "failed"
    assert job.error.startswith("the VAE produced NaN/Inf values even in fp32") and "nothing was saved" in job.error
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]  # no black image on disk


def test_case_30_with_listen_the_extension_installer_is_off_even_for_the_admin(server: AppServer) -> None:
    with _browser(server, "alice") as alice:
        endpoints = alice.get("gradio_api/info").json()["named_endpoints"]
        components = alice.get("config").json()["components"]
    assert "/extensions_install" not in endpoints and "/extensions_set_enabled" in endpoints
    texts = " ".join(str(c["props"].get("value", "")) for c in components if c["type"] == "markdown")
    assert "Installing is disabled because the app is reachable from other machines" in texts


# --- the table in docs/security.md ---------------------------------------------------------------------------------

def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test")}


def test_case_00_every_case_has_a_row_in_docs_security_md_naming_a_test_that_exists() -> None:
    """One row per case (1-30); each names at least one `tests/<file>.py::test_case_NN_...` that exists."""
    rows = [line for line in CASES_DOC.read_text(encoding="utf-8").splitlines() if re.match(r"^\| *\d+ *\|", line)]
    numbers = [int(row.split("|")[1]) for row in rows]
    assert numbers == list(range(1, 31))
    for number, row in zip(numbers, rows):
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row)
        assert named, f"case {number}: no test named"
        assert any(f"case_{number:02d}" in name for _, name in named), f"case {number}: no test carries its id"
        for file, name in named:
            assert name in _test_names(ROOT / file), f"case {number}: {file}::{name} does not exist"
