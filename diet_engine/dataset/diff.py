"""What changed between two dataset versions: rows by stage of origin, label balance, embedding drift, config, lineage.

A row of a version is identified by its stage of origin and its anchor, the real row it started
from (`src_cat`, `src_num`, see diet_engine.data.synthetic). A row of `b` with the same identity
as a row of `a` is *kept*; the rest of `b` is *added*, the rest of `a` *dropped*. Equal identities
(the same real row twice) pair off in order. Sets without anchors have no row identity: their rows
all count as dropped and added, and the report says `anchored: false`.

Drift of a kept row is the L2 norm of the change of its flattened [F, D] embedding (0 when the
shapes differ, which the report flags as `comparable_embeddings: false`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import BaseModel

from diet_engine.data.synthetic import SyntheticSet
from diet_engine.dataset.artifacts import load_synthetic


@dataclass
class DiffSide:
    """One version as the diff sees it: its label, manifest (config, blocks), lineage and synthetic rows.

    `lineage` lists the labels of its ancestors and itself, oldest first.
    """

    label: str
    synthetic: SyntheticSet
    tasks: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    lineage: list[str] = field(default_factory=list)

    @classmethod
    def load(
        cls, label: str, synthetic: str | Path | IO[bytes], manifest: dict[str, Any], lineage: list[str]
    ) -> DiffSide:
        """A side from its synthetic.parquet (a path or an open file) and its manifest."""
        syn, tasks = load_synthetic(Path(synthetic) if isinstance(synthetic, str) else synthetic)
        return cls(label, syn, tasks, manifest.get("config", {}), manifest.get("blocks", []), lineage)

    @property
    def temperature(self) -> float:
        return float(self.config.get("distill", {}).get("temperature") or 1.0)


class StageRows(BaseModel):
    stage: int
    rows_a: int
    rows_b: int
    kept: int
    added: int
    dropped: int


class TaskBalance(BaseModel):
    """Mean soft label σ(logit / T) of a task over each version's rows, at the temperature each was distilled with."""

    task: str
    a: float | None
    b: float | None
    change: float | None


class Drift(BaseModel):
    """L2 shift of the kept rows' embeddings from `a` to `b`."""

    rows: int
    mean: float | None
    p95: float | None
    max: float | None


class ConfigChange(BaseModel):
    key: str  # dotted path, e.g. distill.outer_iters
    a: Any = None
    b: Any = None


class LineageDiff(BaseModel):
    common_ancestor: str | None  # the newest version both descend from (or are)
    a_is_ancestor_of_b: bool
    b_is_ancestor_of_a: bool
    only_a: list[str]  # versions in a's lineage but not b's, oldest first
    only_b: list[str]
    blocks_only_a: list[int]  # stages of blocks a has seen and b has not (by sha256)
    blocks_only_b: list[int]
    blocks_shared: list[int]


class VersionDiff(BaseModel):
    a: str
    b: str
    anchored: bool
    rows_a: int
    rows_b: int
    kept: int
    added: int
    dropped: int
    by_stage: list[StageRows]
    label_balance: list[TaskBalance]
    comparable_embeddings: bool
    drift: Drift
    config: list[ConfigChange]
    lineage: LineageDiff


def diff_versions(a: DiffSide, b: DiffSide) -> VersionDiff:
    """The changes from `a` to `b` (usually an older and a newer version of one stream)."""
    anchored = a.synthetic.anchored and b.synthetic.anchored
    pairs = _pair_rows(a.synthetic, b.synthetic) if anchored else np.empty((0, 2), dtype=np.int64)
    stage_a, stage_b = a.synthetic.stage.numpy(), b.synthetic.stage.numpy()
    kept_stage = stage_b[pairs[:, 1]] if len(pairs) else np.empty(0, dtype=stage_b.dtype)
    by_stage = []
    for s in sorted(set(stage_a.tolist()) | set(stage_b.tolist())):
        rows_a, rows_b, kept = int((stage_a == s).sum()), int((stage_b == s).sum()), int((kept_stage == s).sum())
        by_stage.append(StageRows(stage=s, rows_a=rows_a, rows_b=rows_b, kept=kept, added=rows_b - kept,
                                  dropped=rows_a - kept))  # fmt: skip
    comparable = a.synthetic.emb.shape[1:] == b.synthetic.emb.shape[1:]
    return VersionDiff(
        a=a.label, b=b.label, anchored=anchored,
        rows_a=len(a.synthetic), rows_b=len(b.synthetic), kept=len(pairs),
        added=len(b.synthetic) - len(pairs), dropped=len(a.synthetic) - len(pairs),
        by_stage=by_stage, label_balance=_label_balance(a, b), comparable_embeddings=comparable,
        drift=_drift(a.synthetic, b.synthetic, pairs if comparable else pairs[:0]),
        config=config_changes(a.config, b.config), lineage=_lineage(a, b),
    )  # fmt: skip


def _identities(syn: SyntheticSet) -> list[bytes]:
    """Each row's identity as bytes: stage of origin, then its anchor's ids and numeric values."""
    stage = syn.stage.numpy().astype(np.int64)[:, None].view(np.uint8)
    cat = syn.src_cat.numpy().astype(np.int64).view(np.uint8)
    num = syn.src_num.numpy().astype(np.float32).view(np.uint8)
    return [bytes(row) for row in np.concatenate([stage, cat, num], axis=1)]


def _pair_rows(a: SyntheticSet, b: SyntheticSet) -> np.ndarray:
    """[(row in a, row in b)] of the rows both have, equal identities paired off in order."""
    waiting: dict[bytes, list[int]] = defaultdict(list)
    for i, key in enumerate(_identities(a)):
        waiting[key].append(i)
    for rows in waiting.values():
        rows.reverse()  # pop() then takes them in order
    pairs = []
    for j, key in enumerate(_identities(b)):
        rows = waiting.get(key)
        if rows:
            pairs.append((rows.pop(), j))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _mean_soft_labels(side: DiffSide) -> dict[str, float]:
    if not len(side.synthetic):
        return {}
    scaled = side.synthetic.logits.numpy().astype(np.float64) / side.temperature
    probs = 0.5 * (1.0 + np.tanh(0.5 * scaled))  # sigmoid without overflow
    return {t: float(probs[:, j].mean()) for j, t in enumerate(side.tasks)}


def _label_balance(a: DiffSide, b: DiffSide) -> list[TaskBalance]:
    rates_a, rates_b = _mean_soft_labels(a), _mean_soft_labels(b)
    out = []
    for task in dict.fromkeys([*a.tasks, *b.tasks]):
        ra, rb = rates_a.get(task), rates_b.get(task)
        out.append(TaskBalance(task=task, a=ra, b=rb, change=None if ra is None or rb is None else rb - ra))
    return out


def _drift(a: SyntheticSet, b: SyntheticSet, pairs: np.ndarray) -> Drift:
    if not len(pairs):
        return Drift(rows=0, mean=None, p95=None, max=None)
    ea = a.emb.numpy().reshape(len(a), -1)[pairs[:, 0]].astype(np.float64)
    eb = b.emb.numpy().reshape(len(b), -1)[pairs[:, 1]].astype(np.float64)
    shift = np.linalg.norm(eb - ea, axis=1)
    return Drift(rows=len(pairs), mean=float(shift.mean()), p95=float(np.percentile(shift, 95)), max=float(shift.max()))


def config_changes(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[ConfigChange]:
    """Every leaf whose value differs between two nested configs, by dotted path, in sorted order."""
    changes = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            changes += config_changes(va, vb, f"{path}.")
        elif va != vb:
            changes.append(ConfigChange(key=path, a=va, b=vb))
    return changes


def _lineage(a: DiffSide, b: DiffSide) -> LineageDiff:
    line_a, line_b = a.lineage or [a.label], b.lineage or [b.label]
    in_b = set(line_b)
    common = next((label for label in reversed(line_a) if label in in_b), None)
    blocks_a = {blk["sha256"]: blk["stage"] for blk in a.blocks}
    blocks_b = {blk["sha256"]: blk["stage"] for blk in b.blocks}
    return LineageDiff(
        common_ancestor=common,
        a_is_ancestor_of_b=a.label in in_b,
        b_is_ancestor_of_a=b.label in set(line_a),
        only_a=[v for v in line_a if v not in in_b],
        only_b=[v for v in line_b if v not in set(line_a)],
        blocks_only_a=sorted(s for h, s in blocks_a.items() if h not in blocks_b),
        blocks_only_b=sorted(s for h, s in blocks_b.items() if h not in blocks_a),
        blocks_shared=sorted(s for h, s in blocks_b.items() if h in blocks_a),
    )
