"""Frozen backbone states of every pin's text fields, stored ragged, and batches built from them.

The backbone's layers below the entry layer see only text and are frozen, so their output per
(pin, field) is computed once (`compute_text_states`) and reused every step; a batch gathers:
  - per-field sequences for text-only embeddings (one row per present (pin, field) pair), and
  - each pin's present fields packed into one sequence, tagged by field, for the fused embedding.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pinclip.data.schema import TEXT_FIELDS, field_text
from pinclip.models.backbone import Backbone


@dataclass
class TextStates:
    """Ragged states: pin p's field f is tokens[start[p, f] : start[p, f] + length[p, f]]."""

    tokens: np.ndarray  # (T_total, W) float16
    start: np.ndarray  # (P, F) int64
    length: np.ndarray  # (P, F) int32, 0 = field missing

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, tokens=self.tokens, start=self.start, length=self.length)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> TextStates:
        with np.load(path) as d:
            return cls(d["tokens"], d["start"], d["length"])


def field_strings(fields: dict[str, list], num_pins: int) -> list[list[str]]:
    """(P, F) strings, '' for a missing field."""
    cols = [[field_text(v) for v in fields.get(f, [None] * num_pins)] for f in TEXT_FIELDS]
    return [list(row) for row in zip(*cols)]


@torch.no_grad()
def compute_text_states(backbone: Backbone, texts: list[list[str]], batch_size: int = 256,
                        cache_dir: str | Path | None = None, progress: bool = True) -> TextStates:
    """Entry-layer states for texts (P, F) of strings; cached on disk keyed by backbone and texts."""
    path = None
    if cache_dir is not None:
        h = hashlib.sha1(f"{backbone.version}|{backbone.entry}|{backbone.cfg.max_field_tokens}".encode())
        for row in texts:
            h.update("\x1f".join(row).encode() + b"\x1e")
        path = Path(cache_dir) / "text" / f"{h.hexdigest()[:16]}.npz"
        if path.is_file():
            return TextStates.load(path)
    num_pins, num_fields = len(texts), len(TEXT_FIELDS)
    pairs = [(p, f) for p in range(num_pins) for f in range(num_fields) if texts[p][f]]
    pairs.sort(key=lambda pf: len(texts[pf[0]][pf[1]]))  # length bucketing: less padding
    chunks: list[np.ndarray] = []
    start = np.full((num_pins, num_fields), -1, np.int64)
    length = np.zeros((num_pins, num_fields), np.int32)
    offset = 0
    device = next(backbone.parameters()).device
    for i in tqdm(range(0, len(pairs), batch_size), desc="text states", unit="batch", disable=not progress or None):
        batch = pairs[i : i + batch_size]
        ids, mask = backbone.tokenize([texts[p][f] for p, f in batch])
        hidden = backbone.encode_prefix(ids.to(device), mask.to(device)).float().cpu().numpy()  # (B, L, W)
        lengths = mask.sum(1).numpy()
        for (p, f), h, n in zip(batch, hidden, lengths):
            chunks.append(h[:n].astype(np.float16))
            start[p, f], length[p, f] = offset, n
            offset += n
    tokens = np.concatenate(chunks) if chunks else np.zeros((0, backbone.width), np.float16)
    states = TextStates(tokens, start, length)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        states.save(path)
    return states


def text_batch(states: TextStates, rows: np.ndarray, pin_keep: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for pins `rows` (B,):
    field_states (N, L, W), field_mask (N, L), field_pin (N,), field_id (N,)  -- text-only rows
    pin_states (B, Lp, W), pin_mask (B, Lp), pin_field_ids (B, Lp)             -- packed per pin
    pin_keep (B, F) bool, optional: the fields packed for the fused pass (the others are left out of it,
    not of the text-only rows): field dropout in training. pin_fields (B, F) bool: the fields packed.
    """
    width = states.tokens.shape[1]
    lengths = states.length[rows]  # (B, F)
    packed = lengths if pin_keep is None else lengths * pin_keep  # (B, F) lengths in the fused pass
    pin_idx, field_idx = np.nonzero(lengths)
    max_len = int(lengths.max()) if lengths.size else 0
    field_states = np.zeros((len(pin_idx), max(max_len, 1), width), np.float32)
    field_mask = np.zeros((len(pin_idx), max(max_len, 1)), bool)
    packed_len = max(int(packed.sum(1).max()) if packed.size else 0, 1)
    pin_states = np.zeros((len(rows), packed_len, width), np.float32)
    pin_mask = np.zeros((len(rows), packed_len), bool)
    pin_field_ids = np.zeros((len(rows), packed_len), np.int64)
    fill = np.zeros(len(rows), np.int64)
    for n, (b, f) in enumerate(zip(pin_idx, field_idx)):
        s, k = states.start[rows[b], f], lengths[b, f]
        tok = states.tokens[s : s + k]
        field_states[n, :k], field_mask[n, :k] = tok, True
        if not packed[b, f]:
            continue
        pin_states[b, fill[b] : fill[b] + k] = tok
        pin_mask[b, fill[b] : fill[b] + k] = True
        pin_field_ids[b, fill[b] : fill[b] + k] = f
        fill[b] += k
    return {
        "field_states": torch.from_numpy(field_states), "field_mask": torch.from_numpy(field_mask),
        "field_pin": torch.from_numpy(pin_idx.astype(np.int64)), "field_id": torch.from_numpy(field_idx.astype(np.int64)),
        "pin_states": torch.from_numpy(pin_states), "pin_mask": torch.from_numpy(pin_mask),
        "pin_field_ids": torch.from_numpy(pin_field_ids), "pin_fields": torch.from_numpy(packed > 0),
    }
