"""Training and inference loops shared by reference, baselines and candidates.

Models only map inputs to logits; losses, optimisers and devices live here.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diet_engine.config import TrainConfig
from diet_engine.data.blocks import Block, TensorBlock, same_device
from diet_engine.train.metrics import TaskMetrics, task_metrics
from diet_engine.models.base import CTRModel
from diet_engine.train.rowwise_adam import SyncFreeSparseAdam
from diet_engine.data.synthetic import SyntheticSet

EVAL_BATCH = 8192


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def copy_to(module: nn.Module, device: str | torch.device) -> nn.Module:
    """A deep copy of `module` with its parameters and buffers created on `device` directly.

    deepcopy-then-.to() first copies every table on the host (0.1 s for a 435 MB one); here each
    tensor is copied once, straight to the device. A checkpoint's saved optimiser moments (host
    tensors twice the tables' size) are left behind: the copy gets an empty `optimizer_state`.
    """
    memo: dict[int, object] = {}
    saved = getattr(module, "optimizer_state", None)
    if saved is not None:
        memo[id(saved)] = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(param.detach().to(device, copy=True), requires_grad=param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = buffer.detach().to(device, copy=True)
    return copy.deepcopy(module, memo)


class Optimizers:
    """Adam for dense weights plus lazy Adam (row-wise state) for the sparse embedding table."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers
        self.steps = 0  # eager steps taken: a step is captured only once the moments exist
        # train_soft_epoch's captured steps on a GPU, by batch shape (None: that capture failed, run eagerly)
        self.graphs: dict[tuple, "GraphedSoftStep | None"] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()
        self.steps += 1

    @property
    def capturable(self) -> bool:
        """Every optimiser is the fused GPU Adam, whose step runs whole on the device (so a graph can hold it)."""
        return all(isinstance(o, torch.optim.Adam) and o.defaults.get("fused") for o in self.optimizers)


def optimizer_tensors(opt: Optimizers) -> dict[str, Tensor]:
    """The moments and step counts of every optimiser, flat, as safetensors can hold them: host copies.

    From a GPU each tensor is copied once, into pinned memory (several times the bandwidth of a pageable
    copy, and a later load to the GPU is as fast), with one wait for all of them.
    """
    out, on_gpu = {}, False
    for i, o in enumerate(opt.optimizers):
        for j, state in o.state_dict()["state"].items():
            for name, value in state.items():
                value = torch.as_tensor(value).detach()
                if value.is_cuda:
                    on_gpu = True
                    host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                    out[f"{i}.{j}.{name}"] = host.copy_(value, non_blocking=True)
                else:
                    out[f"{i}.{j}.{name}"] = value.clone()
    if on_gpu:
        torch.cuda.synchronize()  # the copies are complete before anyone reads them
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
    """One pass of the dense part over synthetic embeddings with soft labels.

    On a GPU with the fused Adam (`Optimizers.capturable`), each step — the
    batch's gather, forward, backward and optimiser step — is replayed from a
    CUDA graph captured at the first step of each batch size after the first
    eager step: at the paper's batch of 4096 a distilled step is a few hundred
    small kernels, and launched one by one from Python the GPU waited on the
    host. Same batches (the same draw from `gen`), same kernels, same updates.
    """
    model.train()
    # the rows are data here: no gradient flows back into the set (and no autograd node of it outlives a step,
    # which would tie the captured backward to the stream it was made on)
    emb, logits = syn.emb.detach().to(device), syn.logits.detach().to(device)

    def step(idx: Tensor) -> Tensor:
        graphed = _soft_step_graph(model, opt, emb, logits, len(idx), temperature)
        return graphed(idx) if graphed is not None else soft_step(model, opt, emb, logits, idx, temperature)

    return _epoch(len(syn), batch_size, gen, device, step)


def _epoch(n: int, batch_size: int, gen: torch.Generator, device: str, step: Callable[[Tensor], Tensor]) -> float:
    """`step` on each batch of one shuffled pass over n rows (SyntheticSet.batches' draw: same batches); the
    mean loss, summed on the device (no wait per step)."""
    order = torch.randperm(n, generator=gen).to(device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        total.add_(step(idx), alpha=len(idx))
    return float(total) / max(n, 1)


def train_anchored_epoch(
    model: CTRModel,
    syn: SyntheticSet,
    offsets: Tensor,
    opt: Optimizers,
    batch_size: int,
    gen: torch.Generator,
    temperature: float = 1.0,
    device: str = "cpu",
) -> float:
    """One pass over an anchored set that trains the embedding tables too: a row's input is the candidate's
    own embedding of the real ids it came from plus its fixed offset from them (`anchor_offsets`), so the
    tables learn what the set says about those ids while every row still reads as the set's embedding."""
    model.train()
    cat, num = syn.src_cat.to(device), syn.src_num.to(device)
    logits = syn.logits.detach().to(device)

    def step(idx: Tensor) -> Tensor:
        emb = model.embedding(cat.index_select(0, idx), num.index_select(0, idx)) + offsets.index_select(0, idx)
        loss = bce(model.dense(emb), soft_targets(logits.index_select(0, idx), temperature))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return _epoch(len(syn), batch_size, gen, device, step)  # the same batches as train_soft_epoch's


@torch.no_grad()
def anchor_offsets(model: CTRModel, syn: SyntheticSet, device: str = "cpu") -> Tensor:
    """Each row's embedding minus the model's embedding of its source ids (zero for a selected real row)."""
    model.eval()
    parts = [
        syn.emb[i : i + EVAL_BATCH].to(device)
        - model.embedding(syn.src_cat[i : i + EVAL_BATCH].to(device), syn.src_num[i : i + EVAL_BATCH].to(device))
        for i in range(0, len(syn), EVAL_BATCH)
    ]
    return torch.cat(parts) if parts else torch.zeros_like(syn.emb, device=device)


def soft_step(model: CTRModel, opt: Optimizers, emb: Tensor, logits: Tensor, idx: Tensor, temperature: float) -> Tensor:
    """One optimiser step of the dense part on rows `idx` of (emb, logits); the loss, detached (the step's autograd
    graph dies here)."""
    loss = bce(model.dense(emb.index_select(0, idx)), soft_targets(logits.index_select(0, idx), temperature))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def graphs_wanted(opt: Optimizers, emb: Tensor) -> bool:
    return emb.is_cuda and opt.capturable


def _soft_step_graph(model, opt, emb, logits, rows, temperature) -> "GraphedSoftStep | None":
    if not graphs_wanted(opt, emb) or not opt.steps:
        return None
    key = (rows, emb.data_ptr(), logits.data_ptr(), tuple(emb.shape), tuple(logits.shape), temperature)
    if key not in opt.graphs:
        try:
            opt.graphs[key] = GraphedSoftStep(model, opt, emb, logits, rows, temperature)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            warnings.warn(f"CUDA graph capture of the distilled training step failed, running eagerly: {exc}", stacklevel=3)
            if emb.is_cuda:
                torch.cuda.synchronize()
            opt.graphs[key] = None
    return opt.graphs[key]


class GraphedSoftStep:
    """`soft_step` for one batch size, captured: static row indices in, the loss out."""

    def __init__(self, model: CTRModel, opt: Optimizers, emb: Tensor, logits: Tensor, rows: int, temperature: float) -> None:
        self.idx = torch.zeros(rows, dtype=torch.long, device=emb.device)
        self.loss = torch.zeros((), device=emb.device)
        for o in opt.optimizers:  # the fused Adam ignores the flag; the capture checks it
            for group in o.param_groups:
                group["capturable"] = group["capturable"] or bool(group.get("fused"))

        def warmup() -> None:  # forward and backward only: a warm-up step must not move the weights
            bce(model.dense(emb.index_select(0, self.idx)), soft_targets(logits.index_select(0, self.idx), temperature)).backward()
            opt.zero_grad(set_to_none=True)

        def step() -> None:
            self.loss.copy_(soft_step(model, opt, emb, logits, self.idx, temperature))

        self.graph, _ = capture_graph(step, warmup)

    def __call__(self, idx: Tensor) -> Tensor:
        self.idx.copy_(idx)
        self.graph.replay()
        return self.loss


def capture_graph(fn: Callable, warmup: Callable | None = None):
    """(graph, fn's output) for `fn` captured as a CUDA graph, after `warmup` (default `fn`) ran twice on a side
    stream so that lazy initialisation stays out of the graph. A capture records without running."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            (warmup or fn)()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


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
    return task_metrics(block.labels.cpu().numpy(), probs, model.schema.labels)  # a test split may live on the GPU


def el2n_scores(logits: Tensor, labels: Tensor) -> Tensor:
    """EL2N (Paul et al., 2021): the L2 norm over tasks of sigmoid(f(x)) - y (eq. 6)."""
    return (torch.sigmoid(logits) - labels).norm(dim=-1)
