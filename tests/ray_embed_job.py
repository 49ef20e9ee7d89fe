"""The Ray Data embedding job on FakeEmbedder, as a process of its own (tests/test_serve_ray.py kills it
with SIGKILL part-way and resumes it):

    python tests/ray_embed_job.py PINS OUT_DIR SHARD_SIZE DELAY_S
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serve_fakes  # noqa: E402


def main(argv: list[str]) -> int:
    import ray.cloudpickle

    from pinclip.serve.ray_backend import embed_pins_table_ray

    ray.cloudpickle.register_pickle_by_value(serve_fakes)  # Ray workers do not have tests/ on their path
    pins, out, shard_size, delay = argv
    factory = functools.partial(serve_fakes.FakeEmbedder, delay_s=float(delay))
    manifest = embed_pins_table_ray(factory, pins, out, workers=2, shard_size=int(shard_size), batch_size=4,
                                    progress=False)
    print(json.dumps({"rows_out": manifest.rows_out, "complete": manifest.complete}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
