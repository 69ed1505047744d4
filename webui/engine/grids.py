"""Image grids: sample sheets (trainers' samples, evaluators' reports) and labelled grids (the X/Y/Z plot)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def save_grid(images: np.ndarray, path: Path, columns: int = 8) -> Path:
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    grid = Image.new("RGB", (columns * w, rows * h), (0, 0, 0))
    for i in range(n):
        grid.paste(Image.fromarray(images[i]), ((i % columns) * w, (i // columns) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


# ----- labelled grids (the X/Y/Z plot) -----------------------------------------------------------------------------
# Hand-written because no library draws an A1111-style annotated contact sheet; Pillow does the drawing and text.

LABEL_INK = (0, 0, 0)
LABEL_BACKGROUND = (255, 255, 255)


def _font(cell_width: int, cell_height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font, sized from the cells as A1111 does ((w + h) / 25), never below a readable 10 px."""
    return ImageFont.load_default(max(10, (cell_width + cell_height) // 25))


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Words wrapped into lines no wider than `width` (a single long word stays whole on its line)."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return [line for line in lines if line] if any(lines) else []


def _text_block_height(lines: list[str], font: ImageFont.FreeTypeFont | ImageFont.ImageFont, spacing: int) -> int:
    if not lines:
        return 0
    heights = [font.getbbox(line)[3] for line in lines]
    return sum(heights) + spacing * (len(lines) - 1)


def _draw_centered(draw: ImageDraw.ImageDraw, lines: list[str], font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
                   box: tuple[int, int, int, int], spacing: int) -> None:
    """Lines centred in `box` (left, top, right, bottom)."""
    left, top, right, bottom = box
    y = top + (bottom - top - _text_block_height(lines, font, spacing)) // 2
    for line in lines:
        width = font.getlength(line)
        draw.text((left + (right - left - width) / 2, y), line, fill=LABEL_INK, font=font)
        y += font.getbbox(line)[3] + spacing


def labelled_grid(cells: list[Image.Image], columns: int, rows: int, column_labels: list[str] | None = None,
                  row_labels: list[str] | None = None, margin: int = 0) -> Image.Image:
    """Cells row by row (`columns` x `rows`, all the size of the first), `margin` px apart, with the column labels in
    a band above and the row labels in a band on the left (A1111's X/Y plot layout). A band is left out when all its
    labels are empty, so an unlabelled grid is exactly the cells side by side."""
    width, height = cells[0].size
    font = _font(width, height)
    spacing = max(2, font.size // 2) if hasattr(font, "size") else 4
    column_lines = [_wrap(label, font, width) for label in (column_labels or [])]
    row_lines = [_wrap(label, font, width * 3 // 4 - 4) for label in (row_labels or [])]
    pad_left = width * 3 // 4 if any(row_lines) else 0
    pad_top = max((_text_block_height(lines, font, spacing) for lines in column_lines), default=0)
    pad_top = pad_top + 2 * spacing if pad_top else 0
    grid = Image.new("RGB", (pad_left + columns * width + (columns - 1) * margin,
                             pad_top + rows * height + (rows - 1) * margin), LABEL_BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for index, cell in enumerate(cells[: columns * rows]):
        column, row = index % columns, index // columns
        grid.paste(cell.convert("RGB"), (pad_left + column * (width + margin), pad_top + row * (height + margin)))
    for column, lines in enumerate(column_lines[:columns]):
        left = pad_left + column * (width + margin)
        _draw_centered(draw, lines, font, (left, 0, left + width, pad_top), spacing)
    for row, lines in enumerate(row_lines[:rows]):
        top = pad_top + row * (height + margin)
        _draw_centered(draw, lines, font, (0, top, pad_left, top + height), spacing)
    return grid
