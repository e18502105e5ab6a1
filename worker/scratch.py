"""A job's local scratch folder (block copy, previous version, checkpoint, outputs), and the sweep of
folders left by workers that were killed.

Each folder holds an exclusive lock (flock on `.lock`) while its job runs. The kernel drops the lock
when the process dies, however it dies, so a folder whose lock can be taken belongs to nobody: a
starting worker deletes those. Workers sharing a temporary directory never delete each other's.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "diet-job-"
LOCK = ".lock"
log = logging.getLogger(__name__)


@contextmanager
def scratch_folder(job_id: int) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{job_id}-"))
    with open(folder / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def sweep_abandoned() -> list[Path]:
    """Delete scratch folders whose job's process is gone (their lock is free); the folders deleted."""
    swept = []
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            lock = open(folder / LOCK)  # no lock file: being set up right now, or not ours
        except OSError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live job's
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder)
    if swept:
        log.info("deleted scratch folders of jobs whose worker died", extra={"folders": [str(f) for f in swept]})
    return swept
