"""Mini-batch k-means (Sculley 2010) in torch, on the rows' own device, and the row nearest each centroid.

The k-means selection baseline clusters a whole historical block (240,000 rows of ML-1M, k = 2 % of them)
on the flattened reference embeddings. sklearn's MiniBatchKMeans (float64, k-means++) did not finish a
seed's three blocks in 7 minutes on one thread (11.7 s a block on 16 threads, host only). This one costs
about one n x k x d distance product per pass over the rows, plus one for the final nearest rows, in
float32, on a GPU when the rows live there. Measured on
240,000 x 288 random rows, k = 4,800 (seed 0, warm): 1.4 s on one H200, 8.4 s on 16 CPU threads,
28 s on 2 (the init's 4,800 sequential steps are most of the GPU's time).

Deterministic for a seed on one device: the order of rows comes from a CPU generator, centroid sums are
taken by a stable sort and a float64 cumulative sum (no atomic scatter-adds, whose order varies on CUDA),
and ties go to the lowest index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# elements of one distance tile [rows, k]: 256 MiB of float32 (a GPU could take more; the CPU is shared)
_TILE_ELEMENTS = 1 << 26


def _nearest_centre(x: Tensor, centres: Tensor, centre_sq: Tensor) -> Tensor:
    """Index of each row's nearest centre (||x||^2 is the same for every centre, so left out)."""
    return (centre_sq - 2.0 * x @ centres.T).argmin(1)


def _cluster_sums(x: Tensor, assign: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-centre row sums and counts of one batch, in an order that does not depend on the device's scheduler."""
    order = torch.sort(assign, stable=True).indices
    counts = torch.bincount(assign, minlength=k)
    ends = torch.cumsum(counts, 0)
    prefix = torch.cat([torch.zeros(1, x.shape[1], dtype=torch.float64, device=x.device),
                        torch.cumsum(x[order].double(), 0)])
    sums = prefix[ends] - prefix[ends - counts]
    return sums, counts


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k rows of `x` by greedy k-means++ seeding (Arthur & Vassilvitskii 2007; sklearn's variant): each
    next centre is the best, by the inertia it leaves, of 2 + ln k candidates drawn with probability
    proportional to their squared distance from the nearest centre so far.

    The uniforms are drawn up front on the CPU and inverted through a float64 cumulative sum on x's
    device, so a GPU never waits on the host inside the loop; the candidates' distances are one
    [m, d] x [d, trials] product, one read of x per centre.
    """
    trials = 2 + int(math.log(k))
    u = torch.rand(k, trials, generator=generator, dtype=torch.float64).to(x.device)
    sq = (x * x).sum(1)

    def to_rows(j: Tensor) -> Tensor:  # [m, len(j)] squared distances to rows j
        return (sq[:, None] - 2.0 * x @ x[j].T + sq[j][None, :]).clamp_min_(0).double()

    first = torch.randint(len(x), (1,), generator=generator).to(x.device)
    picked = torch.empty(k, dtype=torch.long, device=x.device)
    picked[0] = first[0]
    dist = to_rows(first)[:, 0]
    for i in range(1, k):
        cdf = torch.cumsum(dist, 0)
        cands = torch.searchsorted(cdf, u[i] * cdf[-1], right=True).clamp_(max=len(x) - 1)
        after = torch.minimum(dist[:, None], to_rows(cands))  # [m, trials]
        best = after.sum(0).argmin()
        picked[i] = cands[best]
        dist = after[:, best]
    return picked


def minibatch_kmeans(x: Tensor, k: int, seed: int, batch_size: int = 4096, passes: int = 1) -> Tensor:
    """k centroids [k, d] of the rows of `x` [n, d] (float32, on x's device).

    Starts from k-means++ seeding on a seeded sample of max(3 batches, 3 k) rows (sklearn's init_size);
    each pass visits every row once in a seeded order, in
    batches, moving each centroid to the running mean of the rows it has been assigned (learning rate
    1 / its count, as in Sculley's algorithm and sklearn's MiniBatchKMeans).
    """
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= rows, got k={k} for {n} rows")
    x = x.float()
    g = torch.Generator().manual_seed(seed)
    sample = x[torch.randperm(n, generator=g)[:min(n, max(3 * batch_size, 3 * k))].to(x.device)]
    centres = sample[kmeans_plus_plus(sample, k, g)].clone()
    seen = torch.zeros(k, dtype=torch.float64, device=x.device)
    for _ in range(passes):
        order = torch.randperm(n, generator=g).to(x.device)
        for start in range(0, n, batch_size):
            batch = x[order[start:start + batch_size]]
            assign = _nearest_centre(batch, centres, (centres * centres).sum(1))
            sums, counts = _cluster_sums(batch, assign, k)
            seen += counts
            hit = counts > 0
            # c <- c + (sum - m c) / seen: the mean of every row assigned so far, the start row's weight fading
            step = (sums[hit] - counts[hit, None] * centres[hit].double()) / seen[hit, None]
            centres[hit] = (centres[hit].double() + step).float()
    return centres


def nearest_rows(centres: Tensor, x: Tensor) -> Tensor:
    """For each centre, the index of the row of `x` nearest it (ties: the lowest index), tile by tile."""
    x = x.float()
    k = len(centres)
    best = torch.full((k,), float("inf"), device=x.device)
    where = torch.zeros(k, dtype=torch.long, device=x.device)
    rows = max(1, _TILE_ELEMENTS // k)
    for start in range(0, len(x), rows):
        tile = x[start:start + rows]
        d = (tile * tile).sum(1, keepdim=True) - 2.0 * tile @ centres.T  # [rows, k]; ||c||^2 is per-centre constant
        value, arg = d.min(0)
        better = value < best  # strict: an equal distance later keeps the earlier row
        best = torch.where(better, value, best)
        where = torch.where(better, arg + start, where)
    return where


def kmeans_rows(x: Tensor, k: int, seed: int) -> Tensor:
    """Sorted indices of the rows of `x` [N, ...] nearest each of k mini-batch k-means centroids on the flattened
    rows; two centroids sharing a nearest row keep it once, so a few rows fewer than k may come back."""
    flat = x.detach().reshape(len(x), -1)
    with torch.no_grad():
        return torch.unique(nearest_rows(minibatch_kmeans(flat, k, seed), flat))
