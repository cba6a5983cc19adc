"""Several workers on one run: `retention purge` leads, `retention join` helps (PostgreSQL).

The block sweep is split into units claimed from the run's queue; every unit is done once,
by one worker, and the final data is exactly what one worker leaves.
"""

from __future__ import annotations

import collections
import itertools
import json
import subprocess
import time
from pathlib import Path

from tests.acceptance.cli import clean_env, retention_command
from tests.conftest import engine_for
from tests.support import NOW, Expect, generate, insert, policy_toml, surviving_rows

EVENTS = 40_000


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [retention_command(), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_workers_split_one_run_and_do_every_unit_once(pg_url: str, tmp_path: Path) -> None:
    scenario = generate(303, projects=4, events=EVENTS)
    engine = engine_for(pg_url)
    insert(engine, scenario)
    days = {(p, t): 30.0 for p in scenario.project_ids() for t in ("project_logs", "dataset")}
    expected = Expect(days=days).survivors(scenario)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.toml").write_text(policy_toml(defaults={"project_logs": 30, "dataset": 30}))
    env = clean_env(
        RETENTION_DATABASE_URL=pg_url,
        RETENTION_POLICY_DIR=str(policies),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_LOG_LEVEL="WARNING",
        RETENTION_DELETE_STRATEGY="blocks",
        RETENTION_SWEEP_UNIT_BLOCKS="8",
        RETENTION_SWEEP_BLOCKS="2",
        RETENTION_BATCH_TARGET_SECONDS="0.01",
        RETENTION_JOIN_WAIT="60s",
    )
    helpers = [_start(["join", "--format", "json"], env) for _ in range(2)]
    time.sleep(0.5)  # both wait for the run before the leader plans it
    leader = _start(["purge", "--yes", "--allow-large-deletes", "--format", "json"], env)
    out, err = leader.communicate(timeout=240)
    assert leader.returncode == 0, err
    joined = []
    for helper in helpers:
        h_out, h_err = helper.communicate(timeout=120)
        assert helper.returncode == 0, h_err
        joined.append(json.loads(h_out))

    assert surviving_rows(engine) == expected
    deleted = len(scenario.events) - len(expected)
    doc = json.loads(out)
    assert doc["status"] == "succeeded" and doc["totals"]["rows"] == deleted
    with engine.connect() as conn:
        units = conn.exec_driver_sql(
            "SELECT unit, done, done_by, claims, rows FROM retention_work_units ORDER BY unit"
        ).all()
        ranges = conn.exec_driver_sql(
            "SELECT DISTINCT split_part(first_key, ':', 1) FROM retention_receipts "
            "WHERE first_key LIKE 'blocks %%'"
        ).all()
        receipted = conn.exec_driver_sql("SELECT sum(rows) FROM retention_receipts").scalar()
    assert len(units) > 10
    assert all(done and claims == 1 for _, done, _, claims, _ in units)  # each unit once
    assert sum(rows for *_, rows in units) == receipted == deleted
    spans = sorted(tuple(int(b) for b in r[0].removeprefix("blocks ").split("-")) for r in ranges)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # disjoint
    workers = {done_by for _, _, done_by, _, _ in units}
    per_worker = collections.Counter(done_by for _, _, done_by, _, _ in units)
    print(f"units per worker: {sorted(per_worker.values())}")
    assert {j["worker"] for j in joined if j["units"]} <= workers
    assert all(j["run_id"] == doc["run_id"] for j in joined)
    assert len(workers) == 3, per_worker  # both helpers took part
    assert sum(j["rows"] for j in joined) < deleted  # and the leader did too, or waited


def test_join_without_a_running_purge_waits_then_exits_0(pg_url: str) -> None:
    env = clean_env(RETENTION_DATABASE_URL=pg_url, RETENTION_JOIN_WAIT="1s")
    started = time.monotonic()
    done = subprocess.run(
        [retention_command(), "join", "--format", "json"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["run_id"] is None
    assert 1 <= time.monotonic() - started < 30


def test_join_on_sqlite_is_a_usage_error(tmp_path: Path) -> None:
    env = clean_env(RETENTION_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    done = subprocess.run(
        [retention_command(), "join"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "join needs PostgreSQL" in done.stderr
