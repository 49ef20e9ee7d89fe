"""Relational distillation toward the frozen pretrained towers, so fine-tuning keeps what they knew.

What it optimizes: within the global batch, each row's distribution of similarities to the other rows
(softmax over j != i of sim(i, j) / tau) must match the frozen teacher's distribution for the same
rows: KL(teacher || student), averaged over rows (relational knowledge distillation, Park et al. 2019;
the similarity-distribution form of Tung & Mori 2019). Only the *relations* are kept: the student is
free to move its space (align images with text, pull neighbors together), but a catalog from another
domain keeps the neighborhoods the pretrained towers gave it.

Inputs: student (b, D) and teacher (b, W) rows of this rank (L2-normalized, any widths); valid (b,)
rows to use (e.g. present text fields); student rows are gathered across ranks with gradient, teacher
rows without, so every rank scores its rows against the whole batch.
"""

from __future__ import annotations

import torch

from pinclip.losses.gather import all_gather_no_grad, all_gather_with_grad, rank_and_world


def relational_distillation(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor | None = None,
                            tau: float = 0.05, name: str = "distill") -> dict[str, torch.Tensor]:
    rank, world = rank_and_world()
    b = student.shape[0]
    if teacher.shape[0] != b:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} rows differ")
    valid = torch.ones(b, dtype=torch.bool, device=student.device) if valid is None else valid.bool()
    all_student = all_gather_with_grad(student)  # (N, D)
    all_teacher = all_gather_no_grad(teacher.detach())  # (N, W)
    all_valid = all_gather_no_grad(valid)  # (N,)
    rows = rank * b + torch.arange(b, device=student.device)  # (b,)
    blocked = ~all_valid[None, :].expand(b, -1).clone()  # (b, N) invalid columns
    blocked[torch.arange(b), rows] = True  # never oneself
    lo = torch.finfo(student.dtype).min
    log_s = (student @ all_student.T / tau).masked_fill(blocked, lo).log_softmax(-1)  # (b, N)
    log_t = (teacher @ all_teacher.T / tau).masked_fill(blocked, lo).log_softmax(-1)  # (b, N)
    kl = (log_t.exp() * (log_t - log_s)).masked_fill(blocked, 0.0).sum(-1)  # (b,)
    use = valid & ((~blocked).sum(-1) > 0)
    count = all_gather_no_grad(use).sum().clamp_min(1)
    return {name: (kl * use).sum() / (count / world)}
