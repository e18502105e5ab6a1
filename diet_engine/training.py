"""Training and inference loops shared by reference, baselines and candidates.

Models only map inputs to logits; losses, optimisers and devices live here.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from diet_engine.config import TrainConfig
from diet_engine.data import Block, TensorBlock, same_device
from diet_engine.metrics import TaskMetrics, task_metrics
from diet_engine.models.base import CTRModel
from diet_engine.rowwise_adam import SyncFreeSparseAdam
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
            if name == "step" and isinstance(o, (torch.optim.SparseAdam, SyncFreeSparseAdam)):
                value = int(value.item())  # SparseAdam counts steps with a Python int
            state.setdefault(int(j), {})[name] = value
        if state:
            o.load_state_dict({"state": state, "param_groups": o.state_dict()["param_groups"]})


def make_optimizer(model: CTRModel, cfg: TrainConfig, dense_only: bool = False) -> Optimizers:
    dense = [{"params": model.dense_parameters(), "lr": cfg.lr}]
    # on a GPU one fused kernel updates every dense tensor (the same Adam; the CPU keeps the default loop)
    fused = {"fused": True} if model.embedding.table.weight.is_cuda else {}
    if dense_only:
        return Optimizers(torch.optim.Adam(dense, weight_decay=cfg.weight_decay, **fused))
    emb_lr = cfg.embedding_lr or cfg.lr
    table = model.embedding.table.weight
    others = [p for p in model.embedding_parameters() if p is not table]
    if others:  # numeric-field vectors are dense
        dense.append({"params": others, "lr": emb_lr})
    # on a GPU the same lazy Adam without SparseAdam's coalesce, which makes every step wait for the device
    sparse = SyncFreeSparseAdam([table], lr=emb_lr) if table.is_cuda else torch.optim.SparseAdam([table], lr=emb_lr)
    return Optimizers(torch.optim.Adam(dense, weight_decay=cfg.weight_decay, **fused), sparse)


def autocast(device: str | torch.device, precision: str = "fp32"):
    """bf16 autocast for the forward pass when asked (weights, optimiser state and losses stay fp32)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def on_device(block: Block, device: str | torch.device) -> Block:
    """An in-memory block moved to `device` once (a GPU then gathers its own batches); others as they are."""
    if isinstance(block, TensorBlock) and not same_device(block.device, device):
        return block.to(device, non_blocking=block.cat.is_pinned())
    return block


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
    precision: str = "fp32",
) -> float:
    """One pass over real rows with hard labels; returns the mean loss.

    The loss is summed on the device: without `on_step` nothing waits for the
    GPU until the epoch ends.
    """
    model.train()
    block = on_device(block, device)
    total, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    for step, batch in enumerate(block.batches(batch_size, shuffle=True, generator=gen)):
        batch = batch.to(device)
        with autocast(device, precision):
            logits = model(batch.cat, batch.num)
        loss = bce(logits.float(), batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().double() * len(batch)
        seen += len(batch)
        if on_step:
            on_step(step, loss.item())
    return float(total) / max(seen, 1)


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
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no wait per step
    for part in syn.batches(batch_size, shuffle=True, generator=gen):
        part = part.to(device)
        loss = bce(model.dense(part.emb), soft_targets(part.logits, temperature))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach().double() * len(part)
    return float(total) / max(len(syn), 1)


@torch.no_grad()
def predict_logits(
    model: CTRModel, block: Block, device: str = "cpu", batch_size: int = EVAL_BATCH, out_device: str | None = "cpu"
) -> Tensor:
    """Logits of every row, in order; `out_device=None` leaves them where they were computed."""
    model.eval()
    out = [model(b.cat.to(device), b.num.to(device)).float().to(out_device or device) for b in block.batches(batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.schema.num_tasks, device=out_device or device)


@torch.no_grad()
def embed_rows(model: CTRModel, block: TensorBlock, device: str = "cpu", out_device: str | None = "cpu") -> SyntheticSet:
    """Rows as (field embeddings, teacher logits) under `model`: the embedding–soft-label form (eq. 8)."""
    model.eval()
    out = out_device or device
    embs, logits = [], []
    for b in block.batches(EVAL_BATCH):
        e = model.embedding(b.cat.to(device), b.num.to(device))
        embs.append(e.to(out))
        logits.append(model.dense(e).to(out))
    stage = torch.zeros(len(block), dtype=torch.long, device=out)
    src_cat, src_num = block.cat.to(out), block.num.to(out)
    if not embs:
        empty = torch.empty(0, model.schema.num_fields, model.embedding.dim, device=out)
        return SyntheticSet(empty, torch.empty(0, model.schema.num_tasks, device=out), stage, src_cat, src_num)
    return SyntheticSet(torch.cat(embs), torch.cat(logits), stage, src_cat, src_num)


@torch.no_grad()
def lookup_rows(model: CTRModel, block: TensorBlock, device: str = "cpu") -> Tensor:
    """Field embeddings [N, F, D] of a few rows on `device`: a gather, exactly embed_rows' values."""
    model.eval()
    return model.embedding(block.cat.to(device), block.num.to(device))


def evaluate(model: CTRModel, block: TensorBlock, device: str = "cpu") -> TaskMetrics:
    probs = torch.sigmoid(predict_logits(model, block, device)).numpy()
    return task_metrics(block.labels.numpy(), probs, model.schema.labels)


def el2n_scores(logits: Tensor, labels: Tensor) -> Tensor:
    """EL2N (Paul et al., 2021): the L2 norm over tasks of sigmoid(f(x)) - y (eq. 6)."""
    return (torch.sigmoid(logits) - labels).norm(dim=-1)
