"""The Celery worker: turns a distill job row into engine calls, artifacts and a dataset version."""
