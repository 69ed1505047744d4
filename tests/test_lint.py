"""The code style the project holds itself to: ruff's pycodestyle errors and pyflakes checks (E, F) with the
120-character lines set in pyproject.toml. Kept as a test so that CI, which runs only the README's test command,
enforces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_no_errors_or_unused_names() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "E,F", "--output-format", "concise", "--no-cache", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert checked.returncode == 0, f"ruff check --select E,F found problems:\n{checked.stdout}{checked.stderr}"
