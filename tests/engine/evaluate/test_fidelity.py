"""The fidelity statistics (DESIGN §8): rank correlations against scipy, the interval, the noise ceiling,
top-1 regret and the gaps recovered, on hand-made and random AUC tables (no training)."""

import warnings

import numpy as np
import pytest
from scipy.stats import kendalltau, rankdata, spearmanr

from diet_engine.evaluate.fidelity import (
    average_ranks, bootstrap_intervals, fidelity, gap_recovered, gaps, kendall_tau_b, noise_ceiling, rank_agreement,
    seed_splits, spearman_rho, top1_regret,
)  # fmt: skip


def random_rows(rng: np.random.Generator, rows: int, k: int, tied: bool) -> np.ndarray:
    """Small integers (many ties, and the first rows constant) or floats (no ties)."""
    if not tied:
        return rng.random((rows, k))
    x = rng.integers(0, 4, (rows, k)).astype(float)
    x[: rows // 30] = 2.0
    return x


@pytest.mark.parametrize("k", [2, 3, 5, 15])
@pytest.mark.parametrize("tied", [True, False])
def test_tau_b_and_rho_match_scipy_row_by_row(k, tied):
    rng = np.random.default_rng(k + 100 * tied)
    x, y = random_rows(rng, 300, k, tied), random_rows(rng, 300, k, tied)
    taus, rhos = kendall_tau_b(x, y), spearman_rho(x, y)
    assert np.allclose(average_ranks(x), np.stack([rankdata(row) for row in x]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant rows, where both are NaN
        for row in range(300):
            tau, rho = kendalltau(x[row], y[row]).statistic, spearmanr(x[row], y[row]).statistic
            assert (np.isnan(taus[row]) and np.isnan(tau)) or taus[row] == pytest.approx(tau)
            assert (np.isnan(rhos[row]) and np.isnan(rho)) or rhos[row] == pytest.approx(rho)
    if tied:
        assert np.isnan(taus).any() and np.isnan(rhos).any()  # the constant rows were there and came out NaN


def test_rank_agreement_and_gaps_on_hand_made_means():
    means = {"full": np.array([0.7, 0.6, 0.65]), "cold": np.array([0.6, 0.5, 0.55]),
             "x": np.array([0.65, 0.55, 0.6]), "y": np.array([0.55, 0.65, 0.6])}
    agreement = rank_agreement(means)
    assert agreement["kendall_tau"]["x"] == pytest.approx(1.0) and agreement["kendall_tau"]["y"] == pytest.approx(-1.0)
    assert agreement["spearman_rho"]["x"] == pytest.approx(1.0) and agreement["spearman_rho"]["y"] == pytest.approx(-1.0)
    assert gaps(means, "cold")["x"] == pytest.approx(0.5) and gaps(means, "warmup") == {}
    assert rank_agreement({"x": means["x"]}) == {"kendall_tau": {}, "spearman_rho": {}}  # nothing to agree with


def test_gap_recovered_is_the_share_of_the_pool_mean_gap():
    assert gap_recovered(0.68, 0.60, 0.70) == pytest.approx(0.8)  # cold → full
    assert gap_recovered(0.68, 0.66, 0.70) == pytest.approx(0.5)  # warmup → full
    assert gap_recovered(0.65, 0.66, 0.70) == pytest.approx(-0.25)  # below its base
    assert gap_recovered(0.65, 0.70, 0.70) is None  # no gap to recover
    # the pool means, not per-candidate shares: candidate b's gap is 0.001, its share alone would be 10
    means = {"full": np.array([0.70, 0.651]), "warmup": np.array([0.60, 0.650]), "m": np.array([0.65, 0.660])}
    assert gaps(means, "warmup")["m"] == pytest.approx((0.655 - 0.625) / (0.6755 - 0.625))


def test_top1_regret_on_a_hand_made_pool():
    full = np.array([0.70, 0.72, 0.71])
    assert top1_regret(np.array([0.60, 0.59, 0.61]), full) == pytest.approx(0.01)  # picks c: 0.72 − 0.71
    assert top1_regret(np.array([0.50, 0.62, 0.61]), full) == 0.0  # picks full's own best
    assert top1_regret(np.array([0.60, 0.60, 0.50]), full) == pytest.approx(0.01)  # a tie: (0.70 + 0.72) / 2
    aucs = {"full": np.array([full, full]), "m": np.array([[0.60, 0.59, 0.62], [0.60, 0.59, 0.60]])}
    stats = fidelity(aucs, ["a", "b", "c"])
    assert stats["top1"] == {"full": ["b"], "m": ["c"]}
    assert stats["top1_regret"]["m"] == pytest.approx(0.01) and stats["top1_regret"]["full"] == 0.0


def test_noise_ceiling_on_hand_made_seeds():
    ordered, reversed_ = [0.70, 0.69, 0.68], [0.68, 0.69, 0.70]
    # three seeds: halves of one seed each, left-out seed varying: (0 v 1) +1, (0 v 2) −1, (1 v 2) −1
    assert seed_splits(3) == [((0,), (1,)), ((0,), (2,)), ((1,), (2,))]
    ceiling = noise_ceiling(np.array([ordered, ordered, reversed_]))
    assert ceiling["kendall_tau"] == pytest.approx(-1 / 3) and ceiling["spearman_rho"] == pytest.approx(-1 / 3)
    assert ceiling["splits"] == 3 and ceiling["seeds_per_half"] == 1
    # four seeds, two a half: seed 3 swaps the first two candidates, so every split sets the order against
    # one whose first two tie: τ-b 2/√6 (one pair tied on one side), ρ 1.5/√3 (ranks 3,2,1 against 2.5,2.5,1)
    swapped = [0.69, 0.70, 0.68]
    assert seed_splits(4) == [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    ceiling = noise_ceiling(np.array([ordered, ordered, ordered, swapped]))
    assert ceiling["kendall_tau"] == pytest.approx(2 / 6**0.5) and ceiling["spearman_rho"] == pytest.approx(1.5 / 3**0.5)
    assert ceiling["splits"] == 3 and ceiling["seeds_per_half"] == 2
    assert noise_ceiling(np.array([ordered])) is None  # one seed has no second set
    many = seed_splits(12, max_splits=50)  # C(12,6)/2 = 462 splits: 50 drawn, each two disjoint halves
    assert len(many) == 50 and all(len(a) == len(b) == 6 and not set(a) & set(b) for a, b in many)


def interval_case(rng: np.random.Generator, seeds: int, k: int, noise: float) -> dict[str, np.ndarray]:
    full = np.linspace(0.70, 0.70 - 0.01 * (k - 1), k)
    return {"full": full + rng.normal(0, noise, (seeds, k)), "m": full - 0.01 + rng.normal(0, noise, (seeds, k))}


def test_the_interval_always_holds_its_point():
    rng = np.random.default_rng(7)
    for case in range(150):
        aucs = interval_case(rng, seeds=int(rng.integers(1, 6)), k=int(rng.integers(2, 16)), noise=float(rng.uniform(0, 0.02)))
        intervals = bootstrap_intervals(aucs, draws=300, seed=case)
        agreement = rank_agreement({m: a.mean(0) for m, a in aucs.items()})
        for name in ("kendall_tau", "spearman_rho"):
            point, found = agreement[name]["m"], intervals["m"][name]
            if point is None:
                assert found["interval"] == []
                continue
            lo, hi = found["interval"]
            assert -1.0 <= lo <= point <= hi <= 1.0


def test_an_interval_that_would_leave_out_its_point_is_stretched_to_it_and_says_so():
    # the method's seed means rank the 15 candidates exactly as full's (τ = ρ = +1), but its seeds scatter
    # 10x the gaps: only a draw that takes every seed once surely has that order back, 5!/5^5 < 4 % of them
    rng = np.random.default_rng(0)
    full = np.linspace(0.70, 0.686, 15)
    noise = rng.normal(0, 0.01, (5, 15))
    aucs = {"full": np.tile(full, (5, 1)), "m": full - 0.01 + noise - noise.mean(0)}
    found = bootstrap_intervals(aucs)["m"]
    for name in ("kendall_tau", "spearman_rho"):
        assert found[name]["widened"] and found[name]["interval"][1] == 1.0
        assert found[name]["interval"][0] < 0.5
    assert fidelity(aucs, [str(k) for k in range(15)])["interval_widened"] == {"full": [], "m": ["kendall_tau", "spearman_rho"]}


def test_the_interval_is_a_point_for_identical_candidates():
    full = np.array([[0.70, 0.69, 0.68, 0.67]] * 3)  # no seed noise
    intervals = bootstrap_intervals({"full": full, "same": full - 0.01, "reversed": full[:, ::-1] - 0.01})
    assert intervals["full"]["kendall_tau"]["interval"] == [1.0, 1.0]
    assert intervals["same"]["kendall_tau"]["interval"] == [1.0, 1.0]
    assert intervals["same"]["spearman_rho"]["interval"] == [1.0, 1.0]
    assert intervals["reversed"]["kendall_tau"]["interval"] == [-1.0, -1.0]
    assert not any(intervals[m][s]["widened"] for m in intervals for s in ("kendall_tau", "spearman_rho"))


def test_the_interval_straddles_zero_when_seeds_scatter_three_times_the_gaps_and_repeats_when_seeded():
    rng = np.random.default_rng(3)
    full = np.array([[0.70, 0.69, 0.68, 0.67, 0.66]] * 5)
    scattered = full - 0.01 + rng.choice([-0.03, 0.03], full.shape)  # ±3× the 0.01 gaps, seed by seed
    aucs = {"full": full, "x": scattered}
    loose = bootstrap_intervals(aucs)
    for name in ("kendall_tau", "spearman_rho"):
        lo, hi = loose["x"][name]["interval"]
        assert lo < 0.0 < hi <= 1.0  # the order is a draw
    assert bootstrap_intervals(aucs) == loose  # seeded: the interval repeats
    assert bootstrap_intervals(aucs, seed=1) != loose
    assert bootstrap_intervals({"x": scattered}) == {}  # nothing to agree with


def test_fidelity_is_strict_json_and_per_seed_values_are_kept():
    import json

    full = np.array([[0.70, 0.69, 0.68], [0.70, 0.69, 0.68]])
    aucs = {"full": full, "cold": full - 0.05, "flat": np.full_like(full, 0.6)}
    stats = fidelity(aucs, ["a", "b", "c"])
    json.dumps(stats, allow_nan=False)  # constant rankings are None, not NaN
    assert stats["kendall_tau"]["flat"] is None and stats["kendall_tau_interval"]["flat"] == []
    assert stats["warmup_gap_recovered"] == {} and stats["gap_recovered"]["cold"] == pytest.approx(0.0)
    assert len(stats["kendall_tau_seeds"]) == 2 and stats["kendall_tau_seeds"][1]["cold"] == pytest.approx(1.0)
    assert stats["mean_auc"]["full"] == pytest.approx(0.69)
