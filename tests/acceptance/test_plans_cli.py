"""The reviewed flow on the installed command: ``purge --dry-run --output plan.json``, then
``purge --plan plan.json`` (DESIGN §5, issue 6). PostgreSQL, plus the demo on SQLite.

The data and the pinned ``now`` sit a minute before the wall clock, so the plan is fresh
for ``--plan-max-age`` (which is measured against the wall clock) and every count is exact.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention import planfile
from tests.acceptance.cli import clean_env, run
from tests.conftest import engine_for
from tests.support import NOW, Expect, Scenario, insert, policy_toml, surviving_rows

P1 = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
P2 = UUID("6a7b8c9d-0e1f-4a2b-8c3d-4e5f6a7b8c9d")
EXP_OLD = UUID("0b7e0000-0000-4000-8000-000000000001")
EXP_NEW = UUID("0b7e0000-0000-4000-8000-000000000002")
DS = UUID("0d5e0000-0000-4000-8000-000000000003")

POLICY = policy_toml(
    defaults={"project_logs": 90, "experiment": 60},
    projects=[(P1, {"project_logs": 30, "dataset": 3})],
    holds=[{"project": str(P2), "reason": "legal matter 2026-14"}],
)
SHORTER = policy_toml(
    defaults={"project_logs": 90, "experiment": 60},
    projects=[(P1, {"project_logs": 20, "dataset": 3})],
    holds=[{"project": str(P2), "reason": "legal matter 2026-14"}],
)
DAYS: dict[tuple[UUID, str], float] = {
    (P1, "project_logs"): 30,
    (P1, "experiment"): 60,
    (P1, "dataset"): 3,
    (P2, "project_logs"): 90,
    (P2, "experiment"): 60,
}
PLANNED = {
    f"{P1}/project_logs": 9,
    f"{P1}/experiment": 4,
    f"{P1}/dataset": 4,
    f"{P2}/project_logs": 0,
    f"{P2}/experiment": 0,
    f"{P2}/dataset": 0,
}
TOTAL = 12 + 5 + 8 + 6


def _scenario(now: datetime) -> Scenario:
    """As in test_cli: 17 of 31 rows expire at ``now``; P2 is held."""
    s = Scenario()
    for p in (P1, P2):
        s.add_object("project_logs", p, p, now - timedelta(days=500))
    s.add_object("experiment", EXP_OLD, P1, now - timedelta(days=100))
    s.add_object("experiment", EXP_NEW, P1, now - timedelta(days=5))
    s.add_object("dataset", DS, P1, now - timedelta(days=500))
    for i in range(12):  # 10..120 days old; 30-day policy -> 9 expire (40..120 days)
        s.add_event("project_logs", P1, P1, now - timedelta(days=10 * (i + 1)), f"l1-{i}")
    for i in range(5):
        s.add_event("project_logs", P2, P2, now - timedelta(days=100 + i), f"l2-{i}")
    for i in range(4):
        s.add_event("experiment", EXP_OLD, P1, now - timedelta(days=99), f"eo-{i}")
        s.add_event("experiment", EXP_NEW, P1, now - timedelta(days=4), f"en-{i}")
    for i in range(6):  # 1..6 days (+1 h) old; 3-day policy -> 4 expire
        s.add_event("dataset", DS, P1, now - timedelta(days=i + 1, hours=1), f"d-{i}")
    return s


class Setup:
    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.now = (datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
        self.scenario = _scenario(self.now)
        self.engine = engine_for(url)
        insert(self.engine, self.scenario)
        self.policies = tmp_path / "policies"
        self.policies.mkdir()
        (self.policies / "org.toml").write_text(POLICY)
        self.plan = tmp_path / "plan.json"
        self.env = clean_env(
            RETENTION_DATABASE_URL=url,
            RETENTION_POLICY_DIR=str(self.policies),
            RETENTION_NOW=self.now.isoformat(),
        )

    @property
    def everything(self) -> set[str]:
        return {e["id"] for e in self.scenario.events}

    @property
    def survivors(self) -> set[str]:
        return Expect(days=DAYS, held=[(P2, None, None)], now=self.now).survivors(self.scenario)

    def runs(self) -> list[tuple[str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT status, plan_hash FROM retention_runs ORDER BY id")
            ).all()
        return [(r[0], r[1]) for r in rows]

    def dry_run(self, *extra: str) -> dict[str, Any]:
        done = run("purge", "--dry-run", "--output", str(self.plan), *extra, env=self.env)
        assert done.code == 0, done.stderr
        assert done.stdout == ""
        assert f"wrote report to {self.plan}" in done.stderr
        return json.loads(self.plan.read_text())


@pytest.fixture
def setup(pg_url: str, tmp_path: Path) -> Setup:
    return Setup(pg_url, tmp_path)


def test_dry_run_output_json_is_a_sealed_plan(setup: Setup) -> None:
    document = setup.dry_run()

    assert document["plan_version"] == 2
    assert str(document["hash"]).startswith("sha256:")
    assert document["dry_run"] is True
    assert document["now"] == setup.now.isoformat()
    targets = {f"{t['project_id']}/{t['object_type']}": t for t in document["targets"]}
    assert {k: t["rows"] for k, t in targets.items()} == PLANNED
    logs = targets[f"{P1}/project_logs"]
    assert logs["retention_days"] == 30
    assert logs["cutoff"] == (setup.now - timedelta(days=30)).isoformat()
    assert logs["source"].startswith("local-project ")
    held = targets[f"{P2}/project_logs"]
    assert (held["held"], held["cutoff"], held["retention_days"]) == (True, None, None)
    for target in targets.values():
        assert {"cutoff", "source", "rows", "segments", "bytes"} <= set(target)
        # it names what expires: applying it refuses experiments or segments not named
        assert {"expired_object_ids", "segment_ids"} <= set(target)
    assert document["totals"] == {"rows": 17, "segments": 0, "bytes": 0}
    reviewed = planfile.read(setup.plan)  # the seal verifies
    assert reviewed.hash == document["hash"]
    assert surviving_rows(setup.engine) == setup.everything
    assert setup.runs() == []


def test_dry_run_with_plan_checks_drift(setup: Setup) -> None:
    document = setup.dry_run()

    same = run("purge", "--dry-run", "--plan", str(setup.plan), env=setup.env)
    assert same.code == 0, same.stderr
    assert same.stdout == f"the plan {setup.plan} applies as reviewed ({document['hash']})\n"

    (setup.policies / "org.toml").write_text(SHORTER)
    drifted = run("purge", "--dry-run", "--plan", str(setup.plan), env=setup.env)

    assert drifted.code == 6
    assert drifted.stdout.splitlines() == [
        f"drift: target {P1}/project_logs: policy changed (retention 30 -> 20 days, "
        "held False -> False, floor 1 -> 1)",
        f"drift: target {P1}/project_logs: 10 rows expire now, 9 reviewed",
    ]
    assert drifted.stderr == f"retention: the plan {setup.plan} no longer applies\n"

    applied = run("purge", "--yes", "--plan", str(setup.plan), env=setup.env)
    assert applied.code == 6
    assert applied.stderr.splitlines() == [
        f"retention: error: the plan {setup.plan} drifted, nothing deleted: target "
        f"{P1}/project_logs: policy changed (retention 30 -> 20 days, held False -> False, "
        f"floor 1 -> 1); target {P1}/project_logs: 10 rows expire now, 9 reviewed"
    ]
    assert surviving_rows(setup.engine) == setup.everything
    assert setup.runs() == []


def test_plan_applies_on_a_first_run(setup: Setup) -> None:
    document = setup.dry_run()

    unreviewed = run("purge", "--yes", env=setup.env)  # the first run needs a review
    assert unreviewed.code == 6
    assert surviving_rows(setup.engine) == setup.everything

    applied = run("purge", "--yes", "--plan", str(setup.plan), "--format", "json", env=setup.env)

    assert applied.code == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["status"] == "succeeded" and result["dry_run"] is False
    assert result["now"] == setup.now.isoformat()
    assert {f"{t['project_id']}/{t['object_type']}": t["rows"] for t in result["targets"]} == (
        PLANNED
    )
    assert all(t["guard"] is None for t in result["targets"])
    assert surviving_rows(setup.engine) == setup.survivors
    assert len(setup.survivors) == TOTAL - 17
    assert setup.runs() == [("guarded", setup.runs()[0][1]), ("succeeded", document["hash"])]


def test_plan_applies_later_with_its_own_now(setup: Setup) -> None:
    """Applied without RETENTION_NOW (the wall clock is later): the plan's now is used."""
    setup.dry_run()
    env = {k: v for k, v in setup.env.items() if k != "RETENTION_NOW"}
    applied = run("purge", "--yes", "--plan", str(setup.plan), "--format", "json", env=env)
    assert applied.code == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["now"] == setup.now.isoformat()
    assert surviving_rows(setup.engine) == setup.survivors


def test_edited_plan_exits_6_naming_the_file(setup: Setup) -> None:
    document = setup.dry_run()
    for target in document["targets"]:
        if target["object_type"] == "project_logs" and target["project_id"] == str(P1):
            target["rows"] = 12
    setup.plan.write_text(json.dumps(document, indent=2))

    applied = run("purge", "--yes", "--plan", str(setup.plan), env=setup.env)

    assert applied.code == 6
    assert applied.stdout == ""
    assert applied.stderr == (
        f"retention: error: plan file {setup.plan} was edited (its hash does not match): refused\n"
    )
    checked = run("purge", "--dry-run", "--plan", str(setup.plan), env=setup.env)
    assert checked.code == 6 and "was edited" in checked.stderr
    assert surviving_rows(setup.engine) == setup.everything
    assert setup.runs() == []


def test_missing_or_garbled_plan_file(setup: Setup) -> None:
    missing = setup.plan.with_name("nothing.json")
    gone = run("purge", "--yes", "--plan", str(missing), env=setup.env)
    assert gone.code == 2
    assert gone.stderr == (
        f"retention: error: cannot read plan file {missing}: No such file or directory\n"
    )
    setup.plan.write_text("not json at all")
    garbled = run("purge", "--yes", "--plan", str(setup.plan), env=setup.env)
    assert garbled.code == 6
    assert garbled.stderr == f"retention: error: plan file {setup.plan} is not JSON: refused\n"
    assert surviving_rows(setup.engine) == setup.everything
    assert setup.runs() == []


def test_plan_max_age(setup: Setup) -> None:
    setup.dry_run()  # made a minute ago (the pinned now)

    too_old = run(
        "purge", "--yes", "--plan", str(setup.plan), "--plan-max-age", "1s", env=setup.env
    )
    assert too_old.code == 6
    assert too_old.stderr.startswith(f"retention: error: plan file {setup.plan} is 0.0 h old")
    assert "more than --plan-max-age (0.000277778 h): make a new dry run" in too_old.stderr
    env_limit = run(
        "purge",
        "--yes",
        "--plan",
        str(setup.plan),
        env={**setup.env, "RETENTION_PLAN_MAX_AGE": "1s"},
    )
    assert env_limit.code == 6 and "--plan-max-age" in env_limit.stderr
    checked = run(
        "purge", "--dry-run", "--plan", str(setup.plan), "--plan-max-age", "1s", env=setup.env
    )
    assert checked.code == 6 and "make a new dry run" in checked.stderr
    assert surviving_rows(setup.engine) == setup.everything
    assert setup.runs() == []

    fresh_enough = run(
        "purge", "--yes", "--plan", str(setup.plan), "--plan-max-age", "1h", env=setup.env
    )
    assert fresh_enough.code == 0, fresh_enough.stderr
    assert surviving_rows(setup.engine) == setup.survivors


def test_a_plan_pinned_in_the_past_is_too_old(setup: Setup) -> None:
    """NOW (tests.support) is weeks before the wall clock: older than any short max age."""
    setup.env["RETENTION_NOW"] = NOW.isoformat()
    document = setup.dry_run()
    assert document["now"] == NOW.isoformat()
    age_hours = (datetime.now(UTC) - NOW).total_seconds() / 3600
    assert age_hours > 24
    for extra in (("--plan-max-age", "1s"), ()):  # and the default of 24 h
        refused = run("purge", "--yes", "--plan", str(setup.plan), *extra, env=setup.env)
        assert refused.code == 6
        assert "h old, more than --plan-max-age" in refused.stderr
    assert surviving_rows(setup.engine) == setup.everything
    assert setup.runs() == []


def test_demo_shows_the_reviewed_flow(tmp_path: Path) -> None:
    result = run("--state-dir", str(tmp_path), "demo", "--events", "3000", timeout=300)

    assert result.code == 0, result.stderr
    plan_path = tmp_path / "demo-plan.json"
    assert f"$ retention purge --dry-run --output {plan_path}" in result.stdout
    assert f"$ retention purge --yes --plan {plan_path}" in result.stdout
    assert result.stdout.index("--output") < result.stdout.index("--plan ")
    assert "Retention plan (dry run)" in result.stdout
    assert "succeeded" in result.stdout
    reviewed = planfile.read(plan_path)
    engine = engine_for(f"sqlite:///{tmp_path / 'demo.sqlite3'}")
    try:
        with engine.connect() as conn:
            runs = conn.exec_driver_sql("SELECT mode, status, plan_hash FROM retention_runs").all()
            remaining = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
    finally:
        engine.dispose()
    assert [tuple(r) for r in runs] == [("demo", "succeeded", reviewed.hash)]
    planned = reviewed.document["totals"]["rows"]
    assert planned > 0
    assert remaining == 3000 - planned
