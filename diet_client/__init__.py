"""A Python client of the DIET service (httpx + pydantic; no engine, web or SQL imports).

    from diet_client import DietClient
    with DietClient("http://127.0.0.1:8000", token) as diet:
        diet.upload_block("ml_100k", "b1.parquet")
        job = diet.wait(diet.distill("ml_100k", stage=1).id)
        diet.pull("ml_100k@latest", "ml_100k-latest")
"""

from diet_client.client import DietClient
from diet_client.errors import ApiError, ChecksumMismatch, DietError, ServiceUnreachable, WaitTimeout
from diet_client.models import (
    Alias,
    Aliases,
    AliasMove,
    Artifact,
    Block,
    BlockRef,
    DatasetDiff,
    Deletion,
    GcReport,
    Job,
    JobStatus,
    Liveness,
    Manifest,
    Page,
    Progress,
    PulledDataset,
    PulledFile,
    Readiness,
    Retention,
    Stream,
    Upload,
)

__all__ = [
    "Alias", "Aliases", "AliasMove", "DatasetDiff", "Deletion", "GcReport", "Retention",
    "ApiError", "Artifact", "Block", "BlockRef", "ChecksumMismatch", "DietClient", "DietError", "Job", "JobStatus",
    "Liveness", "Manifest", "Page", "Progress", "PulledDataset", "PulledFile", "Readiness", "ServiceUnreachable", "Stream",
    "Upload", "WaitTimeout",
]  # fmt: skip
