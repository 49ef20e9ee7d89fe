"""Open Clip Art pins for the demo corpus: metadata from the SVGs, filters and de-duplication.

The Debian packages openclipart-png / openclipart-svg hold each drawing as a PNG under
png/<category>/.../<name>.png and, at the same relative path under svg/, an SVG whose RDF metadata
gives dc:title, dc:description and keywords (rdf:li under dc:subject). Every filter step is logged
with its count so that dataset.md can say exactly what was kept and why.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

CLIPART_ROOT = "/usr/share/openclipart"
UI_ICON_FOLDER = "computer/icons/"  # desktop-theme icon sets (folder, mimetype, app-launcher glyphs)
COLLECTION_MIN_FILES = 4  # a title shared by this many files names a collection, not one drawing


@dataclass
class ClipartItem:
    rel_path: str  # relative to png/, e.g. "animals/bugs/farfalla_butterfly_fra1.png"
    title: str
    description: str | None
    keywords: list[str]
    creator: str

    @property
    def category(self) -> str:
        """The leaf category folder, e.g. 'animals/bugs'."""
        return os.path.dirname(self.rel_path)

    @property
    def pin_id(self) -> str:
        return "oca-" + hashlib.sha1(self.rel_path.encode()).hexdigest()[:8]


@dataclass
class FilterStep:
    description: str
    removed: int
    remaining: int


def unescape(text: str) -> str:
    """XML entities decoded, also when escaped twice ('&amp;amp;' -> '&'); whitespace collapsed."""
    for _ in range(3):
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    return " ".join(text.split())


def _tag_text(block: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", block, re.S)
    return unescape(match.group(1)) if match else ""


def read_svg_metadata(svg_path: str) -> tuple[str, str, list[str], str] | None:
    """(title, description, keywords, creator) from an SVG's RDF metadata; None if it has none."""
    with open(svg_path, "rb") as f:
        head = f.read(65536).decode("utf-8", "replace")
    work = re.search(r"<cc:Work.*?</cc:Work>", head, re.S)
    if work is None:
        return None
    block = work.group(0)
    creator_block = re.search(r"<dc:creator>.*?</dc:creator>", block, re.S)
    creator = _tag_text(creator_block.group(0), "dc:title") if creator_block else ""
    own = re.sub(r"<dc:(publisher|creator|rights|contributor)>.*?</dc:\1>", "", block, flags=re.S)
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", own, re.S)
    keywords = re.findall(r"<rdf:li>(.*?)</rdf:li>", subject.group(1), re.S) if subject else []
    return _tag_text(own, "dc:title"), _tag_text(own, "dc:description"), keywords, creator


def clean_keywords(raw: list[str]) -> list[str]:
    """Lower-case keywords with '_' as spaces, blanks and repeats removed, order kept."""
    cleaned = (" ".join(unescape(k).replace("_", " ").lower().split()) for k in raw)
    return list(dict.fromkeys(k for k in cleaned if k))


def title_key(title: str) -> str:
    """Normalized title for de-duplication: lower case, letters only (digits/punctuation dropped)."""
    return " ".join(re.sub(r"[^a-z]+", " ", title.lower()).split())


def file_name_words(rel_path: str, title: str, creator: str) -> str:
    """Words of the file name that the title and the creator's name do not already say."""
    stem = os.path.splitext(os.path.basename(rel_path))[0].lower()
    said = set(title_key(title).split())
    creator_words = [w for w in re.split(r"[^a-z]+", creator.lower()) if len(w) >= 3]
    words = [
        w
        for w in re.split(r"[^a-z]+", stem)
        if len(w) > 1 and w not in said and not (len(w) >= 3 and any(c.startswith(w) for c in creator_words))
    ]
    return " ".join(words)


def scan_clipart(root: str = CLIPART_ROOT) -> tuple[list[ClipartItem], list[FilterStep]]:
    """Every distinct PNG with usable metadata, in path order, and the log of what was left out."""
    png_root, svg_root = os.path.join(root, "png"), os.path.join(root, "svg")
    files, links = [], 0
    for folder, subfolders, names in os.walk(png_root):
        subfolders.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            if not name.endswith(".png"):
                continue
            if os.path.islink(path):
                links += 1
            else:
                files.append(os.path.relpath(path, png_root))
    steps = [
        FilterStep(
            "distinct PNG files (removed: symbolic links to drawings in other folders)", links, len(files)
        )
    ]
    items, no_meta, icons, untitled = [], 0, 0, 0
    for rel in sorted(files):
        if rel.startswith(UI_ICON_FOLDER):
            icons += 1
            continue
        meta = read_svg_metadata(os.path.join(svg_root, rel[:-4] + ".svg"))
        if meta is None:
            no_meta += 1
            continue
        title, description, keywords, creator = meta
        if not title_key(title):
            untitled += 1
            continue
        items.append(ClipartItem(rel, title, description or None, clean_keywords(keywords), creator))
    remaining = len(files)
    for text, removed in (
        (f"UI theme icons under {UI_ICON_FOLDER}", icons),
        ("no SVG metadata", no_meta),
        ("empty title", untitled),
    ):
        remaining -= removed
        steps.append(FilterStep(text, removed, remaining))
    return items, steps


def name_collection_members(items: list[ClipartItem]) -> int:
    """Append file-name words to titles shared by many files ('AIGA Symbol Signs: escalator down')."""
    shared = Counter(title_key(item.title) for item in items)
    renamed = 0
    for item in items:
        if shared[title_key(item.title)] >= COLLECTION_MIN_FILES:
            words = file_name_words(item.rel_path, item.title, item.creator)
            if words:
                item.title = f"{item.title}: {words}"
                renamed += 1
    return renamed


def cap_per_key(items: list[ClipartItem], key, cap: int) -> list[ClipartItem]:
    """Keep at most `cap` items per key value, the first ones in path order."""
    seen: Counter = Counter()
    kept = []
    for item in items:
        k = key(item)
        seen[k] += 1
        if seen[k] <= cap:
            kept.append(item)
    return kept


def select_clipart(
    root: str = CLIPART_ROOT, title_cap: int = 3, category_cap: int = 300
) -> tuple[list[ClipartItem], list[FilterStep]]:
    """The filtered, de-duplicated clip art (path order) and the log of every step with counts."""
    items, steps = scan_clipart(root)
    renamed = name_collection_members(items)
    deduped = cap_per_key(items, lambda item: title_key(item.title), title_cap)
    steps.append(
        FilterStep(
            f"near-duplicate titles: at most {title_cap} per normalized title (case, digits, punctuation "
            f"ignored; {renamed} titles shared by >= {COLLECTION_MIN_FILES} files first got their file-name words)",
            len(items) - len(deduped),
            len(deduped),
        )
    )
    capped = cap_per_key(deduped, lambda item: item.category, category_cap)
    steps.append(
        FilterStep(f"at most {category_cap} per category folder", len(deduped) - len(capped), len(capped))
    )
    return capped, steps


def subset_by_category(items: list[ClipartItem], max_items: int, seed: int) -> list[ClipartItem]:
    """Whole category folders in a seeded random order until `max_items` (the last one cut)."""
    by_category: dict[str, list[ClipartItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)
    categories = sorted(by_category)
    chosen: list[ClipartItem] = []
    for i in np.random.default_rng(seed).permutation(len(categories)):
        chosen += by_category[categories[i]][: max_items - len(chosen)]
        if len(chosen) >= max_items:
            break
    return sorted(chosen, key=lambda item: item.rel_path)
