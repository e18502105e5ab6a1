"""Candidate training: each learning rate of either phase from the same start, the best on validation kept."""

import pytest
import torch

from diet_engine.evaluate.bench import Splits
from diet_engine.train.candidate import train_candidate
from diet_engine.config import CandidateConfig, ReferenceConfig
from diet_engine.models import ModelConfig
from diet_engine.train.reference import continue_reference, new_reference
from diet_engine.evaluate.selection import selected_rows
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.models import build_model
from diet_engine.train.loops import anchor_offsets, evaluate

ARCH = ModelConfig(embedding_dim=8, hidden=[16], n_experts=2, expert_dim=8, tower_hidden=[8])


def _setup(tiny_stream):
    schema, root = tiny_stream
    splits = Splits(schema, root)
    ref = continue_reference(new_reference(schema, ReferenceConfig(arch=ARCH)), splits.history[0], ReferenceConfig(arch=ARCH), 1)
    syn = selected_rows("random", ref, splits.history[0], 1, 0.1, 0)
    emb = {k: v.clone() for k, v in ref.embedding.state_dict().items()}
    return schema, splits, syn, emb


def _fit(schema, splits, syn, emb, lrs):
    cfg = CandidateConfig(arch=ARCH, distilled_epochs=3, distilled_lrs=lrs)
    return train_candidate("dcn", schema, finetune=[], valid=splits.valid, cfg=cfg, seed=7, embeddings=emb, distilled=syn)


def test_each_rate_starts_alike_and_the_best_on_validation_is_kept(tiny_stream):
    schema, splits, syn, emb = _setup(tiny_stream)
    alone = {lr: _fit(schema, splits, syn, emb, [lr]) for lr in (1e-3, 3e-2)}
    both = _fit(schema, splits, syn, emb, [1e-3, 3e-2])
    assert both.distilled_epochs_run == 6 and all(run.distilled_epochs_run == 3 for run in alone.values())
    # the grid replays each single-rate run exactly (same initial weights, same batches)
    winner = max(alone, key=lambda lr: max(alone[lr].valid_auc))
    assert both.best_lr == winner and both.valid_auc == alone[winner].valid_auc
    assert both.best_epoch == alone[winner].best_epoch
    for name, value in both.model.dense.state_dict().items():
        assert torch.equal(value, alone[winner].model.dense.state_dict()[name]), name


def test_probe_scores_the_model_the_set_alone_trained(tiny_stream):
    schema, splits, syn, emb = _setup(tiny_stream)
    cfg = CandidateConfig(arch=ARCH, distilled_epochs=2)
    alone = train_candidate("dcn", schema, finetune=[], valid=splits.valid, cfg=cfg, seed=7, embeddings=emb, distilled=syn,
                            probe=splits.test)
    assert alone.set_only_auc == pytest.approx(evaluate(alone.model, splits.test).mean_auc)
    # with a fine-tune after it, the probe still reports the state before the fine-tune
    tuned = train_candidate("dcn", schema, finetune=[splits.subsequent], valid=splits.valid, cfg=cfg, seed=7,
                            embeddings=emb, distilled=syn, probe=splits.test)
    assert tuned.set_only_auc == alone.set_only_auc
    assert evaluate(tuned.model, splits.test).mean_auc != alone.set_only_auc


def test_the_fine_tune_rate_best_on_validation_is_kept_and_replays_its_single_rate_run(tiny_stream):
    schema, splits, syn, emb = _setup(tiny_stream)

    def tuned(lrs):
        cfg = CandidateConfig(arch=ARCH, distilled_epochs=1, finetune_lrs=lrs)
        return train_candidate("dcn", schema, finetune=[splits.subsequent], valid=splits.valid, cfg=cfg, seed=7,
                               embeddings=emb, distilled=syn)

    alone = {lr: tuned([lr]) for lr in (1e-4, 3e-2)}
    both = tuned([1e-4, 3e-2])
    valid = {lr: evaluate(run.model, splits.valid).mean_auc for lr, run in alone.items()}
    assert valid[1e-4] != valid[3e-2]
    winner = max(valid, key=valid.__getitem__)
    assert both.finetune_lr == winner and alone[1e-4].finetune_lr == 1e-4
    for name, value in both.model.state_dict().items():
        assert torch.equal(value, alone[winner].model.state_dict()[name]), name
    # no list: the fine-tune runs at the training rate, as before
    default = train_candidate("dcn", schema, finetune=[splits.subsequent], valid=splits.valid,
                              cfg=CandidateConfig(arch=ARCH, distilled_epochs=1), seed=7, embeddings=emb, distilled=syn)
    assert default.finetune_lr == CandidateConfig().train.lr


def test_the_table_rate_grid_moves_inherited_tables_at_its_rate_and_keeps_the_pair_best_on_validation(tiny_stream):
    schema, splits, syn, emb = _setup(tiny_stream)

    def tuned(table_lrs, embeddings=emb, distilled=syn):
        cfg = CandidateConfig(arch=ARCH, distilled_epochs=1, finetune_lrs=[1e-3, 3e-3], finetune_embedding_lrs=table_lrs)
        return train_candidate("dcn", schema, finetune=[splits.subsequent], valid=splits.valid, cfg=cfg, seed=7,
                               embeddings=embeddings, distilled=distilled)

    table = "table.weight"
    moved = {e: (tuned([e]).model.embedding.state_dict()[table] - emb[table]).abs().max().item() for e in (1e-6, 1e-2)}
    assert 0 < moved[1e-6] < 1e-4 < moved[1e-2]  # Adam's step is about its rate, whatever the gradient
    grid = tuned([1e-6, 1e-2])
    singles = {(lr, e): train_candidate(
        "dcn", schema, finetune=[splits.subsequent], valid=splits.valid, seed=7, embeddings=emb, distilled=syn,
        cfg=CandidateConfig(arch=ARCH, distilled_epochs=1, finetune_lrs=[lr], finetune_embedding_lrs=[e]))
        for lr in (1e-3, 3e-3) for e in (1e-6, 1e-2)}
    valid = {k: evaluate(run.model, splits.valid).mean_auc for k, run in singles.items()}
    winner = max(valid, key=valid.__getitem__)
    assert (grid.finetune_lr, grid.finetune_embedding_lr) == winner
    for name, value in grid.model.state_dict().items():
        assert torch.equal(value, singles[winner].model.state_dict()[name]), name
    # a candidate that builds its own tables (cold start, full data) ignores both grids: it trains once, at
    # the training rate, and so exactly as with no grid at all
    cold = tuned([1e-6, 1e-2], embeddings=None, distilled=None)
    assert cold.finetune_lr == cold.finetune_embedding_lr == CandidateConfig().train.lr
    plain = train_candidate("dcn", schema, finetune=[splits.subsequent], valid=splits.valid, seed=7,
                            cfg=CandidateConfig(arch=ARCH, distilled_epochs=1))
    for name, value in cold.model.state_dict().items():
        assert torch.equal(value, plain.model.state_dict()[name]), name


def test_tuned_set_embeddings_train_only_the_table_rows_of_the_set_s_ids(tiny_stream):
    schema, splits, syn, emb = _setup(tiny_stream)

    def fit(mode):
        cfg = CandidateConfig(arch=ARCH, distilled_epochs=2, set_embeddings=mode)
        return train_candidate("dcn", schema, finetune=[], valid=splits.valid, cfg=cfg, seed=7, embeddings=emb, distilled=syn)

    frozen, tuned = fit("frozen"), fit("tuned")
    # a selected real row is exactly its ids' embedding under the tables it came from: no offset
    assert anchor_offsets(frozen.model, syn).abs().max() < 1e-6
    table = "table.weight"
    assert torch.equal(frozen.model.embedding.state_dict()[table], emb[table])
    moved = (tuned.model.embedding.state_dict()[table] != emb[table]).any(1)
    used = torch.zeros_like(moved)
    used[(syn.src_cat + tuned.model.embedding.offsets).flatten()] = True
    assert moved.any() and not (moved & ~used).any()
    assert tuned.valid_auc != frozen.valid_auc


def test_tuned_set_embeddings_keep_a_distilled_row_s_offset_from_its_ids(tiny_stream):
    schema, splits, syn, emb = _setup(tiny_stream)
    shifted = SyntheticSet(syn.emb + 0.5, syn.logits, syn.stage, syn.src_cat, syn.src_num)
    cfg = CandidateConfig(arch=ARCH, distilled_epochs=1, set_embeddings="tuned")
    run = train_candidate("dcn", schema, finetune=[], valid=splits.valid, cfg=cfg, seed=7, embeddings=emb, distilled=shifted)
    start = build_model("dcn", schema, ARCH)
    start.embedding.load_state_dict(emb)
    assert torch.allclose(anchor_offsets(start, shifted), torch.full_like(shifted.emb, 0.5), atol=1e-5)
    assert run.best_epoch == 0 and len(run.valid_auc) == 1
