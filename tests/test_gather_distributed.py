"""Two CPU processes (gloo) with half a batch each give the single-process loss and gradients.

Each rank projects its half of the raw features with a shared weight, computes the losses with
negatives gathered from both ranks, and backpropagates loss / world; summing the shared gradients
over ranks (what DDP's average of the rank-loss gradients amounts to) must give the gradients of
one process holding the whole batch, and each rank's feature gradients must be its slice of them.
The whole training objective (every term on, the quantization-aware one included) is checked the
same way on a batch laid out as the trainer lays it out: [anchors; partners; hard] per rank.
"""

from __future__ import annotations

import math
import socket
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pinclip.config import LossConfig
from pinclip.losses import image_text_loss, multi_positive_contrastive, neighbor_loss, rank_and_world
from pinclip.losses.distill import relational_distillation

WORLD = 2
BATCH, FIELDS, RAW_DIM, DIM = 6, 3, 5, 4  # global batch, split 3 + 3
FIELD_WEIGHTS = torch.tensor([1.0, 0.5, 2.0])
POSITIVE = torch.tensor([3, 4, 5, 0, 1, -1])  # global neighbor pairs (0,3), (1,4), (2,5); row 5 is no query
CASES = {  # case -> (loss function, the raw features it reads)
    "image_text_siglip_chunked": (partial(image_text_loss, mode="siglip", chunk_size=2), ("img", "txt")),
    "image_text_infonce": (partial(image_text_loss, mode="infonce"), ("img", "txt")),
    "image_text_siglip_ignore": (partial(multi_positive_contrastive, mode="siglip"), ("img", "txt")),
    "image_text_infonce_ignore": (partial(multi_positive_contrastive, mode="infonce"), ("img", "txt")),
    "neighbor": (neighbor_loss, ("img",)),
    "distill": (relational_distillation, ("img", "nbr")),
}


def global_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(BATCH, FIELDS, generator=gen) > 0.3
    mask[4] = False  # a pin without text on rank 1 only: counts must be global
    return {
        "img": torch.randn(BATCH, RAW_DIM, generator=gen),
        "txt": torch.randn(BATCH, FIELDS, RAW_DIM, generator=gen),
        "nbr": torch.randn(BATCH, RAW_DIM, generator=gen),
        "mask": mask,
        "share_board": torch.rand(BATCH, BATCH, generator=gen) > 0.6,
        "log_q": torch.randn(BATCH, generator=gen),
        "weight": torch.randn(RAW_DIM, DIM, generator=gen),
    }


def run_case(case: str, inputs: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """Loss and gradients of one case on the rows `rows` of the global batch."""
    weight = inputs["weight"].clone().requires_grad_(True)
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-5.0, requires_grad=True)
    loss_fn, names = CASES[case]
    feats = {name: inputs[name][rows].clone().requires_grad_(True) for name in names}
    query, *other = (F.normalize(feats[name] @ weight, dim=-1) for name in names)
    if case == "neighbor":
        (loss,) = loss_fn(query, POSITIVE[rows], inputs["share_board"], scale, log_q=inputs["log_q"]).values()
    elif case == "distill":  # a "teacher" of another width, no gradient
        (loss,) = loss_fn(query, inputs["nbr"][rows] / inputs["nbr"][rows].norm(dim=-1, keepdim=True)).values()
        loss = loss + 0 * scale + 0 * bias  # the scalars get zero gradients, like every other case's tensors
    elif case.endswith("_ignore"):  # duplicates in the batch: neither positive nor negative
        ignore = inputs["share_board"] | inputs["share_board"].T
        (loss,) = loss_fn(query, other[0], inputs["mask"][rows], scale, bias, FIELD_WEIGHTS, ignore=ignore).values()
    else:
        (loss,) = loss_fn(query, other[0], inputs["mask"][rows], scale, bias, FIELD_WEIGHTS).values()
    _, world = rank_and_world()
    (loss / world).backward()
    no_grad = torch.zeros(())  # InfoNCE does not use the bias
    out = {"loss": loss.detach(), "weight": weight.grad, "scale": scale.grad, "bias": bias.grad or no_grad}
    out.update({f"d_{name}": feat.grad for name, feat in feats.items()})
    return out


OBJ_ANCHORS, OBJ_HARD = 2, 1  # per rank; a rank holds [anchors; partners; hard]
OBJ_ROWS = WORLD * (2 * OBJ_ANCHORS + OBJ_HARD)
OBJ_FIELDS, OBJ_DIMS = 5, (DIM, 2)
TERMS = ("loss", "image_text", "pin_text", "neighbor", "image_neighbor", "board", "distill", "quant_image_text")


class Scalars(torch.nn.Module):
    """The contrastive scalars of PinCLIP, all the objective reads of a model."""

    def __init__(self) -> None:
        super().__init__()
        self.it_logit_scale = torch.nn.Parameter(torch.tensor(math.log(4.0)))
        self.it_logit_bias = torch.nn.Parameter(torch.tensor(-1.5))
        self.nb_logit_scale = torch.nn.Parameter(torch.tensor(math.log(6.0)))


def objective_inputs() -> dict[str, torch.Tensor]:
    """A global batch in canonical order [all anchors; all partners; all hard rows]."""
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(OBJ_ROWS, OBJ_FIELDS, generator=gen) > 0.4
    mask[:, 0] = True
    mask[5] = False  # a pin without text
    same = torch.zeros(OBJ_ROWS, OBJ_ROWS, dtype=torch.bool)
    same[0, 8] = same[8, 0] = True  # a hard row duplicating an anchor of the other rank
    share = torch.rand(OBJ_ROWS, OBJ_ROWS, generator=gen) > 0.8
    return {"image": torch.randn(OBJ_ROWS, DIM, generator=gen), "pin": torch.randn(OBJ_ROWS, DIM, generator=gen),
            "text": torch.randn(OBJ_ROWS, OBJ_FIELDS, DIM, generator=gen) * mask[..., None], "mask": mask,
            "same": same, "share": share | share.T, "log_q": -2 * torch.rand(OBJ_ROWS, generator=gen),
            "has_neighbor": torch.tensor([True, False, True, True]),
            "boards": torch.randn(OBJ_ROWS, 2, DIM, generator=gen), "board_mask": torch.rand(OBJ_ROWS, 2, generator=gen) > 0.3,
            "teacher_pin": F.normalize(torch.randn(OBJ_ROWS, 3, generator=gen), dim=-1),
            "teacher_text": F.normalize(torch.randn(OBJ_ROWS, OBJ_FIELDS, 3, generator=gen), dim=-1)}


def rank_blocked_order() -> torch.Tensor:
    """(N,) canonical position of each row of the rank-blocked layout (as pinclip.train.dataset.batch_at)."""
    half, a, h = WORLD * OBJ_ANCHORS, OBJ_ANCHORS, OBJ_HARD
    return torch.cat([torch.cat([torch.arange(r * a, (r + 1) * a), half + torch.arange(r * a, (r + 1) * a),
                                 2 * half + torch.arange(r * h, (r + 1) * h)]) for r in range(WORLD)])


def run_objective(inputs: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """Every term of the objective on this rank's rows; gradients of (loss / world)."""
    from pinclip.train.objective import BatchContext, objective

    cfg = LossConfig(neighbor_weight=1.3, image_neighbor_weight=0.4, board_weight=0.7, distill_weight=0.3,
                     quant_aware=True)
    order = rank_blocked_order() if world > 1 else torch.arange(OBJ_ROWS)
    b = OBJ_ROWS // world
    local = order[rank * b:(rank + 1) * b]  # (b,) canonical rows of this rank
    anchors = OBJ_ANCHORS * WORLD // world
    leaves = {k: inputs[k][local].clone().requires_grad_(True) for k in ("image", "pin", "text", "boards")}
    out = {k: F.normalize(v, dim=-1) for k, v in leaves.items()}
    out["text"] = out["text"] * inputs["mask"][local][..., None]
    out["text_mask"] = inputs["mask"][local]
    out["board_text"] = out.pop("boards") * inputs["board_mask"][local][..., None]
    out["board_mask"] = inputs["board_mask"][local]
    ctx = BatchContext(anchors, OBJ_HARD * WORLD // world, inputs["has_neighbor"][rank * anchors:(rank + 1) * anchors],
                       inputs["same"][order][:, order], inputs["share"][order][:, order], inputs["log_q"][order],
                       order, teacher_pin=inputs["teacher_pin"][local], teacher_text=inputs["teacher_text"][local])
    model = Scalars()
    terms = objective(model, out, ctx, cfg, OBJ_DIMS)
    (terms["loss"] / world).backward()
    result = {name: terms[name].detach() for name in TERMS}
    result.update({f"d_{k}": v.grad for k, v in leaves.items()})
    result.update({name: p.grad for name, p in model.named_parameters()})
    return result


def worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        inputs = global_inputs()
        local = BATCH // WORLD
        rows = slice(rank * local, (rank + 1) * local)
        results = {}
        for case in CASES:
            out = run_case(case, inputs, rows)
            for name in ("weight", "scale", "bias"):
                dist.all_reduce(out[name])  # sum over ranks
            results[case] = out
        out = run_objective(objective_inputs(), rank, WORLD)
        for name, _ in Scalars().named_parameters():
            dist.all_reduce(out[name])
        results["objective"] = out
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_match_one_process(rank_results, case):
    single = run_case(case, global_inputs(), slice(None))
    ranks = [results[case] for results in rank_results]
    mean_loss = sum(r["loss"] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, single["loss"], rtol=0, atol=1e-5)
    for name in ("weight", "scale", "bias"):
        torch.testing.assert_close(ranks[0][name], single[name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ranks[1][name], single[name], rtol=1e-5, atol=1e-6)
    for name in CASES[case][1][:1] if case == "distill" else CASES[case][1]:
        assert ranks[0][f"d_{name}"].shape[0] == BATCH // WORLD
        torch.testing.assert_close(
            torch.cat([r[f"d_{name}"] for r in ranks]), single[f"d_{name}"], rtol=1e-5, atol=1e-6
        )
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # the halves really differ


def test_two_ranks_of_the_whole_objective_match_one_process(rank_results):
    single = run_objective(objective_inputs(), 0, 1)
    ranks = [results["objective"] for results in rank_results]
    assert all(single[name] > 0 for name in TERMS)
    for name in TERMS:
        torch.testing.assert_close(sum(r[name] for r in ranks) / WORLD, single[name], rtol=0, atol=1e-5, msg=name)
    for name, _ in Scalars().named_parameters():
        torch.testing.assert_close(ranks[0][name], single[name], rtol=1e-5, atol=1e-6)
    order = rank_blocked_order()
    for name in ("d_image", "d_pin", "d_text", "d_boards"):
        torch.testing.assert_close(torch.cat([r[name] for r in ranks]), single[name][order], rtol=1e-5, atol=1e-6)
