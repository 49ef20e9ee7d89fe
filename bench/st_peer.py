"""The peers' side of bench/text_embed.py, run by it in a venv of its own (bench/_work/st-peer).

    bench/_work/st-peer/bin/python bench/st_peer.py MODEL_DIR WORK_DIR CALIBRATION_JSON --max-tokens 24

sentence-transformers' ONNX backend needs optimum-onnx 0.1.0, which pins transformers 4.57 (so
sentence-transformers <= 5.1): an environment PinCLIP's own cannot share. Its `ov_config` and
multi-process pool are the same in 6.x. This script imports only the peers' packages. It copies the
model folder to WORK_DIR (the exports are written beside it, and reused), builds every path below,
prints one JSON line {"paths": [...], "build_seconds": {...}, "notes": [...], ...}, then answers
JSON commands on stdin, one line each:

    {"cmd": "load", "texts": FILE, "name": "timed"}       -> {"texts": n}   kept in memory
    {"cmd": "encode", "path": P, "name": "timed", "batch_size": 64}
                                                          -> {"seconds": s}  P encodes them once
    {"cmd": "vectors", "texts": FILE, "out": DIR, "batch_size": 64}
                                                          -> {"written": [...]}  DIR/<path>.npy
    {"cmd": "ping"}                                       -> {}   (the round trip, for the notes)
    {"cmd": "quit"}

Paths (SentenceTransformer(..., backend=..., model_kwargs=...) and its export helpers, as its docs
describe them), every one truncating at --max-tokens:
    st-torch-fp32            backend="torch"
    st-onnx-fp32             backend="onnx" (exported by optimum-onnx, run by ONNX Runtime)
    st-onnx-O3               export_optimized_onnx_model(..., "O3"): ONNX Runtime graph fusions
    st-onnx-qint8-vnni       export_dynamic_quantized_onnx_model(..., "avx512_vnni"): dynamic int8
    st-openvino-fp32         backend="openvino", ov_config INFERENCE_PRECISION_HINT f32
    st-openvino-bf16         backend="openvino", ov_config INFERENCE_PRECISION_HINT bf16
    st-openvino-qint8        export_static_quantized_openvino_model, calibrated on CALIBRATION_JSON
                             (texts that are not timed); optimum's default ov_config (LATENCY hint)
    st-openvino-qint8-tput   the same int8 model with ov_config PERFORMANCE_HINT THROUGHPUT
    st-pool-torch-2x1        start_multi_process_pool(["cpu", "cpu"]) + encode(..., pool=pool):
                             2 processes of 1 thread each (the pool pickles the model, which only
                             its torch backend allows); started before any timing
    fastembed-onnx-fp32      fastembed.TextEmbedding on the same ONNX export (mean pooling,
                             normalized), loaded from the local folder; skipped with a note if it fails
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

QINT8 = "openvino/openvino_model_qint8_{digest}.xml"  # the static int8 export, per calibration set
# name: (backend, model file under the folder, ov_config); "{digest}" names the calibration set
ST_PATHS: dict[str, tuple[str, str | None, dict | None]] = {
    "st-torch-fp32": ("torch", None, None),
    "st-onnx-fp32": ("onnx", None, None),
    "st-onnx-O3": ("onnx", "onnx/model_O3.onnx", None),
    "st-onnx-qint8-vnni": ("onnx", "onnx/model_qint8_avx512_vnni.onnx", None),
    "st-openvino-fp32": ("openvino", None, {"INFERENCE_PRECISION_HINT": "f32"}),
    "st-openvino-bf16": ("openvino", None, {"INFERENCE_PRECISION_HINT": "bf16"}),
    "st-openvino-qint8": ("openvino", QINT8, {}),
    "st-openvino-qint8-tput": ("openvino", QINT8, {"PERFORMANCE_HINT": "THROUGHPUT"}),
}
POOL_WORKERS = 2
POOL_NAME = f"st-pool-torch-{POOL_WORKERS}x1"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
FASTEMBED_NAME, FASTEMBED_PATH = "local/all-MiniLM-L6-v2", "fastembed-onnx-fp32"

Encode = Callable[[list[str], int], np.ndarray]  # (texts, batch size) -> (N, 384) float32


def load_st(folder: Path, backend: str, file_name: str | None, ov_config: dict | None, max_tokens: int):
    from sentence_transformers import SentenceTransformer

    model_kwargs = {"file_name": file_name} if file_name else {}
    if ov_config is not None:
        model_kwargs["ov_config"] = ov_config
    model = SentenceTransformer(str(folder), device="cpu", backend=backend, local_files_only=True,
                                model_kwargs=model_kwargs or None)
    model.max_seq_length = max_tokens
    return model


def st_encode(model) -> Encode:
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                                  show_progress_bar=False)


def export_models(folder: Path, work: Path, calibration: list[str], digest: str, max_tokens: int) -> None:
    """The ONNX, O3, dynamic-int8 ONNX, OpenVINO and static-int8 OpenVINO files, where absent."""
    from sentence_transformers import (
        export_dynamic_quantized_onnx_model,
        export_optimized_onnx_model,
        export_static_quantized_openvino_model,
    )

    if not (folder / "onnx" / "model.onnx").exists():
        load_st(folder, "onnx", None, None, max_tokens).save_pretrained(str(folder))
    onnx = load_st(folder, "onnx", None, None, max_tokens)
    if not (folder / "onnx" / "model_O3.onnx").exists():
        export_optimized_onnx_model(onnx, "O3", str(folder))
    if not (folder / "onnx" / "model_qint8_avx512_vnni.onnx").exists():
        export_dynamic_quantized_onnx_model(onnx, "avx512_vnni", str(folder))
    if not (folder / "openvino" / "openvino_model.xml").exists():
        load_st(folder, "openvino", None, None, max_tokens).save_pretrained(str(folder))
    if not (folder / QINT8.format(digest=digest)).exists():
        data = work / "calibration"  # a local dataset folder (train.jsonl, column "sentence"), read offline
        data.mkdir(parents=True, exist_ok=True)
        (data / "train.jsonl").write_text("".join(json.dumps({"sentence": t}) + "\n" for t in calibration))
        export_static_quantized_openvino_model(
            load_st(folder, "openvino", None, None, max_tokens), None, str(folder), dataset_name=str(data),
            dataset_config_name="default", dataset_split="train", column_name="sentence",
            file_suffix=f"qint8_{digest}")


class Pool:
    """sentence-transformers' multi-process pool of POOL_WORKERS processes, one thread each."""

    def __init__(self, model) -> None:
        saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        os.environ.update({name: "1" for name in THREAD_VARIABLES})  # read by the spawned workers' torch
        try:
            self.model, self.pool = model, model.start_multi_process_pool(["cpu"] * POOL_WORKERS)
            self.encode(["warm up"] * 20 * POOL_WORKERS, 2)  # a first call, waiting for the workers to load
        finally:
            for name, value in saved.items():
                if value is None:
                    del os.environ[name]
                else:
                    os.environ[name] = value

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.model.encode(texts, batch_size=batch_size, pool=self.pool, convert_to_numpy=True,
                                 show_progress_bar=False)

    def close(self) -> None:
        self.model.stop_multi_process_pool(self.pool)


def fastembed_encode(folder: Path, max_tokens: int) -> Encode:
    """fastembed on the ONNX export in `folder` (no download: the model is registered by hand)."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    TextEmbedding.add_custom_model(FASTEMBED_NAME, pooling=PoolingType.MEAN, normalization=True,
                                   sources=ModelSource(hf=FASTEMBED_NAME), dim=384, model_file="onnx/model.onnx")
    model = TextEmbedding(FASTEMBED_NAME, specific_model_path=str(folder), local_files_only=True)
    model.model.tokenizer.enable_truncation(max_length=max_tokens)  # as the other paths
    return lambda texts, batch_size: np.stack(list(model.embed(texts, batch_size=batch_size))).astype(np.float32)


def mode(backend: str, ov_config: dict | None) -> str:
    """How a sentence-transformers path runs, for the results table."""
    if backend != "openvino":
        return {"torch": "torch", "onnx": "ONNX Runtime"}[backend]
    hint = ov_config.get("PERFORMANCE_HINT", "LATENCY (optimum's default)")
    return f"OpenVINO, {hint} hint, 1 request (sync encode)"


def build_paths(model_dir: Path, work: Path, calibration: list[str], max_tokens: int
                ) -> tuple[dict[str, Encode], dict[str, float], list[str], list[Pool]]:
    """Every path's encode function, the seconds each took to build, notes, and the pools to close."""
    folder = work / "model"
    if not folder.exists():
        shutil.copytree(model_dir, folder)
    digest = hashlib.sha256(json.dumps(calibration).encode()).hexdigest()[:10]
    start = time.perf_counter()
    export_models(folder, work, calibration, digest, max_tokens)
    paths, seconds, notes, pools = {}, {"exports": round(time.perf_counter() - start, 1)}, [], []

    def timed(name: str, make: Callable[[], Encode]) -> None:
        start = time.perf_counter()
        paths[name] = make()
        seconds[name] = round(time.perf_counter() - start, 1)

    for name, (backend, file_name, ov_config) in ST_PATHS.items():
        file_name = file_name.format(digest=digest) if file_name else None
        timed(name, lambda b=backend, f=file_name, c=ov_config: st_encode(load_st(folder, b, f, c, max_tokens)))

    def start_pool() -> Encode:
        pools.append(Pool(load_st(folder, "torch", None, None, max_tokens)))
        return pools[-1].encode

    timed(POOL_NAME, start_pool)  # the workers' start-up, never in a timed call
    try:
        timed(FASTEMBED_PATH, lambda: fastembed_encode(folder, max_tokens))
    except Exception as err:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
        notes.append(f"fastembed skipped: {type(err).__name__}: {err}")
    for encode in paths.values():  # first calls (graph compilation, allocations) outside any timing
        encode(calibration[:64], 64)
    return paths, seconds, notes, pools


def serve_commands(paths: dict[str, Encode]) -> None:
    loaded: dict[str, list[str]] = {}
    for line in sys.stdin:
        command = json.loads(line)
        batch_size = int(command.get("batch_size", 64))
        if command["cmd"] == "quit":
            return
        if command["cmd"] == "ping":
            reply = {}
        elif command["cmd"] == "load":
            loaded[command["name"]] = json.loads(Path(command["texts"]).read_text())
            reply = {"texts": len(loaded[command["name"]])}
        elif command["cmd"] == "encode":
            texts, encode = loaded[command["name"]], paths[command["path"]]
            start = time.perf_counter()
            encode(texts, batch_size)
            reply = {"seconds": time.perf_counter() - start}
        else:  # vectors
            texts, out = json.loads(Path(command["texts"]).read_text()), Path(command["out"])
            out.mkdir(parents=True, exist_ok=True)
            for name, encode in paths.items():
                np.save(out / f"{name}.npy", np.asarray(encode(texts, batch_size), np.float32))
            reply = {"written": list(paths)}
        print(json.dumps(reply), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("work_dir", type=Path)
    p.add_argument("calibration", type=Path, help="JSON list of texts for the static int8 calibration")
    p.add_argument("--max-tokens", type=int, default=24)
    args = p.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    from importlib.metadata import version

    import torch

    paths, seconds, notes, pools = build_paths(args.model_dir, args.work_dir,
                                               json.loads(args.calibration.read_text()), args.max_tokens)
    versions = {name: version(name) for name in ("sentence-transformers", "optimum-onnx", "optimum-intel",
                                                 "openvino", "onnxruntime", "fastembed")}
    modes = {name: mode(backend, ov_config) for name, (backend, _, ov_config) in ST_PATHS.items()}
    modes |= {POOL_NAME: f"{POOL_WORKERS} processes x 1 thread (torch)", FASTEMBED_PATH: "ONNX Runtime"}
    print(json.dumps({"paths": list(paths), "modes": {p: modes[p] for p in paths}, "build_seconds": seconds,
                      "notes": notes, "versions": versions,
                      "torch_threads": torch.get_num_threads()}), flush=True)
    try:
        serve_commands(paths)
    finally:
        for pool in pools:
            pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
