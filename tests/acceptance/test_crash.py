"""Crash safety: SIGKILL the purge at random points, rerun, compare with an uninterrupted run."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from uuid import UUID

import pytest

from retention.db import make_engine, parse_database_url, use_wal
from tests.acceptance.cli import clean_env, kill_when, run
from tests.conftest import PgServer, engine_for
from tests.support import (
    NOW,
    Expect,
    generate,
    insert,
    partition_events,
    policy_toml,
    registry,
    surviving_rows,
)

EVENTS = 24_000
BATCH = "40"


def _scenario():
    scenario = generate(99, projects=4, events=EVENTS)
    p = scenario.project_ids()
    policies = policy_toml(
        defaults={"project_logs": 60, "experiment": 90, "dataset": 30},
        projects=[(p[0], {"project_logs": 7})],
        holds=[{"project": str(p[1]), "object_type": "dataset", "reason": "audit"}],
    )
    days: dict[tuple[UUID, str], float] = {}
    for project in p:
        days.update(
            {(project, "project_logs"): 60, (project, "experiment"): 90, (project, "dataset"): 30}
        )
    days[(p[0], "project_logs")] = 7
    expect = Expect(days=days, held=[(p[1], "dataset", None)])
    return scenario, policies, expect


def _count(url: str) -> int:
    database = parse_database_url(url)
    engine = make_engine(database, read_only=True) if database.is_sqlite else engine_for(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
    finally:
        engine.dispose()


# How each variant deletes: keyset batches; the block-range sweep in small batches (so kills
# land between and inside them); whole partitions first on a partitioned events table.
STRATEGIES = {
    "postgresql": {"RETENTION_DELETE_STRATEGY": "keyset"},
    "postgresql-blocks": {
        "RETENTION_DELETE_STRATEGY": "blocks",
        "RETENTION_SWEEP_BLOCKS": "1",
        "RETENTION_BATCH_TARGET_SECONDS": "0.005",
    },
    "postgresql-partitions": {"RETENTION_DELETE_STRATEGY": "blocks", "RETENTION_SWEEP_BLOCKS": "1"},
    "sqlite": {},
}


def _env(url: str, policy_dir: Path, variant: str) -> dict[str, str]:
    return clean_env(
        RETENTION_DATABASE_URL=url,
        RETENTION_POLICY_DIR=str(policy_dir),
        RETENTION_NOW=NOW.isoformat(),
        RETENTION_BATCH_SIZE=BATCH,
        RETENTION_LOG_LEVEL="WARNING",
        **STRATEGIES[variant],
    )


def _kill_after(url: str, env: dict[str, str], deleted: int) -> bool:
    """Start a purge and SIGKILL it once it has deleted at least ``deleted`` rows.

    Returns whether the kill landed while the purge was still running.
    """
    remaining_below = _count(url) - deleted + 1
    return kill_when(
        ["purge", "--yes", "--allow-large-deletes"], env, lambda: _count(url) < remaining_below
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(STRATEGIES))
def test_sigkill_at_random_points_then_rerun(
    variant: str, pg_server: PgServer, pg_template: str, sqlite_template: Path, tmp_path: Path
) -> None:
    backend = variant.partition("-")[0]
    scenario, policies, expect = _scenario()
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "p.toml").write_text(policies)
    if backend == "postgresql":
        name = f"crash_{int(time.time() * 1000)}"
        killed_url = pg_server.create(name, template=pg_template)
        if variant == "postgresql-partitions":
            partition_events(engine_for(killed_url), 8)
        insert(engine_for(killed_url), scenario)
        calm_url = pg_server.create(name + "_calm", template=name)  # identical copy
    else:
        killed_path, calm_path = tmp_path / "killed.sqlite3", tmp_path / "calm.sqlite3"
        shutil.copyfile(sqlite_template, killed_path)
        killed_url = f"sqlite:///{killed_path}"
        use_wal(engine_for(killed_url))  # as 'retention db upgrade' leaves it
        insert(engine_for(killed_url), scenario)
        shutil.copyfile(killed_path, calm_path)
        calm_url = f"sqlite:///{calm_path}"

    expected = expect.survivors(scenario)
    to_delete = len(scenario.events) - len(expected)
    assert to_delete > 5000

    calm = run("purge", "--yes", "--allow-large-deletes", env=_env(calm_url, policy_dir, variant))
    assert calm.code == 0, calm.stderr

    rng = random.Random(2026)
    landed = 0
    for _ in range(4):  # each kill lands after a random number of deletions
        deleted = int(to_delete * rng.uniform(0.02, 0.2))
        landed += _kill_after(killed_url, _env(killed_url, policy_dir, variant), deleted)
        # whatever the moment of death, nothing that policy keeps is gone
        assert expected <= surviving_rows(engine_for(killed_url))
    assert landed >= 3, "the kills should land mid-run"

    final = run(
        "purge",
        "--yes",
        "--allow-large-deletes",
        "--format",
        "json",
        env=_env(killed_url, policy_dir, variant),
    )
    assert final.code == 0, final.stderr

    assert surviving_rows(engine_for(killed_url)) == surviving_rows(engine_for(calm_url))
    assert surviving_rows(engine_for(killed_url)) == expected
    assert registry(engine_for(killed_url)) == registry(engine_for(calm_url))
    assert registry(engine_for(killed_url)) == expect.registry(scenario)
    engine = engine_for(killed_url)
    with engine.connect() as conn:
        receipts = conn.exec_driver_sql("SELECT sum(rows) FROM retention_receipts").scalar()
        runs = conn.exec_driver_sql("SELECT status, resumed FROM retention_runs").all()
    engine.dispose()
    assert receipts == to_delete  # every deleted row has exactly one receipt
    assert {status for status, _ in runs} == {"succeeded"}
    # each kill left a run that the next start resumed (a kill that came too late for its
    # run lets the next start begin a fresh run with nothing to delete)
    assert sum(resumed for _, resumed in runs) >= 1, runs
    if backend == "postgresql":
        pg_server.drop(name + "_calm")
        pg_server.drop(name)
