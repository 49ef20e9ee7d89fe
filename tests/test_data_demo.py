"""The demo corpus: metadata parsing and title rules by hand, then a ~120-pin build from the real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fontTools.ttLib import TTFont

from pinclip.cli import UserError, main
from pinclip.data import demo_clipart, demo_emoji
from pinclip.data.demo import DemoSources, build_demo_corpus, slug
from pinclip.data.demo_clipart import ClipartItem
from pinclip.data.images import open_image
from pinclip.data.splits import read_splits, training_edge_mask
from pinclip.data.tables import load_edges, load_pins

SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF><cc:Work rdf:about="">
<dc:title>Fox &amp;amp; Hound</dc:title>
<dc:description>Two  animals</dc:description>
<dc:subject><rdf:Bag><rdf:li>Fox</rdf:li><rdf:li></rdf:li><rdf:li>hunting_dog</rdf:li></rdf:Bag></dc:subject>
<dc:publisher><cc:Agent><dc:title>Open Clip Art Library</dc:title></cc:Agent></dc:publisher>
<dc:creator><cc:Agent><dc:title>Jane Doe</dc:title></cc:Agent></dc:creator>
</cc:Work></rdf:RDF></metadata></svg>
"""

EMOJI_TEST = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face
1FAE0                                                  ; fully-qualified     # 🫠 E14.0 melting face
# group: People & Body
# subgroup: hand-fingers-open
1F44B                                                  ; fully-qualified     # 👋 E0.6 waving hand
1F44B 1F3FB                                            ; fully-qualified     # 👋🏻 E1.0 waving hand: light skin tone
# subgroup: person-role
1F468 200D 1F4BB                                       ; fully-qualified     # 👨‍💻 E4.0 man technologist
# group: Component
# subgroup: skin-tone
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone
"""


def test_svg_metadata_and_keywords(tmp_path):
    path = tmp_path / "fox.svg"
    path.write_text(SVG)
    title, description, keywords, creator = demo_clipart.read_svg_metadata(str(path))
    assert (title, description, creator) == ("Fox & Hound", "Two animals", "Jane Doe")
    assert demo_clipart.clean_keywords(keywords) == ["fox", "hunting dog"]
    assert demo_clipart.clean_keywords(["Foo_Bar", "", "foo  bar", " X "]) == ["foo bar", "x"]


def test_title_rules():
    assert demo_clipart.title_key("Clipart by Nicu Buculei - arrow08_4") == "clipart by nicu buculei arrow"
    words = demo_clipart.file_name_words(
        "signs/aiga_escalator_down1.png", "AIGA_Symbol_Signs", "Jean-Victor Balin"
    )
    assert words == "escalator down"
    # the title says 'dino'; 'architetto' and 'francesc' abbreviate the creator's name
    assert (
        demo_clipart.file_name_words("a/dino_architetto_francesc_07.png", "Dino", "Architetto Francesco")
        == ""
    )
    items = [
        ClipartItem(f"signs/aiga_{name}.png", "AIGA_Symbol_Signs", None, [], "J")
        for name in ("bar", "taxi", "exit", "stairs")
    ] + [ClipartItem("signs/x.png", "Lone title", None, [], "J")]
    assert demo_clipart.name_collection_members(items) == 4
    assert [item.title for item in items] == [
        "AIGA_Symbol_Signs: bar",
        "AIGA_Symbol_Signs: taxi",
        "AIGA_Symbol_Signs: exit",
        "AIGA_Symbol_Signs: stairs",
        "Lone title",
    ]
    kept = demo_clipart.cap_per_key(items, lambda item: item.category, 2)
    assert [item.title for item in kept] == ["AIGA_Symbol_Signs: bar", "AIGA_Symbol_Signs: taxi"]
    assert slug("Signs & Symbols/Map_symbols") == "signs-symbols-map-symbols"


def emoji_test_concepts(folder: Path) -> list[demo_emoji.EmojiConcept]:
    path = folder / "emoji-test.txt"
    path.write_text(EMOJI_TEST, encoding="utf-8")
    return demo_emoji.read_emoji_test(str(path))


def test_emoji_test_parsing(tmp_path):
    concepts = emoji_test_concepts(tmp_path)
    assert [(c.key, c.subgroup, c.name) for c in concepts] == [
        ("1f600", "face-smiling", "grinning face"),
        ("263a-fe0f", "face-smiling", "smiling face"),
        ("1fae0", "face-smiling", "melting face"),
        ("1f44b", "hand-fingers-open", "waving hand"),
        ("1f468-200d-1f4bb", "person-role", "man technologist"),
    ]
    assert concepts[1].text == "\u263a\ufe0f"


@pytest.mark.skipif(not os.path.exists(demo_emoji.SYMBOLA_FONT), reason="fonts-symbola not installed")
def test_symbola_coverage_and_rendering(tmp_path):
    concepts = emoji_test_concepts(tmp_path)
    # Symbola 2.60 has U+1F600, U+263A and U+1F44B; not U+1FAE0 (Emoji 14); ZWJ sequences are skipped
    assert demo_emoji.attach_symbola(concepts) == 3
    assert [c.symbola_char for c in concepts] == ["\U0001f600", "\u263a", None, "\U0001f44b", None]
    face = demo_emoji.render_symbola("\U0001f600")
    assert face is not None and face.mode == "RGB" and face.size == demo_emoji.GLYPH_CANVAS
    pixels = np.asarray(face).astype(int)  # (128, 136, 3)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels.min() == 0 and (pixels[0] == 255).all() and (pixels[:, 0] == 255).all()
    ink = np.argwhere(pixels[..., 0] < 128)  # (N, 2) rows and columns of dark pixels
    height, width = ink.max(0) - ink.min(0) + 1
    assert 90 <= max(height, width) <= 128 and height <= 120
    center = (ink.max(0) + ink.min(0)) / 2
    assert abs(center[0] - 63.5) <= 2 and abs(center[1] - 67.5) <= 2

    def ink_side(char: str) -> int:
        dark = np.argwhere(np.asarray(demo_emoji.render_symbola(char))[..., 0] < 128)
        return int((dark.max(0) - dark.min(0)).max()) + 1

    assert ink_side("\u25aa") < ink_side("\u25fc") < ink_side("\u2b1b")  # small < medium < large square
    assert demo_emoji.render_symbola(" ") is None  # in the cmap, draws no ink


SOURCES = DemoSources()
HAVE_DATA = all(
    os.path.exists(p)
    for p in (
        SOURCES.clipart_root,
        SOURCES.emoji_test,
        SOURCES.noto_font,
        SOURCES.symbola_font,
        os.path.join(SOURCES.twemoji_dir, "emoji.json"),
        *SOURCES.cldr,
    )
)
needs_data = pytest.mark.skipif(
    not HAVE_DATA, reason="demo data not installed (bash scripts/install_demo_data.sh)"
)


@needs_data
def test_noto_glyph_renders():
    glyph = demo_emoji.render_noto("\U0001f600")
    assert glyph is not None and glyph.mode == "RGBA" and glyph.size == (136, 128)
    assert demo_emoji.render_noto("\U0010fffd") is None  # a private-use code point the font lacks


@pytest.fixture(scope="module")
def two_builds(demo_corpus, tmp_path_factory) -> tuple[Path, Path]:
    again = tmp_path_factory.mktemp("demo_b")
    build_demo_corpus(str(again), seed=0, max_clipart=50, max_emoji=25)  # the settings of demo_corpus
    return demo_corpus, again


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_data
def test_build_is_byte_identical(two_builds):
    a, b = (files_of(folder) for folder in two_builds)
    assert {"pins.parquet", "boards.parquet", "splits.json", "dataset.md", "contact_sheet.png"} <= set(a)
    assert a.keys() == b.keys()
    assert [name for name in a if a[name] != b[name]] == []


@needs_data
def test_small_corpus_contents(two_builds):
    out = two_builds[0]
    pins, report = load_pins(str(out / "pins.parquet"))
    assert report.problems == []
    edges, edge_report = load_edges(str(out / "boards.parquet"), pins.pin_ids)
    assert edge_report.problems == []
    sources = pins.extra["source"]
    assert 45 <= sources.count("openclipart") <= 50  # images over the pixel guard are dropped, and counted
    assert sources.count("noto") == 25 and sources.count("twemoji") == 25
    assert 15 <= sources.count("symbola") < 25  # whole subgroups: most concepts are one code point
    assert all(
        image == str(out / "images" / f"{pin_id}.png") for pin_id, image in zip(pins.pin_ids, pins.images)
    )
    assert set(edges.extra["board_kind"]) == {"category", "subgroup", "concept", "keyword"}
    for i, pin_id in enumerate(pins.pin_ids):
        assert pins.text(i, "title")
        if pin_id.startswith(("noto-", "tw-", "sym-")):
            assert pins.texts["queries"][i] and pins.texts["description"][i] is None
    board_of = {edges.board_ids[b]: m.tolist() for b, m in enumerate(edges.board_members())}
    assert min(len(m) for m in board_of.values()) >= 2
    concepts = {
        board[8:]: sorted(pins.pin_ids[i] for i in m)
        for board, m in board_of.items()
        if board[:8] == "concept-"
    }
    assert len(concepts) == 25
    for key, members in concepts.items():
        styles = [f"noto-{key}", f"sym-{key}", f"tw-{key}"]
        assert members == (styles if f"sym-{key}" in pins.pin_ids else styles[::2])
    assert sum(len(m) == 3 for m in concepts.values()) == sources.count("symbola")


@needs_data
def test_small_corpus_symbola_pins(two_builds):
    out = two_builds[0]
    pins, _ = load_pins(str(out / "pins.parquet"))
    edges, _ = load_edges(str(out / "boards.parquet"), pins.pin_ids)
    row = {pin_id: i for i, pin_id in enumerate(pins.pin_ids)}
    cmap = set(TTFont(SOURCES.symbola_font, lazy=True).getBestCmap())
    sym = [pin_id for pin_id in pins.pin_ids if pin_id.startswith("sym-")]
    for pin_id in (p for p in pins.pin_ids if p.startswith("noto-")):  # the font decides, nothing else
        codepoints = [int(cp, 16) for cp in pin_id[5:].split("-") if cp != "fe0f"]
        assert (f"sym-{pin_id[5:]}" in row) == (len(codepoints) == 1 and codepoints[0] in cmap)
    boards_of: dict[str, set[str]] = {}
    for p, b in zip(edges.pin_index.tolist(), edges.board_index.tolist()):
        boards_of.setdefault(pins.pin_ids[p], set()).add(edges.board_ids[b])
    for pin_id in sym:
        i, twin = row[pin_id], row["noto-" + pin_id[4:]]
        assert pins.extra["source"][i] == "symbola"
        for name in ("title", "queries", "annotations"):
            assert pins.texts[name][i] == pins.texts[name][twin]
        assert boards_of[pin_id] == boards_of[pins.pin_ids[twin]]  # subgroup, concept and keyword boards
        pixels = np.asarray(open_image(pins.images[i]))
        assert pixels.shape == (128, 136, 3) and (pixels.max(2) == pixels.min(2)).all()  # gray levels only
        assert pixels.min() == 0 and (pixels[0] == 255).all()
    assert "Symbola (fonts-symbola, by George Douros)" in (out / "dataset.md").read_text()


@needs_data
def test_small_corpus_splits(two_builds):
    out = two_builds[0]
    pins, _ = load_pins(str(out / "pins.parquet"), check_images=False)
    edges, _ = load_edges(str(out / "boards.parquet"), pins.pin_ids)
    splits = read_splits(str(out / "splits.json"))
    cold, val, held = (set(splits[k]) for k in ("cold_start_pins", "val_pins", "heldout_boards"))
    assert len(cold) == round(0.1 * len(pins)) and not cold & val and cold | val <= set(pins.pin_ids)
    assert held and held <= set(edges.board_ids)
    edge_pins = [pins.pin_ids[i] for i in edges.pin_index.tolist()]
    edge_boards = [edges.board_ids[b] for b in edges.board_index.tolist()]
    train = training_edge_mask(edge_pins, edge_boards, splits)
    train_boards = {b for b, keep in zip(edge_boards, train) if keep}
    train_pins = {p for p, keep in zip(edge_pins, train) if keep}
    assert not train_boards & held and not train_pins & (cold | val)
    for board in held:
        members = {p for p, b in zip(edge_pins, edge_boards) if b == board}
        assert len(members) >= 3 and len(members - cold - val) >= 2
    assert np.count_nonzero(~train) > 0
    assert "## Open Clip Art filters" in (out / "dataset.md").read_text()


def test_missing_sources_and_bad_arguments_are_clean_errors(tmp_path, capsys):
    with pytest.raises(
        UserError, match=r"demo data not installed, missing: /nonexistent/png, /nonexistent/svg"
    ):
        build_demo_corpus(str(tmp_path), sources=DemoSources(clipart_root="/nonexistent"))
    assert main(["data", "demo", "--out", str(tmp_path), "--max-clipart", "0"]) == 2
    assert "--max-clipart must be at least 1" in capsys.readouterr().err
