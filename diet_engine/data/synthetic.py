"""The distilled (or selected) set: per row field embeddings, soft-label logits, stage of origin.

Rows initialised from real rows also remember that row's feature values
(`src_cat`, `src_num`): the anchor that lets a later stage carry the row into
its own embedding space (memory.reanchor). Sets without them (e.g. built by
hand) are still valid; they are simply not re-anchored.
"""

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
    src_cat: Tensor | None = None  # [N, F_cat] int64, hashed ids of the real row it started from
    src_num: Tensor | None = None  # [N, F_num] float32, that row's numeric features

    def __len__(self) -> int:
        return self.emb.shape[0]

    @property
    def anchored(self) -> bool:
        return self.src_cat is not None and self.src_num is not None

    def _map(self, fn) -> "SyntheticSet":
        return SyntheticSet(*(None if v is None else fn(v) for v in self._fields()))

    def _fields(self) -> tuple[Tensor | None, ...]:
        return (self.emb, self.logits, self.stage, self.src_cat, self.src_num)

    def take(self, idx: Tensor) -> "SyntheticSet":
        return self._map(lambda v: v[idx])

    def detach(self) -> "SyntheticSet":
        return self._map(lambda v: v.detach().clone())

    def to(self, device: torch.device | str) -> "SyntheticSet":
        return self._map(lambda v: v.to(device))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator["SyntheticSet"]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.emb.device)  # rows on a GPU are gathered there
        for start in range(0, n, batch_size):
            yield self.take(order[start : start + batch_size])

    @staticmethod
    def concat(parts: list["SyntheticSet"]) -> "SyntheticSet":
        """Rows of all parts in order; the anchors only if every part has them."""
        anchored = all(p.anchored for p in parts)
        cols = [torch.cat([p._fields()[i] for p in parts]) for i in range(3)]
        if anchored:
            cols += [torch.cat([p.src_cat for p in parts]), torch.cat([p.src_num for p in parts])]
        return SyntheticSet(*cols)

    @staticmethod
    def empty(num_fields: int, dim: int, num_tasks: int) -> "SyntheticSet":
        return SyntheticSet(torch.empty(0, num_fields, dim), torch.empty(0, num_tasks), torch.empty(0, dtype=torch.long))
