"""events range-partitioned on created: partitions whose every row expired go whole
(dropped, or detached); any row a policy, a hold or the absence of a policy keeps keeps its
partition. The final rows are exactly those of the row path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
import sqlalchemy as sa

from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.support import (
    NOW,
    Expect,
    Scenario,
    generate,
    insert,
    partition_events,
    policy_toml,
    registry,
    surviving_rows,
)

MONTHS = 8  # monthly partitions back from NOW; older rows land in the default partition
DAYS = {"project_logs": 45, "dataset": 45, "experiment": 45}


def _partition(url: str) -> sa.Engine:
    engine = engine_for(url)
    partition_events(engine, MONTHS)
    return engine


def _partitions(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT relid::regclass::text FROM pg_partition_tree('events') WHERE isleaf"
            )
        }


def _all_partitions() -> set[str]:
    top = NOW.replace(day=1) + timedelta(days=32)
    names, month = {"events_default"}, top.replace(day=1)
    for _ in range(MONTHS):
        month = (month - timedelta(days=1)).replace(day=1)
        names.add(f"events_{month:%Y_%m}")
    return names


def _old(cutoff_days: float) -> set[str]:
    """Partitions entirely older than NOW - cutoff_days."""
    cutoff = NOW - timedelta(days=cutoff_days)
    top = NOW.replace(day=1) + timedelta(days=32)
    names, hi = set(), top.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for _ in range(MONTHS):
        lo = (hi - timedelta(days=1)).replace(day=1)
        if hi <= cutoff:
            names.add(f"events_{lo:%Y_%m}")
        hi = lo
    return names


def _scenario(seed: int) -> tuple[Scenario, list[UUID]]:
    scenario = generate(seed, projects=3, events=3000, span_days=230)
    return scenario, scenario.project_ids()


def _expect(projects: list[UUID], **extra: object) -> Expect:
    days = {(p, t): float(d) for p in projects for t, d in DAYS.items()}
    return Expect(days=days, **extra)  # type: ignore[arg-type]


def _receipted(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql("SELECT coalesce(sum(rows), 0) FROM retention_receipts").scalar()
        )


@pytest.mark.parametrize("strategy", ["keyset", "blocks"])
def test_expired_partitions_are_dropped_and_the_rest_deleted_by_row(
    pg_url: str, tmp_path: Path, strategy: str
) -> None:
    engine = _partition(pg_url)
    scenario, p = _scenario(41)
    insert(engine, scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults=DAYS))
    expect = _expect(p)

    report = purge(worker(pg_url, policies, delete_strategy=strategy))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == expect.survivors(scenario)
    assert registry(engine) == expect.registry(scenario)
    dropped = _all_partitions() - _partitions(engine)
    # experiments span three days after their creation, so the month of the cutoff and the
    # one before may keep a row of an experiment created just after the cutoff
    assert _old(45 + 35) <= dropped <= _old(45)
    assert "events_default" not in dropped  # it holds no bound: rows only
    deleted = len(scenario.events) - len(expect.survivors(scenario))
    assert sum(o.rows for o in report.outcomes) == _receipted(engine) == deleted
    with engine.connect() as conn:
        keys = [
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT DISTINCT split_part(first_key, ':', 1) FROM retention_receipts "
                "WHERE first_key LIKE 'partition %%'"
            )
        ]
    assert {k.removeprefix("partition public.") for k in keys} == dropped


def test_a_partition_with_a_kept_row_stays(pg_url: str, tmp_path: Path) -> None:
    engine = _partition(pg_url)
    scenario, p = _scenario(42)
    # a project nobody wrote a policy for, with one old row; and an old held dataset row
    orphan = UUID("0000aaaa-0000-4000-8000-000000000001")
    scenario.add_object("project_logs", orphan, orphan, NOW - timedelta(days=400))
    no_policy = NOW - timedelta(days=150)
    scenario.add_event("project_logs", orphan, orphan, no_policy, "no-policy-row")
    held_dataset = UUID("0000bbbb-0000-4000-8000-000000000002")  # its one row is old
    scenario.add_object("dataset", held_dataset, p[0], NOW - timedelta(days=400))
    held_at = NOW - timedelta(days=120)
    scenario.add_event("dataset", held_dataset, p[0], held_at, "held-row")
    insert(engine, scenario)
    text = policy_toml(
        defaults={},
        projects=[(project, DAYS) for project in p],
        holds=[
            {
                "project": str(p[0]),
                "object_type": "dataset",
                "object_id": str(held_dataset),
                "reason": "eval baseline",
            }
        ],
    )
    policies = write_policies(tmp_path / "p", text)
    expect = _expect(p, held=[(p[0], "dataset", held_dataset)])

    report = purge(worker(pg_url, policies))

    assert report.status is RunStatus.SUCCEEDED
    survivors = surviving_rows(engine)
    assert survivors == expect.survivors(scenario) | {"no-policy-row"}
    assert {"no-policy-row", "held-row"} <= survivors
    left = _partitions(engine)
    assert f"events_{no_policy:%Y_%m}" in left and f"events_{held_at:%Y_%m}" in left
    assert _all_partitions() - left  # others did go


def test_detach_keeps_the_partition_as_a_table(pg_url: str, tmp_path: Path) -> None:
    engine = _partition(pg_url)
    scenario, p = _scenario(43)
    insert(engine, scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults=DAYS))

    report = purge(worker(pg_url, policies, partition_action="detach"))

    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == _expect(p).survivors(scenario)
    detached = _all_partitions() - _partitions(engine)
    assert detached
    with engine.connect() as conn:
        for name in detached:  # still there, on its own, with its rows
            assert conn.exec_driver_sql(f"SELECT count(*) FROM {name}").scalar()
        actions = {
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT action FROM retention_receipts WHERE first_key LIKE 'partition %%'"
            )
        }
    assert actions == {"detach"}


def test_off_deletes_row_by_row(pg_url: str, tmp_path: Path) -> None:
    engine = _partition(pg_url)
    scenario, p = _scenario(44)
    insert(engine, scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults=DAYS))
    report = purge(worker(pg_url, policies, partition_action="off"))
    assert report.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == _expect(p).survivors(scenario)
    assert _partitions(engine) == _all_partitions()


@pytest.mark.parametrize("stops", [1, 2, 4])
def test_a_run_stopped_between_partitions_resumes_exactly(
    pg_url: str, tmp_path: Path, stops: int
) -> None:
    engine = _partition(pg_url)
    scenario, p = _scenario(45)
    insert(engine, scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults=DAYS))
    first = purge(worker(pg_url, policies, should_stop=StopAfter(stops)))
    assert first.status is RunStatus.PARTIAL
    deleted = len(scenario.events) - len(surviving_rows(engine))
    assert _receipted(engine) == deleted
    second = purge(worker(pg_url, policies))
    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == _expect(p).survivors(scenario)
    assert _receipted(engine) == len(scenario.events) - len(_expect(p).survivors(scenario))
