"""Emoji concepts for the demo corpus: Unicode names and subgroups, CLDR keywords, Twemoji short names.

One concept (a fully-qualified emoji of emoji-test.txt without skin-tone modifiers, outside the
Component group) becomes two or three pins: the Noto Color Emoji glyph rendered from the font, the
Twemoji PNG of the npm package emoji-datasource-twitter and, when the concept is a single code point
(optionally followed by U+FE0F) that the Symbola font covers, Symbola's monochrome outline glyph
drawn black on white. Texts: title = the CLDR short name (tts), annotations = the CLDR keywords,
queries = the short names people type (emoji.json).
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
CLDR_ANNOTATIONS = (
    "/usr/share/unicode/cldr/common/annotations/en.xml",
    "/usr/share/unicode/cldr/common/annotationsDerived/en.xml",
)
NOTO_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
NOTO_BITMAP_SIZE = 109  # the only size of the font's embedded color bitmaps
SYMBOLA_FONT = "/usr/share/fonts/truetype/ancient-scripts/Symbola_hint.ttf"  # Debian fonts-symbola
GLYPH_CANVAS = (136, 128)  # the size of a Noto render; Symbola glyphs are drawn on the same canvas
GLYPH_BOX = (128, 120)  # a Symbola glyph larger than this is drawn smaller to fit, then centered
SYMBOLA_SIZE = 120  # px per em: most glyphs come out 90-125 px on their longer side
SKIN_TONES = range(0x1F3FB, 0x1F400)
VS16 = "\ufe0f"


@dataclass
class EmojiConcept:
    codepoints: tuple[str, ...]  # lower-case hex, e.g. ("1f468", "200d", "1f4bb")
    group: str  # e.g. "Smileys & Emotion"
    subgroup: str  # e.g. "face-smiling"
    name: str  # the emoji-test.txt name, e.g. "grinning face"
    title: str = ""  # CLDR short name
    keywords: tuple[str, ...] = ()  # CLDR keywords
    short_names: tuple[str, ...] = ()  # emoji.json short names, '_' and inner '-' as spaces
    twemoji_png: str | None = None  # path of the 64 px Twemoji PNG, if the package has one
    symbola_char: str | None = None  # the single code point Symbola draws, if the font covers it

    @property
    def text(self) -> str:
        return "".join(chr(int(cp, 16)) for cp in self.codepoints)

    @property
    def key(self) -> str:
        """Readable id part: code points joined by '-', e.g. '1f600'."""
        return "-".join(self.codepoints)


def read_emoji_test(path: str = EMOJI_TEST) -> list[EmojiConcept]:
    """Base emoji concepts in file order: fully-qualified, no skin-tone variants, no components."""
    concepts, group, subgroup = [], "", ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif not line.startswith("#") and "; fully-qualified" in line and group != "Component":
                codepoints = tuple(cp.lower() for cp in line.split(";")[0].split())
                if any(int(cp, 16) in SKIN_TONES for cp in codepoints):
                    continue
                name = line.split("#", 1)[1].split(maxsplit=2)[2].strip()  # "😀 E1.0 grinning face"
                concepts.append(EmojiConcept(codepoints, group, subgroup, name))
    return concepts


def read_cldr(paths: tuple[str, ...] = CLDR_ANNOTATIONS) -> tuple[dict[str, str], dict[str, list[str]]]:
    """CLDR short names and keywords by emoji string (the first file that has an entry wins)."""
    names: dict[str, str] = {}
    keywords: dict[str, list[str]] = {}
    for path in paths:
        for node in ET.parse(path).getroot().iter("annotation"):
            emoji, text = node.get("cp"), (node.text or "").strip()
            if not emoji or not text:
                continue
            if node.get("type") == "tts":
                names.setdefault(emoji, text)
            else:
                keywords.setdefault(emoji, [k.strip() for k in text.split("|") if k.strip()])
    return names, keywords


def read_twemoji(folder: str) -> dict[str, dict]:
    """emoji.json entries by upper-case code points, both fully- and non-qualified forms."""
    with open(os.path.join(folder, "emoji.json"), encoding="utf-8") as f:
        entries = json.load(f)
    by_code: dict[str, dict] = {}
    for entry in entries:
        for code in (entry.get("unified"), entry.get("non_qualified")):
            if code:
                by_code.setdefault(code.upper(), entry)
    return by_code


def attach_texts(concepts: list[EmojiConcept], cldr_paths: tuple[str, ...], twemoji_dir: str) -> None:
    """Fill titles, keywords, short names and Twemoji paths in place."""
    names, keywords = read_cldr(cldr_paths)
    twemoji = read_twemoji(twemoji_dir)
    for concept in concepts:
        text = concept.text
        bare = text.replace(VS16, "")
        concept.title = names.get(text) or names.get(bare) or concept.name
        concept.keywords = tuple(keywords.get(text) or keywords.get(bare) or ())
        code = "-".join(concept.codepoints).upper()
        entry = twemoji.get(code) or twemoji.get(code.replace("-FE0F", ""))
        if entry is None:
            continue
        concept.short_names = tuple(
            re.sub(r"(?<=\w)[-_](?=\w)", " ", s) for s in entry.get("short_names", [])
        )
        png = os.path.join(twemoji_dir, "img", "twitter", "64", entry.get("image", ""))
        if entry.get("has_img_twitter") and os.path.isfile(png):
            concept.twemoji_png = png


def subset_emoji(concepts: list[EmojiConcept], max_concepts: int, seed: int) -> list[EmojiConcept]:
    """Whole subgroups in a seeded random order until `max_concepts` (the last one cut)."""
    by_subgroup: dict[str, list[EmojiConcept]] = defaultdict(list)
    for c in concepts:
        by_subgroup[c.subgroup].append(c)
    names = sorted(by_subgroup)
    chosen: list[EmojiConcept] = []
    for i in np.random.default_rng(seed).permutation(len(names)):
        chosen += by_subgroup[names[i]][: max_concepts - len(chosen)]
        if len(chosen) >= max_concepts:
            break
    return chosen


def attach_symbola(concepts: list[EmojiConcept], font_path: str = SYMBOLA_FONT) -> int:
    """Set `symbola_char` for single-code-point concepts in the font's cmap; returns how many."""
    covered = set(TTFont(font_path, lazy=True).getBestCmap())
    found = 0
    for concept in concepts:
        base = [cp for cp in concept.codepoints if cp != "fe0f"]
        if len(base) == 1 and int(base[0], 16) in covered:
            concept.symbola_char = chr(int(base[0], 16))
            found += 1
    return found


_FONT_CACHE: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}


def _font(font_path: str, size: int) -> ImageFont.FreeTypeFont:
    font = _FONT_CACHE.get((font_path, size))
    if font is None:
        font = _FONT_CACHE[(font_path, size)] = ImageFont.truetype(font_path, size)
    return font


def _glyph_mask(text: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """The glyph's coverage (L mode, 255 = ink) cropped to its ink; None if nothing is drawn."""
    left, top, right, bottom = font.getbbox(text)
    if right <= left or bottom <= top:
        return None
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    ink = mask.getbbox()
    return mask.crop(ink) if ink else None


def render_noto(text: str, font_path: str = NOTO_FONT) -> Image.Image | None:
    """The Noto Color Emoji glyph of `text` on a transparent canvas; None if the font lacks it."""
    font = _font(font_path, NOTO_BITMAP_SIZE)
    left, top, right, bottom = font.getbbox(text)
    width, height = right - left, bottom - top
    if width <= 0 or height <= 0 or width > 1.5 * height:  # empty, or several glyphs side by side
        return None
    canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((-left, -top), text, font=font, embedded_color=True)
    return canvas if canvas.getchannel("A").getbbox() else None


def render_symbola(char: str, font_path: str = SYMBOLA_FONT) -> Image.Image | None:
    """Symbola's glyph of `char`, black on a white GLYPH_CANVAS, centered; None if it draws no ink.

    All glyphs share one font size, so relative sizes stay (a small square stays small); a glyph
    wider or taller than GLYPH_BOX is rasterized again at the smaller size that makes it fit.
    """
    mask = _glyph_mask(char, _font(font_path, SYMBOLA_SIZE))
    if mask is None:
        return None
    scale = min(GLYPH_BOX[0] / mask.width, GLYPH_BOX[1] / mask.height)
    if scale < 1:
        mask = _glyph_mask(char, _font(font_path, max(1, int(SYMBOLA_SIZE * scale))))
        if mask is None:
            return None
    if mask.width > GLYPH_BOX[0] or mask.height > GLYPH_BOX[1]:  # hinting can add a pixel or two
        mask.thumbnail(GLYPH_BOX, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", GLYPH_CANVAS, (255, 255, 255))
    offset = ((GLYPH_CANVAS[0] - mask.width) // 2, (GLYPH_CANVAS[1] - mask.height) // 2)
    canvas.paste((0, 0, 0), (*offset, offset[0] + mask.width, offset[1] + mask.height), mask)
    return canvas
