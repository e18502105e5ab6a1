"""A running job's link to its row: heartbeat, progress, and the news that it was cancelled."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from diet_engine.distill.stage import StageProgress
from service.registry import jobs
from service.registry.db import Database

log = logging.getLogger(__name__)


class JobAborted(Exception):
    """The job was cancelled, or taken over by another attempt, while this one ran."""


class WallTimeExceeded(Exception):
    """The attempt ran longer than the job's wall-time limit."""


class JobReporter:
    """Writes progress (on each new phase, else at most once per `min_interval_s`) and, from a
    thread, a heartbeat every `heartbeat_s`, so that a silent job can be told from a slow one.

    `progress` is the engine's callback: it raises JobAborted once the row says the job is no
    longer this attempt's, which is how a cancellation stops the engine mid-stage, and
    WallTimeExceeded once the attempt has run `wall_time_s` (None: no limit).
    """

    def __init__(
        self,
        db: Database,
        job_id: int,
        attempt: int,
        heartbeat_s: float,
        min_interval_s: float = 1.0,
        wall_time_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.wall_time_s = wall_time_s
        self._clock = clock
        self._started = clock()
        self.job_id = job_id
        self.attempt = attempt
        self.heartbeat_s = heartbeat_s
        self.min_interval_s = min_interval_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"job-{job_id}-heartbeat", daemon=True)
        self._last_phase: str | None = None
        self._last_write = 0.0

    def __enter__(self) -> JobReporter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def progress(self, update: StageProgress) -> None:
        self.check()
        now = time.monotonic()
        if update.phase == self._last_phase and now - self._last_write < self.min_interval_s:
            return
        self._last_phase, self._last_write = update.phase, now
        self._write(update.model_dump())
        self.check()

    def check(self) -> None:
        if self.lost.is_set():
            raise JobAborted(f"job {self.job_id} is no longer attempt {self.attempt}'s to run")
        ran = self._clock() - self._started
        if self.wall_time_s is not None and ran > self.wall_time_s:
            raise WallTimeExceeded(
                f"attempt {self.attempt} ran {ran:.1f} s, past the job's wall-time limit of {self.wall_time_s:g} s; "
                "its checkpoint is kept: ask for the stage again (POST /jobs/distill, a larger overrides.wall_time_s "
                "if need be) and the new job resumes from it"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._write(None)

    def _write(self, progress: dict[str, Any] | None) -> None:
        # Progress is best effort: a database blip must not fail a stage that is computing fine.
        try:
            with self.db.session() as session:
                owned = jobs.report(session, self.job_id, self.attempt, progress)
                session.commit()
        except SQLAlchemyError as exc:
            log.warning("could not record progress of job %s: %s", self.job_id, exc)
            return
        if not owned:
            self.lost.set()
