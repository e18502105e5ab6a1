import numpy as np
import pytest
import torch

from diet_engine.data.synthetic import SyntheticSet
from diet_engine.dataset.artifacts import save_synthetic
from diet_engine.dataset.diff import DiffSide, config_changes, diff_versions


def _stage1_set() -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    n = 6
    return SyntheticSet(
        torch.randn(n, 3, 4, generator=g), torch.randn(n, 2, generator=g), torch.ones(n, dtype=torch.long),
        torch.arange(n * 3, dtype=torch.long).reshape(n, 3), torch.randn(n, 1, generator=g),
    )  # fmt: skip


def _stage2_from(a: SyntheticSet, keep: list[int], shift: torch.Tensor) -> SyntheticSet:
    """Rows `keep` of a, moved by `shift` (one [F, D] offset per kept row), then two new stage-2 rows."""
    kept = a.take(torch.tensor(keep))
    kept.emb = kept.emb + shift
    new = SyntheticSet(
        torch.zeros(2, 3, 4), torch.full((2, 2), 3.0), torch.full((2,), 2, dtype=torch.long),
        torch.full((2, 3), 10**9, dtype=torch.long), torch.zeros(2, 1),
    )  # fmt: skip
    return SyntheticSet.concat([kept, new])


def test_kept_added_dropped_by_stage_drift_and_balance(tmp_path):
    a = _stage1_set()
    keep = [1, 3, 4, 5]
    norms = torch.tensor([0.5, 1.0, 2.0, 4.0])
    direction = torch.zeros(4, 3, 4)
    direction[:, 0, 0] = 1.0
    b = _stage2_from(a, keep, direction * norms[:, None, None])
    save_synthetic(tmp_path / "a.parquet", a, ["click", "buy"])
    save_synthetic(tmp_path / "b.parquet", b, ["click", "buy"])
    config_a = {"distill": {"temperature": 1.0, "outer_iters": 5}, "reference": {"model": "dcnv2"}}
    config_b = {"distill": {"temperature": 2.0, "outer_iters": 5}, "reference": {"model": "dcnv2"}}
    blocks_a = [{"stage": 1, "sha256": "b1"}]
    blocks_b = [*blocks_a, {"stage": 2, "sha256": "b2"}]
    side_a = DiffSide.load("s@v1", tmp_path / "a.parquet", {"config": config_a, "blocks": blocks_a}, ["s@v1"])
    side_b = DiffSide.load("s@v2", tmp_path / "b.parquet", {"config": config_b, "blocks": blocks_b}, ["s@v1", "s@v2"])

    diff = diff_versions(side_a, side_b)

    assert diff.anchored and diff.comparable_embeddings
    assert (diff.rows_a, diff.rows_b, diff.kept, diff.added, diff.dropped) == (6, 6, 4, 2, 2)
    assert [(s.stage, s.rows_a, s.rows_b, s.kept, s.added, s.dropped) for s in diff.by_stage] == [
        (1, 6, 4, 4, 0, 2),
        (2, 0, 2, 0, 2, 0),
    ]
    assert diff.drift.rows == 4
    assert diff.drift.mean == pytest.approx(float(norms.mean()))
    assert diff.drift.p95 == pytest.approx(float(np.percentile(norms.numpy(), 95)))
    assert diff.drift.max == pytest.approx(4.0)
    # soft labels at each version's own temperature
    expected_b = torch.sigmoid(b.logits / 2.0).mean(0)
    expected_a = torch.sigmoid(a.logits / 1.0).mean(0)
    assert [t.task for t in diff.label_balance] == ["click", "buy"]
    for j, balance in enumerate(diff.label_balance):
        assert balance.a == pytest.approx(float(expected_a[j]), rel=1e-5)
        assert balance.change == pytest.approx(float(expected_b[j] - expected_a[j]), rel=1e-4)
    assert [(c.key, c.a, c.b) for c in diff.config] == [("distill.temperature", 1.0, 2.0)]
    lineage = diff.lineage
    assert lineage.a_is_ancestor_of_b and not lineage.b_is_ancestor_of_a and lineage.common_ancestor == "s@v1"
    assert lineage.only_b == ["s@v2"] and lineage.only_a == []
    assert (lineage.blocks_shared, lineage.blocks_only_b, lineage.blocks_only_a) == ([1], [2], [])


def test_a_version_against_itself_changes_nothing():
    a = _stage1_set()
    side = DiffSide("s@v1", a, ["click", "buy"], lineage=["s@v1"])
    diff = diff_versions(side, side)
    assert (diff.kept, diff.added, diff.dropped) == (6, 0, 0)
    assert diff.drift.mean == 0.0 and diff.drift.p95 == 0.0
    assert all(t.change == 0.0 for t in diff.label_balance) and diff.config == []


def test_repeated_identities_pair_off_once_each():
    a = _stage1_set()
    twice = SyntheticSet.concat([a.take(torch.tensor([0, 0])), a.take(torch.tensor([2]))])
    once = a.take(torch.tensor([0, 2]))
    diff = diff_versions(DiffSide("s@v1", twice, ["click", "buy"]), DiffSide("s@v2", once, ["click", "buy"]))
    assert (diff.kept, diff.added, diff.dropped) == (2, 0, 1)


def test_sets_without_anchors_have_no_kept_rows():
    a = _stage1_set()
    bare = SyntheticSet(a.emb, a.logits, a.stage)
    diff = diff_versions(DiffSide("s@v1", bare, ["click", "buy"]), DiffSide("s@v2", bare, ["click", "buy"]))
    assert not diff.anchored and (diff.kept, diff.added, diff.dropped) == (0, 6, 6)
    assert diff.drift.rows == 0 and diff.drift.mean is None


def test_config_changes_name_added_and_removed_keys():
    changes = config_changes({"x": {"y": 1, "z": [1]}, "gone": 1}, {"x": {"y": 2, "z": [1]}, "new": {"k": 1}})
    assert [(c.key, c.a, c.b) for c in changes] == [("gone", 1, None), ("new", None, {"k": 1}), ("x.y", 1, 2)]
