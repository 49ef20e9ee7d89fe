"""A cross-batch memory: the embeddings of recent batches, kept as extra negatives (no gradient).

    bank = EmbeddingMemory(size=2048, dim=256)
    loss = neighbor_loss(..., bank=bank.embeddings, bank_ignore=mask, bank_log_q=bank.log_q)
    bank.push(gathered_embeddings.detach(), pin_rows, log_q)      # after the step

With a small learning rate the embeddings of the last few batches barely drift, so they serve as
negatives that enlarge the pool far past the batch (Wang et al. 2020, "Cross-Batch Memory for
Embedding Learning"). The bank is a FIFO ring; every rank pushes the same gathered rows, so the
banks stay identical across ranks. `state_dict` / `load_state_dict` make a resumed run exact.
"""

from __future__ import annotations

import torch


class EmbeddingMemory:
    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        if size < 0:
            raise ValueError(f"memory size must be >= 0, got {size}")
        self.size, self.dim = size, dim
        self.embeddings = torch.zeros(0, dim, device=device)  # (M, D), M <= size
        self.pins = torch.zeros(0, dtype=torch.long, device=device)  # (M,) pin row of each entry
        self.log_q = torch.zeros(0, device=device)  # (M,)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def push(self, embeddings: torch.Tensor, pins: torch.Tensor, log_q: torch.Tensor | None = None) -> None:
        """Append rows (K, D) with their pin rows (K,); the oldest leave once the bank is full."""
        if self.size == 0:
            return
        log_q = torch.zeros(len(pins), device=embeddings.device) if log_q is None else log_q
        self.embeddings = torch.cat([self.embeddings, embeddings.detach().float()])[-self.size:]
        self.pins = torch.cat([self.pins, pins.long()])[-self.size:]
        self.log_q = torch.cat([self.log_q, log_q.float()])[-self.size:]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embeddings.cpu(), "pins": self.pins.cpu(), "log_q": self.log_q.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        device = self.embeddings.device
        self.embeddings = state["embeddings"].to(device)
        self.pins = state["pins"].to(device)
        self.log_q = state["log_q"].to(device)
