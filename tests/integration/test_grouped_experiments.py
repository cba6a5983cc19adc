"""Experiment targets grouped (``grouped``, PostgreSQL, ``auto``): many targets' expired
experiments in one transaction of rows (and segment marks) and one of registry entries.
The result must be exactly the per-target path's (``keyset``): the same rows, registry
entries and segment states left, the same counts per target, and receipts an auditor can
check; a hold added between the two transactions keeps its experiment's entry."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from retention import dataplane
from retention import engine as engine_module
from retention.models import ObjectType, RunStatus
from tests.conftest import PgServer, engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.integration.worlds import CUTOFF_DAYS, world
from tests.support import NOW, Scenario, insert, policy_toml, registry, surviving_rows


@pytest.fixture
def two_pg_urls(pg_server: PgServer, pg_template: str) -> Iterator[tuple[str, str]]:
    names = [f"g_{uuid4().hex[:12]}" for _ in range(2)]
    urls = tuple(pg_server.create(name, template=pg_template) for name in names)
    yield urls[0], urls[1]
    for name in names:
        pg_server.drop(name)


def _state(url: str) -> tuple[set[str], set[tuple[str, str]], dict[str, str]]:
    engine = engine_for(url)
    with engine.connect() as conn:
        files = {
            str(r[0]): r[1] for r in conn.exec_driver_sql("SELECT segment_id, state FROM segments")
        }
    return surviving_rows(engine), registry(engine), files


def _keys(url: str) -> dict[str, tuple[str, str, str, str, int]]:
    """Row id -> (project, type, object, created, sequence_id), before the purge."""
    with engine_for(url).connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, project_id, object_type, object_id, created, sequence_id FROM events"
        ).all()
    return {r[0]: (str(r[1]), r[2], str(r[3]), r[4].isoformat(), int(r[5])) for r in rows}


def _per_target(report: Any) -> dict[str, tuple[int, int, int]]:
    return {o.target.key: (o.rows, o.objects, o.segments) for o in report.outcomes}


def _sums(url: str, policies: Path) -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    found: dict[tuple[str, str, str], tuple[int, int, int, int]] = {}
    for r in engine_module.receipts(worker(url, policies)):
        key = (r["project_id"], r["object_type"], r["action"])
        n, rows, objects, files = found.get(key, (0, 0, 0, 0))
        found[key] = (n + 1, rows + r["rows"], objects + r["objects"], files + r["segments"])
    return found


@pytest.mark.parametrize("seed", range(6))
def test_grouped_experiments_delete_exactly_what_the_per_target_path_does(
    two_pg_urls: tuple[str, str],
    tmp_path: Path,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grouped_url, alone_url = two_pg_urls
    scenario, projects, holds = world(seed, count=12, per_project=6)
    for url in two_pg_urls:
        insert(engine_for(url), scenario)
    before = _keys(grouped_url)
    days = {"project_logs": CUTOFF_DAYS, "experiment": CUTOFF_DAYS, "dataset": CUTOFF_DAYS}
    shorter = [(projects[2], {"experiment": 10})]
    policies = write_policies(tmp_path / "p", policy_toml(days, shorter, holds))
    for row in scenario.segments:  # the files of the segments, in the store
        path = tmp_path / "store" / row["object_key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"segment")
    store = f"file://{tmp_path / 'store'}"
    groups: list[int] = []
    alone: list[str] = []
    group_delete, batch_delete = dataplane.delete_experiment_group, dataplane.delete_batch

    def grouped(conn, tables, resolutions, limit):  # type: ignore[no-untyped-def]
        groups.append(len(resolutions))
        return group_delete(conn, tables, resolutions, limit)

    def one(conn, tables, resolution, after, limit):  # type: ignore[no-untyped-def]
        if resolution.object_type is ObjectType.EXPERIMENT:
            alone.append(f"{resolution.project_id}/experiment")
        return batch_delete(conn, tables, resolution, after, limit)

    monkeypatch.setattr(dataplane, "delete_experiment_group", grouped)
    monkeypatch.setattr(dataplane, "delete_batch", one)
    done = purge(worker(grouped_url, policies, batch_size=500, object_store_url=store))
    assert done.status is RunStatus.SUCCEEDED
    # the experiment targets with held or misfiled experiments went alone; the rest together
    singles = {
        o.target.key
        for o in done.outcomes
        if o.target.object_type is ObjectType.EXPERIMENT and o.target.resolution.held_object_ids
    }
    assert set(alone) <= singles
    assert max(groups) >= 2
    monkeypatch.undo()
    keyset = purge(
        worker(
            alone_url, policies, batch_size=500, object_store_url=store, delete_strategy="keyset"
        )
    )
    assert keyset.status is RunStatus.SUCCEEDED
    assert _state(grouped_url) == _state(alone_url)
    assert _per_target(done) == _per_target(keyset)
    mine, theirs = _sums(grouped_url, policies), _sums(alone_url, policies)
    assert {k: v[1:] for k, v in mine.items()} == {k: v[1:] for k, v in theirs.items()}
    assert any(v[2] for v in mine.values())  # registry entries went
    _check_experiment_receipts(grouped_url, policies, before)


def _check_experiment_receipts(
    url: str, policies: Path, before: dict[str, tuple[str, str, str, str, int]]
) -> None:
    """Each experiment rows receipt's digest is the SHA-256 of the keys deleted between its
    first and last key (object, created, sequence); every deleted key is in one."""
    deleted = set(before) - surviving_rows(engine_for(url))
    covered: list[int] = []
    for receipt in engine_module.receipts(worker(url, policies), action="delete"):
        if receipt["object_type"] != "experiment" or not receipt["rows"]:
            continue
        first, last = _key(receipt["first_key"]), _key(receipt["last_key"])
        keys = sorted(
            before[i][4]
            for i in deleted
            if before[i][0] == receipt["project_id"]
            and before[i][1] == "experiment"
            and first <= (UUID(before[i][2]), _utc(before[i][3]), before[i][4]) <= last
        )
        assert len(keys) == receipt["rows"]
        digest = hashlib.sha256("".join(f"{k}\n" for k in keys).encode()).hexdigest()
        assert receipt["keys_digest"] == digest
        covered.extend(keys)
    assert sorted(covered) == sorted(before[i][4] for i in deleted if before[i][1] == "experiment")


def _key(text: str) -> tuple[UUID, str, int]:
    object_id, created, sequence_id = text.split("/")
    return UUID(object_id), _utc(created), int(sequence_id)


def _utc(text: str) -> str:
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).astimezone(UTC).isoformat()


def test_a_hold_added_after_the_rows_keeps_its_experiments_entry(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hold comes while the group's rows are deleted: those rows are gone already, but
    the registry transaction leaves that target to the per-target path, which keeps the
    held experiment's entry; the other targets' entries go."""
    s = Scenario()
    projects = [UUID(int=i + 1, version=4) for i in range(4)]
    experiments = {p: UUID(int=100 + i, version=4) for i, p in enumerate(projects)}
    for p, e in experiments.items():
        s.add_object("experiment", e, p, NOW - timedelta(days=90))
        s.add_event("experiment", e, p, NOW - timedelta(days=89), f"{e.int}-row")
    insert(engine_for(pg_url), s)
    policies = write_policies(tmp_path / "p", policy_toml({"experiment": 30}))
    held = experiments[projects[1]]
    group_delete = dataplane.delete_experiment_group

    def then_a_hold(conn, tables, resolutions, limit):  # type: ignore[no-untyped-def]
        (policies / "hold.toml").write_text(
            policy_toml(
                holds=[
                    {
                        "project": str(projects[1]),
                        "object_type": "experiment",
                        "object_id": str(held),
                        "reason": "legal",
                    }
                ]
            )
        )
        return group_delete(conn, tables, resolutions, limit)

    monkeypatch.setattr(dataplane, "delete_experiment_group", then_a_hold)
    done = purge(worker(pg_url, policies))
    assert done.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine_for(pg_url)) == set()  # the rows went before the hold
    assert registry(engine_for(pg_url)) == {("experiment", str(held))}
    objects = {o.target.project_id: o.objects for o in done.outcomes}
    assert objects == {projects[0]: 1, projects[1]: 0, projects[2]: 1, projects[3]: 1}


def test_rows_and_entries_written_after_the_plan_still_go(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backdated row of an expired experiment and a backdated registry entry, written
    between the plan and the group, go as the per-target path would take them: the
    group's statements judge by the cutoff, not by the planned counts."""
    from retention import grouped

    s = Scenario()
    projects = [UUID(int=i + 1, version=4) for i in range(3)]
    for i, p in enumerate(projects):
        e = UUID(int=100 + i, version=4)
        s.add_object("experiment", e, p, NOW - timedelta(days=90))
        s.add_event("experiment", e, p, NOW - timedelta(days=89), f"{i}-planned")
    insert(engine_for(pg_url), s)
    policies = write_policies(tmp_path / "p", policy_toml({"experiment": 30}))
    late = Scenario()
    late.add_event(
        "experiment", UUID(int=100, version=4), projects[0], NOW - timedelta(days=80), "late"
    )
    late.add_object("experiment", UUID(int=200, version=4), projects[1], NOW - timedelta(days=70))
    real = grouped.purge_small_targets

    def after_the_plan(ctx, targets, found):  # type: ignore[no-untyped-def]
        insert(engine_for(pg_url), late)
        return real(ctx, targets, found)

    monkeypatch.setattr(grouped, "purge_small_targets", after_the_plan)
    done = purge(worker(pg_url, policies))
    assert done.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine_for(pg_url)) == set()
    assert registry(engine_for(pg_url)) == set()
    outcomes = {o.target.project_id: (o.rows, o.objects) for o in done.outcomes}
    assert outcomes == {projects[0]: (2, 1), projects[1]: (1, 2), projects[2]: (1, 1)}


def test_a_hold_on_one_target_before_its_group_leaves_the_rest_of_the_group(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hold that comes before a group's transaction takes its target out of the group;
    the others go on (the run used to stop with a KeyError after that transaction)."""
    from retention import grouped

    s = Scenario()
    projects = [UUID(int=i + 1, version=4) for i in range(3)]
    for i, p in enumerate(projects):
        s.add_object("project_logs", p, p, NOW - timedelta(days=400))
        s.add_event("project_logs", p, p, NOW - timedelta(days=60), f"{i}-old")
        s.add_event("project_logs", p, p, NOW - timedelta(days=1), f"{i}-new")
        e = UUID(int=100 + i, version=4)
        s.add_object("experiment", e, p, NOW - timedelta(days=90))
        s.add_event("experiment", e, p, NOW - timedelta(days=89), f"{i}-experiment")
    insert(engine_for(pg_url), s)
    policies = write_policies(tmp_path / "p", policy_toml({"project_logs": 30, "experiment": 30}))
    real = grouped.purge_small_targets

    def then_a_hold(ctx, targets, found):  # type: ignore[no-untyped-def]
        (policies / "hold.toml").write_text(
            policy_toml(holds=[{"project": str(projects[1]), "reason": "legal"}])
        )
        return real(ctx, targets, found)

    monkeypatch.setattr(grouped, "purge_small_targets", then_a_hold)
    done = purge(worker(pg_url, policies))
    assert done.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine_for(pg_url)) == {
        "0-new",
        "1-old",
        "1-new",
        "1-experiment",
        "2-new",
    }
    assert registry(engine_for(pg_url)) == {
        *(("project_logs", str(p)) for p in projects),
        ("experiment", str(UUID(int=101, version=4))),
    }
    notes = {o.target.key: o.note for o in done.outcomes if o.note}
    assert set(notes) == {f"{projects[1]}/project_logs", f"{projects[1]}/experiment"}


def test_a_segment_without_an_object_id_is_not_marked_in_a_group(
    pg_url: str, tmp_path: Path
) -> None:
    """On a schema whose segments.object_id allows NULL, the one-target condition (NOT
    IN) never expires such a segment; the grouped one must not either."""
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE segments ALTER COLUMN object_id DROP NOT NULL")
    s = Scenario()
    p, e = UUID(int=1, version=4), UUID(int=100, version=4)
    old = NOW - timedelta(days=90)
    s.add_object("experiment", e, p, old)
    s.add_event("experiment", e, p, old, "row")
    s.add_segment("experiment", e, p, old, old)
    nameless = s.add_segment("experiment", e, p, old, old)
    insert(engine_for(pg_url), s)
    with engine_for(pg_url).begin() as conn:
        conn.exec_driver_sql(
            "UPDATE segments SET object_id = NULL WHERE segment_id = %(s)s",
            {"s": nameless["segment_id"]},
        )
    for row in s.segments:
        path = tmp_path / "store" / row["object_key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"segment")
    policies = write_policies(tmp_path / "p", policy_toml({"experiment": 30}))
    done = purge(worker(pg_url, policies, object_store_url=f"file://{tmp_path / 'store'}"))
    assert done.status is RunStatus.SUCCEEDED
    files = _state(pg_url)[2]
    assert files[str(nameless["segment_id"])] == "live"
    assert sorted(files.values()) == ["live", "unused"]
