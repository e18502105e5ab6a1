"""The periodic retention sweep: every stream's policy applied, and what is past its grace period purged.

Celery beat sends it every DIET_SWEEP_S seconds (service/queue.py); run exactly one beat per
deployment (`celery -A worker.app beat`, or `worker --beat` on one worker). A sweep that runs
twice at once is harmless: each deletion and purge locks its row and checks it again.
"""

from __future__ import annotations

import logging

from service import gc
from service.registry import streams
from worker.app import app
from service.queue import SWEEP_TASK
from worker.tasks import runtime

log = logging.getLogger(__name__)


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, int]:
    """Collect every stream; returns how many versions were deleted and purged, blocks retired, bytes freed."""
    rt = runtime()
    totals = {"deleted": 0, "purged_versions": 0, "purged_blocks": 0, "freed_bytes": 0}
    with rt.db.session() as session:
        names = [s.name for s in streams.list_all(session)]
    for name in names:
        with rt.db.session() as session:
            stream = streams.by_name(session, name)
            if stream is None:
                continue
            report = gc.collect(
                session, rt.storage, stream, default_grace_s=rt.settings.deletion_grace_s, actor=gc.SWEEPER,
                dry_run=False,
            )  # fmt: skip
        totals["deleted"] += len(report.deleted)
        totals["purged_versions"] += len(report.purged_versions)
        totals["purged_blocks"] += len(report.purged_blocks)
        totals["freed_bytes"] += report.freed_bytes
    log.info("retention sweep done", extra=totals)
    return totals
