"""The GPU code paths, checked on the CPU: graph-replayed meta-gradients, device-resident blocks, GPU AUC."""

import warnings
from dataclasses import fields

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from diet_engine.distill import meta_graph
from diet_engine.distill.bilevel import optimise_memory
from diet_engine.config import DistillConfig
from diet_engine.train.metrics import mean_auc_torch, roc_auc_torch
from diet_engine.models import ModelConfig, build_model
from diet_engine.data.synthetic import SyntheticSet

from engine_support import tiny_schema

SMALL = ModelConfig(embedding_dim=4, hidden=[8], n_experts=2, expert_dim=4, tower_hidden=[4])


class ReplayedEagerly:
    """A stand-in for a captured CUDA graph: replay() reruns the function and refreshes its static outputs."""

    def __init__(self, fn):
        self.fn = fn
        self.out = fn()

    def replay(self):
        fresh = self.fn()
        if fresh is None:
            return
        pairs = zip(self.out, fresh) if isinstance(fresh, tuple) else ((getattr(self.out, f.name), getattr(fresh, f.name)) for f in fields(fresh))
        for static, value in pairs:
            static.detach().copy_(value.detach())


def fake_capture(fn):
    graph = ReplayedEagerly(fn)
    return graph, graph.out


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
@pytest.mark.parametrize("rows", [40, 120])  # the window (3 x 16 rows) reads every active row, or a subset
@pytest.mark.parametrize("select", [True, False])
def test_graphed_meta_gradient_draws_and_computes_what_the_eager_loop_does(monkeypatch, select, rows, device):
    """Same generator, same batches, same maths: the synthetic set after K outer iterations matches. On the CPU
    the captures are stand-ins that rerun the captured functions; on a GPU they are real CUDA graphs."""
    torch.manual_seed(0)
    dense = build_model("dcn", tiny_schema(), SMALL).eval().dense.to(device)
    g = torch.Generator().manual_seed(1)
    pool = torch.randn(300, 4, 4, generator=g)
    pool_y = (pool[:, 0, 0:2] > 0).float()
    syn = SyntheticSet(torch.randn(rows, 4, 4, generator=g), torch.randn(rows, 2, generator=g),
                       torch.ones(rows, dtype=torch.long)).to(device)
    pool, pool_y = pool.to(device), pool_y.to(device)
    cfg = DistillConfig(outer_iters=6, inner_steps=6, window=3, inner_batch=16, outer_batch=20, address_every=2,
                        target_selection=select, memory_selection=select, target_pool_rows=300)
    eager, eager_log = optimise_memory(syn, dense, pool, pool_y, cfg)
    if device == "cpu":
        monkeypatch.setattr(meta_graph, "capture_graph", fake_capture)
        monkeypatch.setattr(meta_graph.MetaGradientGraphs, "wanted", staticmethod(lambda cfg, pool_emb: True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed, graphed_log = optimise_memory(syn, dense, pool, pool_y, cfg.model_copy(update={"cuda_graph": True}))
    assert not [w for w in caught if "CUDA graph capture" in str(w.message)]  # no fallback to the eager loop
    assert graphed_log.cuda_graph and not eager_log.cuda_graph
    assert not torch.equal(graphed.emb, syn.emb)
    assert torch.allclose(graphed.emb, eager.emb, atol=1e-5) and torch.allclose(graphed.logits, eager.logits, atol=1e-5)
    moved = [(out.emb != syn.emb).flatten(1).any(1) for out in (graphed, eager)]
    assert torch.equal(*moved)  # the same rows stepped, the same left untouched
    assert graphed_log.outer_loss == pytest.approx(eager_log.outer_loss, rel=1e-5)


def test_cuda_graph_option_is_ignored_on_a_cpu():
    torch.manual_seed(0)
    dense = build_model("dcn", tiny_schema(), SMALL).eval().dense
    pool = torch.randn(64, 4, 4)
    syn = SyntheticSet(torch.randn(8, 4, 4), torch.zeros(8, 2), torch.ones(8, dtype=torch.long))
    _, log = optimise_memory(syn, dense, pool, (pool[:, 0, :2] > 0).float(),
                             DistillConfig(outer_iters=2, inner_steps=2, window=1, inner_batch=4, cuda_graph=True))
    assert not log.cuda_graph and len(log.outer_loss) == 2


def test_torch_auc_equals_sklearn_with_ties_and_one_class():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(5000, 3, generator=g) < 0.2).float()
    s = torch.randint(0, 30, (5000, 3), generator=g).float() + y  # many ties
    for j in range(3):
        assert roc_auc_torch(y[:, j], s[:, j]) == pytest.approx(roc_auc_score(y[:, j].numpy(), s[:, j].numpy()), abs=1e-12)
    expected = np.mean([roc_auc_score(y[:, j].numpy(), s[:, j].numpy()) for j in range(3)])
    assert mean_auc_torch(y, s) == pytest.approx(expected, abs=1e-12)
    assert roc_auc_torch(torch.zeros(10), torch.rand(10)) == 0.5


def test_boundary_memory_embeds_only_the_chosen_rows_with_embed_rows_values():
    """Scoring from logits alone and embedding the chosen rows gives what embedding the whole block did."""
    from diet_engine.distill.boundary import boundary_select
    from diet_engine.data.blocks import TensorBlock
    from diet_engine.distill.stage import boundary_memory
    from diet_engine.train.loops import el2n_scores, embed_rows

    torch.manual_seed(0)
    model = build_model("dcn", tiny_schema(), SMALL).eval()
    g = torch.Generator().manual_seed(2)
    block = TensorBlock(torch.randint(0, 64, (500, 3), generator=g), torch.rand(500, 1, generator=g),
                        (torch.rand(500, 2, generator=g) < 0.3).float(), torch.arange(500))
    new, chosen = boundary_memory(model, block, 3, 40, DistillConfig())
    rows = embed_rows(model, block)
    expected = boundary_select(el2n_scores(rows.logits, block.labels), block.labels, 40, 0.9)
    assert torch.equal(chosen, expected)
    assert torch.equal(new.emb, rows.emb[chosen]) and torch.equal(new.logits, rows.logits[chosen])
    assert (new.stage == 3).all()


def test_same_device_and_blocks_moved_once():
    from diet_engine.data.blocks import TensorBlock, same_device
    from diet_engine.train.loops import on_device

    assert same_device("cpu", torch.device("cpu"))
    block = TensorBlock(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 1), torch.zeros(4, 2), torch.arange(4))
    assert on_device(block, "cpu") is block
    assert [len(b) for b in block.to("cpu").batches(3)] == [3, 1]


def _beside_sparse_adam(make, rows: int, width: int, touched: int, batch: int, steps: int):
    """Two equal tables, one stepped by torch's SparseAdam and one by `make(params)`, on the same sparse gradients
    (rows touched..rows-1 never touched, many repeats): (table a, its optimiser, table b, its optimiser)."""
    torch.manual_seed(0)
    a = torch.nn.Embedding(rows, width, sparse=True)
    b = torch.nn.Embedding(rows, width, sparse=True)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.SparseAdam(a.parameters(), lr=0.05), make(b.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, touched, (batch,), generator=g)
        w = torch.randn(batch, width, generator=g)
        for emb, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            (emb(idx) * w).sum().backward()
            opt.step()
    return a.weight, opt_a, b.weight, opt_b


def test_sync_free_sparse_adam_makes_sparse_adams_updates():
    """Same lazy Adam as torch's SparseAdam (rows repeated within a batch, rows never touched) over several steps."""
    from diet_engine.train.rowwise_adam import SyncFreeSparseAdam

    a, _, b, opt_b = _beside_sparse_adam(lambda p: SyncFreeSparseAdam(p, lr=0.05, fused=False), 50, 6, 20, 64, 6)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(a[:20], b.new_zeros(20, 6))
    untouched = opt_b.state[b]["exp_avg"][20:]
    assert torch.equal(untouched, torch.zeros_like(untouched))


def test_sparse_adam_moments_saved_on_one_device_continue_in_the_sync_free_one():
    """A checkpoint's SparseAdam moments (CPU stage) carry on in SyncFreeSparseAdam (GPU stage) unchanged."""
    from diet_engine.train.rowwise_adam import SyncFreeSparseAdam
    from diet_engine.train.loops import Optimizers, load_optimizer_tensors, optimizer_tensors

    torch.manual_seed(0)
    a = torch.nn.Embedding(30, 4, sparse=True)
    b = torch.nn.Embedding(30, 4, sparse=True)
    first = Optimizers(torch.optim.SparseAdam(a.parameters(), lr=0.05))
    idx, w = torch.tensor([1, 2, 2, 7]), torch.randn(4, 4)
    (a(idx) * w).sum().backward()
    first.step()
    b.load_state_dict(a.state_dict())
    saved = optimizer_tensors(first)
    second_a = Optimizers(torch.optim.SparseAdam(a.parameters(), lr=0.05))
    second_b = Optimizers(SyncFreeSparseAdam(b.parameters(), lr=0.05))
    load_optimizer_tensors(second_a, {k: v.clone() for k, v in saved.items()})
    load_optimizer_tensors(second_b, {k: v.clone() for k, v in saved.items()})
    for emb, opt in ((a, second_a), (b, second_b)):
        opt.zero_grad()
        (emb(idx) * w).sum().backward()
        opt.step()
    assert second_b.optimizers[0].state[b.weight]["step"] == 2
    assert torch.allclose(a.weight, b.weight, atol=1e-6)


def test_two_references_continued_from_one_checkpoint_start_from_the_same_moments():
    """Continuing twice from one checkpoint (as bench variants do) must not let the first run move its moments."""
    from diet_engine.config import ReferenceConfig
    from diet_engine.data.blocks import TensorBlock
    from diet_engine.train.reference import continue_reference, new_reference

    schema = tiny_schema()
    cfg = ReferenceConfig(arch=SMALL)
    g = torch.Generator().manual_seed(3)
    block = TensorBlock(torch.randint(0, 64, (300, 3), generator=g), torch.rand(300, 1, generator=g),
                        (torch.rand(300, 2, generator=g) < 0.3).float(), torch.arange(300))
    first = continue_reference(new_reference(schema, cfg), block, cfg, 1)
    before = {k: v.clone() for k, v in first.optimizer_state.items()}
    a = continue_reference(first, block, cfg, 2)
    assert all(torch.equal(before[k], first.optimizer_state[k]) for k in before)
    b = continue_reference(first, block, cfg, 2)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_fused_rowwise_adam_makes_sparse_adams_updates(monkeypatch):
    """The Triton path (run by Triton's interpreter on the CPU) against SparseAdam: repeated rows, untouched rows."""
    pytest.importorskip("triton")
    from diet_engine.train import rowwise_adam

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rowwise_adam._update_kernel.cache_clear()
    try:
        make = lambda p: rowwise_adam.SyncFreeSparseAdam(p, lr=0.05, fused=True)  # noqa: E731
        a, opt_a, b, opt_b = _beside_sparse_adam(make, 300, 5, 100, 700, 5)  # an odd width: masked columns
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.equal(a[100:], b[100:])
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt_a.state[a][name], opt_b.state[b][name], atol=1e-7)
        assert set(opt_b.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}  # the scratch is not state
    finally:
        rowwise_adam._update_kernel.cache_clear()


def test_graphed_soft_epochs_make_the_eager_epochs_updates(monkeypatch):
    """train_soft_epoch with its steps 'replayed' (captured steps rerun eagerly) draws the same batches and
    ends at the same weights as the eager loop; the first step of a batch size runs eagerly, later ones replay."""
    from diet_engine.train import loops as training

    class Replayed:
        def __init__(self, fn, warmup):
            self.fn = fn
            warmup()  # as a real capture: the warm-up runs, the captured function only at replay
            self.replays = 0

        def replay(self):
            self.replays += 1
            self.fn()

    def fake_capture(fn, warmup=None):
        graph = Replayed(fn, warmup or fn)
        graphs.append(graph)
        return graph, None

    torch.manual_seed(0)
    eager = build_model("dcn", tiny_schema(), SMALL)
    graphed = build_model("dcn", tiny_schema(), SMALL)
    graphed.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(4)
    syn = SyntheticSet(torch.randn(70, 4, 4, generator=g), torch.randn(70, 2, generator=g), torch.ones(70, dtype=torch.long))
    opt_e = training.Optimizers(torch.optim.Adam(eager.dense.parameters(), lr=0.01))
    opt_g = training.Optimizers(torch.optim.Adam(graphed.dense.parameters(), lr=0.01))
    graphs: list = []
    losses = []
    for model, opt, wanted in ((eager, opt_e, False), (graphed, opt_g, True)):
        monkeypatch.setattr(training, "graphs_wanted", lambda opt, emb, wanted=wanted: wanted)
        monkeypatch.setattr(training, "capture_graph", fake_capture)
        gen = torch.Generator().manual_seed(7)
        losses.append([training.train_soft_epoch(model, syn, opt, 16, gen, temperature=2.0) for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for k, v in eager.state_dict().items():
        assert torch.allclose(v, graphed.state_dict()[k], atol=1e-6), k
    assert [len(opt_e.graphs), len(opt_g.graphs)] == [0, 2]  # batches of 16 and the last one of 6
    assert opt_g.steps == 1 + sum(gr.replays for gr in graphs) and sum(gr.replays for gr in graphs) == 3 * 5 - 1
