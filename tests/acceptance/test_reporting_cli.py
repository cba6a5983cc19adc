"""The read-only reporting commands on the installed command: ``receipts``, ``holds``,
``policies [--explain]`` (a review in the sixth session; each test without "passes:" in its
docstring failed on the code before its fix).

Receipts stream in bounded memory and bad arguments are exit 2; ``holds`` reads only the
policy folder (the control plane may be down) and says when none was read; ``--explain``
names orphaned projects.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import state
from retention.db import make_engine, parse_database_url
from tests.acceptance.cli import clean_env, retention_command, run
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project, retention_automation
from tests.pg import free_port
from tests.support import NOW, Scenario, insert, policy_toml

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
P2 = UUID("6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d")
EXP = UUID("0b7e0000-0000-4000-8000-00000000e001")


def _receipt(i: int, *, project_id: UUID = P1, recorded_at: datetime = NOW) -> dict[str, object]:
    return dict(
        run_id=1,
        project_id=project_id,
        object_type="project_logs",
        policy_source="local-default /p/x.toml (defaults) [org]: 30 days",
        retention_days=30.0,
        cutoff=NOW - timedelta(days=30),
        rows=1000,
        objects=0,
        segments=0,
        bytes=0,
        first_key=f"2026-09-01T00:00:00+00:00/{i * 1000 + 1}",
        last_key=f"2026-09-01T00:00:00+00:00/{i * 1000 + 1000}",
        keys_digest="ab" * 32,
        recorded_at=recorded_at,
        action="delete",
    )


def _seed_receipts(url: str, receipts: list[dict[str, object]]) -> None:
    """One finished run and these receipts, written as the worker writes them."""
    engine = make_engine(parse_database_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(state.runs).values(
                    mode="purge",
                    status="succeeded",
                    started_at=NOW,
                    finished_at=NOW,
                    pinned_now=NOW,
                    plan_hash="sha256:x",
                    plan="{}",
                )
            )
            for start in range(0, len(receipts), 20_000):
                conn.execute(sa.insert(state.receipts), receipts[start : start + 20_000])
    finally:
        engine.dispose()


def _peak_rss_kib(args: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """Run ``retention *args`` in a fresh interpreter; (exit code, peak RSS in KiB, stderr).

    The fresh interpreter has no other children, so RUSAGE_CHILDREN is the command's own.
    """
    probe = (
        "import resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.PIPE, text=True)\n"
        "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.stderr.write(done.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, retention_command(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    code, peak = done.stdout.split()
    return int(code), int(peak), done.stderr


# --------------------------------------------------------------------------- receipts


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_receipts_stream_a_large_receipt_table(sqlite_url: str, fmt: str) -> None:
    """200,000 receipts (a year of daily runs on a large data plane) are listed in bounded
    memory. The command loaded every receipt into a list of dicts and, for JSON, built the
    whole document as one string: about 1.1 GB peak for JSON and 380 MB for CSV, where the
    bare command needs about 80 MB."""
    _seed_receipts(sqlite_url, [_receipt(i) for i in range(200_000)])
    env = clean_env(RETENTION_DATABASE_URL=sqlite_url)

    code, peak_kib, stderr = _peak_rss_kib(["receipts", "--format", fmt], env)

    assert code == 0, stderr
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib // 1024} MiB for 200,000 receipts"


@pytest.mark.parametrize("count", [0, 1, 3])
def test_streamed_receipts_are_one_document_in_every_format(sqlite_url: str, count: int) -> None:
    """The streamed JSON is one valid array (also empty), the CSV has a header and a line
    per receipt, the table ends with the count."""
    _seed_receipts(sqlite_url, [_receipt(i) for i in range(count)])
    env = clean_env(RETENTION_DATABASE_URL=sqlite_url)
    found = json.loads(run("receipts", "--format", "json", env=env).stdout)
    assert [r["first_key"] for r in found] == [
        f"2026-09-01T00:00:00+00:00/{i * 1000 + 1}" for i in range(count)
    ]
    rows = list(csv.DictReader(io.StringIO(run("receipts", "--format", "csv", env=env).stdout)))
    assert [r["first_key"] for r in rows] == [r["first_key"] for r in found]
    table = run("receipts", env=env).stdout.splitlines()
    assert len(table) == count + 1 and table[-1] == f"{count} receipts"


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_receipts_since_out_of_range_is_a_usage_error(sqlite_url: str, since: str) -> None:
    """An ``--since`` that parses but lies outside the representable range in UTC is a bad
    argument (exit 2, one line), not an unexpected error (exit 1, 'OverflowError')."""
    _seed_receipts(sqlite_url, [_receipt(0)])
    env = clean_env(RETENTION_DATABASE_URL=sqlite_url)

    result = run("receipts", "--since", since, env=env)

    assert result.code == 2, result.stderr
    assert "--since" in result.stderr
    assert "unexpected error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_receipts_run_id_out_of_range_is_a_usage_error(db_url: str) -> None:
    """``--run`` takes any Python int; one past 64 bits is a bad argument (exit 2, naming
    --run), not 'unexpected error: OverflowError: Python int too large to convert to SQLite
    INTEGER' (exit 1)."""
    _seed_receipts(db_url, [_receipt(0)])
    env = clean_env(RETENTION_DATABASE_URL=db_url)

    result = run("receipts", "--run", str(2**64), env=env)

    assert result.code == 2, (result.code, result.stderr)
    assert "--run" in result.stderr


def test_receipts_since_is_an_instant_in_any_offset(db_url: str) -> None:
    """passes: checks that ``--since`` compares instants, not wall-clock text, on both
    databases: the same instant written with a +02:00 offset selects exactly the receipts
    recorded at or after it (the boundary included), a date-only value is refused with
    exit 2, and the JSON keeps the UTC offset and every column DESIGN §5 promises."""
    times = [NOW - timedelta(hours=3), NOW, NOW + timedelta(microseconds=1)]
    _seed_receipts(db_url, [_receipt(i, recorded_at=t) for i, t in enumerate(times)])
    env = clean_env(RETENTION_DATABASE_URL=db_url)

    local = (NOW + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    result = run("receipts", "--since", local, "--format", "json", env=env)

    assert result.code == 0, result.stderr
    found = json.loads(result.stdout)
    assert [r["recorded_at"] for r in found] == [t.isoformat() for t in times[1:]]
    assert {
        "run_id",
        "project_id",
        "object_type",
        "cutoff",
        "rows",
        "segments",
        "bytes",
        "first_key",
        "last_key",
    } <= set(found[0])
    assert found[0]["cutoff"] == (NOW - timedelta(days=30)).isoformat()
    dated = run("receipts", "--since", "2026-11-01", env=env)
    assert dated.code == 2 and "--since" in dated.stderr


def test_receipts_project_filter_takes_any_uuid_spelling(sqlite_url: str) -> None:
    """passes: checks that ``--project`` in upper case, braces or urn:uuid: form selects the
    same receipts as the canonical spelling, and that the CSV header and quoting hold for a
    policy source with a comma, a quote and a newline (an automation's name)."""
    receipts = [_receipt(0), _receipt(1, project_id=P2)]
    receipts[0]["policy_source"] = 'project-automation x ("a, b"\nc) [project]: 30 days'
    _seed_receipts(sqlite_url, receipts)
    env = clean_env(RETENTION_DATABASE_URL=sqlite_url)
    for spelling in (str(P1).upper(), "{" + str(P1) + "}", P1.urn):
        result = run("receipts", "--project", spelling, "--format", "csv", env=env)
        assert result.code == 0, result.stderr
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert [r["project_id"] for r in rows] == [str(P1)]
        assert rows[0]["policy_source"] == receipts[0]["policy_source"]


def test_receipts_without_worker_tables_is_one_line_exit_2(empty_pg_url: str) -> None:
    """passes: checks that a PostgreSQL database without the worker's tables gives one line
    naming the fix ('retention db upgrade') and exit 2, with no traceback."""
    result = run("receipts", "--format", "csv", env=clean_env(RETENTION_DATABASE_URL=empty_pg_url))

    assert result.code == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "retention: error: the worker's tables are missing: run 'retention db upgrade'"
    ]


# --------------------------------------------------------------------------- holds


def test_holds_do_not_need_the_control_plane(tmp_path: Path) -> None:
    """``retention holds`` lists the holds of the local policy files (the only place holds
    come from). It fetches the whole control plane first, so with the control plane down
    (an incident, exactly when someone checks the holds) it exits 3 and lists nothing."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "legal.toml").write_text(
        policy_toml(holds=[{"project": str(P1), "reason": "legal matter 2026-14"}])
    )
    env = clean_env(
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        BRAINTRUST_API_URL=f"http://127.0.0.1:{free_port()}",
        RETENTION_SERVICE_TOKEN="sk-never-printed",
        RETENTION_API_MAX_ATTEMPTS="1",
    )

    result = run("holds", env=env)

    assert result.code == 0, result.stderr
    assert f"{P1}: legal matter 2026-14" in result.stdout
    assert "sk-never-printed" not in result.stdout + result.stderr


def test_holds_say_when_no_policy_folder_was_read(tmp_path: Path) -> None:
    """Run from a directory without ``policies/`` (the default folder, which may be absent),
    ``retention holds`` prints '0 active holds' and exit 0 with no word that no policy file
    was read at all; an auditor takes that as 'nothing is held'. The policy set carries the
    warning ('no policy folder policies/; local policies: none'), as purge and policies
    print it; holds drops it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = clean_env(RETENTION_NOW=NOW.isoformat(), RETENTION_STATE_DIR=str(tmp_path / "s"))

    result = run("holds", env=env, cwd=cwd)

    assert result.code == 0, result.stderr
    assert "no policy folder" in result.stdout + result.stderr


def test_holds_boundary_matches_the_planner(tmp_path: Path) -> None:
    """passes: checks the expiry boundary: a hold whose expiry instant equals ``now`` (given
    with another offset) is expired, one a microsecond later is active, and a date-only
    expiry lasts through that whole UTC day, the same as the planner decides."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "holds.toml").write_text(
        f'[[holds]]\nproject = "{P1}"\nreason = "at now"\nexpires = 2026-11-01T05:00:00+02:00\n'
        f'[[holds]]\nproject = "{P1}"\nreason = "just after"\n'
        "expires = 2026-11-01T03:00:00.000001Z\n"
        f'[[holds]]\nproject = "{P2}"\nreason = "today"\nexpires = 2026-11-01\n'
        f'[[holds]]\nproject = "{P2}"\nreason = "yesterday"\nexpires = 2026-10-31\n'
    )
    env = clean_env(RETENTION_POLICY_DIR=str(policies), RETENTION_NOW=NOW.isoformat())

    result = run("holds", "--all", "--format", "json", env=env)

    assert result.code == 0, result.stderr
    assert {h["reason"]: h["active"] for h in json.loads(result.stdout)} == {
        "at now": False,
        "just after": True,
        "today": True,
        "yesterday": False,
    }


# --------------------------------------------------------------------------- policies


def test_policies_explain_names_an_orphaned_project_a_local_rule_names(
    sqlite_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    """A local rule names P2, which has rows and which the control plane lists as deleted:
    an orphan, left out of planning (the dry run lists it under ``orphans``). ``policies
    --explain`` drops it without a word: the project the operator configured does not
    appear at all, so the explanation of what that rule does is missing."""
    s = Scenario()
    for p in (P1, P2):
        s.add_object("project_logs", p, p, NOW - timedelta(days=500))
        s.add_event("project_logs", p, p, NOW - timedelta(days=100), f"l-{p}")
    insert(engine_for(sqlite_url), s)
    fake_cp.projects = [project(P1, "live"), project(P2, "gone", deleted=True)]
    fake_cp.automations = [retention_automation(P1, "project_logs", 15, name="logs 15d")]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(policy_toml(projects=[(P2, {"project_logs": 30})]))
    env = clean_env(
        RETENTION_DATABASE_URL=sqlite_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        BRAINTRUST_API_URL=fake_cp.url,
        RETENTION_SERVICE_TOKEN_FILE=str(token_file),
    )
    dry = json.loads(run("purge", "--dry-run", "--format", "json", env=env).stdout)
    assert [o["project_id"] for o in dry["orphans"]] == [str(P2)]

    result = run("policies", "--explain", env=env)

    assert result.code == 0, result.stderr
    assert str(P2) in result.stdout


def test_policies_explain_matches_the_dry_run(
    sqlite_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    """passes: checks that ``policies --explain --format json`` gives, for every target of
    ``purge --dry-run --format json`` on the same setup (local defaults, a local project
    rule, a shorter project automation, the floor, a hold), the same retention days, cutoff
    and hold, and names the winning automation by id and name, never the token."""
    s = Scenario()
    for p in (P1, P2):
        s.add_object("project_logs", p, p, NOW - timedelta(days=500))
        s.add_event("project_logs", p, p, NOW - timedelta(days=100), f"l-{p}")
    s.add_object("experiment", EXP, P1, NOW - timedelta(days=100))
    s.add_event("experiment", EXP, P1, NOW - timedelta(days=100), "e-1")
    insert(engine_for(sqlite_url), s)
    fake_cp.projects = [project(P1, "one"), project(P2, "two")]
    automation = retention_automation(P1, "project_logs", 0.25, name="quarter day")
    fake_cp.automations = [automation, retention_automation(P2, "experiment", 10)]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(
        policy_toml(
            defaults={"project_logs": 90, "experiment": 60},
            projects=[(P1, {"project_logs": 30})],
            holds=[{"project": str(P2), "object_type": "project_logs", "reason": "legal"}],
        )
    )
    env = clean_env(
        RETENTION_DATABASE_URL=sqlite_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        BRAINTRUST_API_URL=fake_cp.url,
        RETENTION_SERVICE_TOKEN_FILE=str(token_file),
    )
    explained = run("policies", "--explain", "--format", "json", env=env)
    dry = run("purge", "--dry-run", "--format", "json", env=env)
    assert explained.code == 0 and dry.code == 0, explained.stderr + dry.stderr

    ex = {(p["project_id"], p["object_type"]): p for p in json.loads(explained.stdout)["policies"]}
    for target in json.loads(dry.stdout)["targets"]:
        entry = ex[(target["project_id"], target["object_type"])]
        assert entry["retention_days"] == target["retention_days"]
        assert entry["cutoff"] == target["cutoff"]
        assert (entry["hold"] is not None) == target["held"]
    logs = ex[(str(P1), "project_logs")]
    assert logs["floor_applied"] and logs["retention_days"] == 1
    (winner,) = [src for src in logs["sources"] if src["winner"]]
    assert (winner["origin"], winner["label"]) == (automation["id"], "quarter day")
    token = token_file.read_text().strip()
    assert token not in explained.stdout + explained.stderr + dry.stdout + dry.stderr
    assert datetime.fromisoformat(json.loads(explained.stdout)["now"]) == NOW.astimezone(UTC)
