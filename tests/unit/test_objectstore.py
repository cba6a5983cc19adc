"""Object-store configuration and key safety (no network: stores are built, not called)."""

from __future__ import annotations

import pytest

from retention.errors import ObjectStoreError, UsageError
from retention.objectstore import key_problem, open_store
from retention.settings import load_settings


@pytest.mark.parametrize(
    ("url", "options", "shown"),
    [
        ("gs://bucket/segments", '{"skip_signature": "true"}', "GCSStore"),
        (
            "az://container/segments",
            '{"account_name": "acct", "skip_signature": "true"}',
            "AzureStore",
        ),
        ("s3://bucket/segments", '{"skip_signature": "true"}', "S3Store"),
    ],
)
def test_cloud_stores_are_built_from_url_and_options(
    monkeypatch: pytest.MonkeyPatch, url: str, options: str, shown: str
) -> None:
    monkeypatch.setenv("RETENTION_OBJECT_STORE_URL", url)
    monkeypatch.setenv("RETENTION_OBJECT_STORE_OPTIONS", options)
    store = open_store(load_settings())
    assert store is not None
    assert repr(store._store).startswith(shown)
    assert 'prefix="segments"' in repr(store._store)
    assert store.display == url


def test_no_url_means_no_store() -> None:
    assert open_store(load_settings()) is None


@pytest.mark.parametrize("url", ["ftp://host/x", "http://host/x", "memory:///"])
def test_unsupported_schemes_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="unsupported scheme"):
        open_store(load_settings(object_store_url=url))


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(UsageError) as caught:
        open_store(load_settings(object_store_url="s3://key:hunter2@bucket/x"))
    assert "hunter2" not in caught.value.message


def test_a_missing_folder_is_exit_4(tmp_path) -> None:
    with pytest.raises(ObjectStoreError) as caught:
        open_store(load_settings(object_store_url=f"file://{tmp_path}/nope"))
    assert caught.value.exit_code == 4


def test_a_bad_option_does_not_echo_secrets() -> None:
    settings = load_settings(
        object_store_url="gs://bucket/x",
        object_store_options={"no_such_option": "hunter2"},
    )
    with pytest.raises(ObjectStoreError) as caught:
        open_store(settings)
    assert "hunter2" not in caught.value.message


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("project_logs/p/o/s.seg", None),
        ("a.seg", None),
        ("", "empty or padded key"),
        (" a.seg", "empty or padded key"),
        ("/etc/passwd", "absolute key"),
        ("s3://other/x", "absolute key"),
        ("../x.seg", "key with '.', '..' or an empty path segment"),
        ("a/../../x.seg", "key with '.', '..' or an empty path segment"),
        ("a//b", "key with '.', '..' or an empty path segment"),
        ("a/./b", "key with '.', '..' or an empty path segment"),
        ("a\\b", "control character or backslash in key"),
        ("a\nb", "control character or backslash in key"),
    ],
)
def test_key_problems(key: str, problem: str | None) -> None:
    assert key_problem(key) == problem
