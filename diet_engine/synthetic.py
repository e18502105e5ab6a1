"""The distilled (or selected) set: per row field embeddings, soft-label logits, stage of origin."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SyntheticSet:
    emb: Tensor  # [N, F, D] float32
    logits: Tensor  # [N, T] float32, teacher logits (soft labels = sigmoid(logits / temperature))
    stage: Tensor  # [N] int64, stage of origin

    def __len__(self) -> int:
        return self.emb.shape[0]

    def take(self, idx: Tensor) -> "SyntheticSet":
        return SyntheticSet(self.emb[idx], self.logits[idx], self.stage[idx])

    def detach(self) -> "SyntheticSet":
        return SyntheticSet(self.emb.detach().clone(), self.logits.detach().clone(), self.stage.clone())

    def to(self, device: torch.device | str) -> "SyntheticSet":
        return SyntheticSet(self.emb.to(device), self.logits.to(device), self.stage.to(device))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator["SyntheticSet"]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.emb.device)  # rows on a GPU are gathered there
        for start in range(0, n, batch_size):
            yield self.take(order[start : start + batch_size])

    @staticmethod
    def concat(parts: list["SyntheticSet"]) -> "SyntheticSet":
        return SyntheticSet(*(torch.cat([getattr(p, k) for p in parts]) for k in ("emb", "logits", "stage")))

    @staticmethod
    def empty(num_fields: int, dim: int, num_tasks: int) -> "SyntheticSet":
        return SyntheticSet(torch.empty(0, num_fields, dim), torch.empty(0, num_tasks), torch.empty(0, dtype=torch.long))
