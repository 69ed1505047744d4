"""The outputs browser service: a user's own images, newest first, paged, found by prompt; another user's images (and
files a planted link points to) never listed; the newest image's infotext is what an empty-prompt paste reads."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from PIL import Image

from webui.services.output_browser import OutputBrowser
from webui.services.outputs import OutputStore


def _store(root: Path) -> OutputStore:
    return OutputStore(root, today=lambda: datetime.date(2026, 1, 2), per_user=True)


def _save(store: OutputStore, owner: str, prompt: str, seed: int, mode: str = "txt2img", when: float = 0.0) -> Path:
    path = store.save_png(Image.new("RGB", (8, 8), (seed % 256, 0, 0)), f"{prompt}\nSteps: 2, Seed: {seed}, "
                          f"Size: 8x8", mode, seed, owner)
    os.utime(path, (when, when))  # a known age: the listing's order is checked against it
    return path


def test_lists_only_the_callers_images_newest_first_and_finds_them_by_prompt(tmp_path: Path) -> None:
    store = _store(tmp_path / "outputs")
    alice = [_save(store, "alice", f"a red fox number {i}", i, when=1_000 + i) for i in range(5)]
    extra = _save(store, "alice", "an upscaled FOX", 99, mode="extras", when=2_000)
    bob = _save(store, "bob", "bob's secret fox", 7, when=3_000)
    # a link planted in alice's folder, pointing at bob's image, and a file outside every user folder
    os.symlink(bob, alice[0].parent / "00099-link.png")
    loose = tmp_path / "outputs" / "loose.png"
    Image.new("RGB", (8, 8)).save(loose)

    browser = OutputBrowser(store)
    listed = browser.page("alice", page_size=100)
    assert [item.path for item in listed.items] == [extra, *reversed(alice)]
    assert [item.kind for item in listed.items] == ["extras"] + ["txt2img"] * 5
    assert listed.items[0].infotext == "an upscaled FOX\nSteps: 2, Seed: 99, Size: 8x8"
    assert browser.kinds("alice") == ["extras", "txt2img"]

    # search: case-insensitive, in the prompt; bob's "fox" never shows up for alice
    found = browser.page("alice", query="fox", page_size=100)
    assert found.total == 6 and bob not in [item.path for item in found.items]
    assert [item.path for item in browser.page("alice", query="NUMBER 3").items] == [alice[3]]
    assert browser.page("alice", query="secret").total == 0
    assert [item.path for item in browser.page("alice", kind="extras").items] == [extra]

    # paging: 2 per page, the last page clamped
    first, last = browser.page("alice", page_size=2), browser.page("alice", page=99, page_size=2)
    assert (first.total, first.pages, [i.path for i in first.items]) == (6, 3, [extra, alice[4]])
    assert (last.page, [i.path for i in last.items]) == (2, [alice[1], alice[0]])

    assert [item.path for item in browser.page("bob").items] == [bob]
    assert browser.owns("alice", alice[2]) and not browser.owns("alice", bob)
    assert not browser.owns("alice", alice[0].parent / "00099-link.png") and not browser.owns("alice", loose)
    for name in ("", "..", ".hidden", "a/b"):
        assert browser.page(name).total == 0

    # an empty prompt box pastes the newest image's parameters (A1111 reads params.txt)
    assert browser.latest_infotext("alice") == "an upscaled FOX\nSteps: 2, Seed: 99, Size: 8x8"
    assert browser.latest_infotext("carol") == ""


def test_single_user_lists_the_whole_outputs_folder_but_not_training_runs(tmp_path: Path) -> None:
    store = OutputStore(tmp_path / "outputs", today=lambda: datetime.date(2026, 1, 2))
    image = _save(store, "local", "a blue square", 1, when=1_000)
    training = tmp_path / "outputs" / "lora-training" / "run" / "samples"
    training.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(training / "sample.png")
    listed = OutputBrowser(store).page("any-session")
    assert [item.path for item in listed.items] == [image]
