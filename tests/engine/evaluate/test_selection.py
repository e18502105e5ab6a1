import torch

from diet_engine.distill.boundary import boundary_select, label_groups, percentile_window, split_budget
from diet_engine.distill.kmeans import _cluster_sums, minibatch_kmeans, nearest_rows
from diet_engine.evaluate.selection import select_kmeans, select_random
from diet_engine.data.synthetic import SyntheticSet
from diet_engine.train.loops import el2n_scores


def test_el2n_is_the_l2_norm_over_tasks():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(el2n_scores(logits, labels), torch.tensor([(0.25 + 0.25) ** 0.5, 0.0]), atol=1e-4)


def test_budget_split_protects_rare_label_combinations():
    shares = split_budget([10_000, 100, 4], 200)
    assert sum(shares) == 200
    assert shares[1] > 200 * 100 / 10_104 * 5  # far above its proportional share
    assert shares[2] == 3  # ∝ √size, rounded
    assert split_budget([10, 1], 50) == [10, 1]  # capped by what each group holds
    assert split_budget([5, 5, 5], 7) in ([3, 2, 2], [2, 3, 2], [2, 2, 3])


def test_window_is_centred_on_the_percentile_not_the_tail():
    scores = torch.randperm(1000).float()
    idx = percentile_window(scores, 100, 0.9)
    ranks = scores[idx]  # scores are their own ranks
    assert ranks.min() == 849 and ranks.max() == 948  # centre round(0.9 * 999) = 899
    assert 999 not in ranks.tolist()


def test_boundary_selection_is_label_conditioned():
    labels = torch.tensor([[1, 0]] * 900 + [[0, 0]] * 90 + [[1, 1]] * 10).float()
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    idx = boundary_select(scores, labels, 50)
    assert len(idx) == len(set(idx.tolist())) == 50
    picked = labels[idx]
    assert int((picked == torch.tensor([1.0, 1.0])).all(1).sum()) >= 3  # the 1 % group is represented
    for group in label_groups(labels):
        inside = idx[torch.isin(idx, group)]
        if len(inside) >= 5:  # each group's picks sit around its own 90th percentile
            q = (scores[group].unsqueeze(0) < scores[inside].unsqueeze(1)).float().mean(1)
            assert 0.7 < float(q.mean()) < 0.98


def test_random_selection_is_seeded():
    a, b = select_random(1000, 20, seed=3), select_random(1000, 20, seed=3)
    assert torch.equal(a, b) and len(set(a.tolist())) == 20
    assert not torch.equal(a, select_random(1000, 20, seed=4))


def test_kmeans_takes_the_row_nearest_each_centroid():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    points = torch.cat([c + 0.5 * torch.randn(50, 2, generator=g) for c in centres])
    medoid_like = torch.stack([((points[i * 50:(i + 1) * 50] - points[i * 50:(i + 1) * 50].mean(0)) ** 2).sum(1).argmin() + i * 50 for i in range(3)])
    rows = SyntheticSet(points.reshape(150, 1, 2), torch.zeros(150, 1), torch.zeros(150, dtype=torch.long))
    idx = select_kmeans(rows, 3, seed=0)
    assert sorted(idx.tolist()) == sorted(medoid_like.tolist())


def test_minibatch_kmeans_is_seeded_and_finds_separated_clusters_over_many_batches():
    g = torch.Generator().manual_seed(1)
    means = 20.0 * torch.randn(20, 16, generator=g)
    truth = torch.arange(3000) % 20
    x = means[truth] + torch.randn(3000, 16, generator=g)
    rows = SyntheticSet(x.reshape(3000, 2, 8), torch.zeros(3000, 1), torch.zeros(3000, dtype=torch.long))
    idx = select_kmeans(rows, 20, seed=5)
    assert torch.equal(idx, select_kmeans(rows, 20, seed=5))
    assert sorted(truth[idx].tolist()) == list(range(20))  # one row from every cluster
    centres = minibatch_kmeans(x, 20, seed=5, batch_size=256, passes=2)  # 24 mini-batches
    assert torch.cdist(centres, means).min(1).values.max() < 0.6  # on a cluster mean (a 150-row mean sits ~0.33 off)
    assert not torch.equal(centres, minibatch_kmeans(x, 20, seed=6, batch_size=256, passes=2))


def test_cluster_sums_and_nearest_rows_match_plain_definitions():
    g = torch.Generator().manual_seed(2)
    x, centres = torch.randn(500, 6, generator=g), torch.randn(7, 6, generator=g)
    assign = torch.randint(7, (500,), generator=g)
    sums, counts = _cluster_sums(x, assign, 7)
    assert torch.equal(counts, torch.bincount(assign, minlength=7))
    assert torch.allclose(sums.float(), torch.zeros(7, 6).index_add_(0, assign, x), atol=1e-5)
    assert torch.equal(nearest_rows(centres, x), torch.cdist(centres, x).argmin(1))
