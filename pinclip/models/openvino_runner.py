"""An OpenVINO CPU runner for the fast paths' exported graphs (the "openvino" backend of fast.py).

    runner = OpenVinoRunner(onnx_bytes, precision="int8", calibration=[{"ids": ..., "mask": ..., ...}])
    outputs = runner.run([{"ids": ids, "mask": mask, "field_ids": field_ids}, ...])   # one array per batch

Precisions: "fp32" (f32 kernels throughout), "bf16" (OpenVINO's bf16 inference precision: AVX512-BF16
or AMX kernels where the CPU has them, f32 where it does not), "int8" (post-training static
quantization by NNCF on calibration batches, transformer preset, bf16 for what stays in float).
Batches run on a pool of infer requests over OpenVINO's throughput streams (one stream per core):
on a few cores, two small batches at once keep both cores busier than one batch split across them.
Needs the `openvino` extra: pip install 'pinclip[openvino]' (openvino, nncf).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

PRECISIONS = ("fp32", "bf16", "int8")


def openvino_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))


def _quantize(model, calibration: Sequence[dict[str, np.ndarray]], ignored_names: Sequence[str]):
    """NNCF post-training static int8 (SmoothQuant + bias correction, transformer preset)."""
    import nncf

    if not calibration:
        raise ValueError("openvino int8 needs calibration batches (texts like the ones to embed)")
    ignored = nncf.IgnoredScope(patterns=list(ignored_names), validate=False) if ignored_names else None
    return nncf.quantize(model, nncf.Dataset(list(calibration)), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(calibration), ignored_scope=ignored)


class OpenVinoRunner:
    """An ONNX graph compiled by OpenVINO for the CPU; `run` maps it over batches, several in flight."""

    def __init__(self, onnx_bytes: bytes, precision: str = "bf16", threads: int = 0,
                 calibration: Sequence[dict[str, np.ndarray]] = (), ignored_names: Sequence[str] = ()) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        if not openvino_available():
            raise RuntimeError("the openvino backend needs openvino and nncf: pip install 'pinclip[openvino]'")
        import openvino as ov

        model = ov.convert_model(io.BytesIO(onnx_bytes))
        if precision == "int8":
            model = _quantize(model, calibration, ignored_names)
        config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                  "PERFORMANCE_HINT": "THROUGHPUT"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(model, "CPU", config)
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def run(self, batches: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """The graph's first output for every batch, in order, `requests` batches in flight.

        No Python callback runs on OpenVINO's worker threads: such a callback needs the GIL, and a compiled
        model destroyed while one is still pending (its destructor joins those threads with the GIL held)
        deadlocks the process. Each request is waited for and read on this thread instead."""
        outputs: list[np.ndarray | None] = [None] * len(batches)
        requests = [self.compiled.create_infer_request() for _ in range(max(1, min(self.requests, len(batches))))]
        pending: dict[int, int] = {}  # request slot -> index of the batch it runs

        def collect(slot: int) -> None:
            requests[slot].wait()
            outputs[pending.pop(slot)] = requests[slot].get_output_tensor(0).data.copy()

        for index, batch in enumerate(batches):
            slot = index % len(requests)
            if slot in pending:
                collect(slot)
            requests[slot].start_async(batch)
            pending[slot] = index
        for slot in list(pending):
            collect(slot)
        return outputs
