"""The README's Install, Your own catalog, Python API and ONNX export sections, followed as written on a small
catalog: jsonl with a board_kind column, the same catalog as csv, and one whose image paths are broken.

The commands are the README's fenced blocks, parsed from README.md. `pinclip` is this checkout's command
(a shim running `python -m pinclip` with this interpreter, as `.venv/bin/pinclip` does). Two departures, for
time: the full `pinclip run` line gets `--preset tiny --steps 4` appended (the preset flag the README
documents), and `pinclip serve` is not started (the folders it names are checked). `make install` runs as
written when `.venv` is current (CI runs `make test`, which installs first, so there it is the real command);
elsewhere it runs as `make -n install` (what it would do), since installing PyTorch is no test's business.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).parent.parent
FAST = " --preset tiny --steps 4"


def fenced(section: str, lang: str, nth: int = 0) -> str:
    """The nth ```lang block under '## section' of README.md."""
    body = (ROOT / "README.md").read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, re.S)[nth]


def lines(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def shell(command: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    bin_dir = tmp_path_factory.mktemp("bin")
    shim = bin_dir / "pinclip"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pinclip "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_catalog(catalog: dict[str, Path], folder: Path, fmt: str, image_dir: str = "images") -> Path:
    """The synthetic catalog in `folder` as jsonl or csv, with board_kind (color boards are keyword boards);
    image paths point into `image_dir` (images/ is linked beside the tables)."""
    folder.mkdir(parents=True)
    (folder / "images").symlink_to(catalog["pins"].parent / "images")
    pins = [{**r, "image": r["image"].replace("images/", f"{image_dir}/")} for r in pq.read_table(catalog["pins"]).to_pylist()]
    kinds = {"color": "keyword", "shape": "category"}
    boards = [{**r, "board_kind": kinds.get(r["board_id"].split("-")[0], "curated")}
              for r in pq.read_table(catalog["boards"]).to_pylist()]
    for name, rows in (("pins", pins), ("boards", boards)):
        if fmt == "jsonl":
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            continue
        header = list(rows[0])
        cells = [[("|".join(v) if isinstance(v, list) else "" if v is None else str(v)) for v in r.values()] for r in rows]
        (folder / f"{name}.csv").write_text("\n".join(",".join(row) for row in [header, *cells]) + "\n")
    return folder


def test_install_section(env):
    commands = lines(fenced("Install", "bash"))
    assert commands == ["make install"]
    stamp, project = ROOT / ".venv" / ".installed", ROOT / "pyproject.toml"
    current = stamp.is_file() and stamp.stat().st_mtime >= project.stat().st_mtime
    done = shell(commands[0] if current else "make -n install", ROOT, env)
    assert done.returncode == 0, done.stderr
    assert current or "pip install" in done.stdout


def test_own_catalog_section_on_jsonl_then_python_api_and_onnx(catalog, tmp_path, env):
    validate, smoke, full, serve = lines(fenced("Your own catalog", "bash"))
    mine = write_catalog(catalog, tmp_path / "mine", "jsonl")
    for command in (validate, smoke, full + FAST):
        done = shell(command, mine, env)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    for flag in ("--index", "--checkpoint"):  # what `pinclip serve` is given is there
        assert (mine / serve.split(f"{flag} ")[1].split()[0]).exists()
    run = mine / "runs" / "mine"
    assert (run / "train" / "final" / "MODEL_CARD.md").is_file() and (run / "eval" / "report.md").is_file()
    splits = json.loads((run / "data" / "splits.json").read_text())
    assert splits["heldout_boards"] and not any(b.startswith("color-") for b in splits["heldout_boards"])

    api = shell(f"{shlex.quote(sys.executable)} - <<'EOF'\n{fenced('Python API', 'python')}EOF", mine, env)
    assert api.returncode == 0, api.stderr[-3000:]
    export = lines(fenced("ONNX export", "bash"))
    assert len(export) == 1 and shell(export[0], mine, env).returncode == 0
    onnx = shell(f"{shlex.quote(sys.executable)} - <<'EOF'\n{fenced('ONNX export', 'python')}EOF", mine, env)
    assert onnx.returncode == 0, onnx.stderr[-3000:]


def test_own_catalog_section_on_csv(catalog, tmp_path, env):
    validate, smoke, _, _ = lines(fenced("Your own catalog", "bash"))
    mine = write_catalog(catalog, tmp_path / "mine", "csv")
    for command in (validate, smoke):
        done = shell(command.replace(".jsonl", ".csv"), mine, env)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    assert (mine / "runs" / "smoke" / "index" / "index.json").is_file()


def test_a_broken_image_path_stops_the_run(catalog, tmp_path, env):
    validate, smoke, _, _ = lines(fenced("Your own catalog", "bash"))
    mine = write_catalog(catalog, tmp_path / "mine", "jsonl", image_dir="pictures")  # no such folder
    checked = shell(validate, mine, env)
    assert checked.returncode == 2 and "72 of 72 images could not be used" in checked.stdout
    stopped = shell(smoke, mine, env)
    assert stopped.returncode == 2 and "relative to the pins table's folder" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not (mine / "runs" / "smoke" / "train").exists()
