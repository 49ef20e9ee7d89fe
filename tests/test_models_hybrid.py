"""The hybrid pin (late fusion + a zero-init gated fused correction) and modality-balanced pooling."""

from __future__ import annotations

import numpy as np
import torch
from test_models import TEXTS, tiny_batch, tiny_model

from pinclip.models.pinclip import hybrid_pin, late_fusion, modality_weights
from pinclip.models.text_states import compute_text_states, text_batch


def test_the_gate_at_zero_gives_exactly_the_late_fusion_pin():
    model = tiny_model(**{"model.pin_mode": "hybrid"}).eval()
    assert model.pin_gate.item() == 0.0
    batch = tiny_batch(model)
    with torch.no_grad():
        out = model(batch, modes=("pin",))
        late = late_fusion(out["image"], batch["has_image"], out["text"], out["text_mask"])
    assert torch.allclose(out["pin"], late, atol=1e-6, rtol=0)  # up to re-normalizing a unit vector


def test_a_nonzero_gate_adds_the_fused_pass_by_its_formula():
    model = tiny_model(**{"model.pin_mode": "hybrid"}).eval()
    with torch.no_grad():
        model.pin_gate.fill_(0.7)
        batch = tiny_batch(model)
        out = model(batch, modes=("pin",))
        late = late_fusion(out["image"], batch["has_image"], out["text"], out["text_mask"])
        fused = model.encode_pin(batch)
        by_hand = late + np.tanh(0.7) * fused
        by_hand = by_hand / by_hand.norm(dim=-1, keepdim=True)
    assert torch.allclose(out["pin"], by_hand, atol=1e-6)
    assert not torch.allclose(out["pin"], late, atol=1e-3)


def test_the_gate_learns_from_step_zero():
    model = tiny_model(**{"model.pin_mode": "hybrid"})
    out = model(tiny_batch(model), modes=("pin",))
    (out["pin"] * torch.linspace(-1, 1, out["pin"].shape[1])).sum().backward()
    assert model.pin_gate.grad is not None and float(model.pin_gate.grad.abs()) > 0


def test_title_only_and_image_only_pins_take_their_trained_path():
    """The late part of a hybrid pin reads the fields the fused pass keeps: a pin whose fused input is
    its title alone (field dropout in training, the title regime at serving) is late-fused from its
    image and its title only, and a pin kept without text from its image only."""
    model = tiny_model(**{"model.pin_mode": "hybrid"}).eval()
    states = compute_text_states(model.backbone, TEXTS, progress=False)
    keep = np.array([[True, False, False, False, False],   # title only
                     [False] * 5,                           # no text: an image-only pin
                     [True, True, True, True, True]])
    batch = text_batch(states, np.arange(3), pin_keep=keep)
    batch["vis"] = torch.randn(3, model.num_visual, model.vision.out_channels, generator=torch.Generator().manual_seed(1))
    batch["has_image"] = torch.tensor([True, True, True])
    with torch.no_grad():
        out = model(batch)
    assert batch["pin_fields"].tolist() == [[True, False, False, False, False], [False] * 5,
                                            [True, False, False, False, False]]
    title_only = out["image"][0] + out["text"][0, 0]
    assert torch.allclose(out["pin"][0], title_only / title_only.norm(), atol=1e-6)
    assert torch.allclose(out["pin"][1], out["image"][1], atol=1e-6)


def test_modality_weights_are_half_image_half_text_whatever_the_token_counts():
    # [summary, v, v, t, t, t, t, t, t, pad]: 2 visual tokens, 6 text tokens
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],    # title of one token
                         [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],    # no text: image alone
                         [1, 0, 0, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)  # no image: text alone
    w = modality_weights(mask, text_start=3)
    assert torch.allclose(w[0], torch.tensor([0, 1 / 4, 1 / 4] + [1 / 12] * 6 + [0]))
    assert torch.allclose(w[1], torch.tensor([0, 1 / 4, 1 / 4, 1 / 2] + [0] * 6))
    assert torch.allclose(w[2], torch.tensor([0, 1 / 2, 1 / 2] + [0] * 7))
    assert torch.allclose(w[3], torch.tensor([0, 0, 0, 1 / 2, 1 / 2] + [0] * 5))
    assert torch.allclose(w.sum(1), torch.ones(4))


def test_balanced_pooling_changes_only_the_fused_pass():
    plain, balanced = tiny_model(), tiny_model(**{"model.pool_balance": "true"})
    balanced.load_state_dict(plain.state_dict())
    batch = tiny_batch(plain)
    with torch.no_grad():
        a, b = plain.eval()(batch), balanced.eval()(batch)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    assert not torch.allclose(a["pin"], b["pin"], atol=1e-4)


def test_hybrid_pin_of_a_zero_gate_is_the_unit_late_pin():
    late = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert torch.equal(hybrid_pin(late, torch.randn(4, 8), torch.zeros(())), torch.nn.functional.normalize(late, dim=-1))
    assert torch.allclose(hybrid_pin(late, torch.randn(4, 8), torch.zeros(())), late, atol=1e-6, rtol=0)
