"""Tests for the training losses (pinclip.losses): hand-computed values, masking, chunking, Matryoshka, STE."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from pinclip.losses import (
    all_gather_with_grad,
    fake_quant_global_affine,
    image_text_loss,
    matryoshka_loss,
    multi_positive_contrastive,
    neighbor_loss,
    rank_and_world,
)

LOG10 = math.log(10.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def two_by_two() -> tuple[torch.Tensor, torch.Tensor]:
    """Queries e1, e2 and one field per pin: k0 = e1, k1 = (0.6, 0.8). Dots: [[1, .6], [0, .8]]."""
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[[1.0, 0.0]], [[0.6, 0.8]]])
    return query, keys


def test_siglip_two_by_two_by_hand():
    query, keys = two_by_two()
    loss = image_text_loss(
        query, keys, torch.ones(2, 1, dtype=torch.bool), torch.tensor(LOG10), torch.tensor(-10.0)
    )
    # logits = 10 * dot - 10 = [[0, -4], [-10, -2]]; positives on the diagonal
    # -log sigmoid(y * z) = softplus(-y * z)
    expected = (softplus(-0.0) + softplus(-4.0) + softplus(-10.0) + softplus(2.0)) / 2
    assert loss["image_text"].item() == pytest.approx(expected, rel=1e-6)


def test_infonce_two_by_two_by_hand():
    query, keys = two_by_two()
    loss = image_text_loss(
        query, keys, torch.ones(2, 1, dtype=torch.bool), torch.tensor(LOG10), mode="infonce"
    )  # logits 10 * [[1, .6], [0, .8]]
    image_to_text = -math.log(math.exp(10) / (math.exp(10) + math.exp(6))) - math.log(
        math.exp(8) / (math.exp(0) + math.exp(8))
    )
    text_to_image = -math.log(math.exp(10) / (math.exp(10) + math.exp(0))) - math.log(
        math.exp(8) / (math.exp(6) + math.exp(8))
    )
    assert loss["image_text"].item() == pytest.approx((image_to_text + text_to_image) / 4, rel=1e-6)


def reference_multi_positive(query, keys, mask, weights, scale, bias, mode) -> float:
    """Plain loops over (query i, pin j, field f) following the module docstring."""
    batch, fields, _ = keys.shape
    dot = lambda a, b: float(a @ b)  # noqa: E731
    present = [[bool(mask[j, f]) and weights[f] > 0 for f in range(fields)] for j in range(batch)]
    if mode == "siglip":
        total = 0.0
        for i in range(batch):
            for j in range(batch):
                norm = sum(weights[f] for f in range(fields) if present[j][f])
                for f in range(fields):
                    if present[j][f]:
                        z = scale * dot(query[i], keys[j, f]) + bias
                        total += weights[f] / norm * softplus(-z if i == j else z)
        return total / batch
    valid = [j for j in range(batch) if any(present[j])]
    query_side = key_side = 0.0
    for i in valid:
        norm = sum(weights[f] for f in range(fields) if present[i][f])
        all_keys = [
            scale * dot(query[i], keys[j, f]) for j in range(batch) for f in range(fields) if mask[j, f]
        ]
        log_z = math.log(sum(math.exp(z) for z in all_keys))
        for f in range(fields):
            if present[i][f]:
                query_side += weights[f] / norm * (log_z - scale * dot(query[i], keys[i, f]))
                log_z_key = math.log(sum(math.exp(scale * dot(query[n], keys[i, f])) for n in range(batch)))
                key_side += weights[f] / norm * (log_z_key - scale * dot(query[i], keys[i, f]))
    return (query_side + key_side) / (2 * len(valid))


def random_batch(seed: int, batch: int = 5, fields: int = 3, dim: int = 6):
    gen = torch.Generator().manual_seed(seed)
    query = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1)
    keys = F.normalize(torch.randn(batch, fields, dim, generator=gen), dim=-1)
    mask = torch.rand(batch, fields, generator=gen) > 0.35
    mask[0] = False  # a pin without any text
    mask[1] = True
    return query, keys, mask


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_multi_positive_matches_plain_loops(mode):
    query, keys, mask = random_batch(0)
    weights = torch.tensor([1.0, 0.5, 2.0])
    loss = multi_positive_contrastive(
        query, keys, mask, torch.tensor(1.5), torch.tensor(-2.0), weights, mode=mode, name="pin_text"
    )
    expected = reference_multi_positive(query, keys, mask, weights.tolist(), math.exp(1.5), -2.0, mode)
    assert list(loss) == ["pin_text"]
    assert loss["pin_text"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_missing_field_has_no_effect_and_zero_gradient(mode):
    query, keys, mask = random_batch(1)
    changed = keys.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), keys.shape[-1]) * 100
    changed[0, 0] = float("nan")  # pin 0 has no present field
    keys.requires_grad_(True)
    changed.requires_grad_(True)
    scale, bias = torch.tensor(LOG10), torch.tensor(-10.0)
    base = multi_positive_contrastive(query, keys, mask, scale, bias, mode=mode)["image_text"]
    other = multi_positive_contrastive(query, changed, mask, scale, bias, mode=mode)["image_text"]
    assert other.item() == pytest.approx(base.item(), rel=1e-6)
    other.backward()
    assert torch.all(changed.grad[~mask] == 0)
    assert changed.grad[mask].abs().sum() > 0


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_zero_field_weight_equals_missing_field(mode):
    query, keys, mask = random_batch(2)
    scale, bias = torch.tensor(2.0), torch.tensor(-3.0)
    weighted = multi_positive_contrastive(query, keys, mask, scale, bias, torch.tensor([1.0, 0.0, 1.0]), mode)
    without = mask.clone()
    without[:, 1] = False
    dropped = multi_positive_contrastive(
        query, keys, without, scale, bias, torch.tensor([1.0, 1.0, 1.0]), mode
    )
    if mode == "siglip":  # a zero weight removes the field's terms, exactly like a missing field
        assert weighted["image_text"].item() == pytest.approx(dropped["image_text"].item(), rel=1e-6)
    else:  # in InfoNCE a zero-weight field still competes as a negative, so only the positives drop
        assert weighted["image_text"].item() != pytest.approx(dropped["image_text"].item(), rel=1e-6)


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_chunked_equals_full_values_and_gradients(mode, chunk_size):
    def loss_and_grads(chunk):
        query, keys, mask = random_batch(3)
        query.requires_grad_(True)
        keys.requires_grad_(True)
        scale = torch.tensor(LOG10, requires_grad=True)
        bias = torch.tensor(-5.0, requires_grad=True)
        loss = multi_positive_contrastive(
            query, keys, mask, scale, bias, torch.tensor([1.0, 0.3, 2.0]), mode, chunk_size=chunk
        )["image_text"]
        loss.backward()
        return loss.detach(), query.grad, keys.grad, scale.grad, bias.grad

    full, chunked = loss_and_grads(None), loss_and_grads(chunk_size)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_neighbor_infonce_with_shared_board_by_hand():
    pins = torch.eye(3)
    neighbors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.8, 0.0, 0.6]])
    share = torch.zeros(3, 3, dtype=torch.bool)
    share[0, 2] = True  # pin 0 and neighbor 2 share a board: dropped in both directions
    share[1, 1] = True  # the positive pair is never dropped
    loss = neighbor_loss(pins, neighbors, share, torch.tensor(0.0), mode="infonce")["neighbor"]
    # scale 1: logits pin->neighbor = P @ N^T = N^T
    logits = neighbors.T.tolist()
    e = math.exp
    pin_side = (
        -math.log(e(logits[0][0]) / (e(logits[0][0]) + e(logits[0][1])))
        - math.log(e(logits[1][1]) / sum(e(v) for v in logits[1]))
        - math.log(e(logits[2][2]) / sum(e(v) for v in logits[2]))
    )
    cols = neighbors.tolist()  # neighbor->pin logits = N @ P^T = N
    neighbor_side = (
        -math.log(e(cols[0][0]) / sum(e(v) for v in cols[0]))
        - math.log(e(cols[1][1]) / sum(e(v) for v in cols[1]))
        - math.log(e(cols[2][2]) / (e(cols[2][1]) + e(cols[2][2])))
    )
    assert loss.item() == pytest.approx((pin_side + neighbor_side) / 6, rel=1e-6)


def test_neighbor_siglip_drops_shared_board_pairs():
    gen = torch.Generator().manual_seed(4)
    pins = F.normalize(torch.randn(4, 5, generator=gen), dim=-1)
    neighbors = F.normalize(torch.randn(4, 5, generator=gen), dim=-1)
    share = torch.rand(4, 4, generator=gen) > 0.5
    scale, bias = torch.tensor(LOG10), torch.tensor(-10.0)
    loss = neighbor_loss(pins, neighbors, share, scale, bias, mode="siglip")["neighbor"]
    logits = (10 * pins @ neighbors.T - 10).tolist()
    expected = sum(
        softplus(-logits[i][j] if i == j else logits[i][j])
        for i in range(4)
        for j in range(4)
        if i == j or not share[i, j]
    )
    assert loss.item() == pytest.approx(expected / 4, rel=1e-6)
    unmasked = neighbor_loss(pins, neighbors, None, scale, bias, mode="siglip")["neighbor"]
    assert unmasked.item() > loss.item()


def test_matryoshka_sums_per_prefix_terms():
    query, keys, mask = random_batch(5, dim=8)
    loss_fn = partial(image_text_loss, field_mask=mask, logit_scale=torch.tensor(LOG10))
    out = matryoshka_loss(loss_fn, {"img": query, "txt": keys}, dims=(8, 4, 2), weights=(1.0, 0.5, 0.25))
    assert set(out) == {"image_text", "image_text@8", "image_text@4", "image_text@2"}
    manual = {
        d: image_text_loss(
            F.normalize(query[:, :d], dim=-1), F.normalize(keys[..., :d], dim=-1), mask, torch.tensor(LOG10)
        )["image_text"]
        for d in (8, 4, 2)
    }
    for d in (8, 4, 2):
        torch.testing.assert_close(out[f"image_text@{d}"], manual[d])
    torch.testing.assert_close(out["image_text"], manual[8] + 0.5 * manual[4] + 0.25 * manual[2])
    with pytest.raises(ValueError, match="exceeds the 8 dims"):
        matryoshka_loss(loss_fn, {"img": query, "txt": keys}, dims=(16,))


def test_fake_quant_matches_torch_and_has_straight_through_gradient():
    scale, zero_point = 1 / 64, 3
    x = torch.tensor([-3.0, -0.3, 0.0, 0.2501, 0.5, 1.9, 2.5], requires_grad=True)
    y = fake_quant_global_affine(x, scale, zero_point)
    reference = torch.fake_quantize_per_tensor_affine(x.detach(), scale, zero_point, -128, 127)
    torch.testing.assert_close(y.detach(), reference)
    # codes round(x * 64) + 3 in [-128, 127]: x in [-2.05, 1.94] passes; -3.0 and 2.5 clip
    assert y.detach()[3].item() == pytest.approx(16 / 64)
    assert y.detach()[0].item() == pytest.approx((-128 - 3) / 64)
    weights = torch.arange(1.0, 8.0)
    (y * weights).sum().backward()
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]


def test_single_process_gather_is_identity():
    x = torch.randn(3, 4)
    assert rank_and_world() == (0, 1)
    assert all_gather_with_grad(x) is x


def test_bad_inputs_are_reported():
    query, keys, mask = random_batch(6)
    with pytest.raises(ValueError, match="unknown contrastive mode 'clip'"):
        multi_positive_contrastive(query, keys, mask, torch.tensor(0.0), mode="clip")
    with pytest.raises(ValueError, match="key_mask"):
        multi_positive_contrastive(query, keys, mask[:, :2], torch.tensor(0.0))
    with pytest.raises(ValueError, match="share_board"):
        neighbor_loss(query, query, torch.ones(5, 4, dtype=torch.bool), torch.tensor(0.0))
    with pytest.raises(ValueError, match="positive scale"):
        fake_quant_global_affine(query, 0.0, 0)
