"""Baselines: the recipes a platform would otherwise use, as models like any other.

    pinclip eval --run runs/demo --baselines all --seeds 3      # make what is missing, then evaluate

Each baseline is a folder that `pinclip eval --checkpoint` loads like a PinCLIP checkpoint. The
untrained ones are written at once; the trained ones are PinCLIP's own trainer on the same data, steps,
batch and token budget, with the config changes below (relative to the PinCLIP config they are
compared with, so every other setting is shared):

| name              | what                                                                          |
|-------------------|-------------------------------------------------------------------------------|
| bm25              | lexical retrieval over pin text (bm25s, stemmed): where it wins, a task is     |
|                   | lexically solvable                                                            |
| frozen            | the pretrained towers, no alignment, the same tokens per field                |
| lit               | two towers: image <-> every text field (multi-positive), no fused pass, a pin = |
|                   | unit(unit image + unit mean text) (late fusion, the CLIP-embedding recipe)    |
| lit_neighbor      | lit + PinCLIP's graph terms (neighbor loss, board titles) on its late-fused pin |
| fused_no_neighbor | PinCLIP without its graph terms (its pin as PinCLIP forms it: the VLM-embedding |
|                   | recipe when the run's pin is fused, the hybrid pin when it is hybrid)          |

"The graph terms" are the losses whose targets come from the Pin-Board graph: the neighbor loss, the
image-neighbor loss and the board-title term. Batches are built alike for every trained model (anchors,
their graph partners, hard negatives when the config has them), so each model sees the same pins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Baseline:
    name: str
    trained: bool
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)  # config changes of a trained baseline


NO_GRAPH: dict[str, float] = {"neighbor_weight": 0.0, "image_neighbor_weight": 0.0, "board_weight": 0.0}

BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("bm25", False, "lexical retrieval over pin text (bm25s, English stop words, stemmed)"),
    Baseline("frozen", False, "pretrained towers, no alignment (mean-pooled text, pooled image features)"),
    Baseline("lit", True, "two towers, image <-> every text field, late-fusion pin",
             {"model": {"pin_mode": "late"}, "loss": {"pin_text_weight": 0.0, **NO_GRAPH}}),
    Baseline("lit_neighbor", True, "two towers + the graph terms on the late-fused pin",
             {"model": {"pin_mode": "late"}, "loss": {"pin_text_weight": 0.0}}),
    Baseline("fused_no_neighbor", True, "PinCLIP without its graph terms",
             {"loss": dict(NO_GRAPH)}),
)}
TRAINED: tuple[str, ...] = tuple(n for n, b in BASELINES.items() if b.trained)
UNTRAINED: tuple[str, ...] = tuple(n for n, b in BASELINES.items() if not b.trained)


def create_untrained(name: str, base_cfg: Any, folder: Any) -> Any:
    """Write an untrained baseline's folder for the towers of base_cfg; returns it."""
    if name == "bm25":
        from pinclip.baselines.bm25 import create_bm25

        return create_bm25(folder)
    from pinclip.baselines.frozen import create_frozen

    return create_frozen(base_cfg, folder)
