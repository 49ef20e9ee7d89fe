"""Build the embedded demo corpus from real installed data: Open Clip Art and emoji in three styles.

    pinclip data demo --out runs/demo/data [--seed 0] [--max-clipart N] [--max-emoji N]

Sources (install with `bash scripts/install_demo_data.sh`): the Debian packages openclipart-png,
openclipart-svg, fonts-noto-color-emoji (color emoji), fonts-symbola (monochrome outline emoji),
unicode-data and unicode-cldr-core (names and keywords), and the npm package emoji-datasource-twitter
(Twemoji). Each emoji concept is a Noto pin, a Twemoji pin and, if Symbola draws it, a Symbola pin.
Writes pins.parquet, boards.parquet, splits.json, splits_domain.json (whole top-level categories held
out: the domain-shift split), dataset.md, contact_sheet.png and images/ (PNGs, longer side <= 256 px,
on white). The same seed and inputs give byte-identical files.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from multiprocessing import get_context

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pinclip.cli import UserError
from pinclip.data import demo_clipart, demo_emoji
from pinclip.data.demo_clipart import ClipartItem, FilterStep
from pinclip.data.demo_emoji import EmojiConcept
from pinclip.data.domain_split import domain_split_tables
from pinclip.data.groups import audit_lines
from pinclip.data.images import ImageError, composite_on_white, open_image, shrink_to_png
from pinclip.data.reachability import board_reachability, reachability_line, reachability_summary
from pinclip.data.schema import MAX_IMAGE_PIXELS
from pinclip.data.sheet import contact_sheet
from pinclip.data.splits import SplitConfig, split_sizes, split_tables, write_splits
from pinclip.data.tables import load_edges, load_pins

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMAIL = re.compile(r"\S+@\S+\.\w+")


@dataclass
class DemoSources:
    clipart_root: str = demo_clipart.CLIPART_ROOT
    emoji_test: str = demo_emoji.EMOJI_TEST
    cldr: tuple[str, ...] = demo_emoji.CLDR_ANNOTATIONS
    noto_font: str = demo_emoji.NOTO_FONT
    symbola_font: str = demo_emoji.SYMBOLA_FONT
    twemoji_dir: str = os.path.join(
        REPO_ROOT, "data", "emoji-datasource-twitter"
    )  # scripts/install_demo_data.sh

    def check(self) -> None:
        paths = [
            os.path.join(self.clipart_root, "png"),
            os.path.join(self.clipart_root, "svg"),
            self.emoji_test,
            *self.cldr,
            self.noto_font,
            self.symbola_font,
            os.path.join(self.twemoji_dir, "emoji.json"),
        ]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise UserError(
                "demo data not installed, missing: "
                + ", ".join(missing)
                + " (run: bash scripts/install_demo_data.sh)"
            )


@dataclass
class DemoConfig:
    seed: int = 0
    max_clipart: int | None = None  # a subset: whole category folders in seeded order
    max_emoji: int | None = None  # a subset: whole subgroups in seeded order (2-3 pins per concept)
    title_cap: int = 3  # clip art kept per normalized title
    category_cap: int = 300  # clip art kept per category folder
    keyword_min_pins: int = 3  # a keyword shared by this many pins ... becomes a board
    keyword_max_pins: int = 300  # ... unless more pins share it
    keyword_min_items: int = 2  # ... and they show this many drawings or emoji concepts (not 1 in 3 styles)
    max_image_side: int = 256
    max_image_pixels: int = MAX_IMAGE_PIXELS
    workers: int = 2
    cold_frac: float = 0.1
    val_frac: float = 0.05
    heldout_board_frac: float = 0.65  # of the curated boards (HELDOUT_KINDS): about 100 test Search queries
    val_board_frac: float = 0.3
    domain_frac: float = 0.15  # the domain-shift split: whole top-level categories held out (splits_domain.json)


@dataclass
class DemoPin:
    pin_id: str
    source: str  # "openclipart" | "noto" | "twemoji" | "symbola"
    image_job: tuple[str, str]  # ("file", path), ("noto", emoji text) or ("symbola", one character)
    title: str
    description: str | None = None
    queries: list[str] | None = None
    annotations: list[str] | None = None
    boards: list[tuple[str, str, str]] = field(default_factory=list)  # (board_id, title, kind)
    domain: str | None = None  # top-level clip art folder or emoji group (the domain-shift split)


@dataclass(frozen=True)
class ImageJob:
    pin_id: str
    kind: str  # "file" (a PNG path), "noto" or "symbola" (emoji text rendered from that font)
    arg: str
    font_path: str  # the font of a "noto" or "symbola" job
    max_side: int
    max_pixels: int


@dataclass
class BuildLog:
    """What the build left out, for dataset.md."""

    clipart_steps: list[FilterStep] = field(default_factory=list)
    emoji_notes: list[str] = field(default_factory=list)
    image_failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    duplicates: list[str] = field(default_factory=list)  # the duplicate-group audit


@dataclass
class DemoSummary:
    out_dir: str
    pins_by_source: dict[str, int]
    boards_by_kind: dict[str, int]
    edges: int
    filter_steps: list[FilterStep]
    splits_line: str
    seconds: float


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def clipart_pins(items: list[ClipartItem], root: str) -> list[DemoPin]:
    """One pin per drawing; its leaf category folder is its first board."""
    pins = []
    for item in items:
        category = (
            f"cat-{slug(item.category)}",
            " ".join(item.category.replace("_", " ").split("/")[-2:]),
            "category",
        )
        description = EMAIL.sub("", item.description or "").strip(" -,;:") or None
        job = ("file", os.path.join(root, "png", item.rel_path))
        pin = DemoPin(
            item.pin_id, "openclipart", job, item.title, description, annotations=item.keywords or None
        )
        pin.boards.append(category)
        pin.domain = f"clipart/{item.rel_path.split('/')[0]}"
        pins.append(pin)
    return pins


def emoji_pins(concepts: list[EmojiConcept]) -> list[DemoPin]:
    """Noto, Symbola and Twemoji pins of each concept, all in its subgroup board and its concept board."""
    pins = []
    for c in concepts:
        boards = [
            (f"sub-{slug(c.subgroup)}", c.subgroup.replace("-", " "), "subgroup"),
            (f"concept-{c.key}", c.title, "concept"),
        ]
        styles = [("noto", "noto", ("noto", c.text))]
        if c.symbola_char:
            styles.append(("sym", "symbola", ("symbola", c.symbola_char)))
        if c.twemoji_png:
            styles.append(("tw", "twemoji", ("file", c.twemoji_png)))
        for prefix, source, job in styles:
            queries, keywords = list(c.short_names) or None, list(c.keywords) or None
            pins.append(DemoPin(f"{prefix}-{c.key}", source, job, c.title, None, queries, keywords, list(boards),
                                domain=f"emoji/{c.group}"))
    return pins


def make_thumbnail(job: ImageJob) -> tuple[str, bytes | None, str | None]:
    """(pin_id, PNG bytes or None, reason) for one image; runs in worker processes."""
    try:
        if job.kind == "noto":
            glyph = demo_emoji.render_noto(job.arg, job.font_path)
            if glyph is None:
                return job.pin_id, None, "glyph missing from the Noto font"
            img = composite_on_white(glyph)
        elif job.kind == "symbola":
            img = demo_emoji.render_symbola(job.arg, job.font_path)
            if img is None:
                return job.pin_id, None, "glyph draws no ink in the Symbola font"
        else:
            img = open_image(job.arg, job.max_pixels)
    except ImageError as err:
        return job.pin_id, None, err.reason
    return job.pin_id, shrink_to_png(img, job.max_side), None


def write_images(
    pins: list[DemoPin], out_dir: str, config: DemoConfig, fonts: dict[str, str]
) -> tuple[list[DemoPin], dict[str, int]]:
    """Render each pin's PNG into out_dir/images (fonts: font file by job kind); drop and count failures."""
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    jobs = [
        ImageJob(p.pin_id, kind, arg, fonts.get(kind, ""), config.max_image_side, config.max_image_pixels)
        for p in pins
        for kind, arg in [p.image_job]
    ]
    failures: dict[str, int] = defaultdict(int)
    ok: set[str] = set()
    workers = config.workers if len(jobs) >= 200 else 1
    pool = get_context("fork").Pool(workers) if workers > 1 else None
    results = pool.imap(make_thumbnail, jobs, chunksize=16) if pool else map(make_thumbnail, jobs)
    try:
        for pin_id, png, reason in tqdm(results, total=len(jobs), desc="images", unit="img", disable=None):
            if png is None:
                failures[re.sub(r":.*|\(.*", "", reason).strip()] += 1
                continue
            _write_if_changed(os.path.join(image_dir, f"{pin_id}.png"), png)
            ok.add(pin_id)
    finally:
        if pool:
            pool.close()
            pool.join()
    for name in os.listdir(image_dir):  # images of an earlier build with other settings
        if name.endswith(".png") and name[:-4] not in ok:
            os.remove(os.path.join(image_dir, name))
    return [p for p in pins if p.pin_id in ok], dict(failures)


def _write_if_changed(path: str, data: bytes) -> None:
    if os.path.isfile(path) and os.path.getsize(path) == len(data):
        with open(path, "rb") as f:
            if f.read() == data:
                return
    _atomic_write(path, data)


def _atomic_write(path: str, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 20)
    return sink.getvalue().to_pybytes()


def add_keyword_boards(pins: list[DemoPin], config: DemoConfig, reserved: set[str]) -> int:
    """Boards of keywords shared by keyword_min_pins..keyword_max_pins pins of at least keyword_min_items
    drawings or emoji concepts (the styles of one concept count once; folder names excluded)."""
    members: dict[str, list[DemoPin]] = defaultdict(list)
    titles: dict[str, str] = {}
    for pin in pins:
        for key in dict.fromkeys(slug(k) for k in pin.annotations or ()):
            if key and key not in reserved:
                members[key].append(pin)
    for pin in pins:
        for keyword in pin.annotations or ():
            titles.setdefault(slug(keyword), keyword.lower())
    made = 0
    for key, board_pins in members.items():
        items = {next((b[0] for b in p.boards if b[2] == "concept"), p.pin_id) for p in board_pins}
        if len(items) < config.keyword_min_items:
            continue
        if config.keyword_min_pins <= len(board_pins) <= config.keyword_max_pins:
            made += 1
            for pin in board_pins:
                pin.boards.append((f"kw-{key}", titles[key], "keyword"))
    return made


def drop_small_boards(pins: list[DemoPin]) -> None:
    """Remove boards that hold a single pin: they give no neighbor pair."""
    size: dict[str, int] = defaultdict(int)
    for pin in pins:
        for board_id, _, _ in pin.boards:
            size[board_id] += 1
    for pin in pins:
        pin.boards = [b for b in pin.boards if size[b[0]] >= 2]


def edge_pins_of(pins, edges) -> list[str]:
    return [pins.pin_ids[i] for i in edges.pin_index.tolist()]


def edge_boards_of(edges) -> list[str]:
    return [edges.board_ids[b] for b in edges.board_index.tolist()]


def domain_shift_folder(data_dir: str, out_dir: str) -> str:
    """A dataset folder for the domain-shift split: links to the data folder's tables and images, and
    its splits_domain.json as splits.json."""
    os.makedirs(out_dir, exist_ok=True)
    for name in os.listdir(data_dir):
        link = os.path.join(out_dir, name)
        if name.startswith("splits") or os.path.lexists(link):
            continue
        os.symlink(os.path.relpath(os.path.join(data_dir, name), out_dir), link)
    with open(os.path.join(data_dir, "splits_domain.json"), "rb") as f:
        _write_if_changed(os.path.join(out_dir, "splits.json"), f.read())
    return out_dir


def _concept_group(pin: DemoPin) -> str | None:
    """The emoji concept a pin draws (its styles are one group for the splits); None for clip art."""
    return next((b[0] for b in pin.boards if b[2] == "concept"), None)


def write_tables(pins: list[DemoPin], out_dir: str) -> tuple[pa.Table, pa.Table]:
    """pins.parquet and boards.parquet, rows sorted, written atomically with fixed settings."""
    pins = sorted(pins, key=lambda p: p.pin_id)
    string, strings = pa.string(), pa.list_(pa.string())
    pin_table = pa.table(
        {
            "pin_id": pa.array([p.pin_id for p in pins], string),
            "image": pa.array([f"images/{p.pin_id}.png" for p in pins], string),
            "title": pa.array([p.title for p in pins], string),
            "description": pa.array([p.description for p in pins], string),
            "caption": pa.nulls(len(pins), string),
            "queries": pa.array([p.queries for p in pins], strings),
            "annotations": pa.array([p.annotations for p in pins], strings),
            "source": pa.array([p.source for p in pins], string),
            "group_id": pa.array([_concept_group(p) for p in pins], string),
            "domain": pa.array([p.domain for p in pins], string),
        }
    )
    edges = sorted((board_id, p.pin_id, title, kind) for p in pins for board_id, title, kind in p.boards)
    board_table = pa.table(
        {
            "pin_id": pa.array([e[1] for e in edges], string),
            "board_id": pa.array([e[0] for e in edges], string),
            "board_title": pa.array([e[2] for e in edges], string),
            "board_kind": pa.array([e[3] for e in edges], string),
        }
    )
    _atomic_write(os.path.join(out_dir, "pins.parquet"), _parquet_bytes(pin_table))
    _atomic_write(os.path.join(out_dir, "boards.parquet"), _parquet_bytes(board_table))
    return pin_table, board_table


DATASET_CARD = """# PinCLIP demo corpus

Built by `{command}`; the same command gives the same bytes.

## Sources and licenses

- Open Clip Art (Debian openclipart-png/-svg): public domain. Title, description and keywords from each
  SVG's RDF metadata; the leaf category folder is a board.
- Noto Color Emoji (fonts-noto-color-emoji, SIL Open Font License 1.1): glyphs rendered from the font.
- Twemoji (npm emoji-datasource-twitter): graphics by Twitter, Inc. and contributors, CC-BY 4.0.
- Symbola (fonts-symbola, by George Douros): monochrome outline glyphs rendered from the font, black on
  white. Its Debian copyright file states: "Fonts are free for any use; they may be opened, edited,
  modified, regenerated, packaged and redistributed."
- Emoji names, subgroups and keywords: Unicode emoji-test.txt and CLDR annotations (Unicode License);
  queries are the emoji.json short names.

## Open Clip Art filters

| step | removed | remaining |
|---|---:|---:|
{filters}

## Emoji

{emoji}

## Images

Each image is composited on white and stored as a PNG under images/ (longer side at most {max_side} px).
{failures}

## Pins and text fields

| source | pins | title | description | queries | annotations | caption |
|---|---:|---:|---:|---:|---:|---:|
{coverage}

## Boards

Boards with a single pin are dropped.

| kind | boards | edges | what |
|---|---:|---:|---|
{boards}

## Splits

{splits}

Cold-start and validation pins are whole duplicate groups (one emoji concept in every style, identical
normalized titles, near-duplicate images), so none has a twin among the training pins. Only curated
boards ({heldout_kinds}) are held out as ground truth; keyword and concept boards are derived from pin
text and stay in the training graph.

{duplicates}
"""
SOURCES = ("openclipart", "noto", "twemoji", "symbola")
# Boards whose membership comes from curation, not from pin text: only these are held out as ground truth.
# Keyword boards (members = pins whose keywords contain the board title) and concept boards (members share
# their title) would make Search a string-matching test; they stay in the training graph.
HELDOUT_KINDS = ("category", "subgroup")
BOARD_KINDS = {
    "category": "an Open Clip Art leaf category folder",
    "subgroup": "a Unicode emoji subgroup, all emoji styles",
    "concept": "one emoji concept drawn in 2 or 3 styles (title = CLDR name)",
    "keyword": "a keyword shared by {lo} to {hi} pins of >= {items} drawings or emoji concepts, across sources "
    "(not a top-level folder name)",
}


def _coverage_row(pins: list[DemoPin], source: str) -> str:
    """Share of a source's pins with each text field, as a markdown table row."""
    mine = [p for p in pins if p.source == source]
    fields = ("title", "description", "queries", "annotations")
    cells = [f"{100 * sum(bool(getattr(p, name)) for p in mine) / max(1, len(mine)):.0f}%" for name in fields]
    return f"| {source} | {len(mine)} | " + " | ".join(cells) + " | 0% |"


def _board_rows(pins: list[DemoPin], config: DemoConfig) -> str:
    boards: dict[str, set[str]] = defaultdict(set)
    edges: dict[str, int] = defaultdict(int)
    for pin in pins:
        for board_id, _, kind in pin.boards:
            boards[kind].add(board_id)
            edges[kind] += 1
    what = {
        k: v.format(lo=config.keyword_min_pins, hi=config.keyword_max_pins, items=config.keyword_min_items)
        for k, v in BOARD_KINDS.items()
    }
    return "\n".join(f"| {k} | {len(boards[k])} | {edges[k]} | {what[k]} |" for k in BOARD_KINDS)


def dataset_card(pins: list[DemoPin], config: DemoConfig, log: BuildLog, splits_line: str) -> str:
    """dataset.md: what the corpus holds, where it comes from, and every filter with its count."""
    command = "pinclip data demo --out DIR" + "".join(
        f" --{flag} {value}"
        for flag, value in (
            ("seed", config.seed or None),
            ("max-clipart", config.max_clipart),
            ("max-emoji", config.max_emoji),
        )
        if value is not None
    )
    return DATASET_CARD.format(
        command=command,
        filters="\n".join(f"| {s.description} | {s.removed} | {s.remaining} |" for s in log.clipart_steps),
        emoji="\n".join(f"- {note}" for note in log.emoji_notes),
        max_side=config.max_image_side,
        failures="\n".join(f"- dropped, {reason}: {n}" for reason, n in sorted(log.image_failures.items())),
        coverage="\n".join(_coverage_row(pins, source) for source in SOURCES),
        boards=_board_rows(pins, config),
        splits=splits_line,
        heldout_kinds=", ".join(HELDOUT_KINDS),
        duplicates="\n".join(f"- {line.strip()}" for line in log.duplicates),
    )


def collect_pins(sources: DemoSources, config: DemoConfig, log: BuildLog) -> list[DemoPin]:
    """Clip art and emoji pins with their texts and source boards (images not rendered yet)."""
    items, log.clipart_steps = demo_clipart.select_clipart(
        sources.clipart_root, config.title_cap, config.category_cap
    )
    if config.max_clipart is not None:
        before = len(items)
        items = demo_clipart.subset_by_category(items, config.max_clipart, config.seed)
        what = f"subset: whole category folders in seeded order up to {config.max_clipart}"
        log.clipart_steps.append(FilterStep(what, before - len(items), len(items)))
    concepts = demo_emoji.read_emoji_test(sources.emoji_test)
    log.emoji_notes.append(
        f"{len(concepts)} base concepts in emoji-test.txt (fully-qualified, no skin-tone variants, "
        "no components); each is one Noto pin, one Twemoji pin and, where Symbola draws it, one Symbola pin"
    )
    if config.max_emoji is not None:
        concepts = demo_emoji.subset_emoji(concepts, config.max_emoji, config.seed)
        log.emoji_notes.append(f"subset: whole subgroups in seeded order, {len(concepts)} concepts")
    demo_emoji.attach_texts(concepts, sources.cldr, sources.twemoji_dir)
    log.emoji_notes.append(f"{sum(c.twemoji_png is None for c in concepts)} concepts without a Twemoji image")
    single = sum(len([cp for cp in c.codepoints if cp != "fe0f"]) == 1 for c in concepts)
    covered = demo_emoji.attach_symbola(concepts, sources.symbola_font)
    log.emoji_notes.append(
        f"Symbola: {single} concepts are one code point (optionally + U+FE0F), {covered} of them in the "
        "font's cmap get a Symbola pin; ZWJ sequences, keycaps, flag sequences and other multi-code-point "
        "emoji are skipped, and glyphs that draw no ink are dropped (see Images)"
    )
    return clipart_pins(items, sources.clipart_root) + emoji_pins(concepts)


def build_demo_corpus(
    out_dir: str,
    seed: int = 0,
    max_clipart: int | None = None,
    max_emoji: int | None = None,
    sources: DemoSources | None = None,
    config: DemoConfig | None = None,
) -> DemoSummary:
    """Build the whole demo corpus into `out_dir` (see the module docstring) and summarize it."""
    start = time.perf_counter()
    config = config or DemoConfig(seed=seed, max_clipart=max_clipart, max_emoji=max_emoji)
    sources = sources or DemoSources()
    sources.check()
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir}: exists and is not a folder")
    os.makedirs(out_dir, exist_ok=True)
    log = BuildLog()
    pins = collect_pins(sources, config, log)
    fonts = {"noto": sources.noto_font, "symbola": sources.symbola_font}
    pins, log.image_failures = write_images(pins, out_dir, config, fonts)
    add_keyword_boards(
        pins, config, {slug(name) for name in os.listdir(os.path.join(sources.clipart_root, "png"))}
    )
    drop_small_boards(pins)
    write_tables(pins, out_dir)
    loaded, _ = load_pins(os.path.join(out_dir, "pins.parquet"), check_images=False)
    edges, _ = load_edges(os.path.join(out_dir, "boards.parquet"), loaded.pin_ids)
    split_config = SplitConfig(config.cold_frac, config.val_frac, config.heldout_board_frac, config.val_board_frac,
                               HELDOUT_KINDS)
    splits, groups = split_tables(loaded, edges, config.seed, split_config)
    write_splits(splits, os.path.join(out_dir, "splits.json"))
    domain = domain_split_tables(loaded, edges, groups, "domain", config.seed, config.domain_frac, HELDOUT_KINDS)
    write_splits(domain, os.path.join(out_dir, "splits_domain.json"))
    edge_pins, edge_boards = edge_pins_of(loaded, edges), edge_boards_of(edges)
    reach = reachability_line(reachability_summary(board_reachability(zip(edge_pins, edge_boards), splits)))
    splits_line = f"{split_sizes(splits, loaded.pin_ids, edge_pins, edge_boards)}\n\n{reach}"
    print(splits_line)
    log.duplicates = audit_lines(groups, loaded)
    contact_sheet(loaded, edges, os.path.join(out_dir, "contact_sheet.png"), seed=config.seed)
    _atomic_write(os.path.join(out_dir, "dataset.md"), dataset_card(pins, config, log, splits_line).encode())
    by_source = {s: sum(p.source == s for p in pins) for s in SOURCES}
    kinds = {k: len({b[0] for p in pins for b in p.boards if b[2] == k}) for k in BOARD_KINDS}
    seconds = time.perf_counter() - start
    return DemoSummary(out_dir, by_source, kinds, len(edge_pins), log.clipart_steps, splits_line, seconds)
