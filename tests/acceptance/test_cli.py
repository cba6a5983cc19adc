"""The installed ``retention`` command: exit codes, reports, error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import migrate, state
from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
from tests.pg import free_port
from tests.support import NOW, Scenario, insert, policy_toml

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
P2 = UUID("6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d")
EXP_OLD = UUID("0b7e0000-0000-4000-8000-000000000001")
EXP_NEW = UUID("0b7e0000-0000-4000-8000-000000000002")
DS = UUID("0d5e0000-0000-4000-8000-000000000003")


def _scenario() -> Scenario:
    s = Scenario()
    for p in (P1, P2):
        s.add_object("project_logs", p, p, NOW - timedelta(days=500))
    s.add_object("experiment", EXP_OLD, P1, NOW - timedelta(days=100))
    s.add_object("experiment", EXP_NEW, P1, NOW - timedelta(days=5))
    s.add_object("dataset", DS, P1, NOW - timedelta(days=500))
    for i in range(12):  # P1 logs: 10..120 days old; 30-day policy -> 9 expire (40..120 days)
        s.add_event("project_logs", P1, P1, NOW - timedelta(days=10 * (i + 1)), f"l1-{i}")
    for i in range(5):  # P2 logs: held
        s.add_event("project_logs", P2, P2, NOW - timedelta(days=100 + i), f"l2-{i}")
    for i in range(4):
        s.add_event("experiment", EXP_OLD, P1, NOW - timedelta(days=99), f"eo-{i}")
        s.add_event("experiment", EXP_NEW, P1, NOW - timedelta(days=4), f"en-{i}")
    for i in range(6):  # dataset rows 1..6 days (+1 h) old; 3-day policy -> 4 expire
        s.add_event("dataset", DS, P1, NOW - timedelta(days=i + 1, hours=1), f"d-{i}")
    return s


POLICY = policy_toml(
    defaults={"project_logs": 90, "experiment": 60},
    projects=[(P1, {"project_logs": 30, "dataset": 3})],
    holds=[{"project": str(P2), "reason": "legal matter 2026-14"}],
)


@pytest.fixture
def setup(db_url: str, tmp_path: Path) -> tuple[str, dict[str, str], Path]:
    insert(engine_for(db_url), _scenario())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "org.toml").write_text(POLICY)
    env = clean_env(
        RETENTION_DATABASE_URL=db_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
    )
    return db_url, env, policies


def _count(url: str, where: str = "1=1") -> int:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM events WHERE {where}").scalar())
    finally:
        engine.dispose()


def test_help_lists_commands_and_settings() -> None:
    result = run("--help")
    assert result.code == 0
    for word in (
        "purge",
        "policies",
        "db",
        "demo",
        "--database-url",
        "--policy-dir",
        "--min-retention-days",
        "exit codes",
    ):
        assert word in result.stdout
    purge = run("purge", "--help")
    for flag in ("--dry-run", "--format", "--output", "--batch-size", "--max-runtime", "--yes"):
        assert flag in purge.stdout
    module = subprocess.run(
        [sys.executable, "-m", "retention", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=clean_env(),
    )
    assert module.returncode == 0 and "purge" in module.stdout


def test_dry_run_json_report_contract(setup: tuple[str, dict[str, str], Path]) -> None:
    url, env, _ = setup
    result = run("purge", "--dry-run", "--format", "json", env=env)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["now"] == "2026-11-01T03:00:00+00:00"
    assert doc["dry_run"] is True
    targets = {(t["project_id"], t["object_type"]): t for t in doc["targets"]}
    # one target per (project, type) with a policy or a hold: P1 has three, P2 three (held)
    assert set(targets) == {
        (str(P1), "project_logs"),
        (str(P1), "experiment"),
        (str(P1), "dataset"),
        (str(P2), "project_logs"),
        (str(P2), "experiment"),
        (str(P2), "dataset"),
    }
    logs = targets[(str(P1), "project_logs")]
    assert logs["retention_days"] == 30
    assert logs["cutoff"] == "2026-10-02T03:00:00+00:00"
    assert logs["rows"] == 9 and logs["total_rows"] == 12
    assert logs["held"] is False
    assert "policy.toml" not in logs["source"] and "org.toml" in logs["source"]
    for key in ("segments", "bytes", "straddling_segments"):
        assert logs[key] == 0
    experiment = targets[(str(P1), "experiment")]
    assert experiment["retention_days"] == 60 and experiment["rows"] == 4
    assert experiment["expired_objects"] == 1
    dataset = targets[(str(P1), "dataset")]
    assert dataset["rows"] == 4 and dataset["retention_days"] == 3
    held = targets[(str(P2), "project_logs")]
    assert held["held"] is True and held["retention_days"] is None and held["cutoff"] is None
    assert held["rows"] == 0 and held["hold_reason"] == "legal matter 2026-14"
    assert doc["totals"] == {"rows": 17, "segments": 0, "bytes": 0}
    assert doc["orphans"] == []
    assert _count(url) == 12 + 5 + 8 + 6  # nothing deleted


def test_output_file_and_formats(setup: tuple[str, dict[str, str], Path], tmp_path: Path) -> None:
    _, env, _ = setup
    out = tmp_path / "plan.json"
    result = run("purge", "--dry-run", "--format", "json", "--output", str(out), env=env)
    assert result.code == 0 and result.stdout == ""
    assert json.loads(out.read_text())["totals"]["rows"] == 17
    markdown = run("purge", "--dry-run", "--format", "markdown", env=env)
    assert "| PROJECT | TYPE |" in markdown.stdout and f"| {P1} | project_logs | 30 |" in (
        markdown.stdout
    )
    table = run("purge", "--dry-run", env=env)
    assert "Retention plan (dry run)" in table.stdout
    assert "held: legal matter 2026-14" in table.stdout
    assert "Total: 17 rows" in table.stdout


def test_purge_deletes_and_reports(setup: tuple[str, dict[str, str], Path]) -> None:
    url, env, _ = setup
    result = run("purge", "--format", "json", "--batch-size", "2", "--allow-large-deletes", env=env)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is False and doc["status"] == "succeeded"
    assert doc["totals"]["rows"] == 17
    assert _count(url) == 31 - 17
    assert _count(url, "substr(id, 1, 3) = 'l2-'") == 5  # held
    assert _count(url, "substr(id, 1, 3) = 'en-'") == 4  # new experiment
    again = run("purge", "--format", "json", env=env)  # no longer a first run
    assert again.code == 0 and json.loads(again.stdout)["totals"]["rows"] == 0


def test_purge_never_prompts_without_a_terminal(setup: tuple[str, dict[str, str], Path]) -> None:
    url, env, _ = setup
    # stdin is /dev/null: no prompt, no hang
    result = run("purge", "--allow-large-deletes", env=env, timeout=60)
    assert result.code == 0, result.stderr
    assert _count(url) == 14


def test_second_run_exits_7_at_once(pg_url: str, tmp_path: Path) -> None:
    insert(engine_for(pg_url), _scenario())
    (tmp_path / "p.toml").write_text(POLICY)
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(tmp_path),
        RETENTION_NOW=NOW.isoformat(),
    )
    holder = engine_for(pg_url)
    with holder.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": state.LOCK_KEY})
        started = time.monotonic()
        result = run("purge", "--yes", env=env)
        assert result.code == 7
        assert time.monotonic() - started < 15
        assert "another retention run holds the lock" in result.stderr
    assert _count(pg_url) == 31


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ("[defaults\nproject_logs = 3", "invalid TOML"),
        ("[defaults]\nproject_log = 3", "unknown object type 'defaults.project_log'"),
        ("[default]\nproject_logs = 3", "unknown key 'default'"),
        ("[defaults]\nproject_logs = -1", "defaults.project_logs: days must be"),
        ('[defaults]\nproject_logs = "thirty"', "expected a number of days"),
        ('[[projects]]\nid = "not-a-uuid"\nproject_logs = 3', "'not-a-uuid' is not a UUID"),
        ('[[holds]]\nproject = "5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"', "missing required key"),
        (
            '[[holds]]\nproject = "5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"\nreason = "x"\n'
            'object_type = "logs"',
            "unknown object type 'logs'",
        ),
    ],
)
def test_bad_policy_is_exit_2_and_deletes_nothing(
    setup: tuple[str, dict[str, str], Path], policy: str, fragment: str
) -> None:
    url, env, policies = setup
    (policies / "zz-bad.toml").write_text(policy)
    for args in (("purge", "--yes"), ("purge", "--dry-run"), ("policies", "--explain")):
        result = run(*args, env=env)
        assert result.code == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "zz-bad.toml" in lines[0] and fragment in lines[0]
    assert _count(url) == 31


def test_bad_settings_are_exit_2(tmp_path: Path) -> None:
    cases = [
        ({"RETENTION_DATABASE_URL": "mysql://u:pw@h/db"}, "unsupported database URL scheme"),
        ({"PG_URL": "oracle://x"}, "unsupported database URL scheme"),
        ({"RETENTION_BATCH_SIZE": "many"}, "RETENTION_BATCH_SIZE"),
        ({"RETENTION_MAX_RUNTIME": "soon"}, "RETENTION_MAX_RUNTIME"),
        ({"RETENTION_NOW": "2026-11-01T00:00:00"}, "RETENTION_NOW"),
        ({"RETENTION_POLICY_DIR": str(tmp_path / "missing")}, "does not exist"),
        ({"RETENTION_DELETE_STRATEGY": "fastest"}, "RETENTION_DELETE_STRATEGY"),
        ({"RETENTION_PARTITION_ACTION": "truncate"}, "RETENTION_PARTITION_ACTION"),
        ({"RETENTION_BLOCK_SWEEP_FRACTION": "1.5"}, "RETENTION_BLOCK_SWEEP_FRACTION"),
        ({"RETENTION_SWEEP_UNIT_BLOCKS": "0"}, "RETENTION_SWEEP_UNIT_BLOCKS"),
        ({"RETENTION_WORKER_STALE": "later"}, "RETENTION_WORKER_STALE"),
        ({"RETENTION_SWEEP_CONNECTIONS": "0"}, "RETENTION_SWEEP_CONNECTIONS"),
        ({"RETENTION_PLAN_CONNECTIONS": "3"}, "RETENTION_PLAN_CONNECTIONS"),
    ]
    for extra, fragment in cases:
        env = clean_env(RETENTION_STATE_DIR=str(tmp_path), **extra)
        result = run("purge", "--dry-run", env=env)
        assert result.code == 2, (extra, result.stderr)
        assert fragment in result.stderr and "Traceback" not in result.stderr
        assert "pw@" not in result.stderr


def test_future_now_is_refused(setup: tuple[str, dict[str, str], Path]) -> None:
    url, env, _ = setup
    env["RETENTION_NOW"] = "2999-01-01T00:00:00Z"
    result = run("purge", "--yes", env=env)
    assert result.code == 2 and "in the future" in result.stderr
    assert _count(url) == 31


def test_missing_column_is_exit_2_naming_it(setup: tuple[str, dict[str, str], Path]) -> None:
    url, env, _ = setup
    with engine_for(url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE objects RENAME COLUMN created TO born")
    result = run("purge", "--yes", env=env)
    assert result.code == 2
    assert "table 'objects' is missing column 'created'" in result.stderr
    assert _count(url) == 31


def test_unreachable_database_is_exit_4(tmp_path: Path) -> None:
    (tmp_path / "none.toml").write_text("")
    env = clean_env(
        RETENTION_DATABASE_URL=f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x",
        RETENTION_POLICY_DIR=str(tmp_path),
        RETENTION_RECONNECT_TIMEOUT="0",
    )
    for args in (("purge", "--yes"), ("purge", "--dry-run"), ("db", "check")):
        result = run(*args, env=env)
        assert result.code == 4, (args, result.stderr)
        assert "database unavailable" in result.stderr and "hunter2" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_purge_keeps_reconnecting_for_the_configured_time(tmp_path: Path) -> None:
    (tmp_path / "none.toml").write_text("")
    env = clean_env(
        RETENTION_DATABASE_URL=f"postgresql://u@127.0.0.1:{free_port()}/x",
        RETENTION_POLICY_DIR=str(tmp_path),
        RETENTION_RECONNECT_TIMEOUT="3s",
        RETENTION_LOG_FORMAT="text",
    )
    started = time.monotonic()
    result = run("purge", "--yes", env=env)
    assert result.code == 4
    assert 3 <= time.monotonic() - started < 20
    assert result.stderr.count("reconnecting in") >= 2


def test_pg_url_is_the_fallback(setup: tuple[str, dict[str, str], Path]) -> None:
    _url, env, _ = setup
    env["PG_URL"] = env.pop("RETENTION_DATABASE_URL")
    result = run("purge", "--dry-run", "--format", "json", env=env)
    assert result.code == 0 and json.loads(result.stdout)["totals"]["rows"] == 17


def test_expired_hold_is_a_warning_not_an_error(setup: tuple[str, dict[str, str], Path]) -> None:
    url, env, policies = setup
    expired = POLICY.replace(
        'reason = "legal matter 2026-14"', 'reason = "legal matter 2026-14"\nexpires = 2026-10-01'
    )
    assert "expires = 2026-10-01" in expired
    (policies / "org.toml").write_text(expired)
    result = run("purge", "--format", "json", "--allow-large-deletes", env=env)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert any("expired; ignored" in w for w in doc["warnings"])
    assert _count(url, "substr(id, 1, 3) = 'l2-'") == 0  # P2 logs: 100+ days, default 90 applies


def test_policies_explain_names_every_source(setup: tuple[str, dict[str, str], Path]) -> None:
    _, env, _ = setup
    result = run("policies", "--explain", env=env)
    assert result.code == 0, result.stderr
    text = result.stdout
    assert f"{P1} project_logs" in text
    assert "local-default" in text and "90 days" in text
    assert "local-project" in text and "30 days  <- shortest" in text
    assert "effective: 30 days, cutoff 2026-10-02T03:00:00+00:00" in text
    assert "beats every policy" in text and "legal matter 2026-14" in text
    assert f"{P2} dataset" in text
    doc = json.loads(run("policies", "--explain", "--format", "json", env=env).stdout)
    entry = next(
        p
        for p in doc["policies"]
        if p["project_id"] == str(P1) and p["object_type"] == "project_logs"
    )
    assert [s["days"] for s in entry["sources"]] == [90, 30]
    assert [s["winner"] for s in entry["sources"]] == [False, True]


def test_floor_is_explained(setup: tuple[str, dict[str, str], Path]) -> None:
    _, env, policies = setup
    (policies / "short.toml").write_text(f'[[projects]]\nid = "{P1}"\nproject_logs = 0.1\n')
    text = run("policies", "--explain", env=env).stdout
    assert "floor: 0.1 days raised to the safety floor of 1 days" in text
    assert "effective: 1 days, cutoff 2026-10-31T03:00:00+00:00" in text


def test_db_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.sqlite3'}"
    env = clean_env(RETENTION_DATABASE_URL=url)
    missing = run("db", "check", env=env)
    assert missing.code == 4  # no such file yet
    head = migrate.head()
    upgraded = run("db", "upgrade", env=env)
    assert upgraded.code == 0 and f"revision {head} (head)" in upgraded.stdout
    current = run("db", "current", env=env)
    assert current.code == 0 and f"current {head}" in current.stdout
    assert run("db", "check", env=env).code == 0


def test_db_check_on_a_database_without_worker_tables(empty_pg_url: str) -> None:
    env = clean_env(RETENTION_DATABASE_URL=empty_pg_url)
    result = run("db", "check", env=env)
    assert result.code == 2 and "retention db upgrade" in result.stderr
    assert run("db", "upgrade", env=env).code == 0
    assert run("db", "check", env=env).code == 0
    assert run("db", "upgrade", env=env).code == 0  # idempotent


def test_demo(tmp_path: Path) -> None:
    result = run(
        "--state-dir",
        str(tmp_path),
        "--log-level",
        "warning",
        "demo",
        "--format",
        "json",
        timeout=300,
    )
    assert result.code == 0, result.stderr
    assert "Seeded 120,000 events" in result.stdout
    engine = engine_for(f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    with engine.connect() as conn:
        projects = conn.exec_driver_sql("SELECT count(DISTINCT project_id) FROM events").scalar()
        held = conn.exec_driver_sql(
            "SELECT count(*) FROM events WHERE project_id = '8a1d2f3e-4b5c-4d6e-8f70-8192a3b4c5d6'"
        ).scalar()
        remaining = conn.exec_driver_sql("SELECT count(*) FROM events").scalar()
        runs = conn.exec_driver_sql("SELECT status FROM retention_runs").all()
    engine.dispose()
    assert projects == 4 and held > 25_000
    assert runs == [("succeeded",)]
    reports = [json.loads(part) for part in _json_blocks(result.stdout)]
    assert [r["dry_run"] for r in reports] == [True, False]
    assert reports[0]["totals"]["rows"] == reports[1]["totals"]["rows"] > 0
    assert remaining == 120_000 - reports[1]["totals"]["rows"]


def _json_blocks(text: str) -> list[str]:
    blocks, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                blocks.append(text[start : i + 1])
    return blocks


def test_unwritable_output_fails_before_deleting(
    setup: tuple[str, dict[str, str], Path], tmp_path: Path
) -> None:
    url, env, _ = setup
    target = tmp_path / "no-such-dir" / "report.json"
    result = run("purge", "--yes", "--allow-large-deletes", "--output", str(target), env=env)
    assert result.code == 2 and "cannot write report" in result.stderr
    assert _count(url) == 31


def test_first_run_is_guarded_on_the_command_line(
    setup: tuple[str, dict[str, str], Path],
) -> None:
    url, env, _ = setup
    result = run("purge", "--yes", "--format", "json", env=env)
    assert result.code == 6, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "guarded" and doc["totals"]["rows"] == 0
    guarded = [t for t in doc["targets"] if t["guard"]]
    assert {(t["project_id"], t["object_type"]) for t in guarded} == {
        (str(P1), "project_logs"),
        (str(P1), "experiment"),
        (str(P1), "dataset"),
    }
    assert all("first run on this database" in t["guard"] for t in guarded)
    assert _count(url) == 31
    allowed = run("purge", "--yes", "--allow-large-deletes", env=env)
    assert allowed.code == 0 and _count(url) == 14
