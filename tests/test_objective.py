"""The training objective's fixes: duplicate masks, SigLIP scalars, field dropout, batch facts, log q."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pinclip.config import load_config
from pinclip.losses import multi_positive_contrastive
from pinclip.losses.image_text import initial_logit_scale_and_bias
from pinclip.train.dataset import BatchConfig, batch_at, fused_field_mask, load_dataset_dir, prepare_training


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_a_masked_duplicate_is_no_negative_and_gets_no_negative_gradient():
    # pins 0 and 1 have identical texts: the pair (0, 1) must be neither positive nor negative
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    keys = torch.tensor([[[0.6, 0.8]], [[0.8, 0.6]]], requires_grad=True)
    mask = torch.ones(2, 1, dtype=torch.bool)
    ignore = torch.tensor([[False, True], [True, False]])
    loss = multi_positive_contrastive(query, keys, mask, torch.tensor(0.0), torch.tensor(0.0),
                                      ignore=ignore)["image_text"]
    # scale 1, bias 0: only the positive terms remain, softplus(-<q_i, k_i>), summed and divided by B = 2
    assert loss.item() == pytest.approx((softplus(-0.6) + softplus(-0.6)) / 2, rel=1e-6)
    loss.backward()
    # d/dk1 comes from the positive term of query 1 alone: -sigmoid(-0.6) * q1 / 2
    expected = -torch.sigmoid(torch.tensor(-0.6)) * torch.tensor([0.0, 1.0]) / 2
    torch.testing.assert_close(keys.grad[1, 0], expected)
    unmasked = multi_positive_contrastive(query, keys, mask, torch.tensor(0.0), torch.tensor(0.0))["image_text"]
    assert unmasked.item() > loss.item()  # the duplicate was counted as a negative before


def test_siglip_bias_starts_at_minus_log_of_the_batch():
    scale, bias = initial_logit_scale_and_bias("siglip", batch_size=128)
    assert scale == pytest.approx(math.log(10)) and bias == pytest.approx(-math.log(128))
    assert initial_logit_scale_and_bias("siglip") == (pytest.approx(math.log(10)), -10.0)


@pytest.mark.slow  # builds or trains a model, or builds the demo corpus
def test_the_siglip_scalars_move_under_training_and_are_logged(catalog, tmp_path):
    from pinclip.train.trainer import train

    cfg = load_config(preset="tiny", overrides=[f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={tmp_path}",
                                                f"train.cache_dir={tmp_path / 'cache'}", "train.steps=4"])
    train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "it_bias" in r]
    assert len(steps) == 4
    start = -math.log(cfg.train.batch_size)
    moved = abs(steps[-1]["it_bias"] - start)
    assert moved > 0.01  # at the base lr over a 4-step cosine it would move ~ 1e-3 at most
    assert steps[-1]["it_scale"] != pytest.approx(10.0, abs=1e-4)


def test_field_dropout_mask_follows_its_probabilities():
    rng = np.random.default_rng(0)
    none = fused_field_mask(1000, BatchConfig(text_dropout=1.0), rng)
    assert not none.any()
    title = fused_field_mask(1000, BatchConfig(title_only=1.0), rng)
    assert title[:, 0].all() and not title[:, 1:].any()
    mixed = fused_field_mask(20000, BatchConfig(text_dropout=0.2, title_only=0.2, field_dropout=0.5), rng)
    assert (~mixed.any(1)).mean() == pytest.approx(0.2 + 0.6 * 0.5**5, abs=0.015)
    assert mixed[:, 1].mean() == pytest.approx(0.6 * 0.5, abs=0.015)


@pytest.fixture  # per test, not per module: make mutants credits a shared fixture to the first test only
def training_data(catalog):
    cfg = load_config(preset="tiny")
    return prepare_training(load_dataset_dir(catalog["pins"].parent), cfg.graph, seed=0, progress=False,
                            hard_negatives=True)


def test_batch_facts_are_consistent(training_data):
    data = training_data
    batch = batch_at(data, 3, BatchConfig(batch_size=16, hard_negatives=True, field_dropout=0.5), world=2)
    assert len(batch.rows) == 24 and batch.anchors == 4 and batch.extra == 4  # per rank: 4 + 4 + 4
    assert batch.has_neighbor.shape == (2, 4)
    for i, j in zip(*np.nonzero(batch.same)):
        assert data.group[batch.rows[i]] == data.group[batch.rows[j]]
    for i, j in zip(*np.nonzero(batch.share_board)):
        assert set(data.graph.boards_of(int(batch.rows[i]))) & set(data.graph.boards_of(int(batch.rows[j]))) \
            or batch.rows[i] == batch.rows[j]
    assert not np.diag(batch.same).any() and not np.diag(batch.share_board).any()
    again = batch_at(data, 3, BatchConfig(batch_size=16, hard_negatives=True, field_dropout=0.5), world=2)
    assert (again.rows == batch.rows).all() and (again.fused_keep == batch.fused_keep).all()


def test_hard_negatives_share_no_board_with_their_anchor(training_data):
    data = training_data
    for p in np.flatnonzero((data.hard >= 0).any(1))[:50]:
        mine = set(data.graph.boards_of(int(p)).tolist())
        for c in data.hard[p][data.hard[p] >= 0]:
            assert not mine & set(data.graph.boards_of(int(c)).tolist())


def test_log_q_is_a_distribution_that_favours_popular_neighbors(training_data):
    q = np.exp(training_data.log_q[training_data.train_rows])
    assert q.sum() == pytest.approx(1.0, rel=1e-6)
    partner_share = np.zeros(len(training_data.log_q))
    valid = training_data.neighbors >= 0
    np.add.at(partner_share, training_data.neighbors[valid], 1)
    popular, rare = np.argmax(partner_share), training_data.train_rows[np.argmin(partner_share[training_data.train_rows])]
    assert training_data.log_q[popular] > training_data.log_q[rare]


@pytest.mark.slow  # builds or trains a model, or builds the demo corpus
def test_text_dropout_feeds_the_fused_pass_image_only_pins(catalog, tmp_path):
    from pinclip.models.pinclip import PinCLIP
    from pinclip.train.trainer import compute_features, local_batch

    cfg = load_config(preset="tiny", overrides=[f"train.cache_dir={tmp_path}", "train.text_dropout=1.0"])
    data = prepare_training(load_dataset_dir(catalog["pins"].parent), cfg.graph, seed=0, progress=False)
    model = PinCLIP(cfg.model)
    feats = compute_features(model, data, str(tmp_path), rank=0, progress=False)
    batch, ctx = local_batch(data, feats, 0, cfg, 0, 1, torch.device("cpu"))
    assert not batch["pin_mask"].any()  # the fused pass sees no text at all
    assert batch["field_mask"].any()  # the text-only rows keep every field for the image-text terms
    out = model(batch, modes=("pin",))
    assert out["pin"].requires_grad and torch.isfinite(out["pin"]).all()


@pytest.mark.slow  # builds or trains a model, or builds the demo corpus
def test_image_only_fused_embeddings_depend_on_the_image(tiny_checkpoint, catalog):
    from pinclip.models.embedder import embed_rows
    from pinclip.models.features import image_features
    from pinclip.models.text_states import TextStates, compute_text_states, field_strings
    from pinclip.train.checkpoint import load_model

    model, cfg, _ = load_model(tiny_checkpoint)
    dataset = load_dataset_dir(catalog["pins"].parent)
    rows = np.arange(0, 18, 3)  # six different (colour, shape) drawings
    vis, ok = image_features(model.vision, cfg.model.vision, [dataset.pins.images[i] for i in rows], None,
                             progress=False)
    texts = field_strings(dataset.pins.texts, len(dataset.pins))
    states = compute_text_states(model.backbone, [texts[i] for i in rows], progress=False)
    no_text = TextStates(states.tokens, states.start, np.zeros_like(states.length))
    pin = embed_rows(model, vis, ok, no_text, np.arange(6), ("pin",))["pin"]
    blank = embed_rows(model, np.zeros_like(vis), np.zeros(6, bool), no_text, np.arange(6), ("pin",))["pin"]
    cos = F.normalize(torch.from_numpy(pin), dim=-1) @ F.normalize(torch.from_numpy(pin), dim=-1).T
    assert (cos[~torch.eye(6, dtype=torch.bool)] < 0.9999).all()  # not one constant for every image
    assert not np.allclose(pin, blank, atol=1e-4)


def test_board_titles_come_from_the_row_s_own_training_boards_only(training_data, catalog):
    data = training_data
    heldout = set(load_dataset_dir(catalog["pins"].parent).splits["heldout_boards"])
    batch = batch_at(data, 1, BatchConfig(batch_size=16, board_titles=2))
    assert batch.boards.shape == (16, 2) and (batch.boards >= 0).any()
    for row, boards in zip(batch.rows, batch.boards):
        for b in boards[boards >= 0]:
            assert b in data.graph.boards_of(int(row))
            assert data.board_titles[b] and data.graph.board_ids[b] not in heldout


# --- the whole objective against plain loops: every term, its weight, and the masks ---------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _siglip(q, k, mask, weights, scale, bias, ignore) -> float:
    """Multi-positive SigLIP: every (query i, pin j) pair weighs one, shared over j's present fields
    by weight; ignored pairs i != j are no term; divided by the batch size."""
    n, fields = mask.shape
    total = 0.0
    for i in range(n):
        for j in range(n):
            if i != j and ignore[i, j]:
                continue
            present = [f for f in range(fields) if mask[j, f] and weights[f] > 0]
            norm = sum(weights[f] for f in present)
            for f in present:
                z = scale * float(q[i] @ k[j, f]) + bias
                total += weights[f] / norm * _softplus(-z if i == j else z)
    return total / n


def _logsumexp(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _infonce(q, k, mask, weights, scale, bias, ignore) -> float:
    """Multi-positive InfoNCE, both directions: a query against every present field of every pin not
    ignored (its own fields positive); each present field against every query not ignored."""
    n, fields = mask.shape
    total, valid = 0.0, 0
    for i in range(n):
        present = [f for f in range(fields) if mask[i, f] and weights[f] > 0]
        if not present:
            continue
        valid += 1
        norm = sum(weights[f] for f in present)
        pins = [j for j in range(n) if j == i or not ignore[i, j]]
        log_z = _logsumexp([scale * float(q[i] @ k[j, f]) for j in pins for f in range(fields) if mask[j, f]])
        for f in present:
            positive = scale * float(q[i] @ k[i, f])
            total += weights[f] / norm * (log_z - positive)  # query -> fields
            total += weights[f] / norm * (_logsumexp([scale * float(q[j] @ k[i, f]) for j in pins]) - positive)
    return total / (2 * valid)


def _neighbor(x, positive, ignore, scale, log_q, bank=None, bank_ignore=None, bank_log_q=None) -> float:
    """InfoNCE of each query row against its positive; candidates: every other row not ignored, and the
    memory bank's entries not ignored."""
    losses = []
    for i, pos in enumerate(positive):
        if pos < 0:
            continue
        logits = {j: scale * float(x[i] @ x[j]) - log_q[j] for j in range(len(x))
                  if j != i and (j == pos or not ignore[i, j])}
        for m in range(0 if bank is None else len(bank)):
            if not bank_ignore[i, m]:
                logits[("bank", m)] = scale * float(x[i] @ bank[m]) - bank_log_q[m]
        top = max(logits.values())
        losses.append(top + math.log(sum(math.exp(v - top) for v in logits.values())) - logits[pos])
    return sum(losses) / len(losses)


def _relational(student, teacher, valid, tau) -> float:
    """KL(teacher || student) of each valid row's softmax over the other valid rows, averaged."""
    def log_softmax(v):
        top = v.max()
        return v - top - math.log(np.exp(v - top).sum())

    rows = np.flatnonzero(valid)
    kls = []
    for i in rows:
        others = [j for j in rows if j != i]
        if not others:
            continue
        log_t = log_softmax(np.array([teacher[i] @ teacher[j] for j in others]) / tau)
        log_s = log_softmax(np.array([student[i] @ student[j] for j in others]) / tau)
        kls.append(float((np.exp(log_t) * (log_t - log_s)).sum()))
    return sum(kls) / len(kls)


def _fake_int8(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return scale * (np.clip(np.round(x / scale) + zero_point, -128, 127) - zero_point)


class _Scalars(torch.nn.Module):
    """The objective reads only the model's contrastive scalars."""

    def __init__(self) -> None:
        super().__init__()
        self.it_logit_scale = torch.nn.Parameter(torch.tensor(math.log(4.0)))
        self.it_logit_bias = torch.nn.Parameter(torch.tensor(-1.5))
        self.nb_logit_scale = torch.nn.Parameter(torch.tensor(math.log(6.0)))


A, E, DIM, DIMS = 3, 1, 6, (6, 3)  # anchors, hard rows, width, Matryoshka dims
N = 2 * A + E
HAS_NEIGHBOR = [True, False, True]  # anchor 1's partner is a random pin: no neighbor term for rows 1 and 4


def _objective_inputs(seed: int = 0):
    from pinclip.data.schema import TEXT_FIELDS
    from pinclip.train.objective import BatchContext

    rng = np.random.default_rng(seed)
    mask = rng.random((N, len(TEXT_FIELDS))) > 0.4
    mask[:, 0] = True
    mask[5] = False  # a pin without text
    text = _unit(rng.standard_normal((N, len(TEXT_FIELDS), DIM))) * mask[..., None]
    board_mask = rng.random((N, 2)) > 0.3
    board_mask[3] = False  # a row without a titled training board
    out = {"image": _unit(rng.standard_normal((N, DIM))), "pin": _unit(rng.standard_normal((N, DIM))),
           "text": text, "text_mask": mask, "board_text": _unit(rng.standard_normal((N, 2, DIM))) * board_mask[..., None],
           "board_mask": board_mask}
    same = np.zeros((N, N), bool)
    same[0, 6] = same[6, 0] = True  # the hard row duplicates anchor 0
    share = np.zeros((N, N), bool)
    share[1, 5] = share[5, 1] = share[2, 3] = share[3, 2] = True
    log_q = rng.normal(-2.0, 0.7, N)
    teacher_pin, teacher_text = _unit(rng.standard_normal((N, 5))), _unit(rng.standard_normal((N, len(TEXT_FIELDS), 4)))
    t = {k: torch.tensor(v) if v.dtype == bool else torch.tensor(v, dtype=torch.float32) for k, v in out.items()}
    ctx = BatchContext(A, E, torch.tensor(HAS_NEIGHBOR), torch.tensor(same), torch.tensor(share),
                       torch.tensor(log_q, dtype=torch.float32), torch.arange(N),
                       teacher_pin=torch.tensor(teacher_pin, dtype=torch.float32),
                       teacher_text=torch.tensor(teacher_text, dtype=torch.float32))
    raw = {**out, "same": same, "share": share, "log_q": log_q, "teacher_pin": teacher_pin, "teacher_text": teacher_text}
    return t, ctx, raw


def _expected_terms(raw: dict, cfg) -> dict[str, float]:
    """Every term of pinclip.train.objective by the loops above, from the module's docstring."""
    from pinclip.data.schema import TEXT_FIELDS

    weights = [cfg.field_weights.get(f, 1.0) for f in TEXT_FIELDS]
    mask = raw["text_mask"]
    ignore_it = np.zeros((N, N), bool)
    if cfg.mask_duplicates:
        ignore_it = raw["same"] | (raw["share"] if cfg.mask_boards_in_image_text else False)
    scale_it, bias_it, scale_nb = 4.0, -1.5, 6.0
    contrastive = _infonce if cfg.image_text == "infonce" else _siglip
    positive = [A + i if HAS_NEIGHBOR[i] else -1 for i in range(A)] + \
               [i if HAS_NEIGHBOR[i] else -1 for i in range(A)] + [-1] * E
    ignore_nb = raw["same"] | raw["share"]
    if cfg.neighbor_candidates == "partners":
        role = np.array([0] * A + [1] * A + [2] * E)
        ignore_nb = ignore_nb | (role[:, None] == role[None, :]) | (role[None, :] == 2)
    log_q = raw["log_q"] if cfg.logq else np.zeros(N)
    terms = {"image_text": 0.0, "pin_text": 0.0, "neighbor": 0.0, "image_neighbor": 0.0, "board": 0.0}
    for d in DIMS:
        text = _unit(raw["text"][..., :d]) * mask[..., None]
        image, pin = _unit(raw["image"][:, :d]), _unit(raw["pin"][:, :d])
        terms["image_text"] += contrastive(image, text, mask, weights, scale_it, bias_it, ignore_it)
        terms["pin_text"] += contrastive(pin, text, mask, weights, scale_it, bias_it, ignore_it)
        titles = _unit(raw["board_text"][..., :d]) * raw["board_mask"][..., None]  # no field weights, boards masked
        terms["board"] += contrastive(pin, titles, raw["board_mask"], [1.0, 1.0], scale_it, bias_it,
                                  raw["same"] | raw["share"])
        terms["neighbor"] += _neighbor(pin, positive, ignore_nb, scale_nb, log_q)
        terms["image_neighbor"] += _neighbor(image, positive, ignore_nb, scale_nb, log_q)
    terms["distill"] = (_relational(raw["pin"], raw["teacher_pin"], np.ones(N, bool), cfg.distill_tau)
                        + _relational(raw["text"].reshape(N * len(TEXT_FIELDS), DIM),
                                      raw["teacher_text"].reshape(N * len(TEXT_FIELDS), -1), mask.reshape(-1),
                                      cfg.distill_tau))
    joint = np.concatenate([raw["image"].ravel(), raw["text"][mask].ravel()])
    lo, hi = float(joint.min()), float(joint.max())
    scale = max(hi - lo, 1e-6) / 255.0
    zero_point = min(127, max(-128, int(round(-128 - lo / scale))))
    q_text = _fake_int8(raw["text"], scale, zero_point) * mask[..., None]
    terms["quant_image_text"] = contrastive(_fake_int8(raw["image"], scale, zero_point), q_text, mask, weights,
                                        scale_it, bias_it, ignore_it)
    return terms


OBJECTIVE_CASES = {
    "default masks": [],
    "no log q, partners only, boards masked in image-text": ["loss.logq=false", "loss.neighbor_candidates=partners",
                                                             "loss.mask_boards_in_image_text=true"],
    "duplicates not masked": ["loss.mask_duplicates=false"],
    "infonce, fields without a weight count 1": ["loss.image_text=infonce", "loss.field_weights={title: 3.0}"],
}


@pytest.mark.parametrize("case", sorted(OBJECTIVE_CASES))
def test_the_objective_is_the_weighted_sum_of_hand_computed_terms(case):
    from pinclip.train.objective import objective

    weights = {"image_text_weight": 0.7, "pin_text_weight": 0.3, "neighbor_weight": 1.9,
               "image_neighbor_weight": 0.45, "board_weight": 0.6, "distill_weight": 0.2}
    cfg = load_config(preset="tiny", overrides=[*(f"loss.{k}={v}" for k, v in weights.items()),
                                                "loss.quant_aware=true", *OBJECTIVE_CASES[case]]).loss
    out, ctx, raw = _objective_inputs()
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    expected = _expected_terms(raw, cfg)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name
    total = sum(weights[f"{name}_weight"] * expected[name]
                for name in ("image_text", "pin_text", "neighbor", "image_neighbor", "board", "distill"))
    assert terms["loss"].item() == pytest.approx(total + expected["quant_image_text"], rel=1e-5)
    terms["loss"].backward()  # the straight-through quantization term is differentiable


@pytest.mark.parametrize("logq", [True, False])
def test_the_memory_bank_adds_negatives_to_the_pin_neighbor_term_only(logq):
    from pinclip.losses.memory import EmbeddingMemory
    from pinclip.train.objective import objective

    cfg = load_config(preset="tiny", overrides=["loss.image_text_weight=0", "loss.neighbor_weight=1.0",
                                                "loss.image_neighbor_weight=1.0", f"loss.logq={logq}"]).loss
    out, ctx, raw = _objective_inputs(seed=2)
    rng = np.random.default_rng(3)
    bank = EmbeddingMemory(size=3, dim=DIM)
    bank.push(torch.tensor(rng.standard_normal((3, DIM)), dtype=torch.float32), torch.tensor([40, 41, 42]),
              torch.tensor([-1.0, -3.0, -0.5]))
    bank_ignore = np.zeros((N, 3), bool)
    bank_ignore[0, 1] = bank_ignore[4, 2] = True
    ctx.bank_ignore = torch.tensor(bank_ignore)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS, bank=bank)
    positive = [A + i if HAS_NEIGHBOR[i] else -1 for i in range(A)] + \
               [i if HAS_NEIGHBOR[i] else -1 for i in range(A)] + [-1] * E
    log_q = raw["log_q"] if logq else np.zeros(N)
    bank_log_q = bank.log_q.numpy() if logq else np.zeros(3)
    entries = bank.embeddings.numpy().astype(np.float64)
    expected = sum(_neighbor(_unit(raw["pin"][:, :d]), positive, raw["same"] | raw["share"], 6.0, log_q,
                             _unit(entries[:, :d]), bank_ignore, bank_log_q) for d in DIMS)
    assert terms["neighbor"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["image_neighbor"].item() == pytest.approx(_expected_terms(raw, cfg)["image_neighbor"], rel=1e-5)
    without = objective(_Scalars(), out, ctx, cfg, DIMS, bank=EmbeddingMemory(size=3, dim=DIM))  # empty bank
    assert without["neighbor"].item() == pytest.approx(_expected_terms(raw, cfg)["neighbor"], rel=1e-5)


def test_unknown_neighbor_candidates_are_refused():
    from pinclip.train.objective import objective

    cfg = load_config(preset="tiny", overrides=["loss.neighbor_candidates=some"]).loss
    out, ctx, _ = _objective_inputs()
    with pytest.raises(ValueError, match="neighbor_candidates"):
        objective(_Scalars(), out, ctx, cfg, DIMS)


def test_rows_without_a_neighbor_are_no_neighbor_queries():
    from pinclip.train.objective import objective

    cfg = load_config(preset="tiny", overrides=["loss.image_text_weight=0", "loss.neighbor_weight=1.0",
                                                 "loss.board_weight=0"]).loss
    out, ctx, raw = _objective_inputs(seed=1)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    assert set(terms) == {"loss", "neighbor", *(f"neighbor@{d}" for d in DIMS)}  # image-text and quant off
    expected = _expected_terms(raw, cfg)["neighbor"]
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-5)
    ctx.has_neighbor = torch.ones(A, dtype=torch.bool)  # every partner a neighbor: another value
    assert objective(_Scalars(), out, ctx, cfg, DIMS)["loss"].item() != pytest.approx(expected, rel=1e-3)


def _loss_cfg(**weights):
    """The tiny preset's loss settings with every term weight set explicitly (0 unless given)."""
    names = ("image_text", "pin_text", "neighbor", "image_neighbor", "board", "distill")
    values = {f"{n}_weight": weights.pop(f"{n}_weight", 0.0) for n in names}
    extra = [f"loss.{k}={v}" for k, v in weights.items()]
    return load_config(preset="tiny", overrides=[*(f"loss.{k}={v}" for k, v in values.items()), *extra]).loss


def test_distillation_names_each_part_and_uses_the_configured_temperature():
    """"distill" is the sum of "distill_pin" (fused pins against the frozen pins) and "distill_text"
    (present text fields against the frozen text), each at loss.distill_tau; a part whose teacher the
    batch lacks is left out."""
    from pinclip.data.schema import TEXT_FIELDS
    from pinclip.train.objective import objective

    cfg = _loss_cfg(distill_weight=0.4, distill_tau=0.2)  # not the default 0.05 of relational_distillation
    out, ctx, raw = _objective_inputs()
    fields = len(TEXT_FIELDS)
    pin = _relational(raw["pin"], raw["teacher_pin"], np.ones(N, bool), 0.2)
    text = _relational(raw["text"].reshape(N * fields, DIM), raw["teacher_text"].reshape(N * fields, -1),
                       raw["text_mask"].reshape(-1), 0.2)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    assert set(terms) == {"loss", "distill", "distill_pin", "distill_text"}
    assert terms["distill_pin"].item() == pytest.approx(pin, rel=1e-5)
    assert terms["distill_text"].item() == pytest.approx(text, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.4 * (pin + text), rel=1e-5)
    teacher_text, ctx.teacher_text = ctx.teacher_text, None  # no frozen text: the pin part alone
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    assert set(terms) == {"loss", "distill", "distill_pin"}
    assert terms["distill"].item() == pytest.approx(pin, rel=1e-5)
    ctx.teacher_text, ctx.teacher_pin = teacher_text, None  # no frozen pins: the text part alone
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    assert set(terms) == {"loss", "distill", "distill_text"}
    assert terms["loss"].item() == pytest.approx(0.4 * text, rel=1e-5)


def test_a_term_whose_weight_is_not_positive_is_neither_computed_nor_added():
    """A weight of 0 (or below) switches its term off: no entry in the result, nothing in "loss"; the
    quantization term follows the image-text weight and pin-text needs image-text on."""
    from pinclip.train.objective import objective

    out, ctx, raw = _objective_inputs()
    dims = lambda name: {name, *(f"{name}@{d}" for d in DIMS)}  # noqa: E731
    # image-text alone; both neighbor weights 0, so the neighbor settings are not even read
    cfg = _loss_cfg(image_text_weight=0.7, neighbor_candidates="some")
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    assert set(terms) == {"loss", *dims("image_text")}
    assert terms["loss"].item() == pytest.approx(0.7 * _expected_terms(raw, cfg)["image_text"], rel=1e-5)
    # the image neighbor term alone: quant_aware has no image-text term to quantize
    cfg = _loss_cfg(image_neighbor_weight=0.5, pin_text_weight=0.5, quant_aware=True)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    assert set(terms) == {"loss", *dims("image_neighbor")}
    assert terms["loss"].item() == pytest.approx(0.5 * _expected_terms(raw, cfg)["image_neighbor"], rel=1e-5)
    # negative weights switch their terms off too (they never subtract a term): the board term alone
    cfg = _loss_cfg(image_text_weight=-1.0, pin_text_weight=0.5, neighbor_weight=-1.0, image_neighbor_weight=-1.0,
                    board_weight=0.6, distill_weight=-1.0)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    assert set(terms) == {"loss", *dims("board")}
    assert terms["loss"].item() == pytest.approx(0.6 * _expected_terms(raw, cfg)["board"], rel=1e-5)


def test_the_board_term_needs_board_titles_in_the_batch():
    """With loss.board_weight > 0 but no "board_text" in the model output (no titled boards joined the
    batch) there is no board term and "loss" is the other terms alone."""
    from pinclip.train.objective import objective

    cfg = _loss_cfg(neighbor_weight=1.0, board_weight=0.6)
    out, ctx, raw = _objective_inputs()
    no_titles = {k: v for k, v in out.items() if k not in ("board_text", "board_mask")}
    terms = objective(_Scalars(), no_titles, ctx, cfg, DIMS)
    assert "board" not in terms
    assert terms["loss"].item() == pytest.approx(_expected_terms(raw, cfg)["neighbor"], rel=1e-5)


def test_a_memory_bank_of_one_entry_is_used():
    """A bank holding a single entry already adds it as a negative of every pin neighbor query."""
    from pinclip.losses.memory import EmbeddingMemory
    from pinclip.train.objective import objective

    cfg = _loss_cfg(neighbor_weight=1.0)
    out, ctx, raw = _objective_inputs(seed=2)
    entry = np.array([[0.5, -1.0, 0.3, 0.8, -0.2, 0.1]])
    bank = EmbeddingMemory(size=4, dim=DIM)
    bank.push(torch.tensor(entry, dtype=torch.float32), torch.tensor([40]), torch.tensor([-2.5]))
    ctx.bank_ignore = torch.zeros(N, 1, dtype=torch.bool)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS, bank=bank)
    positive = [A + i if HAS_NEIGHBOR[i] else -1 for i in range(A)] + \
               [i if HAS_NEIGHBOR[i] else -1 for i in range(A)] + [-1] * E
    expected = sum(_neighbor(_unit(raw["pin"][:, :d]), positive, raw["same"] | raw["share"], 6.0, raw["log_q"],
                             _unit(entry[:, :d]), np.zeros((N, 1), bool), [-2.5]) for d in DIMS)
    assert terms["neighbor"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["neighbor"].item() != pytest.approx(_expected_terms(raw, cfg)["neighbor"], rel=1e-3)


@pytest.mark.parametrize("shift", [0.3, -0.3])
def test_the_int8_term_on_embeddings_whose_range_excludes_zero(shift):
    """All-positive (or all-negative) embeddings spanning less than 1: the scale is (hi - lo) / 255 and
    the zero point is clamped to int8 ([-128, 127]) instead of leaving it, so the term stays defined."""
    from pinclip.train.objective import objective

    cfg = _loss_cfg(image_text_weight=0.7, quant_aware=True)
    out, ctx, raw = _objective_inputs()
    raw["image"] = shift + 0.2 * raw["image"]  # in [shift - 0.2, shift + 0.2]: hi - lo < 0.4
    raw["text"] = (shift + 0.2 * raw["text"]) * raw["text_mask"][..., None]
    out["image"] = torch.tensor(raw["image"], dtype=torch.float32)
    out["text"] = torch.tensor(raw["text"], dtype=torch.float32)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    expected = _expected_terms(raw, cfg)
    assert terms["quant_image_text"].item() == pytest.approx(expected["quant_image_text"], rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.7 * expected["image_text"] + expected["quant_image_text"],
                                                 rel=1e-5)


def test_the_objective_builds_its_tensors_on_the_device_of_the_batch():
    """Field weights and the neighbor roles go to the device of the model output, not to torch's
    default device (a GPU run keeps the CPU default): with the default device set to "meta", the CPU
    batch still gets the contrastive, neighbor and quantization terms, by the same values. (Not the
    distillation: its CPU index tensors are fine on a GPU but not with a meta default.)"""
    from pinclip.train.objective import objective

    weights = {"image_text_weight": 0.7, "pin_text_weight": 0.3, "neighbor_weight": 1.9,
               "image_neighbor_weight": 0.45, "board_weight": 0.6}
    cfg = _loss_cfg(**weights, quant_aware=True, neighbor_candidates="partners")
    out, ctx, raw = _objective_inputs()
    model = _Scalars()
    torch.set_default_device("meta")
    try:
        terms = objective(model, out, ctx, cfg, DIMS)
    finally:
        torch.set_default_device(None)
    expected = _expected_terms(raw, cfg)
    assert terms["loss"].device == torch.device("cpu")
    total = sum(weights[f"{name}_weight"] * expected[name]
                for name in ("image_text", "pin_text", "neighbor", "image_neighbor", "board"))
    assert terms["loss"].item() == pytest.approx(total + expected["quant_image_text"], rel=1e-5)


def test_missing_text_fields_get_no_gradient_from_the_int8_term():
    """The straight-through int8 term passes gradient to the present text fields only: a missing field
    (zeros, key mask False) gets exactly zero, never NaN, even when the model wrote values there."""
    from pinclip.train.objective import objective

    cfg = _loss_cfg(image_text_weight=0.7, quant_aware=True)
    out, ctx, _ = _objective_inputs()
    mask = out["text_mask"]
    out["text"] = (out["text"] + 0.05 * (~mask)[..., None]).requires_grad_(True)  # junk in missing fields
    out["image"].requires_grad_(True)
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    terms["quant_image_text"].backward()
    grad = out["text"].grad
    assert torch.isfinite(grad).all() and torch.isfinite(out["image"].grad).all()
    assert (grad[~mask] == 0).all() and (grad[mask].abs().sum(-1) > 0).any()


def test_loss_chunk_size_reaches_the_contrastive_terms():
    """loss.chunk_size > 0 only blocks the image-text rows (same terms); a negative one is refused by
    the contrastive loss rather than silently computing unchunked (0 means unchunked)."""
    from pinclip.train.objective import objective

    out, ctx, raw = _objective_inputs()
    cfg = _loss_cfg(image_text_weight=0.7, pin_text_weight=0.3, chunk_size=2)  # 7 rows in chunks of 2
    terms = objective(_Scalars(), out, ctx, cfg, DIMS)
    expected = _expected_terms(raw, cfg)
    assert terms["image_text"].item() == pytest.approx(expected["image_text"], rel=1e-5)
    assert terms["pin_text"].item() == pytest.approx(expected["pin_text"], rel=1e-5)
    with pytest.raises(ValueError, match="^chunk_size must be >= 1, got -1$"):
        objective(_Scalars(), out, ctx, _loss_cfg(image_text_weight=0.7, chunk_size=-1), DIMS)
