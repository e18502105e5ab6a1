"""The pool of fresh proxies the inner loop may start from (distill/proxy.py)."""

import pytest
import torch
from engine_support import tiny_schema

from diet_engine.config import DistillConfig
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.distill.bilevel import optimise_memory
from diet_engine.distill.proxy import ProxyPool, architecture_of
from diet_engine.models import ModelConfig, build_model
from diet_engine.train.loops import bce, soft_targets

ARCH = ModelConfig(embedding_dim=4, hidden=[8], n_experts=2, expert_dim=4, tower_hidden=[4])


def a_set(n=48, seed=0) -> SyntheticSet:
    g = torch.Generator().manual_seed(seed)
    fields = tiny_schema().num_fields
    emb = torch.randn(n, fields, 4, generator=g)
    logits = 3 * emb[:, 0, :2]  # soft labels a network can learn from the embeddings
    return SyntheticSet(emb, logits, torch.ones(n, dtype=torch.long))


def pool_cfg(**kw) -> DistillConfig:
    base = dict(proxy_init="pool", proxy_models=["dcn", "finalmlp"], pool_size=3, pool_horizon=6, pool_advance=2,
                pool_lr=1e-2, pool_batch=16)
    return DistillConfig(**{**base, **kw})


def test_slots_take_the_named_architectures_in_turn_and_the_reference_s_when_none_is_named():
    dense = build_model("wukong", tiny_schema(), ARCH).dense
    gen = torch.Generator().manual_seed(0)
    pool = ProxyPool(a_set(), dense, pool_cfg(), gen)
    assert [s.name for s in pool.slots] == ["dcn", "finalmlp", "dcn"]
    assert [s.name for s in ProxyPool(a_set(), dense, pool_cfg(proxy_models=[]), gen).slots] == ["wukong"] * 3
    assert architecture_of(dense) == "wukong"
    # distinct draws: no two slots start from the same weights
    first = [torch.cat([p.flatten() for p in s.params.values()]) for s in pool.slots if s.name == "dcn"]
    assert not torch.equal(first[0], first[1])


def test_a_slot_learns_the_set_and_restarts_after_its_horizon():
    dense = build_model("dcn", tiny_schema(), ARCH).dense
    syn = a_set()
    cfg = pool_cfg(pool_size=1, proxy_models=["dcn"], pool_horizon=40)
    pool = ProxyPool(syn, dense, cfg, torch.Generator().manual_seed(1))
    slot = pool.slots[0]

    def loss() -> float:
        out = torch.func.functional_call(slot.module, slot.params, (syn.emb,))
        return float(bce(out, soft_targets(syn.logits, cfg.temperature)))

    init = {k: v.clone() for k, v in slot.params.items()}
    before = loss()
    pool.advance(slot, syn, torch.arange(len(syn)), 39)
    assert int(slot.steps) == 39 and loss() < before - 0.01
    pool.advance(slot, syn, torch.arange(len(syn)), 2)  # the 40th step, then a restart and one step
    assert int(slot.steps) == 1
    assert any(not torch.equal(init[k], v) for k, v in slot.params.items())


def test_the_pool_draws_only_from_the_loop_generator():
    dense = build_model("dcn", tiny_schema(), ARCH).dense
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pool = ProxyPool(a_set(), dense, pool_cfg(), torch.Generator().manual_seed(2))
    pool.stagger(a_set(), torch.arange(48))
    assert torch.equal(torch.rand(3), expected)


def taught(syn: SyntheticSet, pool: torch.Tensor, labels: torch.Tensor, steps: int = 60) -> float:
    """What the set teaches a fresh network: its loss on real targets after a short Adam training on the set."""
    torch.manual_seed(9)
    model = build_model("dcn", tiny_schema(), ARCH)
    opt = torch.optim.Adam(model.dense.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(9)
    for _ in range(steps):
        pick = torch.randint(len(syn), (16,), generator=g)
        loss = bce(model.dense(syn.emb[pick]), soft_targets(syn.logits[pick], 2.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(bce(model.dense(pool), labels))


@pytest.mark.parametrize("models", [[], ["dcn", "finalnet", "wukong"]])
def test_sets_optimised_from_pooled_proxies_teach_fresh_networks_more_and_repeat(models):
    dense = build_model("dcnv2", tiny_schema(), ARCH).dense
    g = torch.Generator().manual_seed(3)
    pool = torch.randn(512, tiny_schema().num_fields, 4, generator=g)
    labels = (pool[:, 1, 0:2] > 0).float()  # not what the set's soft labels say: the set must learn it
    cfg = pool_cfg(proxy_models=models, outer_iters=40, inner_steps=4, window=2, inner_batch=16, outer_batch=256,
                   target_selection=False, lr_embedding=0.05, lr_logits=0.2)
    first, log = optimise_memory(a_set(seed=4), dense, pool, labels, cfg)
    again, _ = optimise_memory(a_set(seed=4), dense, pool, labels, cfg)
    assert torch.equal(first.emb, again.emb) and torch.equal(first.logits, again.logits)
    assert len(log.outer_loss) == 40 and not log.cuda_graph
    assert taught(first, pool, labels) < taught(a_set(seed=4), pool, labels) - 0.02


def test_unknown_proxy_models_are_refused():
    with pytest.raises(ValueError, match="unknown proxy models"):
        DistillConfig(proxy_init="pool", proxy_models=["dcn", "transformer"])
