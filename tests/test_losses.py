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
    initial_logit_scale_and_bias,
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


def _softmax_nll(logits: list[float], positive: int, candidates: list[int]) -> float:
    return -(logits[positive] - math.log(sum(math.exp(logits[j]) for j in candidates)))


def test_neighbor_loss_by_hand_with_anchors_as_negatives_and_a_shared_board():
    # rows [a0, a1, p0, p1]: a0 <-> p0 and a1 <-> p1 are neighbor pairs; a0 and p1 share a board
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]])
    positive = torch.tensor([2, 3, 0, 1])
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 3] = ignore[3, 0] = True
    loss = neighbor_loss(x, positive, ignore, torch.tensor(0.0))["neighbor"]
    dots = (x @ x.T).tolist()
    expected = (_softmax_nll(dots[0], 2, [1, 2])  # a0: not itself, not p1 (shared board)
                + _softmax_nll(dots[1], 3, [0, 2, 3])
                + _softmax_nll(dots[2], 0, [0, 1, 3])
                + _softmax_nll(dots[3], 1, [1, 2])) / 4  # p1: not itself, not a0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_neighbor_loss_skips_rows_without_a_positive_and_corrects_by_log_q():
    x = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    positive = torch.tensor([2, -1, 0, -1])  # anchor 1 has no neighbor: rows 1 and 3 are not queries
    log_q = torch.tensor([0.0, -1.0, -2.0, -0.5])
    loss = neighbor_loss(x, positive, None, torch.tensor(math.log(5.0)), log_q=log_q)["neighbor"]
    logits = (5 * x @ x.T - log_q[None, :]).tolist()
    expected = (_softmax_nll(logits[0], 2, [1, 2, 3]) + _softmax_nll(logits[2], 0, [0, 1, 3])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_neighbor_loss_with_an_empty_bank_equals_the_in_batch_loss_and_a_bank_adds_negatives():
    gen = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(6, 4, generator=gen), dim=-1)
    positive = torch.tensor([3, 4, 5, 0, 1, 2])
    ignore = torch.rand(6, 6, generator=gen) > 0.7
    scale = torch.tensor(1.0)
    in_batch = neighbor_loss(x, positive, ignore, scale)["neighbor"]
    empty = neighbor_loss(x, positive, ignore, scale, bank=torch.zeros(0, 4), bank_ignore=torch.zeros(6, 0, dtype=torch.bool))
    assert empty["neighbor"].item() == in_batch.item()
    bank = F.normalize(torch.randn(5, 4, generator=gen), dim=-1)
    with_bank = neighbor_loss(x, positive, ignore, scale, bank=bank)["neighbor"]
    assert with_bank.item() > in_batch.item()  # more negatives, never fewer
    all_ignored = neighbor_loss(x, positive, ignore, scale, bank=bank,
                                bank_ignore=torch.ones(6, 5, dtype=torch.bool))["neighbor"]
    assert all_ignored.item() == pytest.approx(in_batch.item(), rel=1e-6)


def test_bank_gets_no_gradient():
    from pinclip.losses.memory import EmbeddingMemory

    memory = EmbeddingMemory(size=3, dim=2)
    memory.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([7, 8]))
    memory.push(torch.tensor([[0.6, 0.8], [0.8, 0.6]]), torch.tensor([9, 10]), torch.tensor([-1.0, -2.0]))
    assert memory.pins.tolist() == [8, 9, 10] and memory.log_q.tolist() == [0.0, -1.0, -2.0]  # FIFO of 3
    bank = memory.embeddings.clone().requires_grad_(True)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    neighbor_loss(x, torch.tensor([1, 0]), None, torch.tensor(0.0), bank=bank)["neighbor"].backward()
    assert bank.grad is None and x.grad is not None


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
    with pytest.raises(ValueError, match="ignore"):
        neighbor_loss(query, torch.zeros(len(query), dtype=torch.long), torch.ones(5, 4, dtype=torch.bool), torch.tensor(0.0))
    with pytest.raises(ValueError, match="positive"):
        neighbor_loss(query, torch.full((len(query),), 99), None, torch.tensor(0.0))
    with pytest.raises(ValueError, match="positive scale"):
        fake_quant_global_affine(query, 0.0, 0)


def test_initial_scales_and_biases_by_mode():
    assert initial_logit_scale_and_bias("infonce") == (pytest.approx(math.log(1 / 0.07)), 0.0)
    assert initial_logit_scale_and_bias("siglip", batch_size=2)[1] == pytest.approx(-math.log(2))
    assert initial_logit_scale_and_bias("siglip", batch_size=1)[1] == -10.0  # log 1 = 0 says nothing
    with pytest.raises(ValueError, match="unknown contrastive mode"):
        initial_logit_scale_and_bias("triplet")


def test_memory_is_a_fifo_that_survives_a_state_round_trip():
    from pinclip.losses.memory import EmbeddingMemory

    with pytest.raises(ValueError, match="memory size"):
        EmbeddingMemory(size=-1, dim=2)
    empty = EmbeddingMemory(size=4, dim=3)
    assert len(empty) == 0 and empty.embeddings.shape == (0, 3) and empty.pins.dtype == torch.long
    off = EmbeddingMemory(size=0, dim=3)
    off.push(torch.ones(2, 3), torch.tensor([1, 2]))
    assert len(off) == 0  # size 0: no bank
    memory = EmbeddingMemory(size=4, dim=3)
    for step in range(3):  # 3 pushes of 2 rows: the last 4 stay
        memory.push(torch.full((2, 3), float(step)), torch.tensor([2 * step, 2 * step + 1]))
    assert len(memory) == 4 and memory.embeddings[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert memory.pins.tolist() == [2, 3, 4, 5] and memory.log_q.tolist() == [0.0] * 4
    again = EmbeddingMemory(size=4, dim=3)
    again.load_state_dict(memory.state_dict())
    for name in ("embeddings", "pins", "log_q"):
        assert torch.equal(getattr(again, name), getattr(memory, name))
    assert set(memory.state_dict()) == {"embeddings", "pins", "log_q"}


def test_memory_keeps_its_device_and_aligns_pins_before_it_is_full():
    from pinclip.losses.memory import EmbeddingMemory

    memory = EmbeddingMemory(size=4, dim=3, device="meta")  # a device without data: only placement is checked
    assert {t.device.type for t in (memory.embeddings, memory.pins, memory.log_q)} == {"meta"}
    memory.push(torch.ones(2, 3, device="meta"), torch.tensor([5, 6], device="meta"))
    assert memory.log_q.device.type == "meta" and memory.pins.shape == (2,) and memory.log_q.shape == (2,)
    cpu = EmbeddingMemory(size=4, dim=3)
    cpu.push(torch.ones(2, 3), torch.tensor([5, 6]))
    assert cpu.pins.tolist() == [5, 6] and cpu.log_q.tolist() == [0.0, 0.0]  # nothing before the first push
    memory.load_state_dict(cpu.state_dict())
    assert {t.device.type for t in (memory.embeddings, memory.pins, memory.log_q)} == {"meta"}


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_a_pin_whose_fields_weigh_less_than_one_in_total_matches_the_loops(mode):
    query, keys, mask = random_batch(7)
    mask[2] = torch.tensor([False, True, False])  # only a field of weight 0.5
    weights = torch.tensor([1.0, 0.5, 2.0])
    loss = multi_positive_contrastive(query, keys, mask, torch.tensor(1.0), torch.tensor(-1.0), weights, mode=mode)
    expected = reference_multi_positive(query, keys, mask, weights.tolist(), math.e, -1.0, mode)
    assert loss["image_text"].item() == pytest.approx(expected, rel=1e-5)


def test_image_text_loss_passes_weights_and_chunks_on():
    query, keys, mask = random_batch(8)
    weights = torch.tensor([2.0, 0.5, 1.0])
    direct = multi_positive_contrastive(query, keys, mask, torch.tensor(1.0), torch.tensor(-1.0), weights, "infonce")
    wrapped = image_text_loss(query, keys, mask, torch.tensor(1.0), torch.tensor(-1.0), weights, "infonce", chunk_size=2)
    assert list(wrapped) == ["image_text"]
    assert wrapped["image_text"].item() == pytest.approx(direct["image_text"].item(), rel=1e-6)
