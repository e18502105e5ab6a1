"""The manifest of a dataset version (diet_client.models.Manifest) made from its registry row.

`manifest.json` cannot carry its own sha256, so the stored file lists the two
data artifacts, and the API's answer adds `manifest.json` itself (with the
digest of the stored bytes, which is also its ETag).
"""

from __future__ import annotations

from diet_client.models import Artifact, Manifest
from service.answers import from_row
from service.registry.tables import DatasetVersion

MANIFEST = "manifest.json"
MEDIA_TYPES = {
    "synthetic.parquet": "application/vnd.apache.parquet",
    "reference.safetensors": "application/octet-stream",
    MANIFEST: "application/json",
}


def file_url(label: str, name: str) -> str:
    return f"/datasets/{label}/files/{name}"


def manifest(version: DatasetVersion, *, with_manifest_file: bool = True) -> Manifest:
    label = version.label
    return from_row(
        Manifest,
        version,
        version=label,
        stream=version.stream.name,
        parent=version.parent.label if version.parent else None,
        artifacts=[
            Artifact(name=a["name"], bytes=a["bytes"], sha256=a["sha256"], url=file_url(label, a["name"]))
            for a in version.artifacts
            if with_manifest_file or a["name"] != MANIFEST
        ],
        job=version.job_id,
    )
