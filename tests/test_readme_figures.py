"""Every figure the README quotes from a measurement is in the committed results of the run it names.

A README passage that quotes results is fenced by `<!-- figures: PATH -->` ... `<!-- /figures -->`, PATH a
committed results file (bench/results.md, results/report.md, ...). Every number in the passage must occur in
that file: a figure typed by hand, rounded differently or left from an older run fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"<!-- figures: (?P<path>\S+) -->(?P<body>.*?)<!-- /figures -->", re.S)
NUMBER = re.compile(r"(?<![\w.])[-+−]?\d[\d,]*(?:\.\d+)?")


def numbers(text: str) -> set[str]:
    """The numbers of a text, signs and thousands separators dropped ('+0.012' -> '0.012', '7,009' -> '7009')."""
    return {m.group().lstrip("+-−").replace(",", "") for m in NUMBER.finditer(text)}


def fenced_passages(readme: str) -> list[tuple[str, str]]:
    return [(m["path"], m["body"]) for m in FENCE.finditer(readme)]


def missing_figures(readme: str, root: Path) -> dict[str, list[str]]:
    """{results file: [numbers of its passages that it does not contain]} (a missing file: ['file not found'])."""
    out: dict[str, list[str]] = {}
    for path, body in fenced_passages(readme):
        source = root / path
        if not source.is_file():
            out[path] = ["file not found"]
            continue
        absent = sorted(numbers(body) - numbers(source.read_text()))
        if absent:
            out.setdefault(path, []).extend(absent)
    return out


def test_the_readme_quotes_its_figures_from_committed_results():
    readme = (REPO / "README.md").read_text()
    passages = fenced_passages(readme)
    assert passages, "the README's measured figures are fenced by <!-- figures: PATH -->"
    assert missing_figures(readme, REPO) == {}


@pytest.mark.parametrize("body, source, absent", [
    ("1.42x (1.30-1.55x), 7,009 texts/s", "ratio 1.42x min 1.30 max 1.55; 7009 texts/s", []),
    ("0.652 ±0.002 [+0.004, +0.030]", "0.652 0.002 0.004 0.030", []),
    ("1.79× its int8 path", "1.57x", ["1.79"]),
])
def test_a_figure_not_in_the_results_file_is_found(tmp_path, body, source, absent):
    (tmp_path / "r.md").write_text(source)
    readme = f"before 9.99 <!-- figures: r.md -->{body}<!-- /figures --> after 8.88"
    assert missing_figures(readme, tmp_path) == ({"r.md": absent} if absent else {})
    assert missing_figures("<!-- figures: nope.md -->1<!-- /figures -->", tmp_path) == {"nope.md": ["file not found"]}
