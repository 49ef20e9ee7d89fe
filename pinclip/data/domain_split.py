"""The domain-shift split: whole domains (e.g. top-level categories) held out, for test and for validation.

    pinclip data split --pins pins.parquet --boards boards.parquet --domain-column domain \
        --out splits_domain.json [--domain-frac 0.15] [--val-domain-frac 0.05]

Domains are visited in a seeded order; each goes whole to the test side (`cold_start_pins`) while it
fits under `domain_frac` of the pins, else to the validation side (`val_pins`) while it fits under
`val_domain_frac` (at least one domain each, when there are enough domains). Then every duplicate
group with a member on a held-out side goes wholly to that side (the test side first): a group that
spans a held-out domain and a kept one takes its kept-domain members out of training with it, so no
twin of a held-out pin is trained on. Those pins are counted in `config.twins_moved`.

The held-out boards are the boards of `heldout_kinds` whose pins all lie on one held-out side: those
of the validation side are `val_boards`. Settings can so be chosen on domain-shift validation cells
(`pinclip eval --run R --partition val --domain-shift`), whose domains the test never uses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from pinclip.cli import UserError
from pinclip.data.splits import board_kinds_of, held_out_groups


def domain_split_tables(pins, edges, groups, column: str, seed: int = 0, domain_frac: float = 0.15,
                        heldout_kinds: Collection[str] | None = None, val_domain_frac: float = 0.05) -> dict:
    """`make_domain_split` for loaded tables: the domain of each pin from its `column`, whole duplicate
    groups (`groups`, from `split_tables`), the boards' kinds from the edges table."""
    edge_pins = [pins.pin_ids[i] for i in edges.pin_index.tolist()]
    edge_boards = [edges.board_ids[b] for b in edges.board_index.tolist()]
    domains = {p: None if d is None else str(d) for p, d in zip(pins.pin_ids, pins.extra[column])}
    return make_domain_split(pins.pin_ids, zip(edge_pins, edge_boards), domains, seed, domain_frac,
                             val_domain_frac=val_domain_frac, heldout_kinds=heldout_kinds,
                             groups=dict(zip(pins.pin_ids, groups.group.tolist())), board_kinds=board_kinds_of(edges))


def _smallest_domain(known: Mapping[str, str], taken: set[str]) -> set[str]:
    """The pins of the smallest domain none of whose pins is in `taken` (empty when there is none)."""
    sizes: dict[str, list[str]] = defaultdict(list)
    for p, d in known.items():
        sizes[d].append(p)
    free = [sorted(m) for m in sizes.values() if not taken & set(m)]
    return set(min(free, key=lambda m: (len(m), m))) if free else set()


def held_out_domains(known: Mapping[str, str], n_test: int, n_val: int, rng: np.random.Generator
                     ) -> tuple[set[str], set[str]]:
    """(test, val) pin sets of whole domains; at least one test domain, and one validation domain when n_val > 0
    and two domains stay in training."""
    test, val = held_out_groups(sorted(known), known, n_test, n_val, rng)
    if not test:  # every domain is larger than the target: hold out the smallest
        test = _smallest_domain(known, val)
    if n_val and not val and len(set(known.values())) >= 3:
        val = _smallest_domain(known, test)
    return test, val


def close_over_groups(sides: Sequence[set[str]], groups: Mapping[str, object] | None) -> None:
    """Move every duplicate group with a member on a side wholly to the first such side (the sets change in
    place): its members leave training and every other side."""
    members: dict[object, set[str]] = defaultdict(set)
    for pin, key in (groups or {}).items():
        members[key].add(pin)
    for group in members.values():
        owner = next((side for side in sides if side & group), None)
        if owner is None:
            continue
        for side in sides:
            side -= group
        owner |= group


def make_domain_split(pin_ids: Sequence[str], edges: Iterable[tuple[str, str]], domains: Mapping[str, str | None],
                      seed: int = 0, domain_frac: float = 0.15, *, val_domain_frac: float = 0.05,
                      heldout_kinds: Collection[str] | None = None, groups: Mapping[str, object] | None = None,
                      board_kinds: Mapping[str, str | None] | None = None, min_board_pins: int = 3) -> dict:
    """A domain-shift split (module docstring): splits.json content with test and validation domains."""
    if not 0.0 < domain_frac < 1.0 or not 0.0 <= val_domain_frac < 1.0 or domain_frac + val_domain_frac >= 1.0:
        raise UserError(f"domain_frac must be in (0, 1) and val_domain_frac in [0, 1), below 1 together; got "
                        f"{domain_frac} and {val_domain_frac}")
    pins = sorted(set(pin_ids))
    known = {p: d for p, d in domains.items() if d}
    if len(set(known.values())) < 2:
        raise UserError("a domain-shift split needs a domain column with at least two domains")
    rng = np.random.default_rng([seed, 11])
    test, val = held_out_domains(known, round(domain_frac * len(pins)), round(val_domain_frac * len(pins)), rng)
    test_domains, val_domains = sorted({known[p] for p in test}), sorted({known[p] for p in val})
    before = test | val
    close_over_groups([test, val], groups)
    moved = len((test | val) - before)
    members: dict[str, set[str]] = defaultdict(set)
    for pin_id, board_id in edges:
        members[board_id].add(pin_id)
    kinds = set(heldout_kinds) if heldout_kinds is not None else None
    eligible = {b: m for b, m in members.items()
                if len(m) >= min_board_pins and (kinds is None or (board_kinds or {}).get(b) in kinds)}
    test_boards = sorted(b for b, m in eligible.items() if m <= test)
    val_boards = sorted(b for b, m in eligible.items() if m <= val)
    duplicate = defaultdict(list)
    for pin in pins:
        if groups and pin in groups:
            duplicate[groups[pin]].append(pin)
    return {"seed": int(seed), "cold_start_pins": sorted(test), "val_pins": sorted(val),
            "heldout_boards": sorted(test_boards + val_boards), "val_boards": val_boards,
            "duplicate_groups": sorted(g for g in duplicate.values() if len(g) > 1),
            "config": {"kind": "domain_shift", "domain_frac": domain_frac, "val_domain_frac": val_domain_frac,
                       "heldout_kinds": sorted(kinds) if kinds is not None else None,
                       "domains": test_domains, "val_domains": val_domains, "twins_moved": moved}}
