"""The embedding job on a Ray Data actor pool: the same reader -> mapper -> writer, shards in parallel.

    pinclip embed --checkpoint C --pins pins.parquet --out DIR --backend ray --workers 4

The driver loads the pins table and the manifest exactly as the local job does (same shards, same
resume rule), puts the pins in Ray's object store, and maps the list of shards still to do over a
pool of actors, each holding one Embedder built by `embedder_factory`. An actor embeds its shard
and writes the parquet file itself (to out_dir, which on a cluster must be shared storage); the
driver records each finished shard in the manifest as results stream back. The output is
byte-identical to the local backend's. Set RAY_ADDRESS to join a running cluster; otherwise a local
Ray runtime with `workers` CPUs is started and stopped.

A killed job (kill -9 of the driver: the local Ray runtime it started goes down with it) resumes
when run again with the same arguments: shards recorded in the manifest are kept, the others are
redone, and the result is byte-identical to an uninterrupted run (tests/test_serve_ray.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pinclip.cli import UserError
from pinclip.data.schema import MAX_IMAGE_PIXELS
from pinclip.serve.embed import EmbedJob, Manifest, finish_shard, prepare_run, run_shard


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("--backend ray needs Ray Data: pip install 'ray[data]' (or 'pinclip[ray]')") from None
    return ray


class ShardEmbedder:
    """A Ray actor: holds one Embedder and turns batches of shard indices into written shards."""

    def __init__(self, embedder_factory: Callable[[], Any], pins: Any, job: EmbedJob, out_dir: str) -> None:
        import ray

        self.embedder = embedder_factory()
        self.pins = ray.get(pins) if isinstance(pins, ray.ObjectRef) else pins
        self.job, self.out_dir = job, Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries = [
            run_shard(self.embedder, self.pins, int(index), self.job, self.out_dir, self.embedder.quant)
            for index in batch["shard"]
        ]
        return {"entry": np.array([json.dumps(e) for e in entries], dtype=object)}


def embed_pins_table_ray(
    embedder_factory: Callable[[], Any],
    pins_path: str | Path,
    out_dir: str | Path,
    workers: int = 2,
    shard_size: int = 1000,
    keep_fp32: bool = False,
    batch_size: int = 64,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    progress: bool = True,
) -> Manifest:
    """`embed_pins_table` with shards mapped over `workers` Ray actors."""
    ray = _import_ray()
    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    job = EmbedJob(shard_size, batch_size, keep_fp32, max_image_pixels, progress)
    out_dir = Path(out_dir).resolve()
    pins, manifest, todo = prepare_run(embedder_factory(), pins_path, out_dir, job)
    if not todo:
        manifest.complete = True
        manifest.save(out_dir)
        return manifest
    started_here = not ray.is_initialized()
    if started_here:
        local = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, **local)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = context.print_on_execution_start = progress  # ours is the tqdm bar below
        pins_ref = ray.put(pins)  # held until the job ends: a restarted actor reads its arguments again
        shards = ray.data.from_items([{"shard": i} for i in todo], override_num_blocks=len(todo))
        results = shards.map_batches(
            ShardEmbedder,
            fn_constructor_args=(embedder_factory, pins_ref, job, str(out_dir)),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            batch_format="numpy",
        )
        done_pins = sum(s["pins_in"] for s in manifest.shards)
        with tqdm(total=len(pins), initial=done_pins, unit="pin", desc="embed (ray)", disable=not progress or None) as bar:
            for row in results.iter_rows():
                entry = json.loads(row["entry"])
                finish_shard(manifest, entry, out_dir)
                bar.update(entry["pins_in"])
    finally:
        if started_here:
            ray.shutdown()
    return manifest
