"""pinclip.data.groups by hand (normalized text, near-duplicate images, links, components, the audit), then the
split invariants on a small demo corpus: no cold-start or validation pin has a twin among the training pins."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_data_demo import needs_data

from pinclip.data.groups import (
    DuplicateConfig,
    ImageSignatures,
    audit_lines,
    find_groups,
    image_signature,
    image_signatures,
    near_duplicate_pairs,
    normalize_text,
    text_key,
)
from pinclip.data.tables import PinsTable, load_edges, load_pins


def test_normalize_text():
    assert normalize_text("Pear!") == "pear"
    assert normalize_text("  Red,   APPLE -- ripe ") == "red apple ripe"
    assert normalize_text("snake_case_title") == "snake case title"
    assert normalize_text("Ｆｕｌｌ－ｗｉｄｔｈ") == "full width"  # NFKC folds full-width forms
    assert normalize_text("Café Crème") == "café crème"  # letters keep their accents
    assert normalize_text("?!...") == ""


def test_text_key_is_the_title_else_the_first_present_field():
    texts = {"title": ["Red Apple!", None, "  ", None], "description": [None, "A Pear.", "Plum", None],
             "queries": [None, None, None, ["Fig", "fruit"]]}
    assert [text_key(texts, i) for i in range(4)] == ["red apple", "a pear", "plum", "fig fruit"]
    assert text_key({"title": [None]}, 0) == ""


def png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def drawing(color: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (128, 128), "white")
    d = ImageDraw.Draw(img)
    d.ellipse([10, 10, 80, 80], fill=color)
    d.rectangle([60, 70, 120, 118], fill=color)
    d.polygon([(100, 5), (125, 50), (75, 40)], fill=color)
    return img


def bar() -> Image.Image:
    img = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(img).rectangle([20, 20, 60, 110], fill=(200, 30, 30))
    return img


RED = drawing((200, 30, 30))
IMAGES = {
    "red": png(RED),
    "red small": png(RED.resize((90, 90), Image.Resampling.BILINEAR)),  # a resized copy: a near-duplicate
    "blue": png(drawing((30, 60, 200))),  # the same drawing recoloured: same pHash, not a duplicate
    "bar": png(bar()),  # another drawing
}


def test_a_resized_copy_is_a_near_duplicate_and_a_recoloured_copy_is_not():
    names = list(IMAGES)
    sig = image_signatures([IMAGES[n] for n in names], progress=False)
    hashes = {n: int(h) for n, h in zip(names, sig.hashes)}
    assert bin(hashes["red"] ^ hashes["blue"]).count("1") <= 6  # pHash alone would call them duplicates
    pairs = near_duplicate_pairs(sig, DuplicateConfig())
    assert [(names[a], names[b]) for a, b in pairs.tolist()] == [("red", "red small")]
    colour_blind = near_duplicate_pairs(sig, DuplicateConfig(max_color_distance=255))
    assert {(names[a], names[b]) for a, b in colour_blind.tolist()} >= {("red", "red small"), ("red", "blue")}
    assert image_signature(b"not an image") is None


def test_hash_radius_is_exact():
    """Hashes that differ in exactly 6 bits pair up; 7 bits do not (identical colour thumbnails)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=3, dtype=np.uint64) * np.uint64(2)
    flip = lambda bits: np.uint64(sum(1 << b for b in bits))  # noqa: E731
    hashes = np.array([base[0], base[0] ^ flip([0, 9, 18, 27, 36, 63]), base[1], base[1] ^ flip(range(7)),
                       base[2]], np.uint64)
    sig = ImageSignatures(hashes, np.zeros((5, 192), np.uint8), np.array([True, True, True, True, False]))
    assert near_duplicate_pairs(sig, DuplicateConfig()).tolist() == [[0, 1]]
    assert near_duplicate_pairs(sig, DuplicateConfig(max_hash_distance=7)).tolist() == [[0, 1], [2, 3]]


def hand_pins() -> PinsTable:
    """0-1 share a normalized title, 0-2 a near-duplicate image, 7's description is 0's title, 4-5 a group_id;
    3 is the recoloured drawing; 6 has no image."""
    return PinsTable(
        path="hand", pin_ids=[f"p{i}" for i in range(8)],
        images=[IMAGES["red"], IMAGES["bar"], IMAGES["red small"], IMAGES["blue"], png(drawing((0, 0, 0))),
                png(Image.new("RGB", (64, 64), (0, 160, 0))), None, png(Image.new("RGB", (64, 64), "gray"))],
        texts={"title": ["Red Apple", "red apple!", "Pear", "Car", None, "Kitten", "Dog", None],
               "description": [None, None, None, None, "Cat", None, None, "Red  apple"]},
        extra={"group_id": [None, None, None, None, "g1", "g1", "", None]})


def partition(labels: np.ndarray) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(labels.tolist()):
        groups.setdefault(g, []).append(i)
    return sorted(groups.values())


def test_groups_are_connected_components_of_every_link():
    pins = hand_pins()
    groups = find_groups(pins, progress=False)
    assert partition(groups.group) == [[0, 1, 2, 7], [3], [4, 5], [6]]
    assert dict(groups.links) == {"group_id": 1, "text": 2, "image": 1} and groups.images_hashed == 7
    assert [m.tolist() for m in groups.members()] == [[0, 1, 2, 7], [4, 5]]
    assert sorted(groups.sizes.tolist()) == [1, 1, 2, 4]
    no_images = find_groups(pins, check_images=False)
    assert partition(no_images.group) == [[0, 1, 7], [2], [3], [4, 5], [6]] and no_images.images_hashed == 0


def test_audit_lines():
    pins = hand_pins()
    assert audit_lines(find_groups(pins, progress=False), pins) == [
        "duplicate groups: 2 groups of 2 or more pins hold 6 of 8 pins (sizes 2: 1, 4: 1)",
        "  links: same group_id 1, same normalized text 2, near-duplicate image 1 (pHash within 6 bits and "
        "colour within 8; 7 images hashed)",
        "  e.g. 4 pins: red apple | red apple | pear | red apple",
        "  e.g. 2 pins: cat | kitten",
    ]
    lines = audit_lines(find_groups(pins, check_images=False), pins)
    assert "near-duplicate image 0 (not checked; 0 images hashed)" in lines[1]


@pytest.fixture(scope="module")
def demo(demo_corpus):
    """The demo corpus's tables and splits, and every pair of near-duplicate images found pair by pair."""
    from pinclip.data.splits import read_splits

    pins, _ = load_pins(str(demo_corpus / "pins.parquet"), check_images=False)
    edges, _ = load_edges(str(demo_corpus / "boards.parquet"), pins.pin_ids)
    sig = image_signatures(pins.images, progress=False)
    bits = np.array([[bin(int(a) ^ int(b)).count("1") for b in sig.hashes] for a in sig.hashes])  # (P, P)
    colour = np.abs(sig.thumbs[:, None].astype(int) - sig.thumbs[None].astype(int)).mean(-1)  # (P, P)
    close = (bits <= 6) & (colour <= 8) & sig.ok[:, None] & sig.ok[None]
    return pins, edges, read_splits(str(demo_corpus / "splits.json")), close, sig


@needs_data
def test_multi_index_hashing_finds_every_pair_the_brute_force_finds(demo):
    pins, _, _, close, sig = demo
    brute = {(a, b) for a, b in zip(*np.nonzero(np.triu(close, 1)))}
    assert {tuple(p) for p in near_duplicate_pairs(sig, DuplicateConfig()).tolist()} == brute


@needs_data
def test_no_cold_or_validation_pin_has_a_twin_in_training(demo):
    pins, _, splits, close, _ = demo
    side = {p: "train" for p in pins.pin_ids} | {p: "cold" for p in splits["cold_start_pins"]} \
        | {p: "val" for p in splits["val_pins"]}
    sides = np.array([side[p] for p in pins.pin_ids])
    keys = np.array([text_key(pins.texts, i) for i in range(len(pins))])
    held = np.flatnonzero(sides != "train")
    twins_held_together = 0
    for i in held:
        same_text = (keys == keys[i]) & (keys != "")
        assert not (same_text & (sides == "train")).any(), pins.pin_ids[i]
        assert not (close[i] & (sides == "train")).any(), pins.pin_ids[i]
        assert (sides[same_text | close[i]] == sides[i]).all()  # not split between cold and validation either
        twins_held_together += int(same_text.sum() > 1)
    assert twins_held_together > 0  # the check has twins to look at
    concept = pins.extra["group_id"]
    for value in {v for v in concept if v}:
        members = [i for i, v in enumerate(concept) if v == value]
        assert len(members) >= 2 and len({sides[i] for i in members}) == 1, value  # every emoji style together
    assert {len(g) for g in splits["duplicate_groups"]} >= {2, 3}


@needs_data
def test_only_curated_boards_are_held_out(demo):
    _, edges, splits, _, _ = demo
    kind = {edges.board_ids[b]: k for b, k in zip(edges.board_index.tolist(), edges.extra["board_kind"])}
    assert {kind[b] for b in splits["heldout_boards"]} <= {"category", "subgroup"}
    assert {"keyword", "concept"} <= set(kind.values())  # they exist, and stay in training
    assert splits["val_boards"] and set(splits["val_boards"]) < set(splits["heldout_boards"])
    assert splits["config"]["heldout_kinds"] == ["category", "subgroup"]


def write_jsonl_tables(folder) -> tuple[str, str]:
    """Ten pins: emoji-like twins by group_id, a title shared by two more, and curated and keyword boards."""
    import json

    titles = ["cat", "cat face", "dog", "Dog!", "owl", "fox", "bee", "ant", "elk", "yak"]
    group_id = ["c", "c", None, None, None, None, None, None, None, None]
    pins = [{"pin_id": f"p{i}", "title": t, "group_id": g} for i, (t, g) in enumerate(zip(titles, group_id))]
    edges = [{"pin_id": f"p{i}", "board_id": "animals", "board_kind": "category"} for i in range(10)] + \
        [{"pin_id": f"p{i}", "board_id": "kw-d", "board_kind": "keyword"} for i in range(2, 6)]
    (folder / "pins.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pins))
    (folder / "boards.jsonl").write_text("".join(json.dumps(e) + "\n" for e in edges))
    return str(folder / "pins.jsonl"), str(folder / "boards.jsonl")


def test_validate_command_prints_the_dedup_audit(tmp_path, capsys):
    from pinclip.cli import main

    pins, boards = write_jsonl_tables(tmp_path)
    assert main(["data", "validate", "--pins", pins, "--boards", boards, "--no-image-check"]) == 0
    out = capsys.readouterr().out
    assert "duplicate groups: 2 groups of 2 or more pins hold 4 of 10 pins (sizes 2: 2)" in out
    assert "links: same group_id 1, same normalized text 1, near-duplicate image 0 (not checked" in out
    assert "e.g. 2 pins: cat | cat face" in out and "e.g. 2 pins: dog | dog" in out


def test_split_command_holds_out_groups_whole_and_only_the_named_kinds(tmp_path, capsys):
    import json

    from pinclip.cli import main

    pins, boards = write_jsonl_tables(tmp_path)
    out = tmp_path / "splits.json"
    argv = ["data", "split", "--pins", pins, "--boards", boards, "--out", str(out), "--no-image-check",
            "--cold-frac", "0.2", "--val-frac", "0.2", "--heldout-board-frac", "0.99"]
    for seed in range(6):
        assert main([*argv, "--seed", str(seed), "--heldout-kinds", "category"]) == 0
        splits = json.loads(out.read_text())
        held = set(splits["cold_start_pins"]) | set(splits["val_pins"])
        for pair in ({"p0", "p1"}, {"p2", "p3"}):
            assert pair <= set(splits["cold_start_pins"]) or pair <= set(splits["val_pins"]) or not pair & held
        assert splits["heldout_boards"] == ["animals"] and splits["duplicate_groups"] == [["p0", "p1"], ["p2", "p3"]]
    capsys.readouterr()
    assert main([*argv, "--heldout-kinds", "subgroup"]) == 2
    err = capsys.readouterr().err
    assert "held-out board kinds ['subgroup'] are not in the boards table's board_kind column" in err
    assert "kinds present: category, keyword" in err
