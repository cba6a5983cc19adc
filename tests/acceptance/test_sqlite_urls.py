"""SQLite URLs that are not ``sqlite:///PATH`` of a file (DESIGN §7: anything else is exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.cli import clean_env, run
from tests.conftest import prepare


@pytest.mark.parametrize(
    "tail",
    [
        ":memory:?cache=shared",  # an in-memory database, spelled past the ':memory:' check
        "file::memory:?uri=true",  # the same as a SQLite URI
    ],
)
def test_in_memory_sqlite_urls_are_exit_2(tmp_path: Path, tail: str) -> None:
    """'db upgrade' migrated a database that vanished with its connection and said
    'worker tables at revision None (head)', exit 0; the other commands said the file does
    not exist (exit 4)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "none.toml").write_text("")
    env = clean_env(RETENTION_DATABASE_URL=f"sqlite:///{tail}", RETENTION_POLICY_DIR=str(tmp_path))
    for args in (("db", "upgrade"), ("purge", "--dry-run"), ("purge", "--yes")):
        result = run(*args, env=env, cwd=cwd)
        assert result.code == 2, (args, result.code, result.stdout, result.stderr)
        assert "sqlite:///PATH" in result.stderr
    assert list(cwd.iterdir()) == []


def test_sqlite_uri_url_addresses_one_file_or_is_refused(tmp_path: Path) -> None:
    """``sqlite:///file:/abs/x.db?uri=true``: 'db upgrade' migrated /abs/x.db (through the
    URI) after creating the directories ./file:/abs/ in the working directory, while every
    other command (and the run lock, and the read-only dry-run engine) looked for the
    relative path ./file:/abs/x.db and exited 4. Refuse it (exit 2), touching nothing."""
    database = tmp_path / "x.sqlite3"
    prepare(f"sqlite:///{database}", worker_tables=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = clean_env(
        RETENTION_DATABASE_URL=f"sqlite:///file:{database}?uri=true",
        RETENTION_POLICY_DIR=str(tmp_path),
    )
    upgraded = run("db", "upgrade", env=env, cwd=cwd)
    assert upgraded.code == 2, (upgraded.stdout, upgraded.stderr)
    assert list(cwd.iterdir()) == []
    dry = run("purge", "--dry-run", env=env, cwd=cwd)
    assert dry.code == 2, dry.stderr
