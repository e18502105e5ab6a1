"""One DIET stage per phase on a GPU, and candidate training on full history versus the distilled set.

    python benchmarks/distill_gpu.py --out OUT                 # full: 4 x 2.5 M-row blocks, 17 fields, 3 tasks
    python benchmarks/distill_gpu.py --quick --device cpu --out OUT   # small, for CI

OUT is a directory (OUT/distill_gpu.json, OUT/profile.txt) or, ending in .json, the JSON file itself
(the profile beside it as NAME.profile.txt).

A KuaiRand-shaped stream (the paper's Table 2: 17 categorical fields, 3 tasks) is
generated in memory: hashed ids of Zipf-like popularity, three correlated labels
from a hidden additive model with a user x item interaction. Blocks live in
pinned host memory and move to the device stage by stage, as a worker's would.

Every phase runs the engine's own functions (train.reference.continue_reference,
distill.stage.boundary_memory — train.loops.predict_logits + el2n_scores —,
distill.memory.fusion_weights/fuse, distill.addressing.address,
distill.bilevel.optimise_memory, train.candidate.train_candidate) and is timed
with CUDA events, with the peak GPU memory allocated during it. Candidate
iteration is compared in the same run with the obvious alternative: the same
code retrained on the full history.

Fidelity: every method of `--methods` (full, cold, warmup, random, el2n, kmeans,
diet) trains the models' candidates by the engine bench's own protocol
(bench.history_sets for the selection sets, bench.run_cell for each cell,
bench.summarise for Kendall τ-b against full, the cold→full gap recovered and
what each set teaches alone); diet's set is the one the timed stages built.

Prints a table; writes the JSON after every section (after every fidelity
cell), so a run cut short still leaves what it measured. Timings are reported,
never asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diet_engine.config import CandidateConfig, DistillConfig, ReferenceConfig, TrainConfig  # noqa: E402
from diet_engine.data.blocks import TensorBlock  # noqa: E402
from diet_engine.data.schema import CategoricalField, StreamSchema  # noqa: E402
from diet_engine.data.synthetic import SyntheticSet  # noqa: E402
from diet_engine.distill.addressing import address  # noqa: E402
from diet_engine.distill.bilevel import optimise_memory  # noqa: E402
from diet_engine.distill.influence import Influence  # noqa: E402
from diet_engine.distill.memory import fuse, fusion_weights, reanchor  # noqa: E402
from diet_engine.distill.stage import boundary_memory, memory_budget, module_on, target_pool  # noqa: E402
from diet_engine.distill.unroll import draw_pick, draw_unroll, meta_gradient  # noqa: E402
from diet_engine.evaluate.bench import DATA_METHODS, BenchConfig, Splits, history_sets, run_cell, summarise  # noqa: E402
from diet_engine.evaluate.selection import SELECTION_METHODS  # noqa: E402
from diet_engine.models import MODELS  # noqa: E402
from diet_engine.models.base import CTRModel, ModelConfig  # noqa: E402
from diet_engine.train import rowwise_adam  # noqa: E402
from diet_engine.train.candidate import train_candidate  # noqa: E402
from diet_engine.train.loops import (  # noqa: E402
    bce, generator, load_optimizer_tensors, make_optimizer, optimizer_tensors, predict_logits, train_real_epoch,
)
from diet_engine.train.metrics import mean_auc_torch  # noqa: E402
from diet_engine.train.reference import continue_reference, new_reference  # noqa: E402

TASKS = ["click", "like", "follow"]
# the methods the fidelity section can run; "diet" is the set the timed stages distilled
FIDELITY_METHODS = (*DATA_METHODS, *SELECTION_METHODS, "diet")


# --------------------------------------------------------------------------- the stream

def stream_schema(fields: int, buckets: int) -> StreamSchema:
    return StreamSchema(
        name="kuairand_like", fields=[CategoricalField(name=f"f{i:02d}", buckets=buckets) for i in range(fields)],
        labels=TASKS, timestamp="ts",
    )


class StreamGenerator:
    """Rows of a synthetic KuaiRand-like log, generated on `device` chunk by chunk.

    Field i draws a popularity rank r from a log-uniform (Zipf exponent 1)
    law over its vocabulary and hashes it into 1..buckets-1. Each task's logit
    is a sum of per-bucket weights (a component shared by the tasks plus one
    of its own: correlated labels) and a user x item dot product; `like`
    needs a click. Item ranks drift by block (new items enter).
    """

    def __init__(self, fields: int, buckets: int, device: str, seed: int = 0) -> None:
        self.fields, self.buckets, self.device = fields, buckets, device
        g = torch.Generator(device=device).manual_seed(seed)
        self.gen = g
        # vocabularies: a few huge id-like fields, some medium, many small (user/item side features)
        vocab = [buckets] * 3 + [buckets // 4] * 4 + [max(buckets // 40, 2)] * 5 + [50] * (fields - 12)
        self.vocab = torch.tensor([min(v, buckets - 1) for v in vocab[:fields]], device=device, dtype=torch.float64)
        shared = torch.randn(fields, buckets, 1, generator=g, device=device)
        own = torch.randn(fields, buckets, len(TASKS), generator=g, device=device)
        self.weights = (0.35 * shared + 0.25 * own) / math.sqrt(fields) * 2.0
        self.user = torch.randn(buckets, 4, generator=g, device=device) * 0.6
        self.item = torch.randn(buckets, 4, generator=g, device=device) * 0.6
        self.bias = torch.tensor([-0.6, -1.2, -3.0], device=device)

    def rows(self, n: int, block_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g, dev = self.gen, self.device
        u = torch.rand(n, self.fields, generator=g, device=dev, dtype=torch.float64)
        ranks = torch.floor(torch.pow(self.vocab, u)).long()  # 1..vocab, log-uniform
        ranks[:, 1] += block_index * 1000  # item drift
        salt = torch.arange(self.fields, device=dev) * 0x9E3779B1
        cat = (ranks * 2654435761 + salt) % (self.buckets - 1) + 1
        score = self.weights[torch.arange(self.fields, device=dev), cat].sum(1)  # [n, T]
        score = score + (self.user[cat[:, 0]] * self.item[cat[:, 1]]).sum(1, keepdim=True)
        p = torch.sigmoid(score + self.bias)
        draw = torch.rand(n, len(TASKS), generator=g, device=dev)
        labels = (draw < p).float()
        labels[:, 1] *= labels[:, 0]  # a like needs a click
        return cat, labels


def generate_block(gen: StreamGenerator, n: int, block_index: int, start_ts: int, pin: bool, chunk: int = 1 << 20) -> TensorBlock:
    """n rows in host memory (pinned when the target is a GPU), generated in chunks where `gen` runs."""
    cat = torch.empty(n, gen.fields, dtype=torch.long, pin_memory=pin)
    labels = torch.empty(n, len(TASKS), pin_memory=pin)
    for lo in range(0, n, chunk):
        c, y = gen.rows(min(chunk, n - lo), block_index)
        cat[lo : lo + len(c)].copy_(c)
        labels[lo : lo + len(c)].copy_(y)
    ts = torch.arange(start_ts, start_ts + n, dtype=torch.long)
    return TensorBlock(cat, torch.empty(n, 0), labels, ts)


# --------------------------------------------------------------------------- timing

class Phases:
    """Per named phase: seconds (CUDA events on a GPU, else the wall clock) and peak device memory."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"

    @contextmanager
    def __call__(self, into: dict, name: str):
        rec: dict = {}
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            rec["resident_gb"] = torch.cuda.memory_allocated() / 2**30
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        yield rec
        if self.cuda:
            end.record()
            end.synchronize()
            rec["seconds"] = start.elapsed_time(end) / 1000
            rec["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            rec["seconds"] = time.perf_counter() - t0
            rec["peak_gb"] = None
        rec["wall_s"] = time.perf_counter() - t0
        into[name] = rec


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- floors

def device_info(device: str) -> dict:
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "commit": os.environ.get("DIET_COMMIT")}  # the device machine's copy has no .git: the caller names it
    if torch.device(device).type == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, memory_gb=p.total_memory / 2**30, sms=p.multi_processor_count)
    else:
        info.update(name=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def measured_peaks(device: str) -> dict:
    """What this device does at best here: copy bandwidth and fp32 / bf16 matmul throughput."""
    if torch.device(device).type != "cuda":
        return {}
    out = {}
    x = torch.empty(1 << 28, device=device)  # 1 GiB
    y = torch.empty_like(x)
    y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        y.copy_(x)
    end.record()
    end.synchronize()
    out["copy_bytes_per_s"] = 5 * 2 * x.numel() * 4 / (start.elapsed_time(end) / 1000)  # read + write
    del x, y
    for dtype, key in ((torch.float32, "fp32_flops"), (torch.bfloat16, "bf16_flops")):
        a = torch.randn(8192, 8192, device=device, dtype=dtype)
        b = torch.randn(8192, 8192, device=device, dtype=dtype)
        a @ b
        start.record()
        for _ in range(5):
            a @ b
        end.record()
        end.synchronize()
        out[key] = 5 * 2 * 8192**3 / (start.elapsed_time(end) / 1000)
    torch.cuda.empty_cache()
    return out


def training_step_cost(model: CTRModel, block: TensorBlock, batch_size: int, device: str) -> dict:
    """FLOPs per row of one training step (counted) and an estimate of its HBM bytes per row.

    Bytes: the embedding gather, its output, its gradient written and read by
    the sparse optimiser, lazy Adam reading and writing (weight, m, v) of each
    distinct row the batch touches, and every module output written in the
    forward pass and read twice in the backward pass (a lower bound: no re-reads).
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = model
    batch = next(block.to(device).batches(batch_size))
    n = len(batch)
    outs = 0

    def count(_m, _i, out):
        nonlocal outs
        if isinstance(out, torch.Tensor):
            outs += out.numel()

    hooks = [m.register_forward_hook(count) for m in probe.dense.modules() if not list(m.children())]
    opt = make_optimizer(probe, TrainConfig())
    with FlopCounterMode(display=False) as fc:
        loss = bce(probe(batch.cat, batch.num), batch.labels)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    for h in hooks:
        h.remove()
    fields, dim = batch.cat.shape[1], probe.embedding.dim
    distinct = int(torch.unique(batch.cat + probe.embedding.offsets).numel())
    emb_bytes = n * fields * dim * 4 * 4 + distinct * dim * 4 * 6
    act_bytes = outs * 4 * 3
    return {"flops_per_row": fc.get_total_flops() / n, "bytes_per_row": (emb_bytes + act_bytes) / n,
            "distinct_rows_per_batch": distinct, "batch": n}


# metadata-only aten ops: no kernel on a GPU
VIEW_OPS = {
    "view", "_unsafe_view", "t", "transpose", "expand", "slice", "select", "unsqueeze", "squeeze", "detach", "alias",
    "as_strided", "permute", "reshape", "split", "unbind", "split_with_sizes", "lift_fresh", "_to_copy_noop",
    "sym_size", "sym_stride", "sym_numel", "is_same_size", "_local_scalar_dense",
}


def count_ops(fn) -> int:
    """aten ops `fn` dispatches, views left out: about the kernels an eager GPU run launches for it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in VIEW_OPS:
                Counter.n += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.n


def launch_counts(ref: CTRModel, block: TensorBlock, syn, dense_prev, pool_emb, pool_labels, ref_cfg, dcfg, device) -> dict:
    """Ops per reference step, per eager outer iteration (addressing apart) and per addressing round.

    Differences of two run lengths, so one-off work (optimiser set-up, the epoch's shuffle) drops out.
    """
    model = copy.deepcopy(ref).to(device)
    opt = make_optimizer(model, ref_cfg.train)
    rows = block.take(torch.arange(min(len(block), 3 * 256))).to(device)

    def epoch(n: int):
        return lambda: train_real_epoch(model, rows.take(torch.arange(n * 256)), opt, 256, generator(0), device)

    epoch(1)()  # lazy state out of the count
    per_step = (count_ops(epoch(3)) - count_ops(epoch(1))) / 2
    eager = dcfg.model_copy(update={"cuda_graph": False, "address_every": 10_000})

    def outer(k: int):
        return lambda: optimise_memory(syn.detach(), dense_prev, pool_emb, pool_labels, eager.model_copy(update={"outer_iters": k}))

    per_iter = (count_ops(outer(5)) - count_ops(outer(1))) / 4
    addressing = count_ops(lambda: address(
        Influence(dense_prev, dcfg.influence_params, dcfg.score_batch), syn, pool_emb, pool_labels,
        dcfg.hard_ratio, dcfg.active_rows, temperature=dcfg.temperature))
    return {"reference_ops_per_step": per_step, "bilevel_ops_per_outer_iter": per_iter,
            "addressing_ops_per_round": addressing, "mean_unroll_steps": (min(dcfg.window, dcfg.inner_steps) + dcfg.inner_steps) / 2}


# --------------------------------------------------------------------------- the run

def configs(args) -> tuple[ReferenceConfig, DistillConfig, CandidateConfig]:
    arch = ModelConfig(embedding_dim=args.dim, hidden=[int(h) for h in args.hidden.split(",")])
    train = TrainConfig(batch_size=args.ref_batch, lr=args.ref_lr, precision=args.precision)
    ref = ReferenceConfig(model="dcn", arch=arch, train=train)
    dist = DistillConfig(
        ratio=args.ratio, outer_iters=args.outer_iters, inner_steps=args.inner_steps, window=args.window,
        inner_batch=args.inner_batch, outer_batch=args.outer_batch, target_pool_rows=args.pool_rows,
        score_batch=args.score_batch, cuda_graph=args.cuda_graph,
        **({} if args.memory_selection is None else {"memory_selection": args.memory_selection}),
    )
    # the paper trains full data and distilled data with the same batch size (appendix A.3)
    cand = CandidateConfig(arch=arch, train=TrainConfig(batch_size=args.cand_batch), distilled_batch=args.cand_batch,
                           distilled_epochs=args.distilled_epochs)
    return ref, dist, cand


def test_auc(model: CTRModel, block: TensorBlock, device: str) -> float:
    logits = predict_logits(model, block, device, batch_size=65_536, out_device=None)
    return mean_auc_torch(block.labels.to(logits.device), logits)


def run_stage(t, block, ref_prev, previous, seen, ref_cfg, dcfg, device, phases) -> tuple[dict, CTRModel, SyntheticSet]:
    """One DIET stage in distill_in_memory's order, phase by phase (plus one standalone addressing round)."""
    rec: dict = {"stage": t, "rows": len(block), "phases": {}}
    ph = rec["phases"]
    wall0 = time.perf_counter()
    with phases(ph, "h2d"):
        block = block.to(device, non_blocking=True)
    with phases(ph, "reference_epoch"):
        ref = continue_reference(ref_prev, block, ref_cfg, t, device)
    history_rows = seen + len(block)
    n_new, n_keep = memory_budget(history_rows, len(previous) if previous is not None else 0, dcfg)
    with phases(ph, "el2n_scoring"):
        new, chosen = boundary_memory(ref, block, t, n_new, dcfg, device)
    with phases(ph, "memory_fusion"):
        if previous is not None and n_keep:
            if dcfg.reanchor:  # kept rows carried into checkpoint t's space
                previous = reanchor(previous, module_on(ref_prev, device), ref)
            influence = Influence(ref.dense.eval(), dcfg.influence_params, dcfg.score_batch)
            weights = fusion_weights(influence, previous, new.emb, block.labels[chosen.to(block.device)], dcfg.temperature)
            syn = fuse(previous, weights, n_keep, new)
        else:
            syn = new
    with phases(ph, "target_pool"):
        pool_emb, pool_labels = target_pool(ref, block, t, dcfg, device)
    del block  # the bi-level step needs only the pool: the block goes back to host memory, as a worker's would
    dense_prev = module_on(ref_prev.dense, device)
    with phases(ph, "addressing"):  # one round; optimise_memory runs one every address_every iterations
        plan = address(
            Influence(dense_prev, dcfg.influence_params, dcfg.score_batch), syn, pool_emb, pool_labels,
            dcfg.hard_ratio, dcfg.active_rows, temperature=dcfg.temperature,
        )
    stamps: list[float] = []
    with phases(ph, "bilevel") as bl:
        t_start = time.perf_counter()
        syn, log = optimise_memory(syn, dense_prev, pool_emb, pool_labels, dcfg, lambda i, loss: stamps.append(time.perf_counter()))
    sync(device)
    rec["total_s"] = sum(p["seconds"] for p in ph.values())
    rec["wall_s"] = time.perf_counter() - wall0
    rec["peak_gb"] = max((p["peak_gb"] or 0) for p in ph.values()) if phases.cuda else None
    iters = [b - a for a, b in zip([t_start, *stamps[:-1]], stamps)]
    addressing_iters = [d for i, d in enumerate(iters) if i % dcfg.address_every == 0]
    plain = [d for i, d in enumerate(iters) if i % dcfg.address_every and i > 0]
    rec["bilevel"] = {
        "outer_iters": dcfg.outer_iters, "completed": len(iters), "skipped": log.skipped_steps, "cuda_graph": log.cuda_graph,
        "first_iter_s": iters[0] if iters else None,
        "median_iter_s": statistics.median(plain) if plain else None,
        "median_iter_with_addressing_s": statistics.median(addressing_iters[1:]) if len(addressing_iters) > 1 else None,
        "mean_iter_s": bl["wall_s"] / max(len(iters), 1),
        "active_rows": log.active_rows, "hard_rows": log.hard_rows,
        "outer_loss_first_last": [log.outer_loss[0], log.outer_loss[-1]] if log.outer_loss else None,
        "hard_loss_start_first_last": [log.hard_loss_start[0], log.hard_loss_start[-1]] if log.hard_loss_start else None,
    }
    rec["synthetic_rows"] = len(syn)
    rec["new_rows"], rec["kept_rows"] = len(new), len(syn) - len(new)
    rec["history_rows"] = history_rows
    return rec, ref, syn


def time_bilevel(syn, dense_prev, pool_emb, pool_labels, dcfg, iters: int, device: str) -> dict:
    """optimise_memory for `iters` outer iterations (on a copy): median seconds per iteration."""
    stamps: list[float] = []
    sync(device)
    t0 = time.perf_counter()
    _, log = optimise_memory(syn.detach(), dense_prev, pool_emb, pool_labels, dcfg.model_copy(update={"outer_iters": iters}),
                             lambda i, loss: stamps.append(time.perf_counter()))
    iters_s = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
    plain = [d for i, d in enumerate(iters_s) if i % dcfg.address_every and i > 0]
    return {"iters": len(iters_s), "cuda_graph": log.cuda_graph, "first_iter_s": iters_s[0] if iters_s else None,
            "median_iter_s": statistics.median(plain) if plain else None, "total_s": time.perf_counter() - t0}


def candidates(models, schema, hist, sub, valid, test, ref, syn, cand_cfg, device, phases) -> dict:
    """Per model: full history (one epoch) vs the distilled set (up to 8 epochs per learning rate tried, best
    (rate, epoch) on validation), then the
    subsequent block for both, by candidate.train_candidate; times, peaks and test AUC."""
    emb = {k: v.detach().clone() for k, v in ref.embedding.state_dict().items()}
    out = {}
    for name in models:
        ph: dict = {}
        with phases(ph, "full_history"):
            full = train_candidate(name, schema, finetune=hist, valid=valid, cfg=cand_cfg, seed=0, device=device)
        with phases(ph, "full_subsequent"):
            full = train_candidate(full.model, schema, finetune=[sub], valid=valid, cfg=cand_cfg, seed=0, device=device)
        with phases(ph, "distilled"):
            dist = train_candidate(name, schema, finetune=[], valid=valid, cfg=cand_cfg, seed=0, embeddings=emb,
                                   distilled=syn, device=device)
        epochs = dist.distilled_epochs_run  # every rate tried: what the distilled phase paid for
        with phases(ph, "distilled_subsequent"):
            dist_final = train_candidate(dist.model, schema, finetune=[sub], valid=valid, cfg=cand_cfg, seed=0, device=device)
        extra: dict = {}
        with phases(extra, "valid_pass"):  # what each distilled epoch's validation costs (candidate._valid_auc's work)
            test_auc(dist.model, valid, device)
        full_s, dist_s = ph["full_history"]["seconds"], ph["distilled"]["seconds"]
        batch = cand_cfg.train.batch_size
        full_steps = sum(math.ceil(len(b) / batch) for b in hist)
        dist_steps = epochs * math.ceil(len(syn) / cand_cfg.distilled_batch)
        out[name] = {
            "phases": ph, "distilled_epochs": epochs, "best_epoch": dist.best_epoch, "best_lr": dist.best_lr,
            "history_rows": sum(len(b) for b in hist), "distilled_rows": len(syn),
            "full_auc": test_auc(full.model, test, device), "distilled_auc": test_auc(dist_final.model, test, device),
            "full_ms_per_step": 1e3 * full_s / full_steps, "valid_pass_s": extra["valid_pass"]["seconds"],
            "distilled_ms_per_step": 1e3 * (dist_s - epochs * extra["valid_pass"]["seconds"]) / max(dist_steps, 1),
            "ratio_history": full_s / dist_s,
            "ratio_per_epoch": full_s / (dist_s / max(epochs, 1)),
            "ratio_end_to_end": (full_s + ph["full_subsequent"]["seconds"]) / (dist_s + ph["distilled_subsequent"]["seconds"]),
        }
        del full, dist, dist_final
        if phases.cuda:
            torch.cuda.empty_cache()
    return out


def fidelity_section(
    out: dict, splits: Splits, checkpoints: list[CTRModel], syn: SyntheticSet, cfg: BenchConfig,
    over_budget: Callable[[str], bool], on_cell: Callable[[str], None],
) -> dict:
    """Every (method, model) cell of `cfg` by the engine bench's protocol, on `cfg.device`, then bench.summarise.

    Selection sets come from bench.history_sets (checkpoint t scores block t); diet's is `syn`, the timed
    stages' set. Cells go into `out` as they finish, so `on_cell` (which writes the JSON) keeps each one; a
    cell over the time budget is skipped, and a method missing a model is left out of the summary.
    """
    methods, models = cfg.methods, cfg.models
    out.update(methods=methods, models=models, seed=cfg.seed, candidate_repeats=cfg.candidate_repeats, sets={},
               cells={m: {} for m in methods}, cells_skipped=[])
    built: dict = {}
    sets = history_sets([m for m in methods if m in SELECTION_METHODS], splits, checkpoints, cfg.ratio, cfg.distill,
                        cfg.seed, built, cfg.device)
    if "diet" in methods:
        sets["diet"] = syn
    for m, rows in sets.items():
        out["sets"][m] = {"rows": len(rows), "seconds": built.get(m, {}).get("seconds")}
    for method in methods:
        for model in models:
            if over_budget(f"fidelity {method}/{model}"):
                out["cells_skipped"].append(f"{method}/{model}")
                continue
            out["cells"][method][model] = [run_cell(method, model, splits, checkpoints, sets, cfg, cfg.seed)]
            on_cell(f"{method}/{model}")
            if torch.device(cfg.device).type == "cuda":
                torch.cuda.empty_cache()
    done = [m for m in methods if len(out["cells"][m]) == len(models)]
    if done and models:
        out["summarised"] = done
        out.update(summarise({m: out["cells"][m] for m in done}, done, models))
    return out


def profile_phases(ref: CTRModel, block: TensorBlock, syn, dense_prev, pool_emb, pool_labels, ref_cfg, dcfg, device, out: Path) -> dict:
    """torch.profiler over 20 reference steps and 3 eager outer iterations: top kernels and launch counts, their
    tables written to the text file `out`."""
    from torch.profiler import ProfilerActivity, profile

    res = {}
    small = block.take(torch.arange(min(len(block), 20 * ref_cfg.train.batch_size))).to(device)
    model = copy.deepcopy(ref).to(device)  # trained here: the stage's reference stays as it is
    opt = make_optimizer(model, ref_cfg.train)
    train_real_epoch(model, small.take(torch.arange(min(len(small), 2 * ref_cfg.train.batch_size))), opt,
                     ref_cfg.train.batch_size, generator(0), device, None, ref_cfg.train.precision)  # warm-up
    acts = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=acts) as prof:
        train_real_epoch(model, small, opt, ref_cfg.train.batch_size, generator(1), device, None, ref_cfg.train.precision)
        sync(device)
    steps = math.ceil(len(small) / ref_cfg.train.batch_size)
    kernels = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
    res["reference_kernels_per_step"] = kernels / steps
    text = ["== reference epoch, %d steps of %d rows ==" % (steps, ref_cfg.train.batch_size),
            prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)]
    eager = dcfg.model_copy(update={"outer_iters": 3, "cuda_graph": False, "address_every": 1000})
    optimise_memory(syn.detach(), dense_prev, pool_emb, pool_labels, eager.model_copy(update={"outer_iters": 1}))
    with profile(activities=acts) as prof:
        optimise_memory(syn.detach(), dense_prev, pool_emb, pool_labels, eager)
        sync(device)
    kernels = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
    res["bilevel_kernels_per_iter_incl_one_addressing"] = kernels / 3
    text += ["== bi-level, 3 eager outer iterations (one addressing round) ==",
             prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)]
    # one candidate on the distilled set: 8 short epochs, each validated
    emb = {k: v.detach().clone() for k, v in ref.embedding.state_dict().items()}
    cand = CandidateConfig(arch=ref_cfg.arch, train=TrainConfig(batch_size=4096), distilled_batch=4096)
    valid = block.take(torch.arange(min(len(block), 200_000))).to(device)
    with profile(activities=acts) as prof:
        train_candidate("dcn", ref.schema, finetune=[], valid=valid, cfg=cand, seed=0, embeddings=emb, distilled=syn, device=device)
        sync(device)
    text += ["== candidate dcn on the distilled set (model built on the host, 8 epochs, validation each) ==",
             prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)]
    out.write_text("\n".join(text))
    return res


def reference_variant(spec: str, prev: CTRModel, block: TensorBlock, stage: int, ref_cfg: ReferenceConfig, test: TensorBlock,
                      device: str, phases: Phases) -> dict:
    """continue_reference's three steps timed apart: checkpoint t-1 and its Adam moments onto the device, the
    epoch, the moments back to host memory. spec = batch:precision[:lr][:sorted]; precision tf32 is fp32 with
    TF32 matrix products (this benchmark only), `sorted` the row-wise Adam's sorted path instead of the kernel."""
    batch, precision, *rest = spec.split(":")
    lr = next((float(x) for x in rest if x != "sorted"), ref_cfg.train.lr)
    sorted_adam = "sorted" in rest
    train = {"batch_size": int(batch), "precision": "fp32" if precision == "tf32" else precision, "lr": lr}
    cfg = ref_cfg.model_copy(update={"train": ref_cfg.train.model_copy(update=train)})
    tf32, triton = torch.backends.cuda.matmul.allow_tf32, rowwise_adam.USE_TRITON
    torch.backends.cuda.matmul.allow_tf32, rowwise_adam.USE_TRITON = precision == "tf32", not sorted_adam
    ph: dict = {}
    try:
        block = block.to(device, non_blocking=True)
        with phases(ph, "load"):
            model = copy.deepcopy(prev, memo={id(prev.optimizer_state): {}}).to(device)
            opt = make_optimizer(model, cfg.train)
            load_optimizer_tensors(opt, {k: v.to(device, copy=True) for k, v in prev.optimizer_state.items()})
        with phases(ph, "epoch"):
            train_real_epoch(model, block, opt, cfg.train.batch_size, generator(cfg.seed * 1000 + stage), device, None,
                             cfg.train.precision)
        with phases(ph, "save"):
            optimizer_tensors(opt)
        auc = test_auc(model.eval(), test, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32, rowwise_adam.USE_TRITON = tf32, triton
    seconds = sum(p["seconds"] for p in ph.values())
    return {
        "spec": spec, "batch": int(batch), "precision": precision, "lr": lr, "rowwise_adam": "sorted" if sorted_adam else ("fused" if phases.cuda else "SparseAdam"),
        "seconds": seconds, "rows_per_s": len(block) / seconds, "epoch_s": ph["epoch"]["seconds"],
        "epoch_rows_per_s": len(block) / ph["epoch"]["seconds"], "load_s": ph["load"]["seconds"], "save_s": ph["save"]["seconds"],
        "peak_gb": max(p["peak_gb"] or 0 for p in ph.values()) if phases.cuda else None, "test_auc": auc,
    }


def rowwise_adam_check(ref: CTRModel, block: TensorBlock, batch_size: int, device: str, steps: int = 3, timed: int = 20) -> dict:
    """One reference batch's (row, field) occurrences on the reference's table: weights after `steps` updates of
    each path against torch's SparseAdam, and the median time of one update (CUDA events)."""
    table = ref.embedding.table.weight
    rows = (block.cat[:batch_size].to(device) + ref.embedding.offsets.to(device)).flatten()
    g = torch.Generator(device=device).manual_seed(0)
    grads = [torch.sparse_coo_tensor(rows[None], torch.randn(len(rows), table.shape[1], device=device, generator=g) * 1e-3,
                                     table.shape) for _ in range(steps)]
    out = {"occurrences": len(rows), "distinct_rows": int(torch.unique(rows).numel()), "table_rows": table.shape[0]}

    def run(make) -> tuple[torch.Tensor, float | None]:
        w = torch.nn.Parameter(table.detach().to(device, copy=True))
        opt = make([w])
        for grad in grads:
            w.grad = grad
            opt.step()
        after = w.detach().clone()
        if make is torch.optim.SparseAdam:
            return after, None
        times = []
        for _ in range(timed):
            w.grad = grads[0]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            opt.step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        return after, statistics.median(times)

    expected, _ = run(torch.optim.SparseAdam)
    for name, fused in (("fused", True), ("sorted", False)):
        w, t = run(lambda params, fused=fused: rowwise_adam.SyncFreeSparseAdam(params, lr=1e-3, fused=fused))
        out[name] = {"max_abs_diff_vs_sparse_adam": float((w - expected).abs().max()), "step_s": t}
    torch.cuda.empty_cache()
    return out


def bilevel_flops(syn, dense_prev, pool_emb, pool_labels, dcfg) -> float:
    """FLOPs of one outer iteration's meta-gradient at the full unroll length (counted, eager).

    Counted on `meta_gradient` itself: subtracting a separately run addressing round from a whole
    `optimise_memory` call read 0, as that round's count depends on the module's train/eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = dcfg.model_copy(update={"window": dcfg.inner_steps})
    gen = torch.Generator().manual_seed(0)
    active = torch.arange(len(syn), device=syn.emb.device)
    unroll = draw_unroll(active, cfg, gen, syn.emb.device)  # window = inner steps: every step keeps a graph
    pick = draw_pick(torch.arange(len(pool_emb), device=pool_emb.device), cfg, gen)
    start = {k: v.detach() for k, v in dense_prev.eval().named_parameters()}
    with FlopCounterMode(display=False) as fc:
        meta_gradient(dense_prev, start, syn.detach(), unroll, pool_emb[pick], pool_labels[pick], cfg)
    return fc.get_total_flops()


def output_paths(out: Path) -> tuple[Path, Path]:
    """(JSON, profile text) for --out: a .json file and NAME.profile.txt beside it, else files in that directory."""
    if out.suffix == ".json":
        out.parent.mkdir(parents=True, exist_ok=True)
        return out, out.with_suffix(".profile.txt")
    out.mkdir(parents=True, exist_ok=True)
    return out / "distill_gpu.json", out / "profile.txt"


def write(path: Path, result: dict) -> None:
    path.write_text(json.dumps(result, indent=2, default=float))


def fmt(x, unit="", digits=3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}{unit}"


def print_table(result: dict) -> None:
    dev = result["device"]
    print(f"\nDIET stage on {dev.get('name')} ({dev['device']}, torch {dev['torch']})")
    stages = result["stages"]
    last = stages[-1]
    print(f"{'phase':<18}" + "".join(f"{'stage ' + str(s['stage']):>22}" for s in stages))
    for name in last["phases"]:
        cells = []
        for s in stages:
            p = s["phases"].get(name, {})
            cells.append(f"{fmt(p.get('seconds'), ' s')} / {fmt(p.get('peak_gb'), ' GB', 2)}".rjust(22))
        print(f"{name:<18}" + "".join(cells))
    print(f"{'stage total':<18}" + "".join(f"{fmt(s['total_s'], ' s')} / {fmt(s['peak_gb'], ' GB', 2)}".rjust(22) for s in stages))
    for s in stages:
        b = s["bilevel"]
        print(f"stage {s['stage']}: reference {s['rows'] / s['phases']['reference_epoch']['seconds'] / 1e6:.2f} M rows/s; "
              f"outer iteration median {fmt(b['median_iter_s'], ' s', 4)} (first {fmt(b['first_iter_s'], ' s', 3)}, "
              f"with addressing {fmt(b['median_iter_with_addressing_s'], ' s', 4)}, cuda_graph={b['cuda_graph']}); "
              f"synthetic rows {s['synthetic_rows']}")
    if result.get("bilevel_eager"):
        e = result["bilevel_eager"]
        print(f"eager bi-level (same config, cuda_graph off): median {fmt(e['median_iter_s'], ' s', 4)} per outer iteration")
    if result.get("reference_variants"):
        print("\nreference epoch variants (last block, same start):")
        for v in result["reference_variants"]:
            if "error" in v:
                print(f"  {v['spec']}: {v['error']}")
                continue
            print(f"  batch {v['batch']:>6} {v['precision']} lr {v['lr']:g} adam {v['rowwise_adam']}: epoch {fmt(v['epoch_s'], ' s')} "
                  f"({v['epoch_rows_per_s'] / 1e6:.2f} M rows/s), with load {fmt(v['load_s'], ' s')} + save {fmt(v['save_s'], ' s')}: "
                  f"{v['rows_per_s'] / 1e6:.2f} M rows/s, peak {fmt(v['peak_gb'], ' GB', 2)}, test AUC {v['test_auc']:.4f}")
    if result.get("rowwise_adam"):
        r = result["rowwise_adam"]
        print(f"\nrow-wise Adam, {r['occurrences']} occurrences / {r['distinct_rows']} rows: " + "; ".join(
            f"{k} {fmt(r[k]['step_s'] * 1e3, ' ms', 2)} per step, max |diff| vs SparseAdam {r[k]['max_abs_diff_vs_sparse_adam']:.1e}"
            for k in ("fused", "sorted")))
    if result.get("candidates"):
        print(f"\n{'model':<10}{'full hist s':>12}{'distilled s':>12}{'epochs':>7}{'x history':>10}{'x per ep':>9}"
              f"{'x e2e':>7}{'full AUC':>9}{'dist AUC':>9}")
        for name, c in result["candidates"].items():
            ph = c["phases"]
            print(f"{name:<10}{ph['full_history']['seconds']:>12.3f}{ph['distilled']['seconds']:>12.3f}{c['distilled_epochs']:>7}"
                  f"{c['ratio_history']:>10.1f}{c['ratio_per_epoch']:>9.1f}{c['ratio_end_to_end']:>7.2f}"
                  f"{c['full_auc']:>9.4f}{c['distilled_auc']:>9.4f}")
    if result.get("fidelity"):
        print_fidelity(result["fidelity"])
    if result.get("stages"):
        print_targets(result)
    if result.get("floors"):
        print("\nfloors:", json.dumps(result["floors"], default=lambda x: round(x, 4)))


def print_fidelity(fid: dict) -> None:
    """Test AUC per (method, model), and per method τ-b against full, the cold→full gap recovered, set alone."""
    models = fid["models"]
    print(f"\nfidelity: bench.run_cell on the generated stream, {fid['candidate_repeats']} candidate(s) a cell, "
          f"seed {fid['seed']}; test AUC")
    print(f"{'method':<8}{'set rows':>9}" + "".join(f"{k:>10}" for k in models)
          + f"{'mean':>8}{'τ-b':>7}{'cold→full':>10}{'set alone':>10}")
    tau, gap, alone = fid.get("kendall_tau", {}), fid.get("gap_recovered", {}), fid.get("set_alone", {})
    for method in fid["methods"]:
        aucs = [fid["cells"][method][k][0]["auc"] if k in fid["cells"][method] else None for k in models]
        known = [a for a in aucs if a is not None]
        rows = fid["sets"].get(method, {}).get("rows")
        print(f"{method:<8}{rows if rows is not None else '':>9}" + "".join(f"{fmt(a, digits=4):>10}" for a in aucs)
              + f"{fmt(statistics.fmean(known) if known else None, digits=4):>8}{fmt(tau.get(method), digits=2):>7}"
              + f"{fmt(gap.get(method), digits=2):>10}{fmt(alone.get(method), digits=4):>10}")
    if fid["cells_skipped"]:
        print(f"skipped over --budget-s: {', '.join(fid['cells_skipped'])}")


def print_targets(result: dict) -> None:
    """The cost targets against what this run measured (last stage: the full DIET stage)."""
    last, want = result["stages"][-1], result["targets"]
    per_epoch = [c["ratio_per_epoch"] for c in result.get("candidates", {}).values()]
    checks = [
        ("stage", last["total_s"], want["stage_s"], " s", True),
        ("stage peak", last["peak_gb"], want["stage_peak_gb"], " GB", True),
        ("outer iteration", last["bilevel"]["median_iter_s"], want["outer_iter_s"], " s", True),
        ("reference epoch", last["rows"] / last["phases"]["reference_epoch"]["seconds"] / 1e6,
         want["reference_rows_per_s"] / 1e6, " M rows/s", False),
        ("candidate epoch, least x cheaper", min(per_epoch) if per_epoch else None, want["candidate_ratio"], "x", False),
    ]
    print("\ntargets (stage " + str(last["stage"]) + "):")
    for name, got, bound, unit, at_most in checks:
        verdict = "-" if got is None else ("met" if (got <= bound if at_most else got >= bound) else "NOT met")
        print(f"  {name:<34}{fmt(got, unit, 4):>14} {'<=' if at_most else '>='} {bound:g}{unit}: {verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="a directory, or a .json file (see above)")
    p.add_argument("--quick", action="store_true", help="small stream and loops (CPU smoke test, well under a minute)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fields", type=int, default=17)
    p.add_argument("--buckets", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=32, help="embedding dimension (the paper: 32)")
    p.add_argument("--hidden", default="256,128", help="DNN widths of every model")
    p.add_argument("--block-rows", type=int, default=2_500_000)
    p.add_argument("--blocks", type=int, default=4, help="historical blocks (stages)")
    p.add_argument("--eval-rows", type=int, default=500_000, help="rows of the validation and of the test split")
    p.add_argument("--ratio", type=float, default=0.015, help="distilled / historical rows (KuaiRand in the paper: 1.5 %%)")
    p.add_argument("--ref-batch", type=int, default=32_768)
    p.add_argument("--ref-lr", type=float, default=1e-3)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--outer-iters", type=int, default=200)
    p.add_argument("--early-outer-iters", type=int, default=None, help="outer iterations of the stages before the last (default: --outer-iters)")
    p.add_argument("--inner-steps", type=int, default=20)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--inner-batch", type=int, default=256)
    p.add_argument("--outer-batch", type=int, default=4096)
    p.add_argument("--pool-rows", type=int, default=65_536)
    p.add_argument("--score-batch", type=int, default=16_384)
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--memory-selection", action=argparse.BooleanOptionalAction, default=None,
                   help="active memory |A| = window x inner steps (the paper) instead of every row (default: the engine's)")
    p.add_argument("--cand-batch", type=int, default=4096)
    p.add_argument("--distilled-epochs", type=int, default=8, help="candidate epochs on the distilled set (the paper: up to 8)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--variants",
                   default="32768:fp32:sorted,32768:fp32,32768:fp32,16384:fp32,32768:tf32,32768:bf16,65536:fp32:0.002",
                   help="reference-epoch variants batch:precision[:lr][:sorted] (precision fp32, bf16 or tf32; sorted: the "
                        "row-wise Adam's sorted path) timed on the last block with their test AUC ('' for none)")
    p.add_argument("--eager-iters", type=int, default=15, help="outer iterations timed with cuda_graph off (0: skip)")
    p.add_argument("--profile", action="store_true", help="torch.profiler tables into OUT/profile.txt")
    p.add_argument("--methods", default=",".join(m for m in FIDELITY_METHODS if m != "kmeans"),
                   help=f"fidelity methods, any of {','.join(FIDELITY_METHODS)} ('' for none; kmeans is off by default: "
                        "k = 37,500 centroids a 2.5 M-row block, never timed at that size); full is needed for τ, full "
                        "and cold for the gap recovered")
    p.add_argument("--repeats", type=int, default=1, help="fidelity candidates per cell (seeds seed, seed+1000, ...)")
    p.add_argument("--budget-s", type=float, default=500,
                   help="skip later sections (and fidelity cells) once this much wall time has passed")
    p.add_argument("--seed", type=int, default=0)
    if p.parse_known_args(argv)[0].quick:  # smaller defaults; flags given explicitly still win
        p.set_defaults(
            buckets=2_000, block_rows=20_000, blocks=2, eval_rows=5_000, ref_batch=2048, cand_batch=2048,
            score_batch=8192, pool_rows=4096, outer_iters=4, inner_steps=4, window=2, inner_batch=64, outer_batch=256,
            ratio=0.02, variants="2048:fp32", eager_iters=0, dim=8, hidden="64,32",
        )
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(FIDELITY_METHODS) - {""})
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {','.join(FIDELITY_METHODS)}")
    unknown = sorted(set(args.models.split(",")) - set(MODELS) - {""})
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {','.join(MODELS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_begin = time.perf_counter()
    device = args.device
    json_path, profile_path = output_paths(args.out)
    torch.manual_seed(args.seed)
    cuda = torch.device(device).type == "cuda"
    ref_cfg, dcfg, cand_cfg = configs(args)
    schema = stream_schema(args.fields, args.buckets)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    phases = Phases(device)
    result: dict = {
        "device": device_info(device), "quick": args.quick,
        "config": {"reference": ref_cfg.model_dump(), "distill": dcfg.model_dump(), "candidate": cand_cfg.model_dump(),
                   "fields": args.fields, "buckets": args.buckets, "block_rows": args.block_rows, "blocks": args.blocks,
                   "eval_rows": args.eval_rows, "tasks": TASKS, "models": models, "methods": methods,
                   "candidate_repeats": args.repeats},
        "targets": {"reference_rows_per_s": 3e6, "outer_iter_s": 0.040, "stage_s": 15.0, "stage_peak_gb": 4.0,
                    "candidate_ratio": 60.0},
        "stages": [], "sections_skipped": [],
    }
    result["peaks"] = measured_peaks(device)

    # the stream: history blocks, subsequent block, validation and test splits
    gen = StreamGenerator(args.fields, args.buckets, device, args.seed)
    t0 = time.perf_counter()
    hist = [generate_block(gen, args.block_rows, b, b * args.block_rows, cuda) for b in range(args.blocks)]
    sub = generate_block(gen, args.block_rows, args.blocks, args.blocks * args.block_rows, cuda)
    valid = generate_block(gen, args.eval_rows, args.blocks + 1, 0, False).to(device)
    test = generate_block(gen, args.eval_rows, args.blocks + 1, 0, False).to(device)
    sync(device)
    total_rows = (args.blocks + 1) * args.block_rows + 2 * args.eval_rows
    result["stream"] = {
        "rows": total_rows, "history_rows": args.blocks * args.block_rows, "generate_s": time.perf_counter() - t0,
        "label_rates": dict(zip(TASKS, torch.cat([b.labels for b in hist]).mean(0).tolist())),
    }
    write(json_path, result)

    # DIET stage by stage
    ref = new_reference(schema, ref_cfg)
    syn, seen = None, 0
    refs_prev = None
    checkpoints = [ref]  # checkpoint t embeds block t for the fidelity section's selection sets
    for t, block in enumerate(hist, 1):
        early = t < len(hist) and args.early_outer_iters is not None
        cfg_t = dcfg.model_copy(update={"outer_iters": args.early_outer_iters}) if early else dcfg
        rec, new_ref, syn = run_stage(t, block, ref, syn, seen, ref_cfg, cfg_t, device, phases)
        seen += len(block)
        result["stages"].append(rec)
        # checkpoints wait in host memory, as a worker loads them from storage: the next reference epoch
        # copies checkpoint t to the device (inside its timing) and only its dense part stays there
        if refs_prev is not None:  # its Adam moments are spent: freed now, as before checkpoints were kept
            refs_prev.optimizer_state = {}
        refs_prev, ref = ref, new_ref.cpu()
        checkpoints.append(ref)
        write(json_path, result)
        print(f"stage {t}: {rec['total_s']:.2f} s, peak {fmt(rec['peak_gb'], ' GB', 2)}", flush=True)
        if cuda:
            torch.cuda.empty_cache()

    last_block = hist[-1]
    ref = ref.to(device)
    dense_prev = module_on(refs_prev.dense, device)
    pool_emb, pool_labels = target_pool(ref, last_block, len(hist), dcfg, device)

    def over_budget(section: str) -> bool:
        if time.perf_counter() - t_begin > args.budget_s:
            result["sections_skipped"].append(section)
            return True
        return False

    # candidate iteration: full history vs the distilled set, each model of the zoo
    if models and not over_budget("candidates"):
        result["candidates"] = candidates(models, schema, hist, sub, valid, test, ref, syn, cand_cfg, device, phases)
        c = result["candidates"].values()
        result["ratios"] = {k: statistics.fmean(x[k] for x in c) for k in ("ratio_history", "ratio_per_epoch", "ratio_end_to_end")}
    write(json_path, result)

    # fidelity: each method's candidates on the generated stream by the engine bench's protocol, τ against full's
    # (before the variants and floors: a run over --budget-s skips those first)
    if methods and models and not over_budget("fidelity"):
        # the bench's splits live on its device (about 2 GB at full size): moved there now, after the timed stages
        splits = Splits.in_memory(schema, [b.to(device) for b in hist], sub.to(device), valid, test)
        # `data` names no file: the stream is generated in memory
        bench_cfg = BenchConfig(data=json_path, out=json_path.parent, methods=methods, models=models, ratio=args.ratio,
                                seed=args.seed, candidate_repeats=args.repeats, reference=ref_cfg, candidate=cand_cfg,
                                distill=dcfg, device=device)

        def cell_done(name: str) -> None:
            write(json_path, result)
            print(f"fidelity {name}: {time.perf_counter() - t_begin:.0f} s into the run", flush=True)

        fidelity_section(result.setdefault("fidelity", {}), splits, checkpoints, syn, bench_cfg, over_budget, cell_done)
        write(json_path, result)
        del splits  # the later sections measure peaks: the bench's copies of the blocks leave the device
        if cuda:
            torch.cuda.empty_cache()

    # the same outer iterations without CUDA graphs (the eager loop), for the speed-up
    if args.eager_iters and cuda and not over_budget("bilevel_eager"):
        eager = dcfg.model_copy(update={"cuda_graph": False})
        result["bilevel_eager"] = time_bilevel(syn, dense_prev, pool_emb, pool_labels, eager, args.eager_iters, device)
        result["bilevel_graph"] = time_bilevel(syn, dense_prev, pool_emb, pool_labels, dcfg, args.eager_iters, device)
        write(json_path, result)

    # reference epoch: batch size, precision and the row-wise Adam's path against test AUC, same start and block
    result["reference_variants"] = []
    for spec in [v for v in args.variants.split(",") if v]:
        if over_budget(f"variant {spec}"):
            break
        try:
            result["reference_variants"].append(
                reference_variant(spec, refs_prev, last_block, len(hist), ref_cfg, test, device, phases))
        except Exception as exc:  # noqa: BLE001 - one variant must not cost the run the others
            result["reference_variants"].append({"spec": spec, "error": repr(exc)})
        write(json_path, result)

    # the lazy Adam's update alone, fused kernel against the sorted path, and both against torch's SparseAdam
    if cuda and not over_budget("rowwise_adam"):
        try:
            result["rowwise_adam"] = rowwise_adam_check(ref, last_block, ref_cfg.train.batch_size, device)
        except Exception as exc:  # noqa: BLE001
            result["rowwise_adam_error"] = repr(exc)
        write(json_path, result)

    # floors: compute and memory traffic against what this device measured
    try:
        if over_budget("floors"):
            raise TimeoutError("skipped: over --budget-s")
        cost = training_step_cost(copy.deepcopy(ref).to(device), last_block, ref_cfg.train.batch_size, device)
        floors = {"reference_step": cost}
        flops_iter = bilevel_flops(syn, dense_prev, pool_emb, pool_labels, dcfg)
        floors["bilevel_flops_per_outer_iter"] = flops_iter
        peaks = result["peaks"]
        if peaks:
            rows = args.block_rows
            floors["reference_compute_floor_s"] = cost["flops_per_row"] * rows / peaks["fp32_flops"]
            floors["reference_memory_floor_s"] = cost["bytes_per_row"] * rows / peaks["copy_bytes_per_s"]
            floors["bilevel_compute_floor_s"] = flops_iter / peaks["fp32_flops"]
        result["floors"] = floors
    except Exception as exc:  # noqa: BLE001 - a floor estimate must not cost the run its measurements
        result["floors_error"] = repr(exc)
    try:
        if over_budget("launches"):
            raise TimeoutError("skipped: over --budget-s")
        result.setdefault("floors", {})["launches"] = launch_counts(
            ref, last_block, syn, dense_prev, pool_emb, pool_labels, ref_cfg, dcfg, device)
    except Exception as exc:  # noqa: BLE001
        result["launches_error"] = repr(exc)
    write(json_path, result)

    if args.profile and cuda and not over_budget("profile"):
        try:
            result["profile"] = profile_phases(ref, last_block, syn, dense_prev, pool_emb, pool_labels, ref_cfg, dcfg, device,
                                               profile_path)
        except Exception as exc:  # noqa: BLE001
            result["profile_error"] = repr(exc)
        write(json_path, result)

    result["elapsed_s"] = time.perf_counter() - t_begin
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    write(json_path, result)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
