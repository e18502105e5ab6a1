"""Training and inference loops shared by reference, baselines and candidates.

Models only map inputs to logits; losses, optimisers and devices live here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diet_engine.config import TrainConfig
from diet_engine.data import Block, TensorBlock
from diet_engine.metrics import TaskMetrics, task_metrics
from diet_engine.models.base import CTRModel
from diet_engine.synthetic import SyntheticSet

EVAL_BATCH = 8192


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Optimizers:
    """Adam for dense weights plus lazy Adam (row-wise state) for the sparse embedding table."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()


def optimizer_tensors(opt: Optimizers) -> dict[str, Tensor]:
    """The moments and step counts of every optimiser, flat, as safetensors can hold them."""
    out = {}
    for i, o in enumerate(opt.optimizers):
        for j, state in o.state_dict()["state"].items():
            for name, value in state.items():
                out[f"{i}.{j}.{name}"] = torch.as_tensor(value).detach().cpu().clone()
    return out


def load_optimizer_tensors(opt: Optimizers, tensors: dict[str, Tensor]) -> None:
    """Put `optimizer_tensors` output back into optimisers built over the same parameters."""
    for i, o in enumerate(opt.optimizers):
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            owner, j, name = key.split(".", 2)
            if int(owner) != i:
                continue
            if name == "step" and isinstance(o, torch.optim.SparseAdam):
                value = int(value.item())  # SparseAdam counts steps with a Python int
            state.setdefault(int(j), {})[name] = value
        if state:
            o.load_state_dict({"state": state, "param_groups": o.state_dict()["param_groups"]})


def make_optimizer(model: CTRModel, cfg: TrainConfig, dense_only: bool = False) -> Optimizers:
    dense = [{"params": model.dense_parameters(), "lr": cfg.lr}]
    if dense_only:
        return Optimizers(torch.optim.Adam(dense, weight_decay=cfg.weight_decay))
    emb_lr = cfg.embedding_lr or cfg.lr
    table = model.embedding.table.weight
    others = [p for p in model.embedding_parameters() if p is not table]
    if others:  # numeric-field vectors are dense
        dense.append({"params": others, "lr": emb_lr})
    return Optimizers(torch.optim.Adam(dense, weight_decay=cfg.weight_decay), torch.optim.SparseAdam([table], lr=emb_lr))


def bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows, summed over tasks: the paper's multi-task risk (eq. 2)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()


def soft_targets(logits: Tensor, temperature: float) -> Tensor:
    return torch.sigmoid(logits / temperature)


def train_real_epoch(
    model: CTRModel,
    block: Block,
    opt: Optimizers,
    batch_size: int,
    gen: torch.Generator,
    device: str = "cpu",
    on_step: Callable[[int, float], None] | None = None,
) -> float:
    """One pass over real rows with hard labels; returns the mean loss."""
    model.train()
    total, seen = 0.0, 0
    for step, batch in enumerate(block.batches(batch_size, shuffle=True, generator=gen)):
        batch = batch.to(device)
        loss = bce(model(batch.cat, batch.num), batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(batch)
        seen += len(batch)
        if on_step:
            on_step(step, loss.item())
    return total / max(seen, 1)


def train_soft_epoch(
    model: CTRModel,
    syn: SyntheticSet,
    opt: Optimizers,
    batch_size: int,
    gen: torch.Generator,
    temperature: float = 1.0,
    device: str = "cpu",
) -> float:
    """One pass of the dense part over synthetic embeddings with soft labels."""
    model.train()
    total = 0.0
    for part in syn.batches(batch_size, shuffle=True, generator=gen):
        part = part.to(device)
        loss = bce(model.dense(part.emb), soft_targets(part.logits, temperature))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(part)
    return total / max(len(syn), 1)


@torch.no_grad()
def predict_logits(model: CTRModel, block: Block, device: str = "cpu") -> Tensor:
    model.eval()
    out = [model(b.cat.to(device), b.num.to(device)).float().cpu() for b in block.batches(EVAL_BATCH)]
    return torch.cat(out) if out else torch.empty(0, model.schema.num_tasks)


@torch.no_grad()
def embed_rows(model: CTRModel, block: TensorBlock, device: str = "cpu") -> SyntheticSet:
    """Rows as (field embeddings, teacher logits) under `model`: the embedding–soft-label form (eq. 8)."""
    model.eval()
    embs, logits = [], []
    for b in block.batches(EVAL_BATCH):
        e = model.embedding(b.cat.to(device), b.num.to(device))
        embs.append(e.cpu())
        logits.append(model.dense(e).cpu())
    return SyntheticSet(torch.cat(embs), torch.cat(logits), torch.zeros(len(block), dtype=torch.long), block.cat, block.num)


def evaluate(model: CTRModel, block: TensorBlock, device: str = "cpu") -> TaskMetrics:
    probs = torch.sigmoid(predict_logits(model, block, device)).numpy()
    return task_metrics(block.labels.numpy(), probs, model.schema.labels)


def el2n_scores(logits: Tensor, labels: Tensor) -> Tensor:
    """EL2N (Paul et al., 2021): the L2 norm over tasks of sigmoid(f(x)) - y (eq. 6)."""
    return (torch.sigmoid(logits) - labels).norm(dim=-1)
