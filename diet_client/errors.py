"""What the client raises: one base class, and one subclass per thing a caller acts on differently."""

from __future__ import annotations

from typing import Any


class DietError(Exception):
    """Base of every error the client raises."""


class ApiError(DietError):
    """The service answered with a problem document (4xx: fix the request; 5xx: the service's trouble)."""

    def __init__(self, status: int, title: str, detail: str, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem

    @property
    def is_client_error(self) -> bool:
        return 400 <= self.status < 500


class ServiceUnreachable(DietError):
    """No answer from the service (refused, reset or timed out), after the retries."""


class ChecksumMismatch(DietError):
    """A downloaded file does not have the sha256 the manifest gives, even after a fresh download."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"{name}: sha256 {actual} does not match the manifest's {expected}")
        self.name = name
        self.expected = expected
        self.actual = actual


class WaitTimeout(DietError, TimeoutError):
    """A job was still queued or running when `wait` gave up; `job` is its last state."""

    def __init__(self, job: Any, timeout_s: float) -> None:
        super().__init__(f"job {job.id} is still {job.status} after {timeout_s:g}s")
        self.job = job
