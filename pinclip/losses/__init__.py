"""Training losses (docs/training.md, "The terms"): each returns a dict of named scalar terms."""

from pinclip.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world
from pinclip.losses.image_text import (
    image_text_loss,
    initial_logit_scale_and_bias,
    multi_positive_contrastive,
)
from pinclip.losses.matryoshka import fake_quant_global_affine, matryoshka_loss
from pinclip.losses.neighbor import neighbor_loss

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "fake_quant_global_affine",
    "image_text_loss",
    "initial_logit_scale_and_bias",
    "matryoshka_loss",
    "multi_positive_contrastive",
    "neighbor_loss",
    "rank_and_world",
]
