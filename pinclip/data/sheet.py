"""A contact sheet: a PNG grid of sample pins, each with its image, title and a board or two.

Written by `pinclip data demo` next to the corpus (contact_sheet.png) to see the data at a glance.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pinclip.data.images import ImageError, fit_on_white_square, open_image
from pinclip.data.tables import EdgesTable, PinsTable

CELL_WIDTH, IMAGE_SIZE, TEXT_HEIGHT, MARGIN = 200, 176, 74, 8
COLUMNS = 6
KIND_ORDER = {"category": 0, "subgroup": 0, "keyword": 1, "concept": 2}


def sample_pins(pins: PinsTable, n: int, seed: int = 0) -> list[int]:
    """`n` pin positions, taken in turn from each source (the 'source' column) when there is one."""
    sources = pins.extra.get("source") or [""] * len(pins)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        by_source[source or ""].append(i)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(by_source[s])) for s in sorted(by_source)]
    chosen: list[int] = []
    while len(chosen) < min(n, len(pins)):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(int(queue.pop()))
    return chosen


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int, lines: int
) -> list[str]:
    """Greedy word wrap to at most `lines` lines; the last one ends with '…' if text was cut."""
    out, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=font) <= width:
            current = trial
            continue
        if current:
            out.append(current)
        current = word
    out.append(current)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1].rstrip(" .,;:") + "…"
    return [_fit(draw, line, font, width) for line in out]


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def _pin_image(pins: PinsTable, i: int) -> Image.Image:
    src = pins.images[i]
    try:
        img = (
            open_image(src)
            if src is not None
            else Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (235, 235, 235))
        )
    except ImageError:
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 220, 220))
    return fit_on_white_square(img, IMAGE_SIZE)


def _board_titles_by_pin(boards: EdgesTable) -> dict[int, list[str]]:
    """Board titles of each pin, one board of each kind first (category/subgroup, keyword, ...)."""
    kinds = boards.extra.get("board_kind") or [""] * boards.num_edges
    found: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for e, (p, b) in enumerate(zip(boards.pin_index.tolist(), boards.board_index.tolist())):
        found[p].append(
            (
                KIND_ORDER.get(kinds[e] or "", len(KIND_ORDER)),
                kinds[e] or "",
                boards.board_titles[b] or boards.board_ids[b],
            )
        )
    titles: dict[int, list[str]] = defaultdict(list)
    for p, entries in found.items():
        entries.sort()
        first_of_kind = [t for k, (_, kind, t) in enumerate(entries) if k == 0 or entries[k - 1][1] != kind]
        titles[p] = first_of_kind + [t for _, _, t in entries if t not in first_of_kind]
    return titles


def contact_sheet(pins: PinsTable, boards: EdgesTable, path: str, n: int = 24, seed: int = 0) -> None:
    """Write a PNG grid of `n` sample pins (image, title, up to two board titles) to `path`."""
    rows = sample_pins(pins, n, seed)
    boards_of = _board_titles_by_pin(boards)
    title_font = ImageFont.load_default(size=13)
    board_font = ImageFont.load_default(size=11)
    n_rows = max(1, -(-len(rows) // COLUMNS))
    cell_height = IMAGE_SIZE + TEXT_HEIGHT
    sheet = Image.new("RGB", (COLUMNS * CELL_WIDTH, n_rows * cell_height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(rows):
        x, y = (k % COLUMNS) * CELL_WIDTH, (k // COLUMNS) * cell_height
        sheet.paste(_pin_image(pins, i), (x + (CELL_WIDTH - IMAGE_SIZE) // 2, y + 4))
        text_y = y + IMAGE_SIZE + 8
        title = pins.text(i, "title") or pins.pin_ids[i]
        for line in _wrap(draw, title, title_font, CELL_WIDTH - 2 * MARGIN, 2):
            draw.text((x + MARGIN, text_y), line, fill="black", font=title_font)
            text_y += 16
        for board in boards_of[i][:2]:
            draw.text(
                (x + MARGIN, text_y),
                _fit(draw, "· " + board, board_font, CELL_WIDTH - 2 * MARGIN),
                fill=(90, 90, 140),
                font=board_font,
            )
            text_y += 14
        draw.rectangle((x, y, x + CELL_WIDTH - 1, y + cell_height - 1), outline=(225, 225, 225))
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sheet-", suffix=".png")
    os.close(fd)
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
