"""Checks of a whole table, beyond one cell: what says the input is wrong as a whole, with the fix.

    check_image_failures   most images unusable: paths relative to another folder (fatal)
    check_unknown_pins     many edges naming pins the pins table lacks, ids differing only by case
    note_comma_lists       csv list cells written with commas (read as one item each)

Called by pinclip.data.tables while loading; each adds its finding to the loading Report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pinclip.data.tables import Records, Report

MAX_IMAGE_FAILURE_SHARE = 0.5  # more unusable images than this share of those given: fatal
MAX_DANGLING_EDGE_SHARE = 0.05  # more edges naming unknown pins than this share: fatal


def check_image_failures(records: Records, given: int, failed: int, table_dir: str, report: Report) -> None:
    """Fatal when most images given are unusable: the paths are wrong, and training would go on without them."""
    if failed == 0 or failed <= MAX_IMAGE_FAILURE_SHARE * given or (given < 10 and failed < given):
        return
    first = next(p for p in report.problems if p.skipped == "image")
    report.fatal(records.name, None, "image",
                 f"{failed} of {given} images could not be used (first: row {first.row}, {first.message}); image paths "
                 f"are read relative to the pins table's folder ({table_dir}): fix the paths (or the table's place), "
                 "or leave the image column out for a text-only catalog")


def check_unknown_pins(records: Records, unknown: int, case_only: list[tuple[str, str]], report: Report) -> None:
    """One line about the edges naming unknown pins when they are many or differ from known ids only by case;
    fatal above MAX_DANGLING_EDGE_SHARE of the edges (a handful of unknown pins stays a reported skip)."""
    if unknown < 10 and not case_only:
        return
    share = unknown / max(1, len(records.rows))
    message = f"{unknown} of {len(records.rows)} edges ({100 * share:.1f}%) name a pin_id the pins table lacks"
    if case_only:
        message += (f"; {len(case_only)} of them differ from a pin_id only by case (e.g. '{case_only[0][0]}' vs "
                    f"'{case_only[0][1]}'): ids are compared exactly, write them the same way in both tables")
    if unknown >= 10 and share > MAX_DANGLING_EDGE_SHARE:
        report.fatal(records.name, None, "pin_id", f"{message} (more than {100 * MAX_DANGLING_EDGE_SHARE:.0f}% of the "
                     "edges: the two tables do not use the same ids)")
    else:
        report.note(records.name, None, "pin_id", message)


def note_comma_lists(records: Records, column: str, values: list, report: Report) -> None:
    """One note for the csv list cells that hold commas but no '|': each is read as one item."""
    rows = [row for row, v in enumerate(values, start=1)
            if isinstance(v, str) and "," in v and "|" not in v and not v.lstrip().startswith("[")]
    if rows:
        report.note(records.name, rows[0], column,
                    f"{len(rows)} cell(s) of this list column hold commas but no '|' (first: {values[rows[0] - 1]!r}); "
                    "each is read as ONE item: in csv, separate list items with '|' (a|b|c) or write a JSON list")
