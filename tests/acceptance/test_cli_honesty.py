"""The command line fails loudly and honestly: exit codes as DESIGN §5 says, messages
that point the operator the right way, metrics that agree with the process, reports that
state the store as it is, and no secret in an error message. (Each test was written
against code that got it wrong.)
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane
from tests.stores import FileStore
from tests.support import NOW, Scenario, insert, policy_toml

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
P2 = UUID("6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d")


def _logs_scenario() -> Scenario:
    """Twelve log rows of P1, 10..120 days old: a 30-day policy expires nine."""
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=500))
    for i in range(12):
        s.add_event("project_logs", P1, P1, NOW - timedelta(days=10 * (i + 1)), f"l-{i}")
    return s


def _policies(tmp_path: Path, *projects: UUID) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    rules: list[tuple[UUID, dict[str, float]]] = [
        (p, {"project_logs": 30.0}) for p in (projects or (P1,))
    ]
    (folder / "p.toml").write_text(policy_toml(projects=rules))
    return folder


def _env(url: str, policies: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        RETENTION_DATABASE_URL=url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_LOG_LEVEL="WARNING",
        **extra,
    )


def _count(url: str) -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
    finally:
        engine.dispose()


def _set_worker_revision(url: str, revision: str) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE retention_alembic_version SET version_num = :r"), {"r": revision}
            )
    finally:
        engine.dispose()


# --- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["36x", "36H", "soon"])
def test_status_max_age_that_is_not_a_duration_is_a_usage_error(
    sqlite_url: str, tmp_path: Path, value: str
) -> None:
    """``retention status --max-age`` with a value that is not a duration is a bad command
    line: exit 2 with a one-line ``retention: error:`` message naming the flag. It must not
    be exit 1, which for ``status`` means "unhealthy" to a probe, nor a message about an
    unexpected ValueError."""
    env = _env(sqlite_url, _policies(tmp_path))
    result = run("status", "--no-backlog", "--max-age", value, env=env)
    assert result.code == 2, (result.code, result.stderr)
    assert "unexpected error" not in result.stderr
    assert "--max-age" in result.stderr


def test_db_upgrade_on_worker_tables_from_a_newer_version_is_exit_2_with_a_clear_message(
    sqlite_url: str,
) -> None:
    """Worker tables at a revision this version does not know (a newer worker ran
    ``db upgrade``): ``retention db upgrade`` refuses with exit 2 (configuration) and says the
    tables are newer than this worker, as ``status`` and ``purge`` already do. It must not be
    exit 1 with ``unexpected error: CommandError``."""
    _set_worker_revision(sqlite_url, "0099_from_the_future")
    result = run("db", "upgrade", env=clean_env(RETENTION_DATABASE_URL=sqlite_url))
    assert result.code == 2, (result.code, result.stderr)
    assert "unexpected error" not in result.stderr
    assert "0099_from_the_future" in result.stderr and "unknown" in result.stderr


def test_db_check_on_worker_tables_from_a_newer_version_does_not_advise_db_upgrade(
    sqlite_url: str,
) -> None:
    """``retention db check`` on worker tables newer than the code exits 2 and tells the
    operator to upgrade the worker (the revision is unknown to it). It must not advise
    ``retention db upgrade``, which cannot go back and fails on such tables."""
    _set_worker_revision(sqlite_url, "0099_from_the_future")
    result = run("db", "check", env=clean_env(RETENTION_DATABASE_URL=sqlite_url))
    assert result.code == 2, (result.code, result.stderr)
    assert "retention db upgrade" not in result.stderr
    assert "unknown" in result.stderr


def test_a_token_file_with_a_byte_order_mark_is_a_usage_error_without_token_text(
    fake_cp: FakeControlPlane, token_file: Path, tmp_path: Path
) -> None:
    """A token file saved with a UTF-8 byte order mark (or any character that cannot go into
    an HTTP header) is a malformed token: exit 2 with a message naming the token's source,
    like an empty or whitespace-broken token. It must not be exit 1 with a
    UnicodeEncodeError that quotes a character of the secret and its position."""
    token = token_file.read_text().strip()
    token_file.write_bytes(b"\xef\xbb\xbf" + token.encode() + b"\n")
    env = clean_env(
        BRAINTRUST_API_URL=fake_cp.url,
        RETENTION_SERVICE_TOKEN_FILE=str(token_file),
        RETENTION_POLICY_DIR=str(_policies(tmp_path)),
    )
    result = run("controlplane", "check", env=env)
    assert result.code == 2, (result.code, result.stderr)
    assert "UnicodeEncodeError" not in result.stderr
    assert "RETENTION_SERVICE_TOKEN_FILE" in result.stderr


@pytest.mark.parametrize("query", ["sslmode=bogus", "target_session_attrs=bogus", "port=abc"])
def test_an_invalid_connection_option_in_the_database_url_is_exit_2(query: str) -> None:
    """A database URL whose connection option has an invalid value is configuration
    (DESIGN §7: exit 2; ``db.translate_errors``: connection-option mistakes are exit 2), not
    "database unavailable" (exit 4, which ``purge`` also retries for
    RETENTION_RECONNECT_TIMEOUT) and not an unexpected error (exit 1). The password stays
    out of the message."""
    url = f"postgresql://svc:Pw0rdSecret@127.0.0.1:1/braintrust?{query}"
    env = clean_env(RETENTION_DATABASE_URL=url, RETENTION_RECONNECT_TIMEOUT="0")
    result = run("status", "--no-backlog", env=env)
    assert result.code == 2, (result.code, result.stderr)
    assert "unexpected error" not in result.stderr
    assert "Pw0rdSecret" not in result.stderr + result.stdout


def test_a_password_with_an_unescaped_at_sign_is_refused_without_quoting_it() -> None:
    """A PostgreSQL URL whose password holds a raw ``@`` (it must be percent-encoded) cannot
    be parsed unambiguously: exit 2, and no part of the password in the message. (The text
    after the first ``@`` was once taken as the host name and printed, in the URL shown and
    in the driver's "failed to resolve host" line: half the password in the logs.)"""
    url = "postgresql://svc:pw@Xq7Zsecret@127.0.0.1:1/braintrust"
    env = clean_env(RETENTION_DATABASE_URL=url, RETENTION_RECONNECT_TIMEOUT="0")
    result = run("status", "--no-backlog", env=env)
    assert "Xq7Zsecret" not in result.stderr + result.stdout
    assert result.code == 2, (result.code, result.stderr)


# --- a report that cannot be written after the run deleted --------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_report_write_failure_after_deleting_agrees_with_metrics_and_names_the_run(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``retention run --output FILE`` where FILE opens but the write fails (disk full,
    here /dev/full) after the run deleted rows: the run stays recorded (it succeeded), and
    the process must not contradict its own metrics: ``retention_run_outcome`` carries the
    exit code the process returns. The error also names the run whose report was lost, so
    the operator knows rows were deleted (``receipts --run N``). (The process once exited 2,
    a configuration error, while the textfile said exit 0, and said nothing of the
    deletion.)"""
    insert(engine_for(sqlite_url), _logs_scenario())
    metrics_file = tmp_path / "metrics" / "retention.prom"
    env = _env(sqlite_url, _policies(tmp_path), RETENTION_METRICS_TEXTFILE=str(metrics_file))
    result = run("run", "--allow-large-deletes", "--output", "/dev/full", env=env)
    assert _count(sqlite_url) == 3  # nine rows were deleted
    assert result.code != 0
    text = metrics_file.read_text()
    assert f'retention_run_outcome{{exit_code="{result.code}"}} 1.0' in text, (
        result.code,
        [line for line in text.splitlines() if line.startswith("retention_run_outcome")],
    )
    assert "run 1" in result.stderr, result.stderr


# --- segments check -------------------------------------------------------------------------


def test_segments_check_with_a_prefix_inside_a_path_segment_reports_no_false_missing_files(
    sqlite_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    """``retention segments check --prefix P`` compares the files and the index rows whose
    keys start with P. With a prefix that ends inside a path segment (``project_logs/5f0c``,
    the start of a project id), files that are in the store must not be reported as
    "index rows without a file". (The store was once listed by whole path segments, nothing
    under ``project_logs/5f0c/``, while the index was filtered by string prefix, so every
    indexed file of the project was reported missing.)"""
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=400))
    keys = []
    for i in range(3):
        row = s.add_segment(
            "project_logs", P1, P1, NOW - timedelta(days=5 + i), NOW - timedelta(days=1 + i)
        )
        file_store.write(row["object_key"])
        keys.append(row["object_key"])
    insert(engine_for(sqlite_url), s)
    env = _env(sqlite_url, _policies(tmp_path), RETENTION_OBJECT_STORE_URL=file_store.url)
    prefix = f"project_logs/{str(P1)[:4]}"
    assert all(k.startswith(prefix) for k in keys)
    result = run("segments", "check", "--prefix", prefix, "--format", "json", env=env)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["missing_files"] == [], doc
    assert doc["files"] == doc["indexed"] == 3, doc


# --- run records ----------------------------------------------------------------------------


def test_a_sweep_run_records_the_segments_it_deleted(
    sqlite_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    """``retention sweep`` is recorded as a run (mode ``sweep``) whose totals match its
    receipts: after it deletes N segment files and their index rows, ``retention status``
    shows that run with ``segments`` N and their bytes, not ``rows 0 segments 0`` next to
    receipts of N swept segments."""
    s = Scenario()
    s.add_object("project_logs", P1, P1, NOW - timedelta(days=400))
    for i in range(4):
        row = s.add_segment(
            "project_logs",
            P1,
            P1,
            NOW - timedelta(days=90 + i),
            NOW - timedelta(days=60 + i),
            size=100,
            state="unused",
            unused_at=NOW - timedelta(days=3),
        )
        file_store.write(row["object_key"])
    insert(engine_for(sqlite_url), s)
    env = _env(sqlite_url, _policies(tmp_path), RETENTION_OBJECT_STORE_URL=file_store.url)
    swept = run("sweep", "--format", "json", env=env)
    assert swept.code == 0, swept.stderr
    done = json.loads(swept.stdout)
    assert done["files"] == 4
    receipts = json.loads(run("receipts", "--action", "sweep", "--format", "json", env=env).stdout)
    assert sum(r["segments"] for r in receipts) == 4
    status = json.loads(run("status", "--no-backlog", "--format", "json", env=env).stdout)
    (record,) = [r for r in status["runs"] if r["id"] == done["run_id"]]
    assert (record["segments"], record["bytes"]) == (4, 400), record
