"""Splits: sizes, disjointness, board eligibility, determinism, the training-graph mask, splits.json."""

from __future__ import annotations

import json

import pytest

from pinclip.cli import UserError, main
from pinclip.data.splits import make_splits, partition_boards, read_splits, training_edge_mask, write_splits

PINS = [f"p{i:02d}" for i in range(40)]
EDGES = (
    [(p, "big") for p in PINS[:20]]  # 20 pins
    + [(p, "mid") for p in PINS[20:26]]  # 6 pins
    + [(p, "pair") for p in PINS[30:32]]  # 2 pins: never eligible
    + [(p, f"small{i}") for i in range(8) for p in PINS[i * 4 : i * 4 + 3]]  # 8 boards of 3 pins
)


def test_sizes_and_disjointness():
    splits = make_splits(PINS, EDGES, seed=3, cold_frac=0.1, val_frac=0.05, heldout_board_frac=0.5)
    assert len(splits["cold_start_pins"]) == 4  # round(0.1 * 40)
    assert len(splits["val_pins"]) == 2  # round(0.05 * 40)
    assert not set(splits["cold_start_pins"]) & set(splits["val_pins"])
    assert set(splits["cold_start_pins"]) | set(splits["val_pins"]) <= set(PINS)
    assert splits["cold_start_pins"] == sorted(splits["cold_start_pins"])
    assert splits["seed"] == 3


def test_only_eligible_boards_are_held_out():
    for seed in range(10):
        splits = make_splits(PINS, EDGES, seed=seed, cold_frac=0.2, val_frac=0.05, heldout_board_frac=0.5)
        held = set(splits["cold_start_pins"]) | set(splits["val_pins"])
        members: dict[str, set[str]] = {}
        for pin, board in EDGES:
            members.setdefault(board, set()).add(pin)
        eligible = [b for b, m in members.items() if len(m) >= 3 and len(m - held) >= 2]
        assert "pair" not in splits["heldout_boards"]
        assert set(splits["heldout_boards"]) <= set(eligible)
        assert len(splits["heldout_boards"]) == round(0.5 * len(eligible))


def test_deterministic_given_seed_and_input_order():
    a = make_splits(PINS, EDGES, seed=7)
    b = make_splits(list(reversed(PINS)), list(reversed(EDGES)), seed=7)
    assert a == b
    outcomes = {tuple(make_splits(PINS, EDGES, seed=s)["cold_start_pins"]) for s in range(5)}
    assert len(outcomes) > 1


def test_training_edge_mask_by_hand():
    splits = {"seed": 0, "cold_start_pins": ["c"], "val_pins": ["v"], "heldout_boards": ["H"]}
    edge_pins = ["a", "c", "v", "a", "b", "b"]
    edge_boards = ["B", "B", "B", "H", "H", "C"]
    assert training_edge_mask(edge_pins, edge_boards, splits).tolist() == [
        True,
        False,
        False,
        False,
        False,
        True,
    ]


def test_bad_fractions_are_user_errors():
    with pytest.raises(UserError, match=r"cold_frac must be in \[0, 1\), got 1.5"):
        make_splits(PINS, EDGES, cold_frac=1.5)
    with pytest.raises(UserError, match="cold_frac \\+ val_frac must be below 1"):
        make_splits(PINS, EDGES, cold_frac=0.6, val_frac=0.5)


def test_write_and_read_round_trip(tmp_path):
    splits = make_splits(PINS, EDGES, seed=1)
    path = tmp_path / "splits.json"
    write_splits(splits, str(path))
    first = path.read_bytes()
    write_splits(make_splits(PINS, EDGES, seed=1), str(path))
    assert path.read_bytes() == first
    assert read_splits(str(path)) == splits
    assert list(json.loads(first)) == ["seed", "cold_start_pins", "val_pins", "heldout_boards", "val_boards",
                                       "duplicate_groups", "config"]
    assert [p.name for p in tmp_path.iterdir()] == ["splits.json"]  # no temp file left


def test_read_splits_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"cold_start_pins": [1], "val_pins": [], "heldout_boards": []}')
    with pytest.raises(UserError, match="bad.json: key 'cold_start_pins' must be a list of strings"):
        read_splits(str(bad))
    bad.write_text("{nope")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        read_splits(str(bad))


def test_split_command(tmp_path, capsys):
    pins = tmp_path / "pins.jsonl"
    boards = tmp_path / "boards.jsonl"
    pins.write_text("".join(json.dumps({"pin_id": p, "title": p}) + "\n" for p in PINS))
    boards.write_text("".join(json.dumps({"pin_id": p, "board_id": b}) + "\n" for p, b in EDGES))
    out = tmp_path / "s.json"
    code = main(
        ["data", "split", "--pins", str(pins), "--boards", str(boards), "--out", str(out), "--seed", "2"]
    )
    assert code == 0
    written, expected = read_splits(str(out)), make_splits(PINS, EDGES, seed=2)
    assert written.pop("config")["duplicates"]["max_hash_distance"] == 6
    assert written == {k: v for k, v in expected.items() if k != "config"}
    printed = capsys.readouterr().out
    assert "34 train pins, 2 val pins, 4 cold-start pins" in printed
    assert "board reachability: of the member pairs of " in printed
    assert (
        main(
            [
                "data",
                "split",
                "--pins",
                str(pins),
                "--boards",
                str(boards),
                "--out",
                str(out),
                "--cold-frac",
                "2",
            ]
        )
        == 2
    )


def test_groups_are_held_out_whole_and_fill_up_to_the_target():
    groups = {p: i // 5 for i, p in enumerate(PINS)}  # 8 groups of 5 pins
    for seed in range(8):
        splits = make_splits(PINS, EDGES, seed=seed, cold_frac=0.25, val_frac=0.125, groups=groups)
        cold, val = set(splits["cold_start_pins"]), set(splits["val_pins"])
        assert len(cold) == 10 and len(val) == 5  # two groups and one group: exactly the targets
        for g in set(groups.values()):
            members = {p for p in PINS if groups[p] == g}
            assert members <= cold or members <= val or not members & (cold | val)
        assert len(splits["duplicate_groups"]) == 8


def test_a_group_larger_than_the_target_is_never_held_out():
    groups = {p: (0 if i < 30 else i) for i, p in enumerate(PINS)}  # one group of 30, ten singletons
    splits = make_splits(PINS, EDGES, seed=0, cold_frac=0.1, val_frac=0.05, groups=groups)
    assert not set(splits["cold_start_pins"]) & set(PINS[:30])
    assert len(splits["cold_start_pins"]) == 4 and len(splits["val_pins"]) == 2


def test_only_boards_of_the_heldout_kinds_are_held_out_and_val_boards_are_a_share():
    kinds = {b: ("curated" if b.startswith("small") else "keyword") for _, b in EDGES}
    for seed in range(5):
        splits = make_splits(PINS, EDGES, seed=seed, heldout_board_frac=0.5, val_board_frac=0.5,
                             heldout_kinds=["curated"], board_kinds=kinds)
        assert splits["heldout_boards"] and all(b.startswith("small") for b in splits["heldout_boards"])
        assert set(splits["val_boards"]) < set(splits["heldout_boards"])
        assert len(splits["val_boards"]) == round(0.5 * len(splits["heldout_boards"]))
        assert set(partition_boards(splits, "val")) == set(splits["val_boards"])
        assert set(partition_boards(splits, "test")) == set(splits["heldout_boards"]) - set(splits["val_boards"])


def test_splits_without_val_boards_judge_both_partitions_on_every_heldout_board():
    old = {"cold_start_pins": [], "val_pins": [], "heldout_boards": ["a", "b"]}
    assert partition_boards(old, "val") == partition_boards(old, "test") == ["a", "b"]


def test_read_splits_checks_the_optional_keys(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text('{"cold_start_pins": [], "val_pins": [], "heldout_boards": [], "val_boards": "b1"}')
    with pytest.raises(UserError, match="key 'val_boards' must be a list of strings"):
        read_splits(str(bad))
    bad.write_text('{"cold_start_pins": [], "val_pins": [], "heldout_boards": [], "duplicate_groups": [[1]]}')
    with pytest.raises(UserError, match="duplicate_groups"):
        read_splits(str(bad))


def test_domain_split_holds_whole_domains_and_only_their_boards_out(catalog, tmp_path, capsys):
    out = tmp_path / "splits_domain.json"
    argv = ["data", "split", "--pins", str(catalog["pins"]), "--boards", str(catalog["boards"]), "--out", str(out),
            "--domain-column", "domain", "--domain-frac", "0.3"]
    assert main(argv) == 0
    splits = read_splits(out)
    cold = set(splits["cold_start_pins"])
    shapes = {pin.split("-")[1] for pin in cold}  # the synthetic domain is the shape
    assert cold and {p for p in _synthetic_ids() if p.split("-")[1] in shapes} == cold  # whole domains, nothing else
    test_boards = set(splits["heldout_boards"]) - set(splits["val_boards"])
    assert test_boards and all(b.split("-")[1] in shapes for b in test_boards)  # boards lying wholly in them
    val = set(splits["val_pins"])  # 0.05 of 72 pins fits no domain of 18: the smallest other one
    val_shapes = {pin.split("-")[1] for pin in val}
    assert len(val_shapes) == 1 and not val_shapes & shapes
    assert {p for p in _synthetic_ids() if p.split("-")[1] in val_shapes} == val
    assert splits["val_boards"] and all(b.split("-")[1] in val_shapes for b in splits["val_boards"])
    assert set(splits["val_boards"]) < set(splits["heldout_boards"])
    assert main([*argv[:-4], "--domain-column", "nope"]) == 2
    assert "no column 'nope' for --domain-column" in capsys.readouterr().err


def _synthetic_ids() -> list[str]:
    from synthetic import COLORS, SHAPES

    return [f"{c}-{s}-{k}" for c in COLORS for s in SHAPES for k in range(3)]


def _many_boards(n_boards: int, kind_of=lambda b: "curated") -> tuple[list[str], list[tuple[str, str]], dict]:
    """n_boards boards of 4 pins each over 400 pins (every board eligible), and their kinds."""
    pins = [f"q{i:03d}" for i in range(400)]
    edges = [(pins[(4 * b + k) % 400], f"b{b:03d}") for b in range(n_boards) for k in range(4)]
    return pins, edges, {f"b{b:03d}": kind_of(b) for b in range(n_boards)}


def test_the_heldout_share_is_raised_for_30_test_boards_up_to_a_cap():
    from pinclip.data.splits import SplitConfig, heldout_board_count

    config = SplitConfig()  # 15% held out, a quarter of them for validation
    assert heldout_board_count(1000, config) == 150  # the share already gives 112 test boards
    assert heldout_board_count(120, config) == 40  # ceil(30 / 0.75): 30 test boards, not 13
    assert heldout_board_count(50, config) == 20  # at most 40% of the eligible boards
    assert heldout_board_count(50, SplitConfig(heldout_board_frac=0.0)) == 0  # asked for none
    pins, edges, kinds = _many_boards(120)
    splits = make_splits(pins, edges, seed=0, cold_frac=0.0, val_frac=0.0, board_kinds=kinds)
    assert len(partition_boards(splits, "test")) == 30


def test_text_defined_kinds_are_held_out_only_when_asked():
    from pinclip.data.splits import split_warnings

    pins, edges, kinds = _many_boards(200, lambda b: "keyword" if b % 2 else "category")
    splits = make_splits(pins, edges, seed=0, board_kinds=kinds)
    assert splits["heldout_boards"] and all(kinds[b] == "category" for b in splits["heldout_boards"])
    assert any("keyword are not held out" in w for w in split_warnings(splits, kinds))
    asked = make_splits(pins, edges, seed=0, board_kinds=kinds, heldout_kinds=["keyword"])
    assert asked["heldout_boards"] and all(kinds[b] == "keyword" for b in asked["heldout_boards"])
    assert any("holding out text-defined board kinds keyword as asked" in w for w in split_warnings(asked, kinds))


def test_a_catalog_with_too_few_boards_is_told_so(tmp_path, capsys):
    pins = tmp_path / "pins.jsonl"
    boards = tmp_path / "boards.jsonl"
    pins.write_text("".join(json.dumps({"pin_id": p, "title": p}) + "\n" for p in PINS))
    boards.write_text("".join(json.dumps({"pin_id": p, "board_id": b}) + "\n" for p, b in EDGES))
    assert main(["data", "split", "--pins", str(pins), "--boards", str(boards), "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "warning: only 3 held-out test boards (Search queries per split; 30 wanted)" in out


# Domains A (a1..a3), B (b1..b3) and C (c1..c6); a1 and c1 are twins (one duplicate group). With a target of 3
# pins for test and 3 for validation, A and B are held out whole (one each, in seeded order) and C, too large,
# stays in training -- all but c1, which would have crossed as the twin of a held-out pin.
DOMAIN_PINS = ["a1", "a2", "a3", "b1", "b2", "b3", *(f"c{i}" for i in range(1, 7))]
DOMAINS = {p: p[0].upper() for p in DOMAIN_PINS}
DOMAIN_EDGES = [(p, "boardA") for p in ("a1", "a2", "a3")] + [(p, "boardB") for p in ("b1", "b2", "b3")] + \
    [(p, "boardC") for p in ("c1", "c2", "c3")] + [(p, "mixed") for p in ("a2", "c2", "c3")]


def test_domain_split_keeps_a_twin_of_a_held_out_pin_out_of_training():
    from pinclip.data.domain_split import make_domain_split

    groups = {"a1": "g", "c1": "g"}
    for seed in range(4):
        splits = make_domain_split(DOMAIN_PINS, DOMAIN_EDGES, DOMAINS, seed, domain_frac=0.25, val_domain_frac=0.25,
                                   groups=groups)
        test, val = set(splits["cold_start_pins"]), set(splits["val_pins"])
        a_side, b_side = (test, val) if "a1" in test else (val, test)
        assert a_side == {"a1", "a2", "a3", "c1"} and b_side == {"b1", "b2", "b3"}  # c1 follows its twin a1
        assert splits["config"]["twins_moved"] == 1
        assert {splits["config"]["domains"][0], splits["config"]["val_domains"][0]} == {"A", "B"}
        assert splits["heldout_boards"] == ["boardA", "boardB"]  # boardC and mixed keep training pins
        assert splits["val_boards"] == (["boardA"] if a_side is val else ["boardB"])
    without = make_domain_split(DOMAIN_PINS, DOMAIN_EDGES, DOMAINS, 0, domain_frac=0.25, val_domain_frac=0.25)
    assert "c1" not in set(without["cold_start_pins"]) | set(without["val_pins"])  # the twin would have trained
    assert without["config"]["twins_moved"] == 0


def test_a_group_on_both_held_out_sides_goes_to_the_first():
    from pinclip.data.domain_split import close_over_groups

    test, val = {"a1", "x"}, {"b1", "y"}
    close_over_groups([test, val], {"x": 1, "y": 1, "z": 1, "b1": 2})
    assert test == {"a1", "x", "y", "z"} and val == {"b1"}
