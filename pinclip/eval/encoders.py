"""What the evaluation harness scores: dense encoders (vectors) and rankers (ranked lists).

    encoder = load_encoder("runs/demo/train/final")     # a PinCLIP checkpoint or a baseline folder
    encoder.prepare(dataset.pins, cache_dir, progress=True)
    vectors = encoder.vectors(spec)                     # TaskVectors, or None: the model cannot score it

A dense encoder embeds queries and corpus of a task (pinclip.eval.tasks.TaskSpec) and the harness
searches them exactly (and through int8 and the ANN index); a ranker (BM25) returns ranked corpus
positions itself. Catalog-wide embeddings (images, every text field, pins in each text regime) are
computed once and shared by every task; with a cache folder a PinCLIP checkpoint's are also kept on disk
(`<cache_dir>/catalog/<model version>-<inputs digest>/`), so the validation and test evaluations, the tower
mixes and the unmixed model of one checkpoint embed the catalog once between them.

`ModelEncoder` is a trained PinCLIP checkpoint. Its pin representation is the model's "pin" output:
the fused embedding, or for a late-fusion model (config model.pin_mode "late": the `lit` recipe)
the normalized sum of its unit image embedding and the unit mean of its text-field embeddings
(what a platform using CLIP embeddings does). Text fields a regime drops are removed before the pin
is formed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pinclip.cli import UserError
from pinclip.eval.protocol import Encoder, Ranker, TaskVectors, unit  # noqa: F401 (re-exported)
from pinclip.eval.tasks import TaskSpec, pin_fields, regime_mask


class ModelEncoder:
    """A trained PinCLIP checkpoint over precomputed image features and text states."""

    kind = "pinclip"

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        from pinclip.quant import GlobalAffine
        from pinclip.train.checkpoint import load_model

        self.model, self.cfg, self.meta = load_model(checkpoint, device)
        self.device = device
        self.version = str(self.meta["version"])
        self.dims = [int(d) for d in self.meta["dims"]]
        self.quant = GlobalAffine.from_dict(self.meta["quant"]) if self.meta.get("quant") else None
        self.notes: dict[str, str] = {}
        self._cache: dict[Any, np.ndarray] = {}
        self._disk: Path | None = None  # where catalog embeddings are kept between evaluations (prepare)

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None:
        from pinclip.models.features import image_features
        from pinclip.models.text_states import compute_text_states, field_strings

        self.vis, self.has_image = image_features(self.model.vision, self.model.cfg.vision, pins.images,
                                                  cache_dir, progress=progress)
        if self.vis.shape[1] == 0:  # a catalog without a single readable image
            self.vis = np.zeros((len(pins), self.model.num_visual, self.model.vision.out_channels), np.float16)
        self.fields = pin_fields(pins.pin_ids, pins.texts)
        self.states = compute_text_states(self.model.backbone, field_strings(pins.texts, len(pins)),
                                          cache_dir=cache_dir, progress=progress)
        self.progress = progress
        self._cache.clear()
        self._disk = catalog_folder(cache_dir, self.version, self.device, self._inputs())

    def _inputs(self) -> list[np.ndarray]:
        """Everything the catalog embeddings depend on besides the model: the visual tokens, the text states and
        each regime's field mask."""
        from pinclip.eval.tasks import REGIMES

        return [self.vis, self.has_image, self.states.tokens, self.states.start, self.states.length,
                *(regime_mask(self.fields, r) for r in REGIMES)]

    def _embed(self, modes: tuple[str, ...], regime: str = "full", chunk: int = 1024) -> dict[str, np.ndarray]:
        """Every catalog pin in `modes`, its text fields restricted to the regime."""
        from pinclip.models.embedder import embed_rows
        from pinclip.models.text_states import TextStates

        keep = regime_mask(self.fields, regime)
        states = TextStates(self.states.tokens, self.states.start, self.states.length * keep)
        rows = np.arange(len(self.fields))
        parts: dict[str, list[np.ndarray]] = {}
        for lo in tqdm(range(0, len(rows), chunk), desc=f"embed {'+'.join(modes)} ({regime})", unit="chunk",
                       disable=not self.progress or None):
            out = embed_rows(self.model, self.vis, self.has_image, states, rows[lo: lo + chunk], modes,
                             device=self.device)
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def _catalog(self, what: str, regime: str = "full") -> np.ndarray:
        """Cached catalog arrays: "image" (P, D), "text" (P, F, D), "text_mask" (P, F), "pin" (P, D)."""
        key = (what, regime if what == "pin" else "full")
        if key not in self._cache:
            if what in ("image", "text", "text_mask"):
                found = stored(self._disk, "image+text", lambda: self._embed(("image", "text")))
                self._cache.update({(k, "full"): v for k, v in found.items()})
            else:
                pins = stored(self._disk, f"pin-{regime}", lambda: {"pin": self._embed(("pin",), regime)["pin"]})
                self._cache[key] = pins["pin"]
        return self._cache[key]

    def query_vectors(self, texts: list[str], field: str = "queries") -> np.ndarray:
        from pinclip.models.embedder import Embedder

        return Embedder(self.model, self.meta, self.device).embed_texts(texts, field=field)

    def vectors(self, spec: TaskSpec) -> TaskVectors:
        if spec.task == "pintext_i2t":
            text = self._catalog("text")
            return TaskVectors(self._catalog("image")[spec.query_pins], text[spec.corpus_pins, spec.corpus_fields])
        if spec.task == "pintext_t2i":
            text = self._catalog("text")
            return TaskVectors(text[spec.query_pins, spec.query_fields], self._catalog("image")[spec.corpus_pins])
        pins = self._catalog("pin", spec.regime)
        queries = pins[spec.query_pins] if spec.task == "related" else self.query_vectors(list(spec.query_texts))
        return TaskVectors(queries, pins[spec.corpus_pins])


def catalog_folder(cache_dir: str | Path | None, version: str, device: str, inputs: list[np.ndarray]) -> Path | None:
    """Where a checkpoint's catalog embeddings are kept: named by the model version (a digest of its weights and
    config) and a digest of every input array, so a changed catalog, feature or model never reads stale vectors;
    None without a cache folder."""
    if cache_dir is None:
        return None
    h = hashlib.blake2b(device.split(":")[0].encode(), digest_size=8)
    for a in inputs:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return Path(cache_dir) / "catalog" / f"{version}-{h.hexdigest()}"


def stored(folder: Path | None, name: str, compute: Any) -> dict[str, np.ndarray]:
    """The arrays saved as `<folder>/<name>.npz`, or compute() (a dict of arrays), saved there atomically. An
    unreadable file (an interrupted copy, a full disk) is computed again and replaced."""
    path = None if folder is None else folder / f"{name}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass
    out = compute()
    if path is not None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **out)
        os.replace(tmp, path)
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training folder holding one as final/."""
    path = Path(path)
    if not (path / "meta.json").is_file() and (path / "final" / "meta.json").is_file():
        return path / "final"
    if not (path / "meta.json").is_file():
        raise UserError(f"{path}: not a PinCLIP checkpoint or baseline (no meta.json, no final/meta.json)")
    return path


def load_encoder(checkpoint: str | Path, device: str = "cpu") -> Encoder | Ranker:
    """The encoder of a checkpoint folder: a trained model, or an untrained baseline (frozen, bm25)."""
    path = resolve_checkpoint(checkpoint)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path / 'meta.json'}: unreadable: {err}") from None
    if meta.get("kind") == "frozen":
        from pinclip.baselines.frozen import FrozenEncoder

        return FrozenEncoder(path, device)
    if meta.get("kind") == "smoothed":
        from pinclip.eval.smooth import SmoothedEncoder

        return SmoothedEncoder(path, device)
    if meta.get("kind") == "tower_mix":
        from pinclip.eval.ensemble import EnsembleEncoder

        return EnsembleEncoder(path, device)
    if meta.get("kind") == "bm25":
        from pinclip.baselines.bm25 import BM25Ranker

        return BM25Ranker(path)
    if meta.get("vlm_version"):  # a VLM backbone, trained or zero-shot (pinclip.baselines.vlm_embedder)
        from pinclip.eval.vlm_encoder import VLMEncoder

        return VLMEncoder(path, device)
    return ModelEncoder(path, device)
