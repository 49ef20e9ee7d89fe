"""The sentence-transformers side of bench/text_embed.py, run by it in a venv of its own (bench/_work/st-peer).

    bench/_work/st-peer/bin/python bench/st_peer.py MODEL_DIR WORK_DIR CALIBRATION_JSON --max-tokens 24

sentence-transformers' ONNX backend needs optimum-onnx 0.1.0, which pins transformers 4.57 (so
sentence-transformers <= 5.1): an environment PinCLIP's own cannot share. This script imports only
the peer's packages. It copies the model folder to WORK_DIR (the exports are written beside it),
builds every path below, prints one JSON line {"paths": [...], "build_seconds": {...}}, then answers
JSON commands on stdin, one line each:

    {"cmd": "round", "texts": FILE, "batch_size": 64} -> {"seconds": {path: s}}   each path encodes
                                                         all texts once, in the order listed
    {"cmd": "vectors", "texts": FILE, "out": DIR}     -> {"written": [...]}       DIR/<path>.npy
    {"cmd": "quit"}

Paths (SentenceTransformer(..., backend=...) and its export helpers, as its docs describe them):
    st-torch-fp32          backend="torch"
    st-onnx-fp32           backend="onnx" (exported by optimum-onnx, run by ONNX Runtime)
    st-onnx-O3             export_optimized_onnx_model(..., "O3"): ONNX Runtime graph fusions
    st-onnx-qint8-vnni     export_dynamic_quantized_onnx_model(..., "avx512_vnni"): dynamic int8
    st-openvino-fp32       backend="openvino" (optimum-intel)
    st-openvino-qint8      export_static_quantized_openvino_model: static int8 calibrated on
                           CALIBRATION_JSON (texts that are not timed)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def _load(folder: Path, backend: str, file_name: str | None, max_tokens: int):
    from sentence_transformers import SentenceTransformer

    kwargs = {"model_kwargs": {"file_name": file_name}} if file_name else {}
    model = SentenceTransformer(str(folder), device="cpu", backend=backend, local_files_only=True, **kwargs)
    model.max_seq_length = max_tokens
    return model


def _calibration_folder(work: Path, texts: list[str]) -> Path:
    """A local dataset folder (train.jsonl, column "sentence") that `datasets` loads offline."""
    folder = work / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps({"sentence": t}) + "\n" for t in texts))
    return folder


def build_paths(model_dir: Path, work: Path, calibration: list[str], max_tokens: int) -> tuple[dict, dict]:
    """Every path's model, and the seconds each took to build (export included)."""
    from sentence_transformers import (
        export_dynamic_quantized_onnx_model,
        export_optimized_onnx_model,
        export_static_quantized_openvino_model,
    )

    folder = work / "model"
    if not folder.exists():
        shutil.copytree(model_dir, folder)
    models, seconds = {}, {}

    def timed(name, make):
        start = time.perf_counter()
        models[name] = make()
        seconds[name] = round(time.perf_counter() - start, 1)

    timed("st-torch-fp32", lambda: _load(folder, "torch", None, max_tokens))
    timed("st-onnx-fp32", lambda: _load(folder, "onnx", None, max_tokens))
    if not (folder / "onnx" / "model.onnx").exists():
        models["st-onnx-fp32"].save_pretrained(str(folder))  # onnx/model.onnx, the base of the exports
    if not (folder / "onnx" / "model_O3.onnx").exists():
        export_optimized_onnx_model(models["st-onnx-fp32"], "O3", str(folder))
    timed("st-onnx-O3", lambda: _load(folder, "onnx", "onnx/model_O3.onnx", max_tokens))
    if not (folder / "onnx" / "model_qint8_avx512_vnni.onnx").exists():
        export_dynamic_quantized_onnx_model(models["st-onnx-fp32"], "avx512_vnni", str(folder))
    timed("st-onnx-qint8-vnni", lambda: _load(folder, "onnx", "onnx/model_qint8_avx512_vnni.onnx", max_tokens))
    timed("st-openvino-fp32", lambda: _load(folder, "openvino", None, max_tokens))
    if not (folder / "openvino" / "openvino_model.xml").exists():
        models["st-openvino-fp32"].save_pretrained(str(folder))
    if not (folder / "openvino" / "openvino_model_qint8_quantized.xml").exists():
        export_static_quantized_openvino_model(
            models["st-openvino-fp32"], None, str(folder), dataset_name=str(_calibration_folder(work, calibration)),
            dataset_config_name="default", dataset_split="train", column_name="sentence")
    timed("st-openvino-qint8", lambda: _load(folder, "openvino", "openvino/openvino_model_qint8_quantized.xml",
                                             max_tokens))
    for model in models.values():  # first calls (graph compilation, allocations) outside any timing
        model.encode(calibration[:64], batch_size=64)
    return models, seconds


def encode(model, texts: list[str], batch_size: int):
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


def serve_commands(models: dict) -> None:
    import numpy as np

    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        texts = json.loads(Path(command["texts"]).read_text())
        batch_size = int(command.get("batch_size", 64))
        if command["cmd"] == "round":
            seconds = {}
            for name, model in models.items():
                start = time.perf_counter()
                encode(model, texts, batch_size)
                seconds[name] = time.perf_counter() - start
            reply = {"seconds": seconds}
        else:
            out = Path(command["out"])
            out.mkdir(parents=True, exist_ok=True)
            for name, model in models.items():
                np.save(out / f"{name}.npy", encode(model, texts, batch_size).astype(np.float32))
            reply = {"written": list(models)}
        print(json.dumps(reply), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("work_dir", type=Path)
    p.add_argument("calibration", type=Path, help="JSON list of texts for the static int8 calibration")
    p.add_argument("--max-tokens", type=int, default=24)
    args = p.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    import sentence_transformers
    import torch

    models, seconds = build_paths(args.model_dir, args.work_dir, json.loads(args.calibration.read_text()),
                                  args.max_tokens)
    print(json.dumps({"paths": list(models), "build_seconds": seconds, "torch_threads": torch.get_num_threads(),
                      "sentence_transformers": sentence_transformers.__version__}), flush=True)
    serve_commands(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
