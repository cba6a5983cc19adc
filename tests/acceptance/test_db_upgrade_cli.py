"""``retention db upgrade|current|check`` and purges around upgrades, as the installed
command runs them (a review in the sixth session)."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import migrate
from retention.db import make_engine, parse_database_url
from tests.acceptance.cli import clean_env, retention_command, run
from tests.conftest import at_revision, engine_for, prepare
from tests.support import NOW, Scenario, create_reference_schema, insert

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")


def _waiting_upgrades(admin: sa.Engine) -> int:
    with admin.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'retention' "
                "AND wait_event_type = 'Lock'"
            ).scalar_one()
        )


def _start_upgrade(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [retention_command(), "db", "upgrade"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _race_two_upgrades(url: str, hold: str) -> None:
    """Two ``retention db upgrade`` held at the same point by a statement of the test's
    (``hold``, in a transaction it then rolls back), then let go together: both must exit
    0 and leave one schema at head."""
    env = clean_env(RETENTION_DATABASE_URL=url)
    blocker = engine_for(url)
    try:
        with blocker.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql(hold)
            first, second = _start_upgrade(env), _start_upgrade(env)
            deadline = time.monotonic() + 60
            while _waiting_upgrades(blocker) < 2 and time.monotonic() < deadline:
                if first.poll() is not None or second.poll() is not None:
                    break
                time.sleep(0.05)
            conn.exec_driver_sql("ROLLBACK")
        results = [p.communicate(timeout=60) for p in (first, second)]
        codes = [first.returncode, second.returncode]
        assert codes == [0, 0], (codes, [r[1] for r in results])
        with blocker.connect() as conn:
            assert migrate.current(conn) == migrate.head()
    finally:
        blocker.dispose()


def test_two_concurrent_db_upgrades_both_succeed(empty_pg_url: str) -> None:
    """Two pods' init containers run ``retention db upgrade`` on the same database at once
    (a rolling deploy of a release with migration 0004). Held on the same table, then let
    go together, the second failed with exit 4 'column "leader_pid" of relation
    "retention_work" already exists': the upgrade took no lock of its own."""
    prepare(empty_pg_url, worker_tables=False)
    at_revision(empty_pg_url, "0003")
    _race_two_upgrades(empty_pg_url, "LOCK TABLE retention_work IN ACCESS EXCLUSIVE MODE")


def test_two_concurrent_first_db_upgrades_both_succeed(empty_pg_url: str) -> None:
    """The first deploy: two ``retention db upgrade`` on a database without worker tables.
    Held at their first CREATE TABLE (the test creates the same name in a transaction it
    rolls back), one committed the whole schema and the other failed with exit 4."""
    prepare(empty_pg_url, worker_tables=False)
    _race_two_upgrades(empty_pg_url, "CREATE TABLE retention_alembic_version (version_num text)")


# --- older revisions: db check/current, purge refuses and writes nothing --------------------


def _seed_logs(engine: sa.Engine) -> None:
    """Twelve log rows of P1, 10..120 days old (a 30-day policy expires nine)."""
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=500))
    for i in range(12):
        s.add_event("project_logs", P1, P1, NOW - timedelta(days=10 * (i + 1)), f"l-{i}")
    insert(engine, s)


def _fingerprint(url: str) -> dict[str, list[str]]:
    engine = engine_for(url)
    try:
        names = sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            return {
                n: sorted(repr(tuple(r)) for r in conn.exec_driver_sql(f'SELECT * FROM "{n}"'))
                for n in sorted(names)
            }
    finally:
        engine.dispose()


def _env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.toml").write_text(f'[[projects]]\nid = "{P1}"\nproject_logs = 30\n')
    return clean_env(
        RETENTION_DATABASE_URL=url,
        RETENTION_POLICY_DIR=str(folder),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_LOG_LEVEL="WARNING",
        **extra,
    )


@pytest.mark.parametrize("revision", ["0003", "0099_newer"])
def test_tables_not_at_head_db_commands_and_purges_write_nothing(
    bare_url: str, tmp_path: Path, revision: str
) -> None:
    """passes: worker tables at an older revision, or at one a newer worker wrote (an
    older worker run after a newer one): ``db current`` names it (exit 0), ``db check`` is
    exit 2; ``purge``, ``run``, ``status`` and ``receipts`` refuse with exit 2 and the right
    advice (``retention db upgrade``, or upgrade the worker); the dry run plans; nothing
    is written or deleted anywhere."""
    at_revision(bare_url, "0003" if revision == "0099_newer" else revision)
    if revision == "0099_newer":
        engine = engine_for(bare_url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE retention_alembic_version SET version_num = '{revision}'")
        engine.dispose()
    advice = "upgrade the worker" if revision == "0099_newer" else "retention db upgrade"
    _seed_logs(engine_for(bare_url))
    env = _env(bare_url, tmp_path)
    before = _fingerprint(bare_url)
    current = run("db", "current", env=env)
    assert current.code == 0 and f"current {revision}" in current.stdout
    check = run("db", "check", env=env)
    assert check.code == 2 and advice in check.stderr, check.stderr
    for args in (
        ("purge", "--yes", "--allow-large-deletes"),
        ("run", "--allow-large-deletes"),
        ("status",),
        ("receipts",),
    ):
        result = run(*args, env=env)
        assert result.code == 2, (args, result.code, result.stderr)
        assert advice in result.stderr, (args, result.stderr)
    dry = run("purge", "--dry-run", env=env)
    assert dry.code == 0, dry.stderr
    assert _fingerprint(bare_url) == before


def test_worker_tables_follow_the_search_path(empty_pg_url: str, tmp_path: Path) -> None:
    """passes: the data plane in schema ``dp`` and ``?options=-c search_path=dp`` on the URL
    (README): ``db upgrade`` creates the worker tables in ``dp``, ``db check`` finds them
    there, and a purge, ``status`` and ``receipts`` work on them."""
    admin = engine_for(empty_pg_url)
    with admin.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA dp")
    admin.dispose()
    url = empty_pg_url + "?options=-c%20search_path%3Ddp"
    database = parse_database_url(url)
    engine = make_engine(database)
    try:
        create_reference_schema(engine)
        _seed_logs(engine)
    finally:
        engine.dispose()
    env = _env(url, tmp_path)
    assert run("db", "upgrade", env=env).code == 0
    assert run("db", "check", env=env).code == 0
    admin = engine_for(empty_pg_url)
    with admin.connect() as conn:
        schemas = {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT table_schema FROM information_schema.tables "
                "WHERE table_name LIKE 'retention_%%'"
            )
        }
    admin.dispose()
    assert schemas == {"dp"}
    done = run("purge", "--yes", "--allow-large-deletes", env=env)
    assert done.code == 0, done.stderr
    status = run("status", "--no-backlog", "--max-age", "36h", env=env)
    assert status.code == 0, status.stdout + status.stderr
    receipts = run("receipts", "--format", "json", env=env)
    assert receipts.code == 0, receipts.stderr
    assert sum(r["rows"] for r in json.loads(receipts.stdout)) == 9
