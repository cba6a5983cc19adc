"""Operator documentation (README.md, docs/operations.md) against the code (a review in
the sixth session: the tests without "passes:" failed before their fixes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from retention import cli, commands, demo, migrate
from retention.db import make_engine, parse_database_url, use_wal
from retention.objectstore import open_store
from retention.settings import Settings, load_settings
from retention.state import LOCK_KEY
from retention.tables import build_tables

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
RETENTION = str(Path(sys.executable).with_name("retention"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETENTION_", "PG_URL"))}
    env.update(RETENTION_LOG_LEVEL="warning", RETENTION_LOG_FORMAT="json", **extra)
    return env


def _seeded(tmp_path: Path, events: int) -> dict[str, str]:
    """The demo's data plane (policies, segments), not yet purged: a first run."""
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    store_url = f"file://{tmp_path / 'store'}"
    settings = load_settings(
        database_url=url, object_store_url=store_url, policy_dir=tmp_path / "pol"
    )
    demo.write_policies(tmp_path / "pol")
    engine = make_engine(parse_database_url(url), create=True)
    try:
        demo.seed(
            engine,
            build_tables(),
            now=datetime.now(UTC),
            events=events,
            store=open_store(settings, create=True),
        )
        migrate.upgrade(engine)
        use_wal(engine)
    finally:
        engine.dispose()
    return _env(
        RETENTION_DATABASE_URL=url,
        RETENTION_POLICY_DIR=str(tmp_path / "pol"),
        RETENTION_OBJECT_STORE_URL=store_url,
    )


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RETENTION, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_resume_of_a_first_run_needs_nothing_by_hand(tmp_path: Path) -> None:
    """operations.md "Resuming": the next `retention run` resumes an interrupted run,
    "Nothing needs to be done by hand"; exit 5: "the next run resumes exactly where this
    one stopped". The first run (`--allow-large-deletes`, or `purge --plan`) that its time
    budget stops is resumed by the nightly `retention run`, which the first-run guard then
    holds back: exit 6 (FailJob, not restarted), the run ends `guarded`, half done."""
    env = _seeded(tmp_path, 40_000)
    first = _run(env, "run", "--allow-large-deletes", "--batch-size", "5", "--max-runtime", "1s")
    assert first.returncode == 5, first.stderr[-500:]
    nightly = _run(env, "run")
    assert nightly.returncode in (0, 5), nightly.stderr[-800:]


def test_a_missing_embedded_database_names_what_makes_it(tmp_path: Path) -> None:
    """The error for a missing embedded database said "(set RETENTION_DATABASE_URL, or run
    'retention demo')", but the demo writes <state>/demo.sqlite3 (it resets its file; the
    embedded default is <state>/retention.sqlite3), so after it the same command still
    exited 4. It now names what does create it: ``db upgrade``."""
    env = _env(RETENTION_STATE_DIR=str(tmp_path), RETENTION_POLICY_DIR=str(tmp_path / "p"))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "none.toml").write_text("")
    before = _run(env, "status", "--no-backlog")
    assert before.returncode == 4 and "retention db upgrade" in before.stderr
    assert _run(env, "db", "upgrade").returncode == 0
    after = _run(env, "status", "--no-backlog")
    assert after.returncode == 0, after.stderr


def test_debug_gives_a_traceback_in_json_logs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """operations.md exit 1: "Rerun with RETENTION_DEBUG=1 for a traceback". Every deploy
    logs JSON (not a terminal; the ConfigMap sets RETENTION_LOG_FORMAT=json), and the JSON
    formatter keeps only the last line of the exception (logs.py JsonFormatter)."""

    def boom(args: object, settings: Settings) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(commands, "status", boom)
    for key in [k for k in os.environ if k.startswith("RETENTION_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("RETENTION_DEBUG", "1")
    monkeypatch.setenv("RETENTION_LOG_FORMAT", "json")
    monkeypatch.setenv("RETENTION_STATE_DIR", str(tmp_path))
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in boom" in err, err


def test_every_setting_the_code_reads_is_in_the_readme() -> None:
    """README "Configuration": "Only these names are read." RETENTION_SCHEDULE and
    RETENTION_SCHEDULE_JITTER (settings.py) and RETENTION_DEBUG (cli.py) appear nowhere
    in the README."""
    names = {
        str(choice)
        for field in Settings.model_fields.values()
        for choice in field.validation_alias.choices  # type: ignore[union-attr]
    }
    names.add("RETENTION_DEBUG")
    documented = set(re.findall(r"\b(?:RETENTION|PG|BRAINTRUST|OUTBOUND)_[A-Z0-9_]+", README))
    documented |= {f"RETENTION_TABLE{s}" for s in ("_OBJECTS", "_SEGMENTS")}  # `_OBJECTS`
    assert sorted(names - documented) == []


def test_configuration_table_defaults_match_settings() -> None:
    """passes: every default in README's "Configuration" table matches settings.py."""
    s = Settings()
    table = {
        "RETENTION_BATCH_SIZE": (s.batch_size, 1000),
        "RETENTION_MAX_DELETE_FRACTION": (s.max_delete_fraction, 0.5),
        "RETENTION_RESUME_MAX_AGE": (s.resume_max_age.total_seconds(), 86400),
        "RETENTION_LOCK_TIMEOUT": (s.lock_timeout.total_seconds(), 30),
        "RETENTION_STATEMENT_TIMEOUT": (s.statement_timeout.total_seconds(), 900),
        "RETENTION_LOCK_RETRIES": (s.lock_retries, 5),
        "RETENTION_BLOCK_SWEEP_FRACTION": (s.block_sweep_fraction, 0.05),
        "RETENTION_BLOCK_SWEEP_MIN_ROWS": (s.block_sweep_min_rows, 100000),
        "RETENTION_BATCH_TARGET_SECONDS": (s.batch_target_seconds, 0.2),
        "RETENTION_SWEEP_BLOCKS": (s.sweep_blocks, 256),
        "RETENTION_SWEEP_UNIT_BLOCKS": (s.sweep_unit_blocks, 16384),
        "RETENTION_SWEEP_CONNECTIONS": (s.sweep_connections, 1),
        "RETENTION_PLAN_CONNECTIONS": (s.plan_connections, 2),
        "RETENTION_WORKER_STALE": (s.worker_stale.total_seconds(), 60),
        "RETENTION_JOIN_WAIT": (s.join_wait.total_seconds(), 120),
        "RETENTION_RECONNECT_TIMEOUT": (s.reconnect_timeout.total_seconds(), 60),
        "RETENTION_MAX_CLOCK_SKEW": (s.max_clock_skew.total_seconds(), 300),
        "RETENTION_STOP_TIMEOUT": (s.stop_timeout.total_seconds(), 10),
    }
    assert {k: v[0] for k, v in table.items()} == {k: v[1] for k, v in table.items()}
    assert (s.delete_strategy, s.partition_action, s.log_level) == ("auto", "drop", "INFO")


def test_stuck_lock_query_finds_and_releases_the_holder(pg_url: str) -> None:
    """passes: operations.md "Stuck lock?": the pg_locks query finds the run's session
    (application_name retention), and pg_terminate_backend releases the lock."""
    worker_engine = make_engine(parse_database_url(pg_url))
    admin = sa.create_engine(parse_database_url(pg_url).url, poolclass=sa.NullPool)
    try:
        with worker_engine.connect() as holder:
            assert holder.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
            holder.commit()
            with admin.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT pid, application_name FROM pg_locks JOIN pg_stat_activity "
                        "USING (pid) WHERE locktype = 'advisory'"
                    )
                ).all()
                assert [r.application_name for r in rows] == ["retention"]
                conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": rows[0].pid})
                for _ in range(50):
                    got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY})
                    if got.scalar():
                        break
                    time.sleep(0.1)
                else:
                    pytest.fail("the lock was not released")
            holder.invalidate()
    finally:
        worker_engine.dispose()
        admin.dispose()
