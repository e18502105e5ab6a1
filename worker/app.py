"""The worker's Celery app, configured from `DIET_*` environment variables.

Run one worker per GPU (pin it with CUDA_VISIBLE_DEVICES):

    celery -A worker.app worker --pool=solo --concurrency=1
    celery -A worker.app beat       # exactly one per deployment: sends the periodic retention sweep
"""

from __future__ import annotations

from celery.signals import setup_logging, worker_init

from service import logs
from service.settings import get_settings
from service.queue import make_celery, prepare_broker
from worker.scratch import sweep_abandoned

app = make_celery(get_settings(), include=["worker.tasks", "worker.sweep", "worker.audit", "worker.webhooks"])
# A beat started with this app (`beat`, `worker --beat`) keeps its schedule file in the data directory.
get_settings().data_dir.mkdir(parents=True, exist_ok=True)


@setup_logging.connect
def _json_logs(**_: object) -> None:
    logs.configure(get_settings().log_level)


@worker_init.connect
def _prepare(**_: object) -> None:
    prepare_broker(get_settings())
    sweep_abandoned()  # what jobs of killed workers left on this machine
