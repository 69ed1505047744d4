"""Issue #16 item 7 without a browser: the folder opener's choices, PNG Info's fields, the seed and token helpers,
Refresh's summary, the tooltip table, no emoji codepoints in the UI code, and the warning for an unusable embedding."""

from __future__ import annotations

import re
import sys
from pathlib import Path


from webui.services.infotext import infotext_fields, parse_infotext
from webui.ui.app import refresh_summary
from webui.ui.prompt_tools import FolderOpener, folder_opener, open_folder, seed_from_infotext, token_count_text

ROOT = Path(__file__).resolve().parent.parent
HINTS = ROOT / "webui" / "ui" / "assets" / "hints.js"


# ---- open outputs folder -------------------------------------------------------------------------------------------


def test_folder_opener_per_platform() -> None:
    found = {"xdg-open": "/usr/bin/xdg-open", "open": "/usr/bin/open"}.get
    assert folder_opener("win32", {}, found) == FolderOpener(startfile=True)
    assert folder_opener("darwin", {}, found) == FolderOpener(command=("/usr/bin/open",))
    assert folder_opener("linux", {"DISPLAY": ":0"}, found) == FolderOpener(command=("/usr/bin/xdg-open",))
    assert folder_opener("linux", {"WAYLAND_DISPLAY": "wayland-0"}, found).command == ("/usr/bin/xdg-open",)
    assert "no desktop session" in folder_opener("linux", {}, found).missing  # a headless server
    assert "xdg-open is not installed" in folder_opener("linux", {"DISPLAY": ":0"}, lambda name: None).missing
    assert "no `open`" in folder_opener("darwin", {}, lambda name: None).missing


def test_open_folder_always_names_the_path(tmp_path: Path) -> None:
    folder = tmp_path / "outputs"
    message = open_folder(folder, FolderOpener(missing="the server has no desktop session (DISPLAY is not set)"))
    assert message == f"Outputs folder: `{folder}` (not opened: the server has no desktop session (DISPLAY is not set))"
    assert folder.is_dir()  # created, so the opener has something to show even before the first image
    if sys.platform != "win32":
        assert open_folder(folder, FolderOpener(command=("false",))) == \
            f"Outputs folder: `{folder}` (not opened: false exited with status 1)"
        assert open_folder(folder, FolderOpener(command=("true",))) == f"Opened the outputs folder `{folder}`"
        assert "not opened:" in open_folder(folder, FolderOpener(command=(str(tmp_path / "no-such-opener"),)))


# ---- PNG Info, seeds, tokens, refresh ------------------------------------------------------------------------------

_TEXT = ("a cat\nNegative prompt: dog\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 96x80, "
         'Model: tiny, Lora hashes: "style: 0123456789ab"')


def test_infotext_fields_hold_only_what_the_text_says() -> None:
    fields = infotext_fields(_TEXT)
    assert fields == {"Prompt": "a cat", "Negative prompt": "dog", "Steps": 4, "Sampler": "DPM++ 2M Karras",
                      "CFG scale": 7, "Seed": 5, "Size": "96x80", "Model": "tiny", "Lora hashes": "style: 0123456789ab"}
    assert infotext_fields("Steps: 4, Sampler: Euler, Seed: 1") == {"Steps": 4, "Sampler": "Euler", "Seed": 1}
    assert infotext_fields("just a prompt") == {"Prompt": "just a prompt"}
    # the parser for "send to" and paste keeps A1111's defaults and derived keys
    parsed = parse_infotext(_TEXT)
    assert (parsed["Size-1"], parsed["Size-2"], parsed["Clip skip"], parsed["RNG"]) == (96, 80, 1, "GPU")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")


def test_seed_from_infotext() -> None:
    assert seed_from_infotext(_TEXT) == 5
    assert seed_from_infotext("") is None and seed_from_infotext(None) is None
    assert seed_from_infotext("a cat\nSteps: 4, Sampler: Euler, CFG scale: 7") is None


def test_token_count_leaves_out_extra_network_tags() -> None:
    assert token_count_text("") == "0/75"
    assert token_count_text("cat " * 80) == "80/150"
    assert token_count_text("<lora:style:0.8> a cat <hypernet:x:1>") == "2/75"


def test_refresh_summary() -> None:
    assert refresh_summary(["a"], ["a", "b"], ["v.safetensors"]) == \
        "Refresh found 2 checkpoints: a, b; new: b. 1 VAE file."
    assert refresh_summary(["a", "b"], ["a"], []) == "Refresh found 1 checkpoint: a; gone: b. 0 VAE files."
    assert refresh_summary(["a"], ["a"], []) == "Refresh found 1 checkpoint: a; nothing changed. 0 VAE files."
    assert refresh_summary([], [], []) == "Refresh found 0 checkpoints; nothing changed. 0 VAE files."


# ---- tooltips and icons --------------------------------------------------------------------------------------------


def _hint_table() -> dict[str, str]:
    """The entries of BY_TEXT and BY_ID (`"text": "hint",` or `id: "hint",`, the hint possibly on the next line)."""
    pairs = re.findall(r'^\s*(?:"([^"]+)"|(\w+)):\s*\n?\s*"([^"]+)",', HINTS.read_text(encoding="utf-8"), flags=re.M)
    return {text or elem_id: hint for text, elem_id, hint in pairs}


def test_every_hint_is_one_sentence() -> None:
    hints = _hint_table()
    assert len(hints) > 100
    bad = {key: text for key, text in hints.items()
           if not re.match(r"^[A-Z0-9][^\n]*\.$", text) or ". " in text}
    assert not bad, bad


_CORE_UI = ["app.py", "txt2img.py", "img2img.py", "job_stream.py", "pnginfo.py", "controlnet.py", "lora_training.py",
            "extensions_tab.py", "prompt_tools.py"]


def test_every_core_label_and_button_has_a_hint() -> None:
    """Labels and button texts written as literals in the core UI modules (what a user sees in the core tabs)."""
    hints = _hint_table()
    seen: set[str] = set()
    for name in _CORE_UI:
        source = (ROOT / "webui" / "ui" / name).read_text(encoding="utf-8")
        seen |= set(re.findall(r'label="([^"{}]+)"', source))
        seen |= {text for text in re.findall(r'gr\.Button\("([^"{}]+)"', source) if text}
        seen |= set(re.findall(r'gr\.Tab\("([^"{}]+)"', source))
    from webui.ui.lora_training import _FIELDS

    seen |= {label for _, label in _FIELDS}
    seen -= {"Inpaint mode"}  # a hidden radio that only API clients set
    missing = sorted(text for text in seen if text not in hints)
    assert not missing, f"labels without a hint in hints.js: {missing}"


def test_no_emoji_codepoints_in_the_ui_code() -> None:
    """Icons must draw without an emoji font: no character above U+2300 in webui/ code, CSS or JS."""
    found = []
    for path in sorted((ROOT / "webui").rglob("*")):
        if path.suffix in (".py", ".js", ".css") and path.is_file():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if any(ord(ch) > 0x2300 for ch in line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not found, found


def test_icons_are_svg_files() -> None:
    for name in ("random", "reuse", "refresh", "folder"):
        text = (ROOT / "webui" / "ui" / "assets" / "icons" / f"{name}.svg").read_text(encoding="utf-8")
        assert text.startswith("<svg ") and 'xmlns="http://www.w3.org/2000/svg"' in text


# ---- what cannot be applied ----------------------------------------------------------------------------------------


def test_unusable_embeddings_are_named_in_a_warning(tiny_sd1, tmp_path: Path) -> None:
    import torch

    from webui.engine.loader import load_checkpoint
    from webui.services.embeddings import EmbeddingLibrary
    from webui.services.generation import unapplied_embeddings
    from webui.services.hashing import HashCache

    model = load_checkpoint(tiny_sd1.path)
    width = model.text_encoders[0].model.config.hidden_size
    folder = tmp_path / "embeddings"
    folder.mkdir()
    torch.save({"string_to_param": {"*": torch.randn(2, width)}}, str(folder / "fits.pt"))
    torch.save({"string_to_param": {"*": torch.randn(2, width + 8)}}, str(folder / "wide.pt"))
    (folder / "broken.pt").write_bytes(b"not a torch file")
    library = EmbeddingLibrary(folder, HashCache(tmp_path / "hashes.json"))

    assert unapplied_embeddings(library, model, "a cat, fits", "") == []
    warnings = unapplied_embeddings(library, model, "a cat, wide, broken", "wide")
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("Embedding 'wide' was not applied and its name was read as plain words: it was "
                                  "made for another kind of model than")
    assert "pick a checkpoint it fits, or remove it from the prompt" in warnings[0]
    assert warnings[1].startswith("Embedding 'broken' was not applied") and "replace the file in" in warnings[1]
