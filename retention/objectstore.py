"""Segment files in object storage, through obstore: file://, s3://, gs://, az://.

Files are found from the segments index, never by listing the bucket (only ``segments
check`` lists, on request). Keys are relative to the store URL; a key that is absolute or
climbs out with ``..`` is refused before any call. Deletes use the store's bulk delete (S3:
up to 1,000 keys per request); when a bulk call fails, each key is retried alone, so the
caller learns exactly which files are gone. A file already missing counts as deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import from_url

from .errors import ObjectStoreError, UsageError
from .settings import Settings

log = logging.getLogger(__name__)

SCHEMES = ("file", "s3", "s3a", "gs", "az", "azure", "abfs", "abfss")
_BAD_CHARS = set("\\\x00") | {chr(c) for c in range(0x20)}


def key_problem(key: str) -> str | None:
    """Why ``key`` may not be deleted ("" when it may): it must stay under the store URL."""
    if not key or key != key.strip():
        return "empty or padded key"
    if key.startswith("/") or "://" in key:
        return "absolute key"
    if any(c in _BAD_CHARS for c in key):
        return "control character or backslash in key"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "key with '.', '..' or an empty path segment"
    return None


@dataclass
class DeleteResult:
    deleted: list[str] = field(default_factory=list)  # confirmed gone (missing included)
    missing: list[str] = field(default_factory=list)  # already gone before the delete
    failed: dict[str, str] = field(default_factory=dict)  # key -> error class
    requests: int = 0  # delete calls made: one bulk call, then one per key if it failed


class ObjectStore:
    """One configured store; ``display`` names it without credentials."""

    def __init__(self, url: str, store: Any, display: str) -> None:
        self.url = url
        self._store = store
        self.display = display

    def check(self) -> None:
        """Reach the store (list at most one entry), or raise ``ObjectStoreError``."""
        try:
            stream = obstore.list(self._store, chunk_size=1)
            next(iter(stream), None)
        except (ObstoreError, OSError, ValueError, RuntimeError) as exc:
            raise ObjectStoreError(
                f"object store {self.display} unavailable: {_first_line(exc)}"
            ) from exc

    def delete_many(self, keys: Sequence[str]) -> DeleteResult:
        """Delete ``keys`` (at most a batch); report which are confirmed gone."""
        result = DeleteResult()
        if not keys:
            return result
        for key in keys:
            if key_problem(key):
                raise ValueError(f"refusing to delete an unsafe key: {key_problem(key)}")
        try:
            result.requests += 1
            obstore.delete(self._store, list(keys))
            result.deleted.extend(keys)
            return result
        except (ObstoreError, OSError, RuntimeError, ValueError) as exc:
            log.info(
                "bulk delete of %d keys failed (%s); deleting one by one",
                len(keys),
                type(exc).__name__,
            )
        for key in keys:
            result.requests += 1
            try:
                obstore.delete(self._store, key)
                result.deleted.append(key)
            except FileNotFoundError:
                result.deleted.append(key)
                result.missing.append(key)
            except (ObstoreError, OSError, RuntimeError, ValueError) as exc:
                result.failed[key] = type(exc).__name__
        return result

    def present(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` are in the store (one HEAD each); an unsafe key never is. A
        store that cannot answer raises ``ObjectStoreError``: nothing is assumed."""
        found = set()
        for key in keys:
            if key_problem(key):
                continue
            try:
                obstore.head(self._store, key)
            except FileNotFoundError:
                continue
            except (ObstoreError, OSError, RuntimeError, ValueError) as exc:
                raise ObjectStoreError(
                    f"object store {self.display}: cannot check a file: {_first_line(exc)}"
                ) from exc
            found.add(key)
        return found

    def list_keys(self, prefix: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size) of every file whose key starts with ``prefix`` (``segments check``
        only). Stores list by whole path segments, so a prefix that ends inside one is
        listed from its folder and filtered here."""
        folder = prefix.rpartition("/")[0] if prefix and not prefix.endswith("/") else prefix
        try:
            for chunk in obstore.list(self._store, prefix=folder or None, chunk_size=1000):
                for meta in chunk:
                    key = str(meta["path"])
                    if not prefix or key.startswith(prefix):
                        yield key, int(meta["size"])
        except (ObstoreError, OSError, RuntimeError, ValueError) as exc:
            raise ObjectStoreError(
                f"object store {self.display}: cannot list: {_first_line(exc)}"
            ) from exc

    def put(self, key: str, data: bytes) -> None:
        """Write a file (the demo seeds segment files with it)."""
        obstore.put(self._store, key, data)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def open_store(settings: Settings, *, create: bool = False) -> ObjectStore | None:
    """The store ``RETENTION_OBJECT_STORE_URL`` names, or None when it is unset."""
    url = settings.object_store_url
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise UsageError(
            f"RETENTION_OBJECT_STORE_URL: unsupported scheme {parts.scheme!r} "
            "(file://, s3://, gs://, az://)"
        )
    if parts.username or parts.password:
        raise UsageError("RETENTION_OBJECT_STORE_URL must not carry credentials")
    display = f"{parts.scheme}://{parts.netloc}{parts.path}"
    options: dict[str, Any] = {
        k: v.get_secret_value() for k, v in settings.object_store_options.items()
    }
    if parts.scheme == "file":
        root = Path(parts.path)
        if create:
            root.mkdir(parents=True, exist_ok=True)
        if not root.is_dir():
            raise ObjectStoreError(f"object store {display} unavailable: no such folder")
    elif parts.scheme in ("s3", "s3a"):
        for key, value in (
            ("endpoint", settings.s3_endpoint),
            ("region", settings.s3_region),
            ("access_key_id", settings.s3_access_key_id),
            (
                "secret_access_key",
                settings.s3_secret_access_key.get_secret_value()
                if settings.s3_secret_access_key
                else None,
            ),
        ):
            if value:
                options[key] = value
    if parts.scheme != "file":
        client: dict[str, Any] = {
            "connect_timeout": timedelta(seconds=5),
            "timeout": settings.object_store_timeout,
        }
        if settings.s3_allow_http and parts.scheme in ("s3", "s3a"):
            client["allow_http"] = True
        options["client_options"] = client
        options["retry_config"] = {
            "max_retries": settings.object_store_max_retries,
            "retry_timeout": settings.object_store_timeout,
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=5),
            },
        }
    try:
        store = from_url(url, **options)
    except (ObstoreError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise ObjectStoreError(
            f"object store {display} misconfigured: {_first_line(exc)}"
        ) from None  # the message of a config error may quote a secret option
    return ObjectStore(url, store, display)
