"""Retention: which versions of a stream a policy lets go, and which it must keep and why.

A version is kept by the policy when it is among the newest `keep_last` live versions or younger
than `keep_days` days (no limit set: all are kept). One the policy lets go is still kept while
anything needs it (lifecycle.version_needs: an alias, a job continuing from it, the next stage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.registry import datasets, lifecycle
from service.registry.tables import DatasetVersion, RetentionPolicy, utcnow


@dataclass
class Plan:
    """The outcome for each live version: to delete (with why the policy lets it go), or kept (with why)."""

    delete: list[tuple[DatasetVersion, str]] = field(default_factory=list)
    keep: list[tuple[DatasetVersion, list[str]]] = field(default_factory=list)


def get(session: Session, stream_id: int) -> RetentionPolicy | None:
    return session.get(RetentionPolicy, stream_id)


def put(
    session: Session, stream_id: int, keep_last: int | None, keep_days: int | None, grace_s: int, actor: str
) -> RetentionPolicy:
    policy = session.get(RetentionPolicy, stream_id)
    if policy is None:
        policy = RetentionPolicy(stream_id=stream_id, keep_last=keep_last, keep_days=keep_days, grace_s=grace_s,
                                 updated_by=actor, updated_at=utcnow())  # fmt: skip
        session.add(policy)
    else:
        policy.keep_last, policy.keep_days, policy.grace_s = keep_last, keep_days, grace_s
        policy.updated_by, policy.updated_at = actor, utcnow()
    session.flush()
    return policy


def plan(session: Session, policy: RetentionPolicy, now: datetime | None = None) -> Plan:
    now = now or utcnow()
    versions = session.scalars(datasets.live(policy.stream_id).order_by(DatasetVersion.number.desc()))
    out = Plan()
    for rank, version in enumerate(versions):
        reasons = policy_keeps(policy, rank, version, now)
        if reasons:
            out.keep.append((version, reasons))
            continue
        needs = lifecycle.version_needs(session, version)
        if needs:
            out.keep.append((version, needs))
        else:
            out.delete.append((version, why_it_goes(policy)))
    return out


def policy_keeps(policy: RetentionPolicy, rank: int, version: DatasetVersion, now: datetime) -> list[str]:
    if policy.keep_last is None and policy.keep_days is None:
        return ["the policy sets no limit"]
    reasons = []
    if policy.keep_last is not None and rank < policy.keep_last:
        reasons.append(f"among the newest {policy.keep_last}")
    if policy.keep_days is not None and version.created_at > now - timedelta(days=policy.keep_days):
        reasons.append(f"younger than {policy.keep_days} days")
    return reasons


def why_it_goes(policy: RetentionPolicy) -> str:
    limits = []
    if policy.keep_last is not None:
        limits.append(f"not among the newest {policy.keep_last}")
    if policy.keep_days is not None:
        limits.append(f"older than {policy.keep_days} days")
    return " and ".join(limits)
