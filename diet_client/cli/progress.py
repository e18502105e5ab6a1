"""Progress on stderr: bars for uploads and downloads, and a live view of a job being waited for.

On a terminal they animate; off one (CI logs, pipes) the bars print once at the end and a
job prints one line per phase, so logs stay short and readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from diet_client.cli.common import stderr
from diet_client.models import Job

FileProgress = Callable[[str, int, int], None]  # (file name, bytes done, bytes in all)


@contextmanager
def transfer_bars(enabled: bool) -> Iterator[FileProgress]:
    """One bar per file, created on the file's first report."""
    if not enabled:
        yield lambda name, done, total: None
        return
    columns = (
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()
    )  # fmt: skip
    with Progress(*columns, console=stderr()) as bars:
        tasks: dict[str, TaskID] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=total)
            bars.update(tasks[name], completed=done, total=total)

        yield update


def describe(job: Job) -> str:
    """`stage 2 · optimise 40/300 · outer 0.4123`: what the job is doing now."""
    parts = [f"job {job.id} stage {job.stage}", str(job.status)]
    progress = job.progress
    if progress is not None and not job.status.finished:
        parts.append(f"{progress.phase} {progress.step}/{progress.total}")
        if progress.losses:
            parts.append(" ".join(f"{name} {value:.4f}" for name, value in progress.losses.items()))
    return " · ".join(parts)


class JobView:
    """Follows a job through `DietClient.wait(on_progress=view.update)`."""

    def __init__(self, enabled: bool, console: Console | None = None, line_every_s: float = 10.0) -> None:
        self.enabled = enabled
        self.console = console or stderr()
        self.line_every_s = line_every_s
        self._bars: Progress | None = None
        self._task: TaskID | None = None
        self._shown: tuple[str, str] | None = None
        self._last_line = 0.0
        self._last_text = ""

    def __enter__(self) -> JobView:
        if self.enabled and self.console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._bars = Progress(*columns, console=self.console, transient=True)
            self._bars.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._bars is not None:
            self._bars.stop()

    def update(self, job: Job) -> None:
        if not self.enabled:
            return
        if self._bars is not None:
            self._live(job)
        else:
            self._lines(job)

    def _live(self, job: Job) -> None:
        assert self._bars is not None
        progress = job.progress
        total = progress.total if progress and not job.status.finished else 1
        done = progress.step if progress and not job.status.finished else (1 if job.status.finished else 0)
        if self._task is None:
            self._task = self._bars.add_task(describe(job), total=total)
        self._bars.update(self._task, description=describe(job), completed=done, total=total)

    def _lines(self, job: Job) -> None:
        # a line when the status or phase changes, else news at most every line_every_s; never the same line twice
        text = describe(job)
        phase = job.progress.phase if job.progress else ""
        key = (str(job.status), phase)
        now = time.monotonic()
        if text != self._last_text and (key != self._shown or now - self._last_line >= self.line_every_s):
            self.console.print(text, soft_wrap=True)
            self._shown, self._last_line, self._last_text = key, now, text
