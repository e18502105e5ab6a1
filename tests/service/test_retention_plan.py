"""What a retention policy keeps by itself (before what needs a version is asked): newest N, younger than D days."""

from __future__ import annotations

from datetime import timedelta

from service.registry.retention import policy_keeps, why_it_goes
from service.registry.tables import DatasetVersion, RetentionPolicy, utcnow

NOW = utcnow()


def _version(age_days: float) -> DatasetVersion:
    return DatasetVersion(created_at=NOW - timedelta(days=age_days))


def test_either_limit_keeps_a_version():
    policy = RetentionPolicy(keep_last=2, keep_days=10, grace_s=0)
    assert policy_keeps(policy, 0, _version(100), NOW) == ["among the newest 2"]
    assert policy_keeps(policy, 5, _version(3), NOW) == ["younger than 10 days"]
    assert policy_keeps(policy, 1, _version(3), NOW) == ["among the newest 2", "younger than 10 days"]
    assert policy_keeps(policy, 2, _version(10.01), NOW) == []
    assert why_it_goes(policy) == "not among the newest 2 and older than 10 days"


def test_one_limit_alone_decides_and_no_limit_keeps_all():
    assert policy_keeps(RetentionPolicy(keep_last=None, keep_days=1, grace_s=0), 0, _version(2), NOW) == []
    assert policy_keeps(RetentionPolicy(keep_last=0, keep_days=None, grace_s=0), 0, _version(0), NOW) == []
    assert policy_keeps(RetentionPolicy(keep_last=None, keep_days=None, grace_s=0), 9, _version(999), NOW) == [
        "the policy sets no limit"
    ]
