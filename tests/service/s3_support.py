"""An S3-compatible object store of the tests' own: moto's server, as a separate process on 127.0.0.1.

The service reaches it exactly as it reaches S3 or MinIO in a deployment: an `s3://` storage URL
and fsspec options (endpoint, keys) for the real s3fs client.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from fault_support import wait_for_port
from service_support import Process, free_port

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


class MotoServer:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = Process("moto-s3", command, {}, log_dir)
        wait_for_port(self.port, up=True, timeout=60)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, **KEYS)

    def bucket(self) -> S3Bucket:
        """A new, empty bucket."""
        name = f"diet-test-{secrets.token_hex(6)}"
        self.client.create_bucket(Bucket=name)
        return S3Bucket(self, name)

    def stop(self) -> None:
        self.client.close()
        self.process.clean_up()


@dataclass
class S3Bucket:
    server: MotoServer
    name: str
    prefix: str = "diet"

    @property
    def url(self) -> str:
        return f"s3://{self.name}/{self.prefix}"

    @property
    def options(self) -> dict[str, Any]:
        """fsspec/s3fs options, as DIET_STORAGE_OPTIONS holds them."""
        return {
            "endpoint_url": self.server.endpoint,
            "key": KEYS["aws_access_key_id"],
            "secret": KEYS["aws_secret_access_key"],
            "client_kwargs": {"region_name": KEYS["region_name"]},
        }

    def env(self) -> dict[str, str]:
        return {"DIET_STORAGE_URL": self.url, "DIET_STORAGE_OPTIONS": json.dumps(self.options)}

    def keys(self) -> list[str]:
        """Every object's key under the prefix, relative to it, sorted (what a reader of the store can see)."""
        pages = self.server.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=f"{self.prefix}/")
        return sorted(o["Key"].removeprefix(f"{self.prefix}/") for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.server.client.get_object(Bucket=self.name, Key=f"{self.prefix}/{key}")["Body"].read()
