"""Continual reference training: stages continue one Adam run, also across a save/load of the checkpoint."""

import torch

from diet_engine.dataset.artifacts import load_reference, save_optimizer, save_reference
from diet_engine.config import ReferenceConfig
from diet_engine.data.blocks import TensorBlock
from diet_engine.models import ModelConfig
from diet_engine.train.reference import continue_reference, new_reference
from diet_engine.train.loops import copy_to, generator, make_optimizer, train_real_epoch

ARCH = ModelConfig(embedding_dim=4, hidden=[8], n_experts=2, expert_dim=4, tower_hidden=[4])


def test_stages_continue_one_adam_run_through_the_artifact(tiny_stream, tmp_path):
    schema, root = tiny_stream
    cfg = ReferenceConfig(arch=ARCH)
    h1, h2 = (TensorBlock.load(root / f"{n}.parquet", schema) for n in ("h1", "h2"))
    one = continue_reference(new_reference(schema, cfg), h1, cfg, 1)
    assert one.optimizer_state and all(torch.isfinite(v).all() for v in one.optimizer_state.values())
    save_reference(tmp_path / "r.safetensors", one, ARCH, 1, len(h1))
    save_optimizer(tmp_path / "o.safetensors", one, 1)
    assert load_reference(tmp_path / "r.safetensors")[0].optimizer_state == {}  # what consumers pull: weights only
    loaded, _ = load_reference(tmp_path / "r.safetensors", tmp_path / "o.safetensors")
    assert loaded.optimizer_state.keys() == one.optimizer_state.keys()
    two = continue_reference(loaded, h2, cfg, 2)

    # the same two epochs as one uninterrupted run: one optimiser throughout
    model = new_reference(schema, cfg)
    opt = make_optimizer(model, cfg.train)
    for stage, block in enumerate((h1, h2), 1):
        train_real_epoch(model, block, opt, cfg.train.batch_size, generator(cfg.seed * 1000 + stage))
    for (name, a), b in zip(two.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name

    # with a fresh Adam per stage the second stage comes out differently
    fresh = cfg.model_copy(update={"keep_optimizer": False})
    restarted = continue_reference(continue_reference(new_reference(schema, fresh), h1, fresh, 1), h2, fresh, 2)
    assert not torch.equal(next(restarted.dense.parameters()), next(two.dense.parameters()))
    assert restarted.optimizer_state == {}


def test_copy_to_copies_each_tensor_once_and_leaves_the_saved_moments(tiny_stream):
    schema, root = tiny_stream
    cfg = ReferenceConfig(arch=ARCH)
    ref = continue_reference(new_reference(schema, cfg), TensorBlock.load(root / "h1.parquet", schema), cfg, 1)
    ref.dense.register_buffer("probe", torch.arange(3.0))
    copy = copy_to(ref, "cpu")
    assert copy.optimizer_state == {} and ref.optimizer_state  # the checkpoint keeps its own
    for (name, a), b in zip(ref.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    for a, b in zip(ref.parameters(), copy.parameters()):
        assert isinstance(b, torch.nn.Parameter) and a.requires_grad == b.requires_grad
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert not torch.equal(next(ref.parameters()), next(copy.parameters()))
