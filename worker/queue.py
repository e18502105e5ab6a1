"""The Celery configuration shared by the API (which sends jobs) and the worker (which runs them).

The API only *sends* tasks by name, so it never imports the task module (or the
training code behind it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from service.settings import Settings

DISTILL_TASK = "diet.distill"


def make_celery(settings: Settings) -> Celery:
    options: dict[str, Any] = {}
    if settings.uses_folder_broker:
        # Embedded mode: messages are files in one folder, shared by the API and its worker.
        messages, control = _broker_folders(settings)
        options.update(data_folder_in=str(messages), data_folder_out=str(messages), control_folder=str(control))
    else:
        # With acks_late, Redis hands an unacknowledged message to another worker after this
        # long; a stage can run for hours, and the job row's heartbeat guards against doubles.
        options["visibility_timeout"] = 24 * 3600
    options.update(settings.broker_options)

    app = Celery("diet", broker=settings.broker_url, include=["worker.tasks"])
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job row holds the outcome
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # A dead broker must fail a request quickly (the job row stays; it is sent again later).
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1},
        # The folder broker has no broadcast; remote control is only useful with Redis anyway.
        worker_enable_remote_control=not settings.uses_folder_broker,
    )
    return app


def _broker_folders(settings: Settings) -> tuple[Path, Path]:
    return settings.broker_folder / "messages", settings.broker_folder / "control"


def prepare_broker(settings: Settings) -> None:
    """Create the folder broker's folders (a no-op for a real broker); done by whoever starts using it."""
    if settings.uses_folder_broker:
        for folder in _broker_folders(settings):
            folder.mkdir(parents=True, exist_ok=True)


def enqueue(celery: Celery, job_id: int) -> None:
    celery.send_task(DISTILL_TASK, args=[job_id], queue=celery.conf.task_default_queue)


def ping_broker(celery: Celery) -> None:
    """Raise unless the broker accepts a connection."""
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=3)
