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


def test_image_text_loss_passes_its_chunk_size_on():
    """image_text_loss forwards chunk_size to the chunked computation: a chunk size below 1 is refused
    there (a dropped chunk_size would silently compute the full loss instead)."""
    query, keys, mask = random_batch(9)
    with pytest.raises(ValueError, match=r"^chunk_size must be >= 1, got 0$"):
        image_text_loss(query, keys, mask, torch.tensor(1.0), chunk_size=0)


def test_infonce_in_float16_ignores_a_missing_positive_whose_log_prob_underflows():
    """In float16 the masked logit of a missing field (finfo.min = -65504) minus a log-normalizer above 16
    overflows to -inf; the missing field has weight 0 and must stay out of its pin's average (0 * -inf
    would be nan). The value is the float64 hand computation."""
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.6, 0.8], [0.0, 0.0]]])
    mask = torch.tensor([[True, True], [True, False]])  # pin 1 has only field 0
    loss = multi_positive_contrastive(query.half(), keys.half(), mask, torch.tensor(math.log(100.0)), mode="infonce")
    # logits 100 * dot: q0 -> [100, 60 | 60], q1 -> [0, 80 | 80]; k00 -> [100, 0], k01 -> [60, 80], k10 -> [60, 80]
    lse = lambda *z: math.log(sum(math.exp(v) for v in z))  # noqa: E731
    query_to_key = ((lse(100, 60, 60) - 100) + (lse(100, 60, 60) - 60)) / 2 + (lse(0, 80, 80) - 80)
    key_to_query = ((lse(100, 0) - 100) + (lse(60, 80) - 60)) / 2 + (lse(60, 80) - 80)
    value = loss["image_text"].item()
    assert math.isfinite(value)
    assert value == pytest.approx((query_to_key + key_to_query) / 4, rel=2e-3)


class ShardedWorld:
    """torch.distributed's all_gather as rank `rank` of `world` sees it, for a global batch the test holds:
    given this rank's shard of one of the registered global tensors (N, ...), it fills in every rank's
    shard of that tensor, in rank order (bool tensors travel as uint8, as gather sends them). In the backward
    pass every other rank back-propagates `peer_grad` times the gradient this rank does. Like gloo it refuses
    bool tensors and non-contiguous buffers."""

    def __init__(self, rank: int, world: int, *global_tensors: torch.Tensor, peer_grad: float = 1.0) -> None:
        self.rank, self.world, self.tensors, self.peer_grad = rank, world, global_tensors, peer_grad

    def shard(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        b = len(x) // self.world
        return x[rank * b:(rank + 1) * b]

    def all_gather(self, shards: list[torch.Tensor], x: torch.Tensor) -> None:
        assert x.dtype != torch.bool and x.is_contiguous() and len(shards) == self.world
        same_kind = [g for g in self.tensors if g.dtype == x.dtype or (g.dtype == torch.bool and x.dtype == torch.uint8)]
        matches = [g for g in same_kind if g.numel() == self.world * x.numel()
                   and torch.equal(self.shard(g, self.rank).reshape(x.shape).to(x.dtype), x)]
        assert len(matches) == 1, "the gathered tensor must be the shard of exactly one registered tensor"
        for rank, out in enumerate(shards):
            out.copy_(self.shard(matches[0], rank).reshape(x.shape))

    def reduce_scatter_tensor(self, out: torch.Tensor, grad: torch.Tensor) -> None:
        assert grad.is_contiguous() and grad.shape == (self.world * out.shape[0], *out.shape[1:])
        mine = self.shard(grad, self.rank)
        out.copy_(mine + (self.world - 1) * self.peer_grad * mine)  # this rank's shard, summed over ranks

    def install(self, monkeypatch, module) -> None:
        """Make `module` (a loss module) and pinclip.losses.gather run as this rank."""
        from pinclip.losses import gather

        for target in (gather, module):
            monkeypatch.setattr(target, "rank_and_world", lambda: (self.rank, self.world))
        monkeypatch.setattr(gather.dist, "all_gather", self.all_gather)
        monkeypatch.setattr(gather.dist, "reduce_scatter_tensor", self.reduce_scatter_tensor)


def test_two_rank_gather_concatenates_in_rank_order_and_sums_the_shard_gradients(monkeypatch):
    """The collectives' wiring on a simulated world of two, where the peer holds `x + 100` and back-propagates
    three times the gradient rank 0 does (tests/test_gather_distributed.py runs the real thing on two processes)."""
    from pinclip.losses import gather

    x = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([True, False, True, True, True, True])
    ids = torch.tensor([[1, 3], [2, 4], [101, 103], [102, 104]])
    ShardedWorld(0, 2, torch.cat([x.detach(), x.detach() + 100]), mask, ids, peer_grad=3.0).install(monkeypatch, gather)
    y = gather.all_gather_with_grad(x)
    assert y.shape == (6, 4)
    torch.testing.assert_close(y.detach(), torch.cat([x.detach(), x.detach() + 100]))
    w = torch.randn(4, 6).T  # a non-contiguous incoming gradient
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, 4 * w[:3])
    mask = gather.all_gather_no_grad(torch.tensor([True, False, True]))
    assert mask.dtype == torch.bool and mask.tolist() == [True, False, True, True, True, True]
    ids = gather.all_gather_no_grad(torch.tensor([[1, 2], [3, 4]]).T)  # non-contiguous ids
    assert ids.dtype == torch.int64 and ids.tolist() == [[1, 3], [2, 4], [101, 103], [102, 104]]


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_mean_over_two_ranks_of_the_contrastive_loss_equals_the_one_process_loss(monkeypatch, mode):
    """The module's promise for data parallelism: with the batch split over two ranks (each scoring its
    rows against the gathered batch), the mean of the two rank losses is the loss of the whole batch in
    one process; so every rank must find its own rows' positives (global ids rank * B + i) and count the
    pins with a positive over the global batch."""
    from pinclip.losses import image_text

    query, keys, mask = random_batch(10, batch=6)
    mask[4] = False  # a pin without text on rank 1 too
    keys = keys.masked_fill(~mask[..., None], 0.0)  # what each rank sends for its missing fields
    weights = torch.tensor([1.0, 0.5, 2.0])
    ignore = torch.zeros(6, 6, dtype=torch.bool)
    ignore[1, 3] = ignore[3, 1] = True  # duplicates across the two ranks
    scale, bias = torch.tensor(1.5), torch.tensor(-2.0)
    whole = multi_positive_contrastive(query, keys, mask, scale, bias, weights, mode, ignore=ignore)["image_text"]
    per_rank = []
    for rank in (0, 1):
        with monkeypatch.context() as patch:
            world = ShardedWorld(rank, 2, query, keys, mask)
            world.install(patch, image_text)
            rows = slice(3 * rank, 3 * rank + 3)
            per_rank.append(multi_positive_contrastive(
                query[rows], keys[rows], mask[rows], scale, bias, weights, mode, ignore=ignore)["image_text"].item())
    assert per_rank[0] != pytest.approx(per_rank[1], rel=1e-3)  # the ranks hold different rows
    assert sum(per_rank) / 2 == pytest.approx(whole.item(), rel=1e-5)


def reference_distillation(student, teacher, valid, tau) -> float:
    """Plain loops: KL(teacher || student) of each valid row's softmax over the other valid rows of
    sim / tau, averaged over the valid rows that have another valid row."""
    rows = [i for i in range(len(student)) if valid[i]]
    kls = []
    for i in rows:
        others = [j for j in rows if j != i]
        if not others:
            continue
        t = [float(teacher[i] @ teacher[j]) / tau for j in others]
        s = [float(student[i] @ student[j]) / tau for j in others]
        log_zt, log_zs = math.log(sum(map(math.exp, t))), math.log(sum(map(math.exp, s)))
        kls.append(sum(math.exp(a - log_zt) * ((a - log_zt) - (b - log_zs)) for a, b in zip(t, s)))
    return sum(kls) / max(len(kls), 1)


def distill_batch(seed: int, rows: int = 6):
    gen = torch.Generator().manual_seed(seed)
    student = F.normalize(torch.randn(rows, 4, generator=gen), dim=-1)
    teacher = F.normalize(torch.randn(rows, 7, generator=gen), dim=-1)  # another width
    return student, teacher


def test_relational_distillation_matches_plain_loops_over_the_valid_rows():
    """Each valid row's softmax over the *other valid* rows (itself and invalid rows are no candidates);
    the mean over valid rows of KL(teacher || student); default tau 0.05 and name "distill"."""
    from pinclip.losses.distill import relational_distillation

    student, teacher = distill_batch(0)
    valid = torch.tensor([True, False, True, True, False, True])
    out = relational_distillation(student, teacher, valid, tau=0.5, name="pin_distill")
    assert list(out) == ["pin_distill"]
    assert out["pin_distill"].item() == pytest.approx(reference_distillation(student, teacher, valid, 0.5), rel=1e-5)
    default = relational_distillation(student, teacher)  # every row valid, tau = 0.05
    assert list(default) == ["distill"]
    expected = reference_distillation(student, teacher, [True] * 6, 0.05)
    assert default["distill"].item() == pytest.approx(expected, rel=1e-4)
    as_int = relational_distillation(student, teacher, valid.int(), tau=0.5)["distill"]  # a 0/1 mask works too
    assert as_int.item() == pytest.approx(out["pin_distill"].item(), rel=1e-6)


def test_relational_distillation_is_zero_for_the_same_relations_and_without_two_valid_rows():
    """Only relations count: a teacher whose rows have the student's similarities (here the student
    rotated and padded to another width) gives KL 0; with fewer than two valid rows no row has a
    candidate, and the loss is 0 (not nan)."""
    from pinclip.losses.distill import relational_distillation

    student, _ = distill_batch(1)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(2)))
    same = torch.cat([student @ rotation, torch.zeros(6, 3)], dim=1)  # (6, 7), same Gram matrix
    assert relational_distillation(student, same, tau=0.1)["distill"].item() == pytest.approx(0.0, abs=1e-5)
    _, teacher = distill_batch(1)
    lone = torch.tensor([False, False, True, False, False, False])
    assert relational_distillation(student, teacher, lone)["distill"].item() == 0.0
    nothing = relational_distillation(student, teacher, torch.zeros(6, dtype=torch.bool))["distill"]
    assert nothing.item() == 0.0
    with pytest.raises(ValueError, match=r"^student \(6, 4\) and teacher \(5, 7\) rows differ$"):
        relational_distillation(student, teacher[:5])


def test_mean_over_two_ranks_of_the_distillation_equals_the_one_process_loss(monkeypatch):
    """Each rank scores its rows against the gathered batch (own row at global index rank * b + i)
    and divides by the valid rows per rank; the mean of the rank losses is the whole batch's loss."""
    from pinclip.losses import distill

    student, teacher = distill_batch(3)
    valid = torch.tensor([True, True, False, True, True, True])  # rank 0: 2 valid rows, rank 1: 3
    whole = distill.relational_distillation(student, teacher, valid, tau=0.3)["distill"]
    per_rank = []
    for rank in (0, 1):
        with monkeypatch.context() as patch:
            ShardedWorld(rank, 2, student, teacher, valid).install(patch, distill)
            rows = slice(3 * rank, 3 * rank + 3)
            per_rank.append(distill.relational_distillation(student[rows], teacher[rows], valid[rows], tau=0.3)["distill"].item())
    assert per_rank[0] != pytest.approx(per_rank[1], rel=1e-3)
    assert sum(per_rank) / 2 == pytest.approx(whole.item(), rel=1e-5)


def test_batch_positives_pairs_anchors_with_partners_at_global_indices():
    """Rank 1 of 2, 2 anchors + 2 partners + 1 extra row (b = 5, rows 5..9 of the global batch): anchor i
    <-> partner i where anchor i has a neighbor, -1 elsewhere and for the extra row."""
    from pinclip.losses.neighbor import batch_positives

    out = batch_positives(2, 2, 1, torch.tensor([True, False]), world=2, rank=1)
    assert out.dtype == torch.long and out.tolist() == [7, -1, 5, -1, -1]
    assert batch_positives(3, 3, 0, torch.ones(3, dtype=torch.bool), world=1, rank=0).tolist() == [3, 4, 5, 0, 1, 2]


def test_mean_over_two_ranks_of_the_neighbor_loss_equals_the_one_process_loss(monkeypatch):
    """Rank r scores its rows (global index r * b + i) against the gathered batch and the bank and divides
    by the query rows per rank; the mean of the rank losses is the loss of one process with the whole batch."""
    from pinclip.losses import neighbor

    gen = torch.Generator().manual_seed(4)
    x = F.normalize(torch.randn(8, 3, generator=gen), dim=-1)
    # global layout per rank [a, a, p, p]: rank 0 rows 0..3, rank 1 rows 4..7; anchor 5 has no neighbor
    positive = torch.tensor([2, 3, 0, 1, 6, -1, 4, -1])
    ignore = torch.rand(8, 8, generator=gen) > 0.8
    log_q = -torch.rand(8, generator=gen)
    bank = F.normalize(torch.randn(3, 3, generator=gen), dim=-1)
    bank_ignore = torch.rand(8, 3, generator=gen) > 0.6
    bank_log_q = -torch.rand(3, generator=gen)
    scale = torch.tensor(1.2)
    whole = neighbor.neighbor_loss(x, positive, ignore, scale, log_q, bank, bank_ignore, bank_log_q)["neighbor"]
    per_rank = []
    for rank in (0, 1):
        with monkeypatch.context() as patch:
            ShardedWorld(rank, 2, x, positive).install(patch, neighbor)
            rows = slice(4 * rank, 4 * rank + 4)
            per_rank.append(neighbor.neighbor_loss(x[rows], positive[rows], ignore, scale, log_q, bank, bank_ignore[rows],
                                                   bank_log_q)["neighbor"].item())
    assert per_rank[0] != pytest.approx(per_rank[1], rel=1e-3)
    assert sum(per_rank) / 2 == pytest.approx(whole.item(), rel=1e-5)


def test_relational_distillation_stays_on_the_inputs_device():
    """Without a valid mask every row is valid on the student's device: on the meta device (a device
    without data, so only placement is checked) the loss is computed there, with no CPU tensor mixed in."""
    from pinclip.losses.distill import relational_distillation

    student, teacher = torch.empty(4, 3, device="meta"), torch.empty(4, 5, device="meta")
    loss = relational_distillation(student, teacher)["distill"]
    assert loss.device.type == "meta" and loss.shape == ()


def test_matryoshka_needs_one_weight_per_dim():
    """An empty dims list, or weights that do not pair up with dims, are refused with one message
    (zip would otherwise silently drop the unpaired prefixes)."""
    query, keys, mask = random_batch(11, dim=8)
    loss_fn = partial(image_text_loss, field_mask=mask, logit_scale=torch.tensor(LOG10))
    embeddings = {"img": query, "txt": keys}
    with pytest.raises(ValueError, match=r"^matryoshka: need one weight per dim, got dims \(\) and weights \(\)$"):
        matryoshka_loss(loss_fn, embeddings, dims=())
    with pytest.raises(ValueError, match=r"^matryoshka: need one weight per dim, got dims \(8, 4\) and weights \(1.0,\)$"):
        matryoshka_loss(loss_fn, embeddings, dims=(8, 4), weights=[1.0])


def test_fake_quant_accepts_the_int8_bounds_and_passes_the_gradient_at_them():
    """qmin and qmax are inside the range: a zero point at either bound is valid, and values whose codes
    land exactly on -128 or 127 keep their gradient (like torch's fake quantization); one step beyond clips."""
    scale = 0.5
    for zero_point in (-128, 127):
        # codes round(x / 0.5) + z: x = (q - z) * 0.5 lands on q exactly
        x = torch.tensor([(-128 - zero_point) * scale, (127 - zero_point) * scale], requires_grad=True)
        y = fake_quant_global_affine(x, scale, zero_point)
        torch.testing.assert_close(y.detach(), x.detach())  # on the grid: unchanged
        y.sum().backward()
        assert x.grad.tolist() == [1.0, 1.0]
    x = torch.tensor([-129 * scale, -128 * scale, 127 * scale, 128 * scale], requires_grad=True)
    fake_quant_global_affine(x, scale, 0).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_batch_positives_stay_on_the_mask_device():
    """The positives are built on has_neighbor's device (the meta device checks placement only)."""
    from pinclip.losses.neighbor import batch_positives

    out = batch_positives(2, 2, 1, torch.ones(2, dtype=torch.bool, device="meta"), world=1, rank=0)
    assert out.device.type == "meta" and out.dtype == torch.long and out.shape == (5,)


def test_neighbor_loss_with_a_single_query_row_is_its_own_nll():
    """One query row in the whole batch (its positive, row 2, is not a query itself): the mean over
    query rows is that row's -log softmax at the positive, over every other row."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]])
    loss = neighbor_loss(x, torch.tensor([2, -1, -1, -1]), None, torch.tensor(0.0))["neighbor"]
    # dots of row 0 with rows 1..3: 0, 0.6, 0.8
    expected = -(0.6 - math.log(math.exp(0.0) + math.exp(0.6) + math.exp(0.8)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_neighbor_loss_refuses_out_of_range_positives_and_a_misshapen_bank_mask():
    """positive = N (one past the last global row) is refused; bank_ignore must be (b, M) for the bank given."""
    x = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(5)), dim=-1)
    with pytest.raises(ValueError, match=r"^positive indices must be < N = 4$"):
        neighbor_loss(x, torch.tensor([4, -1, 0, -1]), None, torch.tensor(0.0))
    bank = F.normalize(torch.randn(3, 3, generator=torch.Generator().manual_seed(6)), dim=-1)
    with pytest.raises(ValueError, match=r"^bank_ignore \(4, 2\) should be \(b, M\) = \(4, 3\)$"):
        neighbor_loss(x, torch.tensor([2, 3, 0, 1]), None, torch.tensor(0.0), bank=bank,
                      bank_ignore=torch.zeros(4, 2, dtype=torch.bool))


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_contrastive_loss_stays_on_the_inputs_device(mode):
    """Default field weights, the default ignore mask, the diagonal, the row ids and the SigLIP bias are
    all made on the inputs' device: on the meta device (placement only, no data) the loss is computed
    there, with no CPU tensor mixed in."""
    query, keys = torch.empty(3, 2, device="meta"), torch.empty(3, 2, 2, device="meta")
    mask = torch.ones(3, 2, dtype=torch.bool, device="meta")
    loss = multi_positive_contrastive(query, keys, mask, torch.tensor(1.0, device="meta"), mode=mode)["image_text"]
    assert loss.device.type == "meta" and loss.shape == ()


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_field_weights_take_the_keys_dtype(mode):
    """The (F,) field weights are used in the keys' dtype: float64 embeddings give the float64 loops'
    value to 1e-12 (with default weights, whose 1/3 shares would be rounded in float32, and with float32
    weights, whose shares and sums are then taken in float64), and float32 embeddings give a float32
    loss even with float64 weights."""
    query, keys, mask = random_batch(12)
    query, keys = query.double(), keys.double()
    scale, bias = torch.tensor(1.5, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    assert int(mask.sum(-1).max()) == 3  # a pin with 3 present fields: shares of 1/3
    default = multi_positive_contrastive(query, keys, mask, scale, bias, mode=mode)["image_text"]
    expected = reference_multi_positive(query, keys, mask, [1.0, 1.0, 1.0], math.exp(1.5), -2.0, mode)
    assert default.dtype == torch.float64 and default.item() == pytest.approx(expected, rel=1e-12)
    weights = torch.tensor([1.0, 0.3, 2.0])  # float32
    weighted = multi_positive_contrastive(query, keys, mask, scale, bias, weights, mode)["image_text"]
    # the float32 weights' exact values (0.3 is 0.30000001192...) with float64 arithmetic
    expected = reference_multi_positive(query, keys, mask, weights.double().tolist(), math.exp(1.5), -2.0, mode)
    assert weighted.item() == pytest.approx(expected, rel=1e-12)
    single = multi_positive_contrastive(query.float(), keys.float(), mask, torch.tensor(1.5), torch.tensor(-2.0),
                                        weights.double(), mode)["image_text"]
    assert single.dtype == torch.float32


def test_contrastive_inputs_are_checked():
    """Shapes and field weights are refused with their own messages: a (B, 1, D) query, weights of the
    wrong length, and a negative weight."""
    query, keys, mask = random_batch(13)
    scale = torch.tensor(0.0)
    with pytest.raises(ValueError, match=r"^expected query \(B, D\) and keys \(B, F, D\), got \(5, 1, 6\) and \(5, 3, 6\)$"):
        multi_positive_contrastive(query[:, None], keys, mask, scale)
    with pytest.raises(ValueError, match=r"^field_weights must be 3 non-negative numbers, got \[1.0, 1.0\]$"):
        multi_positive_contrastive(query, keys, mask, scale, field_weights=torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"^field_weights must be 3 non-negative numbers, got \[1.0, -0.5, 1.0\]$"):
        multi_positive_contrastive(query, keys, mask, scale, field_weights=torch.tensor([1.0, -0.5, 1.0]))


def test_infonce_with_a_single_pin_with_text_averages_over_that_pin():
    """Only pin 0 has a present field: both directions are averaged over one pin (the pins with a positive)."""
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[[0.6, 0.8]], [[0.0, 0.0]]])
    loss = multi_positive_contrastive(query, keys, torch.tensor([[True], [False]]), torch.tensor(LOG10),
                                      mode="infonce")["image_text"]
    # query 0 -> its only candidate field: -log 1 = 0; field k00 -> queries, logits 10 * [0.6, 0.8]
    key_to_query = math.log(math.exp(6) + math.exp(8)) - 6
    assert loss.item() == pytest.approx((0.0 + key_to_query) / 2, rel=1e-6)


def test_row_chunks_call_the_row_loss_per_chunk_and_recompute_each_in_the_backward_pass():
    """_sum_over_row_chunks: row_loss(0, n) once when chunk_size is None or >= n; otherwise once per chunk
    (lo, hi) and, with gradients on, once more per chunk in the backward pass (activation checkpointing);
    without gradients no recomputation. Values and gradients are those of the whole sum."""
    from pinclip.losses.image_text import _sum_over_row_chunks

    w = torch.arange(1.0, 6.0, requires_grad=True)
    calls = []

    def row_loss(lo, hi):
        calls.append((lo, hi))
        return (w[lo:hi] ** 2).sum()

    total = _sum_over_row_chunks(row_loss, 5, 2)
    assert calls == [(0, 2), (2, 4), (4, 5)] and total.item() == 55.0  # 1 + 4 + 9 + 16 + 25
    total.backward()
    assert sorted(calls[3:]) == [(0, 2), (2, 4), (4, 5)]
    assert w.grad.tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    calls.clear()
    with torch.no_grad():
        assert _sum_over_row_chunks(row_loss, 5, 2).item() == 55.0
    assert calls == [(0, 2), (2, 4), (4, 5)]
    for chunk_size in (None, 5, 7):
        calls.clear()
        _sum_over_row_chunks(row_loss, 5, chunk_size).backward()
        assert calls == [(0, 5)]


@pytest.mark.parametrize("mode", ["siglip", "infonce"])
def test_chunked_loss_keeps_no_logits_for_the_backward_pass(mode):
    """The point of chunk_size: the backward pass keeps no (B, N, F) logits, in either direction. Every
    tensor autograd saves outside the checkpointed chunks is recorded: without chunking they hold
    several copies of the logits, with chunk_size=1 less than one copy in all."""
    query, keys, mask = random_batch(14, batch=4, fields=3, dim=2)
    query.requires_grad_(True)
    keys.requires_grad_(True)
    logits_size = 4 * 4 * 3  # B * N * F

    def saved_numel(chunk_size):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            loss = multi_positive_contrastive(query, keys, mask, torch.tensor(1.0), mode=mode, chunk_size=chunk_size)
        loss["image_text"].backward()
        return sum(sizes)

    assert saved_numel(None) >= 2 * logits_size
    assert saved_numel(1) < logits_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_on_cuda_equal_the_cpu_losses():
    """Every mask the losses build lives on the inputs' device: on CUDA the neighbor loss (with and without
    an ignore mask), the distillation and the image-text loss equal their CPU values (a mask left on the
    CPU raises there). Runs in `make test` on a machine with a CUDA device; skipped on CPUs."""
    from pinclip.losses.distill import relational_distillation

    x = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    positive = torch.tensor([3, 4, 5, 0, 1, -1])
    ignore = torch.zeros(6, 6, dtype=torch.bool)
    ignore[0, 2] = True
    scale = torch.tensor(math.log(5.0))
    teacher = F.normalize(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), dim=-1)
    query, keys, mask = random_batch(6)
    for mask_ in (None, ignore):
        cpu = neighbor_loss(x, positive, mask_, scale)["neighbor"]
        gpu = neighbor_loss(x.cuda(), positive.cuda(), None if mask_ is None else mask_.cuda(), scale.cuda())["neighbor"]
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(relational_distillation(x.cuda(), teacher.cuda())["distill"].cpu(),
                               relational_distillation(x, teacher)["distill"], rtol=1e-5, atol=1e-6)
    cpu = image_text_loss(query, keys, mask, torch.tensor(LOG10), torch.tensor(-10.0))["image_text"]
    gpu = image_text_loss(query.cuda(), keys.cuda(), mask.cuda(), torch.tensor(LOG10).cuda(),
                          torch.tensor(-10.0).cuda())["image_text"]
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)
