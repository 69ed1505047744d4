"""Prompt styles (A1111's `styles.csv`): the file format both ways, A1111's rules for applying a style, atomic saves,
and the HTTP API (`GET /sdapi/v1/prompt-styles`, the `styles` field of txt2img) on the real app server.

Expected values are written out by hand from A1111's documented behaviour (`modules/styles.py`: `{prompt}` is
replaced by the prompt, else the style is appended after ", " with empty parts left out; styles apply in order),
and the file is checked with Python's own `csv` reader, not with the code under test.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import httpx
import pytest

from tests.server_process import AppServer
from webui.services.requests import RequestError
from webui.services.styles import PromptStyle, StyleStore, merge_prompts

TRICKY = [
    PromptStyle("cinematic", "{prompt}, cinematic lighting, 35mm", "cartoon, {prompt}"),
    PromptStyle('quote "me"', 'a "quoted" word, and a comma', ""),
    PromptStyle("two lines", "first line\nsecond line", "bad\r\nworse"),
    PromptStyle("plain", "oil painting", "blurry"),
]


def test_saved_file_is_a1111_csv_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    store = StyleStore(path)
    for style in TRICKY:
        store.save(style)

    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM, as A1111 writes it (utf-8-sig)
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows[0] == ["name", "prompt", "negative_prompt"]
    assert rows[1:] == [[s.name, s.prompt, s.negative_prompt] for s in TRICKY]
    assert '"quote ""me"""' in raw.decode("utf-8-sig")  # csv quoting: the quote doubled inside a quoted field

    fresh = StyleStore(path)  # a second reader (another process) sees the same styles, in file order
    assert fresh.styles() == TRICKY

    # replacing a style keeps its place; the previous file is kept as .bak; no temporary file is left behind
    store.save(PromptStyle("cinematic", "{prompt}, film grain", ""))
    assert [s.name for s in StyleStore(path).styles()] == [s.name for s in TRICKY]
    assert StyleStore(path).get("cinematic") == PromptStyle("cinematic", "{prompt}, film grain", "")
    assert (tmp_path / "styles.csv.bak").read_bytes() == raw
    assert store.delete("plain") and not store.delete("plain")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styles.csv", "styles.csv.bak"]


def test_reads_files_written_by_a1111_and_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    # as A1111 1.10 writes it (csv.DictWriter, \r\n), plus an old two-column row format in a second file
    path.write_bytes("\ufeffname,prompt,negative_prompt\r\n"
                     'Anime,"{prompt}, anime style, ""cel"" shading","photo, 3d"\r\n'
                     "None,,\r\n".encode("utf-8"))
    store = StyleStore(path)
    assert store.styles() == [PromptStyle("Anime", '{prompt}, anime style, "cel" shading', "photo, 3d"),
                              PromptStyle("None", "", "")]
    old = tmp_path / "old.csv"
    old.write_text("name,text\nsketch,pencil sketch\n", encoding="utf-8")
    assert StyleStore(old).styles() == [PromptStyle("sketch", "pencil sketch", "")]

    # an edit made by hand is picked up without a restart
    path.write_text("name,prompt,negative_prompt\nNew,new style,\n", encoding="utf-8")
    os.utime(path, ns=(1, 10**18))  # a different mtime even on a coarse clock
    assert store.names() == ["New"]


@pytest.mark.parametrize(("style", "prompt", "expected"), [
    ("{prompt}, masterpiece", "a cat", "a cat, masterpiece"),
    ("masterpiece, {prompt}, {prompt}", "a cat", "masterpiece, a cat, a cat"),
    ("oil painting", "a cat", "a cat, oil painting"),
    ("oil painting", "  a cat  ", "a cat, oil painting"),  # both parts stripped when appending
    ("oil painting", "", "oil painting"),  # an empty prompt leaves no leading ", "
    ("", "a cat", "a cat"),
    ("{prompt}", "", ""),
])
def test_merge_follows_a1111(style: str, prompt: str, expected: str) -> None:
    assert merge_prompts(style, prompt) == expected


def test_styles_apply_in_the_chosen_order_to_both_prompts(tmp_path: Path) -> None:
    store = StyleStore(tmp_path / "styles.csv")
    store.save(PromptStyle("frame", "photo of {prompt}", "{prompt}, blurry"))
    store.save(PromptStyle("finish", "sharp focus", "lowres"))
    assert store.apply("a dog", "cat", ["frame", "finish"]) == ("photo of a dog, sharp focus", "cat, blurry, lowres")
    assert store.apply("a dog", "cat", ["finish", "frame"]) == ("photo of a dog, sharp focus", "cat, lowres, blurry")
    assert store.apply("a dog", "", []) == ("a dog", "")
    with pytest.raises(RequestError, match=r"styles: no style named 'nope'; known styles: 'frame', 'finish'"):
        store.apply("a dog", "", ["frame", "nope"])
    with pytest.raises(RequestError, match="a style needs a name"):
        store.save(PromptStyle("  ", "x", ""))


def test_api_lists_and_applies_styles(browser_app: AppServer) -> None:
    data_dir = Path(browser_app.root) / f"data-{browser_app.port}"
    (data_dir / "styles.csv").write_text(
        'name,prompt,negative_prompt\nframed,"photo of {prompt}, framed","{prompt}, lowres"\nsharp,sharp focus,\n',
        encoding="utf-8")
    with httpx.Client(base_url=browser_app.url + "sdapi/v1/", timeout=300) as client:
        assert client.get("prompt-styles").json() == [
            {"name": "framed", "prompt": "photo of {prompt}, framed", "negative_prompt": "{prompt}, lowres"},
            {"name": "sharp", "prompt": "sharp focus", "negative_prompt": ""},
        ]
        body = {"prompt": "a red circle", "negative_prompt": "blurry", "styles": ["framed", "sharp"], "steps": 2,
                "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
        reply = client.post("txt2img", json=body)
        assert reply.status_code == 200, reply.text
        info = json.loads(reply.json()["info"])
        assert info["infotexts"][0].startswith("photo of a red circle, framed, sharp focus\n"
                                               "Negative prompt: blurry, lowres\nSteps: 2, ")
        assert not any("styles" in warning for warning in info["warnings"])
        assert info["styles"] == ["framed", "sharp"]
        refused = client.post("txt2img", json={**body, "styles": ["framed", "missing"]})
        assert refused.status_code == 422
        assert "no style named 'missing'" in refused.json()["detail"]
