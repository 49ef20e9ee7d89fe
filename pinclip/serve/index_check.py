"""`pinclip index verify` and `pinclip index repair`: check every checksum of an index folder, salvage a damaged one.

    pinclip index verify --index runs/demo/index
    pinclip index repair --index runs/demo/index --out runs/demo/index-repaired

verify reads the manifest, checks the sha256 of every snapshot file it names (index.faiss,
ids.parquet, index.json, cards.parquet), loads the snapshot, and reads every record of every write
log, checking each record's crc32. A torn tail (a last record cut short by a crash: never
acknowledged, cut when the folder is next opened) is reported as a note; anything else is damage,
and the command exits 1. It takes no lock and changes nothing.

repair never writes into the damaged folder: it loads what is readable (the snapshot's vectors, its
pin cards if they read, and every log record whose checksum holds, skipping a bad stretch to the
next good record) into a new index folder `--out`, and reports what was dropped. The snapshot's
vectors are the one part it cannot do without: if index.faiss or ids.parquet cannot be read, rebuild
the index from its embeddings (`pinclip index build`) and replay nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pinclip.serve.embed import sha256_file
from pinclip.serve.index import PinIndex, PinIndexError
from pinclip.serve.index_folder import CARDS_FILE, apply_op, read_cards, read_manifest
from pinclip.serve.wal import scan_log


@dataclass
class Finding:
    where: str  # a file in the folder, with a byte range for a log record
    problem: str
    damage: bool  # False: a note (a torn tail, a manifest without checksums)


@dataclass
class FolderReport:
    findings: list[Finding] = field(default_factory=list)
    records: int = 0  # good log records read
    pins: int | None = None  # live pins after replay (verify) or in the repaired folder (repair)

    @property
    def damaged(self) -> bool:
        return any(f.damage for f in self.findings)

    def lines(self) -> list[str]:
        return [f"{'DAMAGE' if f.damage else 'note'}: {f.where}: {f.problem}" for f in self.findings]


def _check_files(folder: Path, manifest: dict, report: FolderReport) -> None:
    sums = manifest.get("checksums")
    if not sums:
        report.findings.append(Finding("index.json", "no checksums (written by an older version): the snapshot "
                                       "files cannot be checked", False))
    for rel, digest in sorted((sums or {}).items()):
        path = folder / rel
        if not path.is_file():
            report.findings.append(Finding(rel, "missing", True))
        elif sha256_file(path) != digest:
            report.findings.append(Finding(rel, "does not match its sha256 in index.json (corrupt)", True))


def _scan_logs(folder: Path, manifest: dict, report: FolderReport, index: PinIndex | None, cards: dict) -> None:
    """Read every record of every log (salvaging past bad stretches); apply the good ones to `index`."""
    for name in manifest["logs"]:
        try:
            scan = scan_log(folder / name, salvage=True)
        except (OSError, ValueError) as err:
            report.findings.append(Finding(name, f"unreadable ({err})", True))
            continue
        for start, end, why in scan.bad:
            if scan.torn_tail:
                report.findings.append(Finding(f"{name} bytes {start:,}-{end:,}", f"torn tail ({why}): a write "
                                               "never acknowledged, cut when the folder is next opened", False))
            else:
                report.findings.append(Finding(f"{name} bytes {start:,}-{end:,}", f"corrupt records ({why}): "
                                               "dropped by repair", True))
        report.records += len(scan.ops)
        for i, op in enumerate(scan.ops if index is not None else []):
            try:
                apply_op(index, cards, op)
            except PinIndexError as err:
                report.findings.append(Finding(f"{name} record {i}", f"does not apply ({err}): dropped", True))


def _load(folder: Path, manifest: dict, report: FolderReport) -> tuple[PinIndex | None, dict]:
    snapshot = folder / manifest["snapshot"]
    try:
        index = PinIndex.load_snapshot(snapshot)
    except PinIndexError as err:
        report.findings.append(Finding(manifest["snapshot"], f"the vectors cannot be read ({err})", True))
        index = None
    try:
        cards = read_cards(snapshot, required=f"{manifest['snapshot']}/{CARDS_FILE}" in manifest.get("checksums", {}))
    except PinIndexError:
        report.findings.append(Finding(f"{manifest['snapshot']}/{CARDS_FILE}", "the pin cards (titles, images) "
                                       "cannot be read: repair leaves the snapshot's pins without them", True))
        cards = {}
    return index, cards


def verify(folder: str | Path) -> FolderReport:
    """Every checksum of an index folder, read-only; `damaged` when anything but a torn tail is wrong."""
    folder, report = Path(folder), FolderReport()
    manifest = read_manifest(folder)
    _check_files(folder, manifest, report)
    index, cards = _load(folder, manifest, report)
    _scan_logs(folder, manifest, report, index, cards)
    report.pins = len(index) if index is not None else None
    return report


def repair(folder: str | Path, out: str | Path) -> FolderReport:
    """What is readable in `folder`, written as a new index folder `out`; the report says what was dropped."""
    from pinclip.serve.faiss_backend import FaissBackend

    folder, out, report = Path(folder), Path(out), FolderReport()
    if out.exists() and any(out.iterdir()):
        raise PinIndexError(f"{out} is not empty; repair writes a new index folder")
    manifest = read_manifest(folder)
    _check_files(folder, manifest, report)
    index, cards = _load(folder, manifest, report)
    if index is None:
        raise PinIndexError(f"{folder}: the snapshot's vectors cannot be read, so there is nothing to replay the "
                            "logs onto; rebuild the index with `pinclip index build`")
    _scan_logs(folder, manifest, report, index, cards)
    FaissBackend.create(out, index, {p: c for p, c in cards.items() if p in index})
    report.pins = len(index)
    return report
