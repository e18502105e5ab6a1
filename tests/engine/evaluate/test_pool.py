"""The candidate pools: P5 is the bench's five models as before, P15 fifteen distinct dense parts that run."""

import pytest
import torch

from diet_engine.data.blocks import TensorBlock
from diet_engine.evaluate.pool import CAPACITY, candidate, candidate_pool
from diet_engine.models import MODELS, ModelConfig, build_model

TINY = ModelConfig(embedding_dim=8, hidden=[16], n_experts=2, expert_dim=8, tower_hidden=[8])


def dense_parameters(model) -> int:
    return sum(p.numel() for p in model.dense.parameters())


def test_p5_is_each_architecture_at_its_default_size_built_as_before(tiny_stream):
    schema, _ = tiny_stream
    pool = candidate_pool("p5", list(MODELS), TINY)
    assert [c.name for c in pool] == list(MODELS)
    for c in pool:
        assert c.arch == TINY and c.backbone == {}
        torch.manual_seed(3)
        ours = c.build(schema).state_dict()
        torch.manual_seed(3)
        before = build_model(c.model, schema, TINY).state_dict()
        assert ours.keys() == before.keys() and all(torch.equal(ours[k], before[k]) for k in ours)


@pytest.mark.parametrize("base", [ModelConfig(), TINY], ids=["default-sizes", "tiny-sizes"])
def test_p15_builds_fifteen_distinct_models_that_each_run_on_the_tiny_stream(tiny_stream, base):
    schema, root = tiny_stream
    block = TensorBlock.load(root / "h1.parquet", schema)
    cat, num = block.cat[:32], block.num[:32]
    pool = candidate_pool("p15", list(MODELS), base)
    names = [c.name for c in pool]
    assert len(pool) == 15 and len(set(names)) == 15
    assert names[:3] == ["dcn-s", "dcn", "dcn-l"] and set(names) == {m + s for m in MODELS for s in ("-s", "", "-l")}
    shapes = set()
    for c in pool:
        torch.manual_seed(0)
        model = c.build(schema)
        assert model.embedding.dim == base.embedding_dim  # the reference's tables still fit
        logits = model(cat, num)
        assert logits.shape == (32, schema.num_tasks) and torch.isfinite(logits).all()
        shapes.add(tuple((k, tuple(v.shape)) for k, v in model.dense.state_dict().items()))
    assert len(shapes) == 15  # no two candidates share a dense part's shape


@pytest.mark.parametrize("model", list(MODELS))
def test_small_default_large_grow_in_dense_capacity(tiny_stream, model):
    schema, _ = tiny_stream
    sizes = [dense_parameters(candidate(model, size, ModelConfig()).build(schema)) for size in ("s", "default", "l")]
    assert sizes[0] < sizes[1] < sizes[2]
    if not CAPACITY[model].scales_hidden:  # Wukong ignores `hidden`: its config stays the base one
        assert candidate(model, "l", ModelConfig()).arch == ModelConfig()


def test_widths_scale_and_finalmlp_heads_fit_narrow_streams():
    assert candidate("dcn", "s", ModelConfig()).arch.hidden == [128, 64]
    assert candidate("dcn", "l", ModelConfig()).arch.hidden == [512, 256]
    small = candidate("finalmlp", "s", TINY)  # streams of width 8: 16 heads do not divide them
    assert small.arch.hidden == [8] and small.backbone["num_heads"] == 8
    assert "num_heads" not in candidate("finalmlp", "default", TINY).backbone


def test_unknown_pools_and_models_are_refused():
    with pytest.raises(ValueError, match="unknown pool"):
        candidate_pool("p9", ["dcn"], TINY)
    with pytest.raises(ValueError, match="unknown model"):
        candidate_pool("p15", ["resnet"], TINY)
