"""Every setting of the service and the worker, read from `DIET_*` environment variables.

Embedded defaults need nothing but a data directory: SQLite, a local blob
folder and a folder-based Celery broker all live under `DIET_DATA_DIR`.
Deployments point `DIET_DATABASE_URL`, `DIET_BROKER_URL` and
`DIET_STORAGE_URL` at Postgres, Redis and an object store.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024**2
GIB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIET_", extra="ignore")

    data_dir: Path = Field(default=Path("diet-data"), description="root of everything the embedded mode keeps")
    database_url: str = Field(default="", description="SQLAlchemy URL; default SQLite under data_dir")
    broker_url: str = Field(default="", description="Celery broker URL; default a folder queue under data_dir")
    broker_options: dict[str, Any] = Field(
        default_factory=dict, description="Celery broker_transport_options (JSON), e.g. a Redis global_keyprefix"
    )
    storage_url: str = Field(default="", description="fsspec URL of the blob root; default data_dir/blobs")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description='fsspec options (JSON), e.g. {"endpoint_url": "http://minio:9000"}'
    )
    bootstrap_token: SecretStr | None = Field(default=None, description="accepted as an admin token when set")
    max_upload_bytes: int = Field(default=2 * GIB, ge=1)
    max_json_bytes: int = Field(default=MIB, ge=1, description="largest body of any request but a block upload")
    body_timeout_s: float = Field(default=30.0, gt=0, description="longest wait for the next piece of a request body")
    max_block_rows: int = Field(default=200_000_000, ge=1, description="most rows one uploaded block may hold")
    max_block_decoded_bytes: int = Field(
        default=32 * GIB, ge=1, description="most bytes a block's schema columns may decode to (Parquet bombs)"
    )
    artifact_redirect: bool = Field(
        default=False,
        description="object storage only: answer artifact downloads with a redirect (307) to a presigned URL, "
        "so the bytes go from the store to the client, not through the API",
    )
    artifact_redirect_expires_s: int = Field(
        default=300, ge=1, le=7 * 24 * 3600, description="how long such a presigned URL stays valid"
    )
    queue: str = Field(default="diet", min_length=1, description="Celery queue the distill jobs go through")
    worker_device: str = Field(default="auto", description="torch device of the worker; auto = cuda when present")
    job_max_retries: int = Field(default=3, ge=0, description="retries of a job after infrastructure errors")
    job_retry_backoff_s: int = Field(default=10, ge=1, description="first retry delay; doubles per retry")
    job_heartbeat_s: float = Field(default=15.0, gt=0)
    job_stale_after_s: float = Field(default=120.0, gt=0, description="a running job silent this long is lost")
    job_checkpoint_every: int = Field(
        default=25, ge=1, description="outer iterations between checkpoints of a stage's bi-level loop"
    )
    job_wall_time_s: float = Field(
        default=6 * 3600.0, gt=0, description="wall-time limit of a job attempt whose stream and request set none"
    )
    job_max_wall_time_s: float = Field(
        default=24 * 3600.0, gt=0, description="the largest wall-time limit a stream or a job may ask for"
    )
    worker_threads: int = Field(
        default=0, ge=0, description="torch CPU threads of a worker (0: torch's default); a resumed stage needs the same"
    )
    reconcile_s: float = Field(
        default=15.0, gt=0, description="how often the API reconciles the job table with the broker and sweeps tmp/"
    )
    tmp_max_age_s: float = Field(
        default=3600.0, ge=0, description="a temporary blob untouched this long was left by a dead writer: deleted"
    )
    deletion_grace_s: int = Field(
        default=7 * 86400, ge=0, description="how long a deleted version or block stays restorable (streams without a retention policy)"
    )
    sweep_s: float = Field(
        default=3600.0, gt=0, description="how often the worker's beat applies retention policies and purges"
    )
    webhook_max_attempts: int = Field(default=6, ge=1, le=50, description="tries of a delivery before it is failed")
    webhook_backoff_s: float = Field(default=5.0, gt=0, description="wait before a delivery's first retry; doubles per retry")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="longest wait for a receiver's answer")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.bootstrap_token is not None and not self.bootstrap_token.get_secret_value():
            self.bootstrap_token = None  # DIET_BOOTSTRAP_TOKEN= (empty, as compose passes an unset one) is no token
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'registry.sqlite3'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = str(self.data_dir / "blobs")
        if self.job_wall_time_s > self.job_max_wall_time_s:
            raise ValueError("job_wall_time_s must not exceed job_max_wall_time_s")
        if self.worker_device not in {"auto", "cpu"} and not self.worker_device.startswith(("cuda", "mps")):
            raise ValueError(f"worker_device must be auto, cpu, cuda[:N] or mps, not {self.worker_device!r}")
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the embedded folder broker keeps its messages."""
        return self.data_dir / "broker"

    @property
    def uses_folder_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (the worker and `alembic` read them from the environment)."""
    return Settings()
