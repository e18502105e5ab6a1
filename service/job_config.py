"""What a distill job runs with: the engine's DistillConfig, plus the wall-time limit of each attempt.

The limit lives beside the distillation settings (a stream's `distill` defaults, a job's `overrides`)
so that it is set the same way, but it is not the engine's: the worker enforces it, and it is left
out of the DistillConfig the stage runs with, so a retry given more time still resumes the
checkpoint of the attempt that ran out of it (the checkpoint's fingerprint covers the config).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from diet_engine.config import DistillConfig

WALL_TIME = "wall_time_s"
# The static bound of the field; a server sets its own, lower, maximum (DIET_JOB_MAX_WALL_TIME_S).
MAX_WALL_TIME_S = 7 * 24 * 3600


class JobConfig(DistillConfig):
    wall_time_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_WALL_TIME_S,
        description="seconds an attempt may run before it fails (its checkpoint kept); "
        "none: the server's default, DIET_JOB_WALL_TIME_S; at most DIET_JOB_MAX_WALL_TIME_S",
    )

    def distill(self) -> DistillConfig:
        """The engine's part."""
        return DistillConfig.model_validate(self.model_dump(exclude={WALL_TIME}))


def split(config: dict[str, Any], default_wall_time_s: float) -> tuple[DistillConfig, float]:
    """A job row's config as (what the engine runs, the attempt's wall-time limit in seconds)."""
    job = JobConfig.model_validate(config)
    return job.distill(), job.wall_time_s or default_wall_time_s
