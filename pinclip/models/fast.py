"""Inference fast paths for PinCLIP's text-only and image-only modes, beside the reference ones.

    text = FastTextEncoder(model, backend="onnx")      # what Embedder.embed_texts computes
    text.embed(["red apple", "a small cat"], field="queries")   # (N, D)
    image = FastImageEncoder(model, backend="onnx")    # what Embedder.embed_images computes
    image.embed(pil_images)                                     # (N, D)

The reference text path (`Embedder.embed_texts`) is the training layout: the frozen lower layers'
states go to float16 ragged arrays and are re-padded per batch. The fast text path tokenizes once,
sorts by length so each batch is padded only to its own longest text, and runs the whole text mode
(frozen layers, field tag, trained layers, pooling, head) in one pass, keeping float32 throughout
(the reference's float16 storage moves its vectors by ~1e-3). The fast image path runs the vision
tower on a whole batch, then the image mode on its pooled tokens.

Backends (bench/text_embed.py and bench/image_embed.py measure each against the reference):
    "onnx"   the same graph exported to ONNX and run by ONNX Runtime: same float32 math, fused
             kernels, faster GEMMs
    "openvino"  (text) that ONNX graph compiled by OpenVINO (models/openvino_runner.py), batches
             in flight on throughput streams: "fp32", "bf16" (native bf16 kernels), or "int8"
             (NNCF static int8 calibrated on `calibration_texts`; FFN output projections stay in
             float, as in the torch int8 path, unless int8_ffn_out)
    "torch"  eager PyTorch under inference_mode, in one of three precisions:
             "fp32"; "bf16" (autocast); "int8" (dynamic int8 linear layers, except the FFN output
             projections, whose GELU inputs have outlier ranges that per-tensor int8 clips)
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pinclip.data.schema import TEXT_FIELDS
from pinclip.models.backbone import TOKENIZER_LOCK
from pinclip.models.features import TowerRunner, pixels_batch
from pinclip.models.pinclip import PinCLIP
from pinclip.models.vision import grid_to_tokens

BACKENDS = ("torch", "onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
FFN_OUTPUT_NODES = (r".*/layer\.\d+/output/dense/MatMul", r".*mlp/down_proj/MatMul")  # BERT, Qwen2 FFN out


def _check_options(backend: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if backend == "onnx" and precision != "fp32":
        raise ValueError("the onnx backend runs fp32 only (openvino runs bf16 and int8)")


def onnx_available() -> bool:
    """Whether the onnx backend can run here (the exporter needs onnx, the runtime onnxruntime)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """A copy of `module` with dynamic int8 nn.Linear layers, FFN output projections left in fp32."""
    from torch.ao.quantization import quantize_dynamic

    names = {name for name, m in module.named_modules() if isinstance(m, nn.Linear)
             and not (name.endswith(("output.dense", "output.dense.base_layer")) and ".attention." not in name)  # BERT FFN out (LoRA: its base)
             and not name.endswith("mlp.down_proj")}  # Qwen2 FFN out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(module), names, dtype=torch.qint8)


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Positions grouped into batches of similar length: sorted by length, cut every batch_size."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def onnx_bytes(module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
               dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    """`module` traced on `inputs` and exported to ONNX (opset 17), as bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, input_names=input_names, output_names=["out"],
                          dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    return buffer.getvalue()


def onnx_session(module: nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
                 dynamic_axes: dict[str, dict[int, str]]) -> object:
    """An ONNX Runtime CPU session over `module` traced on `inputs`, threads as torch's."""
    if not onnx_available():
        raise RuntimeError("the onnx backend needs onnx and onnxruntime: pip install onnx onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes(module, inputs, input_names, dynamic_axes), options,
                                providers=["CPUExecutionProvider"])


class TextModeGraph(nn.Module):
    """PinCLIP's text-only mode from token ids: (B, L) ids, (B, L) mask, (B,) field ids -> (B, D)."""

    def __init__(self, model: PinCLIP, backbone: nn.Module) -> None:
        super().__init__()
        self.model, self.backbone = model, backbone

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, field_ids: torch.Tensor) -> torch.Tensor:
        model, mask = self.model, mask.bool()
        states = self.backbone.encode_prefix(ids, mask)  # (B, L, W)
        tagged = states.float() + model.field_embed[field_ids].unsqueeze(1)  # (B, L, W)
        b = ids.shape[0]
        summary = model.summary_token("text", b).to(tagged.dtype)  # (B, 1, W)
        ones = torch.ones(b, 1, dtype=torch.bool, device=ids.device)
        last = model.cfg.backbone.pooling == "last"
        hidden = torch.cat([tagged, summary] if last else [summary, tagged], dim=1)  # (B, L+1, W)
        full_mask = torch.cat([mask, ones] if last else [ones, mask], dim=1)  # (B, L+1)
        out = self.backbone.encode_from_entry(hidden, full_mask)  # (B, L+1, W)
        pooled = model._pool(out.float(), full_mask)  # (B, W)
        return F.normalize(model.head(pooled), dim=-1)  # (B, D)


class FastTextEncoder:
    """Text-only embeddings of raw strings: tokenize once, length-bucket, one pass per batch."""

    def __init__(self, model: PinCLIP, backend: str = "onnx", precision: str = "fp32", batch_size: int = 64,
                 calibration_texts: Sequence[str] = (), int8_ffn_out: bool = False) -> None:
        _check_options(backend, precision)
        model.eval()
        self.model, self.backend, self.precision, self.batch_size = model, backend, precision, batch_size
        self.tokenizer = model.backbone.tokenizer
        self.max_tokens = model.backbone.cfg.max_field_tokens
        self.device = next(model.parameters()).device
        int8_torch = precision == "int8" and backend == "torch"
        backbone = quantize_linear_int8(model.backbone) if int8_torch else model.backbone
        self.graph = TextModeGraph(model, backbone).eval()
        self.session = self.runner = None
        if backend in ("onnx", "openvino"):
            ids = torch.tensor([[101, 2417, 6207, 102], [101, 4937, 102, 0]])  # one padded row
            export = (self.graph, (ids, (ids > 0).long(), torch.tensor([0, 3])), ["ids", "mask", "field_ids"],
                      {"ids": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"},
                       "field_ids": {0: "batch"}, "out": {0: "batch"}})
        if backend == "onnx":
            self.session = onnx_session(*export)
        elif backend == "openvino":
            from pinclip.models.openvino_runner import OpenVinoRunner

            calibration = self._feeds(list(calibration_texts), "title") if precision == "int8" else []
            self.runner = OpenVinoRunner(onnx_bytes(*export), precision, torch.get_num_threads(), calibration,
                                         () if int8_ffn_out else FFN_OUTPUT_NODES)

    def _batch(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.session is not None:
            return self.session.run(None, feed)[0]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            emb = self.graph(*(torch.from_numpy(feed[k]).to(self.device) for k in ("ids", "mask", "field_ids")))
        return emb.float().cpu().numpy()

    def _feeds(self, texts: list[str], field: str, rows_out: list | None = None) -> list[dict[str, np.ndarray]]:
        """Length-bucketed padded batches of token ids (positions of each batch appended to rows_out)."""
        texts = [t if t else " " for t in texts]
        with TOKENIZER_LOCK:  # the tokenizer is the backbone's, shared with other threads
            encoded = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"] if texts else []
        pad = self.tokenizer.pad_token_id or 0
        feeds = []
        for rows in length_buckets([len(e) for e in encoded], self.batch_size):
            width = max(len(encoded[i]) for i in rows)
            ids = np.full((len(rows), width), pad, np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            for j, i in enumerate(rows):
                ids[j, : len(encoded[i])], mask[j, : len(encoded[i])] = encoded[i], 1
            feeds.append({"ids": ids, "mask": mask, "field_ids": np.full(len(rows), TEXT_FIELDS.index(field), np.int64)})
            if rows_out is not None:
                rows_out.append(rows)
        return feeds

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], field: str = "title") -> np.ndarray:
        """(N, D) float32; an empty text is embedded as one space, as Embedder.embed_texts does."""
        if field not in TEXT_FIELDS:
            raise ValueError(f"unknown field {field!r}; use one of {', '.join(TEXT_FIELDS)}")
        out = np.zeros((len(texts), self.model.cfg.dims[0]), np.float32)
        positions: list[np.ndarray] = []
        feeds = self._feeds(list(texts), field, positions)
        results = self.runner.run(feeds) if self.runner is not None else [self._batch(f) for f in feeds]
        for rows, emb in zip(positions, results):
            out[rows] = emb
        return out


class FastImageEncoder:
    """Image-only embeddings of decoded images: the tower on whole batches, then the image mode."""

    def __init__(self, model: PinCLIP, backend: str = "onnx", precision: str = "fp32", batch_size: int = 16) -> None:
        _check_options(backend, precision)
        if precision == "int8":
            raise ValueError("int8 applies to the text path's linear layers; images run fp32 or bf16")
        if backend == "openvino":
            raise ValueError("the openvino backend runs the text path; images run torch or onnx")
        model.eval()
        self.model, self.backend, self.precision, self.batch_size = model, backend, precision, batch_size
        self.cfg = model.cfg.vision
        self.device = next(model.parameters()).device
        self.tower = TowerRunner(model.vision, self.cfg.image_size, backend=backend, precision=precision)

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """(N, D) float32 embeddings of images (converted to RGB), `batch_size` images per tower call."""
        out = np.zeros((len(images), self.model.cfg.dims[0]), np.float32)
        step = batch_size or self.batch_size
        for lo in range(0, len(images), step):
            batch = [img.convert("RGB") for img in images[lo : lo + step]]
            grid = self.tower(pixels_batch(batch, self.cfg))  # (B, C, h, w)
            tokens = grid_to_tokens(grid.to(self.device), self.cfg.regions, self.cfg.patches)  # (B, T, C)
            out[lo : lo + len(batch)] = self.model.encode_image({"vis": tokens}).float().cpu().numpy()
        return out
