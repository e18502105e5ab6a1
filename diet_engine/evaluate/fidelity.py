"""Fidelity (DESIGN §8): how far a reduced-data method ranks a candidate pool as full history does.

Input everywhere: `aucs[method]`, an array [seeds, candidates] of test AUCs (each already the mean over a
cell's candidate repeats), the same seeds and candidates in the same order for every method, `"full"` among
them. Every statistic is computed on the means over seeds:

* Kendall τ-b and Spearman ρ (ties averaged) between the method's and full data's AUCs over the pool, each
  with a 90 % interval from resampling seeds and candidates together (`bootstrap_intervals`);
* the noise ceiling: full data's own τ and ρ between the means of two disjoint sets of seeds;
* top-1 regret: full data's best AUC minus full data's AUC of the candidate the method ranks first (≥ 0;
  0 when the method picks full data's pick);
* mean AUC over the pool, and the share of the cold→full and warmup→full gaps of that mean it recovers.

Undefined values (a constant ranking, a zero gap, too few seeds) are None, never NaN, so results.json
stays strict JSON.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

REFERENCE = "full"
LEVEL = 0.9
DRAWS = 2000
STATISTICS = ("kendall_tau", "spearman_rho")
MAX_SPLITS = 500  # seed splits the noise ceiling averages over; drawn at random beyond that


# --------------------------------------------------------------------------- rank correlations, row-wise


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of each row of x [B, K] against the same row of y (NaN where either row is constant)."""
    i, j = np.triu_indices(x.shape[1], 1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum(1) / np.sqrt((sx != 0).sum(1) * (sy != 0).sum(1))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks within each row of x [B, K]; tied values share the mean of the ranks they span."""
    below = (x[:, None, :] < x[:, :, None]).sum(2)
    level = (x[:, None, :] == x[:, :, None]).sum(2)  # counts the value itself
    return below + (level + 1) / 2


def spearman_rho(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's ρ of each row of x [B, K] against the same row of y: Pearson's r of the average ranks
    (NaN where either row is constant)."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx = rx - rx.mean(1, keepdims=True)
    ry = ry - ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


RANK_STATISTICS = {"kendall_tau": kendall_tau_b, "spearman_rho": spearman_rho}


# --------------------------------------------------------------------------- the interval


def bootstrap_intervals(
    aucs: dict[str, np.ndarray], draws: int = DRAWS, level: float = LEVEL, seed: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """method -> statistic -> {"interval": [lo, hi], "widened": bool}: the central `level` interval of τ-b
    and ρ vs full when seeds and candidates are resampled together.

    One draw resamples the seeds with replacement (each candidate's seed mean is taken again over the drawn
    seeds, full's and the method's over the same seeds: they share the reference and data of a seed), then
    the candidates with replacement, and computes the statistic over the drawn candidates. A candidate drawn
    twice is tied with itself in both rankings: τ-b leaves such pairs out of its numerator and of both its
    tie-corrected denominators and ρ gives the copies one average rank, so both stay well defined on the
    drawn multiset; a draw where every candidate is one and the same (or either ranking is constant) has no
    statistic and is left out. All methods see the same draws, so their intervals compare like for like.

    The percentile interval can leave out its own point estimate, and no bootstrap repairs that for these
    statistics: a draw's seed means carry the seeds' noise once more on top of what the point already
    carries, and τ or ρ of a noisier ranking is pulled towards 0 — at a point of +1 every draw that moves
    at all lies below it (one stream of ours: [−0.2, +0.8] around +1.0). Reflecting the draws about the
    point (the basic bootstrap) would put them above +1, a bias-corrected percentile runs off to the last
    draw. So the interval is the percentile interval stretched just far enough to reach the point, and
    `widened` says when that happened: the stretch is the bootstrap's bias, not more certainty.
    With one seed only the pool's composition is resampled.
    """
    if REFERENCE not in aucs:
        return {}
    full = aucs[REFERENCE]
    n_seeds, n_candidates = full.shape
    if n_candidates < 2:
        return {}
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, (draws, n_seeds))
    candidate_draws = rng.integers(0, n_candidates, (draws, n_candidates))

    def resampled(values: np.ndarray) -> np.ndarray:  # [draws, candidates]
        return np.take_along_axis(values[seed_draws].mean(1), candidate_draws, 1)

    reference = resampled(full)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, values in aucs.items():
        drawn = resampled(values)
        out[method] = {}
        for name, statistic in RANK_STATISTICS.items():
            point = statistic(full.mean(0, keepdims=True), values.mean(0, keepdims=True))[0]
            samples = statistic(reference, drawn)
            samples = samples[np.isfinite(samples)]
            if not np.isfinite(point) or not len(samples):
                out[method][name] = {"interval": [], "widened": False}
                continue
            tail = (1 - level) / 2 * 100
            lo, hi = (float(v) for v in np.percentile(samples, [tail, 100 - tail]))
            out[method][name] = {"interval": [min(lo, float(point)), max(hi, float(point))],
                                 "widened": not lo <= point <= hi}
    return out


# --------------------------------------------------------------------------- the noise ceiling


def seed_splits(n_seeds: int, max_splits: int = MAX_SPLITS, seed: int = 0) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Pairs of disjoint seed sets of ⌊n/2⌋ seeds each (one seed left out when n is odd): every such pair
    while there are at most `max_splits`, else `max_splits` drawn at random."""
    half = n_seeds // 2
    if half < 1:
        return []
    seeds = range(n_seeds)
    count = math.comb(n_seeds, half) * math.comb(n_seeds - half, half) // 2
    if count <= max_splits:
        return [(a, b) for a in itertools.combinations(seeds, half)
                for b in itertools.combinations([s for s in seeds if s not in a], half) if a < b]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(max_splits):
        order = rng.permutation(n_seeds)
        out.append((tuple(sorted(order[:half].tolist())), tuple(sorted(order[half:2 * half].tolist()))))
    return out


def noise_ceiling(full: np.ndarray) -> dict[str, Any] | None:
    """Full data's agreement with itself: τ-b and ρ between the candidates' mean AUCs over two disjoint sets
    of seeds, averaged over `seed_splits` (None below two seeds).

    Each half holds half the seeds, so its means are noisier than the all-seed means a method is judged on:
    the ceiling errs low, never high — a method at it ranks as well as full data's seeds agree.
    """
    splits = seed_splits(full.shape[0])
    if not splits or full.shape[1] < 2:
        return None
    a = np.stack([full[list(sa)].mean(0) for sa, _ in splits])
    b = np.stack([full[list(sb)].mean(0) for _, sb in splits])
    out: dict[str, Any] = {"splits": len(splits), "seeds_per_half": len(splits[0][0])}
    for name, statistic in RANK_STATISTICS.items():
        values = statistic(a, b)
        values = values[np.isfinite(values)]
        out[name] = float(values.mean()) if len(values) else None
    return out


# --------------------------------------------------------------------------- point statistics


def top1_regret(method: np.ndarray, full: np.ndarray) -> float:
    """Full data's best AUC minus full data's AUC of the candidate `method` ranks first (per-candidate mean
    AUCs, [K] each); where the method ties several candidates first, the mean over them (a fair pick)."""
    picks = method == method.max()
    return float(full.max() - full[picks].mean())


def gap_recovered(method: float, base: float, full: float) -> float | None:
    """The share of the base→full gap in mean AUC over the pool the method closes: (m − base) / (full − base).

    Computed on the pool means rather than averaged per candidate: a candidate whose own gap is near 0
    would otherwise contribute a share of any size.
    """
    return None if full == base else (method - base) / (full - base)


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def rank_agreement(means: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """statistic -> method -> τ-b / ρ of its per-candidate means against full's ({} without full)."""
    if REFERENCE not in means or len(means[REFERENCE]) < 2:
        return {name: {} for name in RANK_STATISTICS}
    ref = means[REFERENCE][None]
    return {name: {m: _number(statistic(ref, v[None])[0]) for m, v in means.items()}
            for name, statistic in RANK_STATISTICS.items()}


def gaps(means: dict[str, np.ndarray], base: str) -> dict[str, float | None]:
    """method -> share of the base→full gap in pool-mean AUC it recovers ({} without base or full)."""
    if REFERENCE not in means or base not in means:
        return {}
    lo, hi = float(means[base].mean()), float(means[REFERENCE].mean())
    return {m: gap_recovered(float(v.mean()), lo, hi) for m, v in means.items()}


def fidelity(aucs: dict[str, np.ndarray], candidates: list[str], seed: int = 0) -> dict[str, Any]:
    """Every statistic of §8 for every method, as results.json holds them (one dict per statistic)."""
    means = {m: a.mean(0) for m, a in aucs.items()}
    agreement = rank_agreement(means)
    intervals = bootstrap_intervals(aucs, seed=seed)
    per_seed = [{m: a[s] for m, a in aucs.items()} for s in range(next(iter(aucs.values())).shape[0])] if aucs else []
    out: dict[str, Any] = {
        "mean_auc": {m: float(v.mean()) for m, v in means.items()},
        "kendall_tau": agreement["kendall_tau"],
        "kendall_tau_interval": {m: i["kendall_tau"]["interval"] for m, i in intervals.items()},
        "spearman_rho": agreement["spearman_rho"],
        "spearman_rho_interval": {m: i["spearman_rho"]["interval"] for m, i in intervals.items()},
        # the statistics whose percentile interval was stretched to reach the point (see bootstrap_intervals)
        "interval_widened": {m: [s for s in STATISTICS if i[s]["widened"]] for m, i in intervals.items()},
        "noise_ceiling": noise_ceiling(aucs[REFERENCE]) if REFERENCE in aucs else None,
        "top1": {}, "top1_regret": {},
        "gap_recovered": gaps(means, "cold"),
        "warmup_gap_recovered": gaps(means, "warmup"),
        "kendall_tau_seeds": [rank_agreement(s)["kendall_tau"] for s in per_seed],
        "gap_recovered_seeds": [gaps(s, "cold") for s in per_seed],
    }
    if REFERENCE in means:
        for m, v in means.items():
            out["top1"][m] = [c for c, hit in zip(candidates, v == v.max(), strict=True) if hit]
            out["top1_regret"][m] = top1_regret(v, means[REFERENCE])
    return out
