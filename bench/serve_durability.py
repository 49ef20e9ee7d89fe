"""kill -9 of the server at random moments: every acknowledged write is found after the restart.

    python bench/run.py --out bench --only serve_durability        # part of `make bench`; ~3 min
    python bench/serve_durability.py --kills 40                     # on its own

The loop of tests/durability.py (a served index folder, 4 client threads adding, replacing and
deleting their own pins over HTTP, SIGKILL after 0.05-1.5 s, restart, check every pin) with more
kills than the test suite runs, and a small compaction threshold so kills also land mid-compaction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench.common import BenchContext, BenchResult, Target  # noqa: E402

KILLS = 30


def kill_run(kills: int, folder: Path) -> dict[str, int]:
    from durability import kill_loop
    from serve_fakes import FakeEmbedder

    from pinclip.quant import quantize
    from pinclip.serve.faiss_backend import FaissBackend
    from pinclip.serve.index import PinIndex

    fake = FakeEmbedder()
    codes = quantize(fake.embed_texts([f"seed pin {i}" for i in range(100)]), fake.quant)
    FaissBackend.create(folder, PinIndex.build(codes, [f"s{i}" for i in range(100)], fake.quant, fake.version))
    return kill_loop(folder, kills=kills, seed=11, workers=4, compact_bytes=20_000)


def run(ctx: BenchContext) -> BenchResult:
    with tempfile.TemporaryDirectory() as tmp:
        f = kill_run(5 if ctx.quick else KILLS, Path(tmp) / "index")
    result = BenchResult("serve_durability", "kill -9 of the server at random moments", figures=f)
    result.targets = [
        Target("acknowledged pins found in their acknowledged state after restart", "all",
               f"{f['pins_found']:,} of {f['pins_checked']:,} checks ({f['acknowledged_writes']:,} acknowledged "
               f"writes, {f['kills']} kills)", f["pins_found"] == f["pins_checked"]),
    ]
    result.notes = ["writes: POST /pins (new ids and replacements) and DELETE /pins from 4 client threads; a pin's "
                    "in-flight write at the kill may be found applied (whole) or not, never half; the index folder "
                    "compacts every ~20 KB of log, so kills also land mid-compaction",
                    "pins checked after every restart: each checked pin counts once per restart"]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=KILLS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(kill_run(args.kills, Path(tmp) / "index"))
