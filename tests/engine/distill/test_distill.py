"""Each DIET step on small data: influence, fusion, addressing, the bi-level step, a whole stage."""

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch.func import functional_call

from diet_engine.distill.addressing import address
from diet_engine.dataset.artifacts import (
    OPTIMIZER,
    OPTIMIZER_PREFIX,
    REFERENCE,
    SYNTHETIC,
    canonical_safetensors,
    load_reference,
    load_synthetic,
)
from diet_engine.distill import bilevel
from diet_engine.distill.bilevel import RowAdam, optimise_memory
from diet_engine.distill.unroll import draw_pick, draw_unroll, inner_unroll, meta_gradient
from diet_engine.config import DistillConfig, ReferenceConfig
from diet_engine.distill.stage import boundary_memory, distill_stage, memory_budget
from diet_engine.data.blocks import TensorBlock
from diet_engine.evaluate.selection import select_kmeans
from diet_engine.distill.influence import Influence
from diet_engine.distill.memory import fuse, fusion_weights, reanchor
from diet_engine.models import ModelConfig, build_model
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.train.loops import bce, embed_rows, soft_targets

from engine_support import tiny_schema

SMALL = ModelConfig(embedding_dim=4, hidden=[8], n_experts=2, expert_dim=4, tower_hidden=[4])


def tiny_model(seed: int = 0, name: str = "dcn"):
    torch.manual_seed(seed)
    return build_model(name, tiny_schema(), SMALL).eval()


def explicit_gradients(dense, emb, targets):
    rows = []
    for i in range(emb.shape[0]):
        dense.zero_grad()
        bce(dense(emb[i : i + 1]), targets[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten().clone() for p in dense.parameters()]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["dcn", "wukong"])
def test_jvp_scores_equal_explicit_gradient_dot_products(name):
    dense = tiny_model(name=name).dense
    g = torch.Generator().manual_seed(1)
    emb_a, emb_b = torch.randn(7, 4, 4, generator=g), torch.randn(5, 4, 4, generator=g)
    y_a, y_b = torch.randint(0, 2, (7, 2), generator=g).float(), torch.rand(5, 2, generator=g)
    influence = Influence(dense)
    scores = influence.scores(emb_a, y_a, influence.direction(emb_b, y_b))
    ga, gb = explicit_gradients(dense, emb_a, y_a), explicit_gradients(dense, emb_b, y_b)
    assert torch.allclose(scores, ga @ gb.sum(0), rtol=1e-3, atol=1e-4)  # float32 sums over ~50k terms


def test_head_only_influence_uses_the_head_gradients():
    dense = tiny_model().dense
    emb, y = torch.randn(6, 4, 4), torch.randint(0, 2, (6, 2)).float()
    influence = Influence(dense, "head")
    head = [n for n, _ in dense.named_parameters() if n.startswith("head.")]
    full = explicit_gradients(dense, emb, y)
    offsets, start = {}, 0
    for n, p in dense.named_parameters():
        offsets[n] = slice(start, start + p.numel())
        start += p.numel()
    g_head = torch.cat([full[:, offsets[n]] for n in head], dim=1)
    scores = influence.scores(emb, y, influence.direction(emb, y))
    assert torch.allclose(scores, g_head @ g_head.sum(0), rtol=1e-3, atol=1e-4)


def test_fusion_keeps_the_rows_aligned_with_the_new_boundary():
    dense = tiny_model().dense
    g = torch.Generator().manual_seed(2)
    base = torch.randn(1, 4, 4, generator=g)
    new_emb = base + 0.05 * torch.randn(20, 4, 4, generator=g)
    new_y = torch.tensor([[1.0, 0.0]]).repeat(20, 1)
    # history near the same inputs: half with soft labels like the new rows' (aligned), half the opposite
    hist_emb = base + 0.05 * torch.randn(20, 4, 4, generator=g)
    logits = torch.tensor([[6.0, -6.0]]).repeat(20, 1)
    logits[::2] *= -1  # even rows opposed, odd rows aligned
    history = SyntheticSet(hist_emb, logits, torch.ones(20, dtype=torch.long))
    weights = fusion_weights(Influence(dense), history, new_emb, new_y)
    assert (weights[1::2] > 0).all() and (weights[::2] < 0).all()
    new = SyntheticSet(new_emb[:3], torch.zeros(3, 2), torch.full((3,), 2))
    fused = fuse(history, weights, 10, new)
    assert len(fused) == 13
    assert torch.equal(fused.emb[:10], hist_emb[1::2])  # exactly the aligned half survives, in order
    assert torch.equal(fused.stage[10:], torch.full((3,), 2))


def test_reanchor_moves_rows_by_their_source_rows_drift():
    before, after = tiny_model(seed=8), tiny_model(seed=9)  # two "checkpoints" with different tables and dense
    g = torch.Generator().manual_seed(10)
    cat, num = torch.randint(0, 64, (6, 3), generator=g), torch.rand(6, 1, generator=g)
    with torch.no_grad():
        e0, e1 = before.embedding(cat, num), after.embedding(cat, num)
        z0, z1 = before.dense(e0), after.dense(e1)
    offset = 0.1 * torch.randn(6, 4, 4, generator=g)  # what optimisation added to the row
    history = SyntheticSet(e0 + offset, z0 + 1.0, torch.ones(6, dtype=torch.long), cat, num)
    moved = reanchor(history, before, after)
    assert torch.allclose(moved.emb, e1 + offset, atol=1e-6) and torch.allclose(moved.logits, z1 + 1.0, atol=1e-5)
    assert torch.equal(history.emb, e0 + offset)  # the input set is not changed
    bare = SyntheticSet(history.emb, history.logits, history.stage)
    assert reanchor(bare, before, after) is bare  # no anchor, nothing to move by


def test_addressing_picks_hard_targets_and_responsible_rows():
    dense = tiny_model().dense
    g = torch.Generator().manual_seed(3)
    pool, pool_y = torch.randn(200, 4, 4, generator=g), torch.randint(0, 2, (200, 2), generator=g).float()
    syn = SyntheticSet(torch.randn(40, 4, 4, generator=g), torch.randn(40, 2, generator=g), torch.ones(40, dtype=torch.long))
    plan = address(Influence(dense), syn, pool, pool_y, hard_ratio=0.1, active_rows=8)
    assert len(plan.hard) == 20 and len(plan.active) == 8
    # the hard targets are the 10 % of smallest deficiency
    assert plan.deficiency[plan.hard].max() <= plan.deficiency.sort().values[19] + 1e-9
    off = address(Influence(dense), syn, pool, pool_y, 0.1, 8, select_targets=False, select_memory=False)
    assert len(off.hard) == 200 and len(off.active) == 40


@pytest.mark.parametrize("active", [None, [4, 0, 3, 1]])  # every row (in-place path) or a subset (gathers)
def test_row_adam_is_a_dense_adam_over_the_active_rows(active, monkeypatch):
    monkeypatch.setattr(RowAdam, "CHUNK", 2)  # several in-place passes
    g = torch.Generator().manual_seed(3)
    value = torch.randn(6, 3, generator=g)
    ids = torch.arange(6) if active is None else torch.tensor(active)
    reference = torch.nn.Parameter(value[ids].clone())
    adam = torch.optim.Adam([reference], lr=0.1)
    opt = RowAdam(value, lr=0.1)
    before = value.clone()
    for rows in ([0, 3], [1], [3, 0]):  # each step's gradient reaches some active rows only, in any order
        grad = torch.randn(len(rows), 3, generator=g)
        dense = torch.zeros_like(reference)
        where = {int(r): k for k, r in enumerate(ids)}
        dense[[where[r] for r in rows]] = grad
        reference.grad = dense
        adam.step()
        opt.step(ids, torch.tensor(rows), grad)
    assert torch.allclose(value[ids], reference.detach(), atol=1e-6)
    assert torch.equal(opt.steps[ids], torch.full((len(ids),), 3.0))
    outside = torch.ones(6, dtype=torch.bool)
    outside[ids] = False
    assert torch.equal(value[outside], before[outside]) and opt.steps[outside].sum() == 0
    assert opt.m[outside].abs().sum() == 0 and opt.v[outside].abs().sum() == 0


def dense_unroll(dense, start, emb, logits, cfg, gen):
    """The inner unroll as it was before the window's rows were gathered: batches of an |A|-row leaf, same draws."""
    n = emb.shape[0]
    total = int(torch.randint(min(cfg.window, cfg.inner_steps), cfg.inner_steps + 1, (1,), generator=gen))
    order = torch.randperm(n, generator=gen)
    params = {k: v.detach() for k, v in start.items()}
    for step in range(total):
        idx = order[(torch.arange(cfg.inner_batch) + step * cfg.inner_batch) % n]
        keep_graph = step >= total - cfg.window
        params = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in params.items()}
        e, z = (emb[idx], logits[idx]) if keep_graph else (emb[idx].detach(), logits[idx].detach())
        loss = bce(functional_call(dense, params, (e,)), soft_targets(z, cfg.temperature))
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=keep_graph)
        params = {k: v - cfg.inner_lr * g for (k, v), g in zip(params.items(), grads)}
        if not keep_graph:
            params = {k: v.detach() for k, v in params.items()}
    return params


@pytest.mark.parametrize("n_active", [40, 12])  # the window reads 16 distinct rows of 40, or all 12 (some twice)
def test_meta_gradient_is_the_dense_gradient_on_the_rows_the_window_reads(n_active):
    dense = tiny_model(seed=8).dense
    g = torch.Generator().manual_seed(9)
    pool, pool_y = torch.randn(100, 4, 4, generator=g), torch.randint(0, 2, (100, 2), generator=g).float()
    syn = SyntheticSet(torch.randn(50, 4, 4, generator=g), torch.randn(50, 2, generator=g), torch.ones(50, dtype=torch.long))
    active = torch.randperm(50, generator=g)[:n_active]  # unsorted, not every row
    hard = torch.arange(0, 100, 3)
    cfg = DistillConfig(inner_steps=6, window=2, inner_batch=8, outer_batch=20)
    start = {k: v.detach() for k, v in dense.named_parameters()}

    gen = torch.Generator().manual_seed(2)
    unroll = draw_unroll(active, cfg, gen, syn.emb.device)
    pick = draw_pick(hard, cfg, gen)
    outer, g_emb, g_logit = meta_gradient(dense, start, syn, unroll, pool[pick], pool_y[pick], cfg)

    gen = torch.Generator().manual_seed(2)
    emb_a, logit_a = syn.emb[active].clone().requires_grad_(True), syn.logits[active].clone().requires_grad_(True)
    final = dense_unroll(dense, start, emb_a, logit_a, cfg, gen)
    old_pick = hard[torch.randperm(len(hard), generator=gen)[: cfg.outer_batch]]
    reference = bce(functional_call(dense, final, (pool[old_pick],)), pool_y[old_pick])
    d_emb, d_logit = torch.autograd.grad(reference, [emb_a, logit_a])

    assert len(unroll.plain) > 0 and torch.equal(pick, old_pick)
    assert len(unroll.touched) == min(16, n_active) and len(unroll.touched.unique()) == len(unroll.touched)
    assert torch.allclose(outer, reference, rtol=1e-6, atol=0)
    full_emb, full_logit = torch.zeros_like(syn.emb), torch.zeros_like(syn.logits)
    full_emb[active], full_logit[active] = d_emb, d_logit
    assert torch.allclose(g_emb, full_emb[unroll.touched], rtol=1e-5, atol=1e-8)
    assert torch.allclose(g_logit, full_logit[unroll.touched], rtol=1e-5, atol=1e-8)
    assert g_emb.abs().sum() > 0 and g_logit.abs().sum() > 0
    others = torch.ones(50, dtype=torch.bool)
    others[unroll.touched] = False
    assert torch.equal(full_emb[others], torch.zeros_like(full_emb[others]))
    assert torch.equal(full_logit[others], torch.zeros_like(full_logit[others]))


def test_an_outer_step_moves_every_active_row_and_no_other(monkeypatch):
    steps = []

    class Recorded(RowAdam):
        def step(self, active, rows, grad):
            before = self.value.clone()
            super().step(active, rows, grad)
            steps.append((self, active, rows, before, self.value.clone()))

    monkeypatch.setattr(bilevel, "RowAdam", Recorded)
    dense = tiny_model(seed=10).dense
    g = torch.Generator().manual_seed(11)
    pool, pool_y = torch.randn(128, 4, 4, generator=g), torch.randint(0, 2, (128, 2), generator=g).float()
    syn = SyntheticSet(torch.randn(64, 4, 4, generator=g), torch.randn(64, 2, generator=g), torch.ones(64, dtype=torch.long))
    # |A| = window x inner steps = 8 of 64 rows; each window reads 2 x 2 of them
    cfg = DistillConfig(outer_iters=4, inner_steps=4, window=2, inner_batch=2, memory_selection=True, address_every=10)
    optimise_memory(syn, dense, pool, pool_y, cfg)

    assert len(steps) == 8  # embeddings and logits, 4 iterations
    for opt, active, rows, before, after in steps:
        assert len(active) == 8 and len(rows) == 4 and torch.isin(rows, active).all()
        outside = torch.ones(64, dtype=torch.bool)
        outside[active] = False
        assert torch.equal(after[outside], before[outside])
        assert opt.m[outside].abs().sum() == 0 and opt.steps[outside].sum() == 0
    opt, active, rows, before, after = steps[-1]  # the logits' last step
    assert torch.equal(opt.steps[active], torch.full((8,), 4.0))
    # a row this window skipped still moves on the momentum of earlier steps
    skipped = active[~torch.isin(active, rows)]
    carried = skipped[opt.m[skipped].flatten(1).abs().sum(1) > 0]
    assert len(carried) > 0 and (after[carried] != before[carried]).any(1).all()


def test_outer_steps_lower_the_hard_target_loss():
    model = tiny_model(seed=4)
    dense = model.dense
    g = torch.Generator().manual_seed(5)
    pool = torch.randn(256, 4, 4, generator=g)
    pool_y = (pool[:, 0, 0:2] > 0).float()  # a learnable target
    syn = SyntheticSet(torch.randn(16, 4, 4, generator=g), torch.zeros(16, 2), torch.ones(16, dtype=torch.long))
    # full unroll, full batches, all rows active, all pool rows targets: the meta-loss is deterministic
    cfg = DistillConfig(inner_steps=4, window=4, inner_batch=16, inner_lr=0.5, outer_batch=256,
                        target_selection=False, memory_selection=False, lr_embedding=0.05, lr_logits=0.1)
    start = {k: v.detach() for k, v in dense.named_parameters()}

    def meta_loss(s: SyntheticSet) -> float:
        unroll = draw_unroll(torch.arange(len(s)), cfg, torch.Generator().manual_seed(0), s.emb.device)
        touched = (s.emb[unroll.touched], s.logits[unroll.touched])
        final = inner_unroll(dense, start, s.emb, s.logits, unroll, touched, cfg)
        return bce(functional_call(dense, final, (pool,)), pool_y).item()

    before = meta_loss(syn)
    after_set, log = optimise_memory(syn, dense, pool, pool_y, cfg.model_copy(update={"outer_iters": 15}))
    assert meta_loss(after_set) < before - 1e-3
    assert log.outer_loss[-1] < log.outer_loss[0]
    assert not torch.equal(after_set.emb, syn.emb) and torch.equal(after_set.stage, syn.stage)


def test_memory_budget_keeps_the_ratio_of_history():
    cfg = DistillConfig(ratio=0.02, memory_keep=0.75)
    assert memory_budget(17_000, 0, cfg) == (340, 0)
    new, kept = memory_budget(41_000, 340, cfg)
    assert new + kept == 820 and kept == 255
    off = cfg.model_copy(update={"memory_fusion": False})
    assert memory_budget(41_000, 340, off) == (820, 0)


def test_two_stages_from_files_round_trip(tiny_stream, tmp_path):
    schema, root = tiny_stream
    ref = ReferenceConfig(arch=SMALL)
    cfg = DistillConfig(ratio=0.05, outer_iters=3, inner_steps=3, window=2, inner_batch=8, target_pool_rows=200, memory_keep=0.75)
    seen = []
    one = distill_stage(schema, root / "h1.parquet", 1, tmp_path / "v1", previous=None, reference=ref, config=cfg, progress=seen.append)
    two = distill_stage(schema, root / "h2.parquet", 2, tmp_path / "v2", previous=tmp_path / "v1", reference=ref, config=cfg)
    assert one.rows == 30 and two.history_rows == 1200 and two.rows == 60
    assert two.kept_rows == 22 and two.new_rows == 38
    assert {p.phase for p in seen} >= {"reference", "boundary", "optimise", "done"}
    syn, tasks = load_synthetic(tmp_path / "v2" / "synthetic.parquet")
    assert tasks == ["click", "buy"] and syn.emb.shape == (60, 4, 4)
    assert sorted(set(syn.stage.tolist())) == [1, 2]
    assert syn.anchored and syn.src_cat.shape == (60, 3)  # every row remembers its source row
    model, info = load_reference(tmp_path / "v2" / "reference.safetensors")
    assert info.stage == 2 and info.history_rows == 1200 and info.model == "dcn"
    with pytest.raises(ValueError, match="stage 1"):
        distill_stage(schema, root / "h2.parquet", 3, tmp_path / "v3", previous=tmp_path / "v1", reference=ref, config=cfg)


def test_kmeans_init_starts_the_memory_from_the_rows_the_kmeans_baseline_keeps(tiny_stream):
    schema, root = tiny_stream
    block = TensorBlock.load(root / "h1.parquet", schema)
    ref = tiny_model()
    cfg = DistillConfig(ratio=0.05, init="kmeans", seed=3)
    new, chosen = boundary_memory(ref, block, 2, 30, cfg)
    every = embed_rows(ref, block)
    assert torch.equal(chosen, select_kmeans(every, 30, 3 * 7919 + 2)) and 25 <= len(chosen) <= 30
    # real rows, each under its own ids, with the reference's logits, tagged with the stage
    assert torch.equal(new.emb, every.emb[chosen]) and torch.equal(new.logits, every.logits[chosen])
    assert torch.equal(new.src_cat, block.cat[chosen]) and new.stage.eq(2).all()
    el2n, _ = boundary_memory(ref, block, 2, 30, cfg.model_copy(update={"init": "el2n"}))
    assert len(el2n) == 30 and not torch.equal(el2n.src_cat[: len(new)], new.src_cat)


def test_the_optimiser_state_is_a_file_of_its_own_and_older_versions_still_continue(tiny_stream, tmp_path):
    """Consumers pull the weights alone; stage t+1 continues Adam from optimizer.safetensors, or from
    the moments a reference written before that file existed carries inside itself."""
    schema, root = tiny_stream
    ref = ReferenceConfig(arch=SMALL)
    cfg = DistillConfig(ratio=0.05, outer_iters=2, inner_steps=2, window=2, inner_batch=8, target_pool_rows=200)
    distill_stage(schema, root / "h1.parquet", 1, tmp_path / "v1", previous=None, reference=ref, config=cfg)
    weights = load_file(str(tmp_path / "v1" / REFERENCE))
    moments = load_file(str(tmp_path / "v1" / OPTIMIZER))
    assert moments and not any(k.startswith(OPTIMIZER_PREFIX) for k in weights)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(tmp_path / "v1" / SYNTHETIC, legacy / SYNTHETIC)
    with safe_open(str(tmp_path / "v1" / REFERENCE), framework="pt") as fh:
        meta = fh.metadata()
    combined = {**weights, **{OPTIMIZER_PREFIX + k: v for k, v in moments.items()}}
    (legacy / REFERENCE).write_bytes(canonical_safetensors(save(combined, metadata=meta)))

    for previous in ("v1", "legacy"):
        distill_stage(schema, root / "h2.parquet", 2, tmp_path / f"{previous}-2", previous=tmp_path / previous, reference=ref, config=cfg)
    for name in (SYNTHETIC, REFERENCE, OPTIMIZER):
        assert (tmp_path / "v1-2" / name).read_bytes() == (tmp_path / "legacy-2" / name).read_bytes(), name


def test_synthetic_embeddings_stay_within_the_real_field_norms():
    dense = tiny_model(seed=6).dense
    g = torch.Generator().manual_seed(7)
    pool = torch.randn(128, 4, 4, generator=g)
    pool_y = torch.randint(0, 2, (128, 2), generator=g).float()
    syn = SyntheticSet(torch.randn(16, 4, 4, generator=g), torch.zeros(16, 2), torch.ones(16, dtype=torch.long))
    cfg = DistillConfig(outer_iters=20, inner_steps=3, window=2, inner_batch=8, lr_embedding=5.0, lr_logits=5.0)
    out, log = optimise_memory(syn, dense, pool, pool_y, cfg)
    cap = pool.norm(dim=-1).amax(0)
    assert (out.emb.norm(dim=-1) <= cap + 1e-5).all()
    assert torch.isfinite(out.emb).all() and torch.isfinite(out.logits).all()
