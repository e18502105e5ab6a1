"""The job queue as the API and the worker both see it: the Celery app's configuration, the task's name.

The API only *sends* tasks by name, so it never imports the task module (or the
training code behind it); the worker builds its app here too and adds its tasks
(worker/app.py), so the dependency points from the worker to the service only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Producer

from service.settings import Settings

DISTILL_TASK = "diet.distill"
SWEEP_TASK = "diet.sweep"
AUDIT_TASK = "diet.audit"
WEBHOOK_TASK = "diet.webhook"


def make_celery(settings: Settings, include: list[str] | None = None) -> Celery:
    """The Celery app for these settings; `include` names the task modules (only the worker has them)."""
    options: dict[str, Any] = {}
    if settings.uses_folder_broker:
        # Embedded mode: messages are files in one folder, shared by the API and its worker.
        messages, control = _broker_folders(settings)
        options.update(data_folder_in=str(messages), data_folder_out=str(messages), control_folder=str(control))
    else:
        # Redelivery after a dead worker comes from the job table, not from the broker: a stage can
        # run for hours, so Redis could only redeliver an unacknowledged message after a visibility
        # timeout longer than any stage, i.e. hours after the worker died (a shorter one would hand
        # healthy running jobs to second workers). The API's reconciler (service/reconcile.py) sees
        # the heartbeat in the job row stop within DIET_JOB_STALE_AFTER_S and sends the job again,
        # and the next attempt resumes from the stage's checkpoint. acks_late and
        # reject_on_worker_lost stay as a last resort: a message whose worker died before claiming
        # the job comes back after this timeout (a duplicate is a no-op: jobs are claimed once).
        options["visibility_timeout"] = 24 * 3600
    options.update(settings.broker_options)

    app = Celery("diet", broker=settings.broker_url, include=include or [])
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # the job row holds the outcome
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per worker (a worker is one GPU), each in a fresh child process that exits
        # after it: the only sure way to hand a stage's CUDA memory back. Nothing more is reserved
        # from the broker than the job running (prefetch 1, acknowledged once it is done).
        worker_concurrency=1,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=1,
        worker_hijack_root_logger=False,
        # A dead broker must fail a request quickly (the job row stays; it is sent again later).
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1},
        # The folder broker has no broadcast; remote control is only useful with Redis anyway.
        worker_enable_remote_control=not settings.uses_folder_broker,
        # Retention (worker/sweep.py), sent by the one beat of a deployment; the schedule file is its memory.
        # A sweep still queued when the next is sent (the workers busy with long stages) is dropped: one is enough.
        beat_schedule={
            "retention-sweep": {
                "task": SWEEP_TASK, "schedule": settings.sweep_s,
                "options": {"queue": settings.queue, "expires": settings.sweep_s},
            }
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
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


def enqueue_audit(celery: Celery, audit_id: int) -> None:
    """Audits train candidates: they go where distill jobs go (the GPU workers)."""
    celery.send_task(AUDIT_TASK, args=[audit_id], queue=celery.conf.task_default_queue)


def webhook_queue(celery: Celery) -> str:
    """Deliveries have a queue of their own, so a long stage on a worker never holds them up."""
    return f"{celery.conf.task_default_queue}.webhooks"


def enqueue_delivery(celery: Celery, delivery_id: int, countdown: float | None = None) -> None:
    celery.send_task(WEBHOOK_TASK, args=[delivery_id], queue=webhook_queue(celery), countdown=countdown)


def _marker_queue(celery: Celery) -> str:
    return f"{celery.conf.task_default_queue}.marker"


def broker_kept_its_state(celery: Celery) -> bool:
    """Whether the marker message is still in the broker; puts one there if not.

    A broker that restarted without persistence (or was flushed) lost every queued message, and
    its marker with them: False then tells the caller to send every queued job again.
    """
    name = _marker_queue(celery)
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=3)
        channel = conn.default_channel
        # Not a passive declare: Redis counts an empty queue as missing, and missing is the news here.
        if channel.queue_declare(queue=name, durable=True, auto_delete=False).message_count > 0:
            return True
        Producer(channel).publish(
            {"diet": "broker marker: its loss means the broker lost its queued messages"},
            routing_key=name,  # the default exchange: straight to the queue of that name
            serializer="json",
        )
        return False


def ping_broker(celery: Celery) -> None:
    """Raise unless the broker accepts a connection."""
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, timeout=3)
