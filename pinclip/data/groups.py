"""Duplicate groups: pins that must stay on the same side of every split.

    groups = find_groups(pins)                  # pins: a loaded PinsTable
    groups.group[i]                             # component id of pin i
    print("\n".join(audit_lines(groups, pins)))  # the dedup audit `pinclip data validate` prints

Two pins are linked when any of these holds; groups are the connected components of the links:
- the same value in the pins table's `group_id` column (a concept the user knows, e.g. one emoji
  drawn in several styles; the column is optional);
- the same normalized text: the title, or the first present text field when there is no title,
  lower-cased with punctuation and repeated spaces removed (`normalize_text`);
- near-duplicate images: a 64-bit perceptual hash (pHash, `imagehash`) within
  `max_hash_distance` bits AND 8x8 colour thumbnails within `max_color_distance` (mean absolute
  difference over the 192 RGB values, 0-255). pHash alone sees structure, not colour: every
  three-stripe flag or recoloured icon would collapse into one giant group; the colour check keeps
  a red circle apart from a blue one while a resized or recompressed copy still matches.
Candidate image pairs come from FAISS multi-index hashing (exact for the configured radius), so a
catalog of millions of images is not compared pair by pair.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from pinclip.data.images import ImageError, open_image
from pinclip.data.schema import MAX_IMAGE_PIXELS, TEXT_FIELDS, field_text

GROUP_COLUMN = "group_id"
THUMB_SIDE = 8


@dataclass(frozen=True)
class DuplicateConfig:
    max_hash_distance: int = 6  # pHash bits (of 64) that may differ
    max_color_distance: float = 8.0  # mean |difference| of 8x8 RGB thumbnails, 0-255
    group_column: str = GROUP_COLUMN


@dataclass
class ImageSignatures:
    """Per pin: pHash (P,) uint64, colour thumbnail (P, 192) uint8, and whether the image was read."""

    hashes: np.ndarray
    thumbs: np.ndarray
    ok: np.ndarray


@dataclass
class PinGroups:
    group: np.ndarray  # (P,) int64 component id, 0..num_groups-1
    links: Counter = field(default_factory=Counter)  # reason -> links found ("group_id", "text", "image")
    images_hashed: int = 0

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.group)

    def members(self, min_size: int = 2) -> list[np.ndarray]:
        """Sorted pin positions of every group with at least `min_size` pins, largest first."""
        order = np.argsort(self.group, kind="stable")
        split = np.split(order, np.cumsum(self.sizes)[:-1])
        return sorted((m for m in split if len(m) >= min_size), key=lambda m: (-len(m), m[0]))


def normalize_text(text: str) -> str:
    """Lower case, Unicode-normalized, punctuation and repeated spaces removed ('Pear!' -> 'pear')."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def text_key(texts: dict[str, Sequence], i: int) -> str:
    """The normalized title of pin i, or its first present field's; '' when it has no text."""
    for name in TEXT_FIELDS:
        values = texts.get(name)
        if values is not None:
            key = normalize_text(field_text(values[i]))
            if key:
                return key
    return ""


def image_signature(src: str | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, np.ndarray] | None:
    """(pHash as an int, 192 thumbnail bytes) of one image; None when it cannot be read."""
    import imagehash
    from PIL import Image

    try:
        img = open_image(src, max_pixels)
    except ImageError:
        return None
    phash = int(str(imagehash.phash(img)), 16)
    thumb = np.asarray(img.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), np.uint8).reshape(-1)
    return phash, thumb


def image_signatures(images: Sequence[str | bytes | None], max_pixels: int = MAX_IMAGE_PIXELS,
                     progress: bool = True) -> ImageSignatures:
    """Signatures of every pin image (missing or unreadable ones are marked not ok)."""
    hashes = np.zeros(len(images), np.uint64)
    thumbs = np.zeros((len(images), 3 * THUMB_SIDE**2), np.uint8)
    ok = np.zeros(len(images), bool)
    for i, src in enumerate(tqdm(images, desc="image hashes", unit="img", disable=not progress or None)):
        sig = None if src is None else image_signature(src, max_pixels)
        if sig is not None:
            hashes[i], thumbs[i], ok[i] = sig[0], sig[1], True
    return ImageSignatures(hashes, thumbs, ok)


def near_duplicate_pairs(sig: ImageSignatures, config: DuplicateConfig) -> np.ndarray:
    """(M, 2) pin position pairs i < j whose images are near-duplicates (see the module docstring)."""
    import faiss

    rows = np.flatnonzero(sig.ok)
    if len(rows) < 2:
        return np.zeros((0, 2), np.int64)
    codes = np.ascontiguousarray(sig.hashes[rows]).view(np.uint8).reshape(len(rows), 8)  # (N, 8)
    radius = config.max_hash_distance
    nhash = radius + 1  # pigeonhole: within `radius` bits, one of radius+1 sub-codes matches exactly
    index = faiss.IndexBinaryMultiHash(64, nhash, 64 // nhash)
    index.add(codes)
    lims, _, found = index.range_search(codes, radius + 1)  # distances < radius + 1
    query = np.repeat(np.arange(len(rows)), np.diff(lims).astype(np.int64))  # (K,)
    found = found.astype(np.int64)
    keep = query < found  # each unordered pair once, no self pairs
    a, b = rows[query[keep]], rows[found[keep]]
    color = np.abs(sig.thumbs[a].astype(np.int16) - sig.thumbs[b].astype(np.int16)).mean(1)  # (K',)
    close = color <= config.max_color_distance
    return np.stack([a[close], b[close]], axis=1).astype(np.int64)


def _key_pairs(keys: Sequence[str | None]) -> np.ndarray:
    """(M, 2) pairs linking every pin to the first pin with the same non-empty key."""
    first: dict[str, int] = {}
    pairs = []
    for i, key in enumerate(keys):
        if key:
            j = first.setdefault(key, i)
            if j != i:
                pairs.append((j, i))
    return np.array(pairs, np.int64).reshape(-1, 2)


def find_groups(pins, config: DuplicateConfig | None = None, signatures: ImageSignatures | None = None,
                check_images: bool = True, progress: bool = True) -> PinGroups:
    """Duplicate groups of a PinsTable (images hashed unless `check_images` is False)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    config = config or DuplicateConfig()
    n = len(pins)
    column = pins.extra.get(config.group_column)
    links = {
        "group_id": _key_pairs([str(v).strip() if v is not None else None for v in column] if column else []),
        "text": _key_pairs([text_key(pins.texts, i) for i in range(n)]),
    }
    if signatures is None and check_images:
        signatures = image_signatures(pins.images, progress=progress)
    links["image"] = near_duplicate_pairs(signatures, config) if signatures is not None else np.zeros((0, 2), int)
    pairs = np.concatenate(list(links.values())) if n else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    hashed = int(signatures.ok.sum()) if signatures is not None else 0
    return PinGroups(labels.astype(np.int64), Counter({k: len(v) for k, v in links.items()}), hashed)


def audit_lines(groups: PinGroups, pins, examples: int = 5, config: DuplicateConfig | None = None) -> list[str]:
    """The dedup audit: how many groups, how many pins they hold, why, and the largest few."""
    config = config or DuplicateConfig()
    multi = groups.members(min_size=2)
    held = sum(len(m) for m in multi)
    sizes = Counter(min(len(m), 10) for m in multi)
    spread = ", ".join(f"{k if k < 10 else '10+'}: {sizes[k]}" for k in sorted(sizes))
    image_rule = (f"pHash within {config.max_hash_distance} bits and colour within {config.max_color_distance:g}"
                  if groups.images_hashed else "not checked")
    lines = [
        f"duplicate groups: {len(multi)} groups of 2 or more pins hold {held} of {len(pins)} pins "
        f"(sizes {spread or 'none'})",
        f"  links: same {config.group_column} {groups.links['group_id']}, same normalized text "
        f"{groups.links['text']}, near-duplicate image {groups.links['image']} ({image_rule}; "
        f"{groups.images_hashed} images hashed)",
    ]
    for members in multi[:examples]:
        titles = [text_key(pins.texts, int(i))[:30] or pins.pin_ids[int(i)] for i in members[:4]]
        more = f", ... {len(members) - 4} more" if len(members) > 4 else ""
        lines.append(f"  e.g. {len(members)} pins: " + " | ".join(titles) + more)
    return lines
