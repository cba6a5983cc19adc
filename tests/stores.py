"""Object stores for tests: real files for file://, a moto S3 server on loopback for s3://."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class TestStore(Protocol):
    url: str

    def write(self, key: str, data: bytes = b"segment") -> None: ...
    def exists(self, key: str) -> bool: ...
    def keys(self) -> set[str]: ...
    def settings(self) -> dict[str, Any]: ...


@dataclass
class FileStore:
    root: Path

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def write(self, key: str, data: bytes = b"segment") -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def keys(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}

    def settings(self) -> dict[str, Any]:
        return {"object_store_url": self.url}


@dataclass
class S3Store:
    endpoint: str
    bucket: str
    prefix: str
    client: Any  # boto3 S3 client

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def write(self, key: str, data: bytes = b"segment") -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def exists(self, key: str) -> bool:
        return f"{self.prefix}/{key}" in self._all()

    def _all(self) -> set[str]:
        found: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            found.update(o["Key"] for o in page.get("Contents", []))
        return found

    def keys(self) -> set[str]:
        start = f"{self.prefix}/"
        return {k[len(start) :] for k in self._all() if k.startswith(start)}

    def settings(self) -> dict[str, Any]:
        return {
            "object_store_url": self.url,
            "s3_endpoint": self.endpoint,
            "s3_region": "us-east-1",
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
            "s3_allow_http": True,
        }

    def env(self) -> dict[str, str]:
        return {
            "RETENTION_OBJECT_STORE_URL": self.url,
            "RETENTION_S3_ENDPOINT": self.endpoint,
            "RETENTION_S3_REGION": "us-east-1",
            "RETENTION_S3_ACCESS_KEY_ID": "testing",
            "RETENTION_S3_SECRET_ACCESS_KEY": "testing",
            "RETENTION_S3_ALLOW_HTTP": "true",
        }


def new_bucket(endpoint: str) -> S3Store:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    bucket = f"dp-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Store(endpoint=endpoint, bucket=bucket, prefix="segments", client=client)
