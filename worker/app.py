"""The worker's Celery app, configured from `DIET_*` environment variables.

Run one worker per GPU (pin it with CUDA_VISIBLE_DEVICES, or one container per GPU):

    celery -A worker.app worker --concurrency=1
    celery -A worker.app beat       # exactly one per deployment: sends the periodic retention sweep

Each job runs in a process of its own (prefork pool, one child, replaced after every job:
worker_max_tasks_per_child=1 in service.queue), so the CUDA memory a stage took is given back to
the driver when it ends, whatever the caching allocator kept. The child is SIGKILLed with its
parent (Celery sets PR_SET_PDEATHSIG), so a killed worker leaves no stage running.
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
