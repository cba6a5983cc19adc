"""Experiment targets grouped (``grouped``, PostgreSQL, ``auto``): many targets' expired
experiments in one transaction of rows (and segment marks) and one of registry entries.
The result must be exactly the per-target path's (``keyset``): the same rows, registry
entries and segment states left, the same counts per target, and receipts an auditor can
check; a hold added between the two transactions keeps its experiment's entry."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from retention import dataplane, planfile, report
from retention import engine as engine_module
from retention.models import ObjectType, RunStatus
from retention.planfile import PlanFile
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


def _files(store: Path, scenario: Scenario) -> None:
    """The files of the scenario's segments, in a ``file://`` store's folder."""
    for row in scenario.segments:
        path = store / row["object_key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"segment")


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
    _files(tmp_path / "store", scenario)
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
    _files(tmp_path / "store", s)
    policies = write_policies(tmp_path / "p", policy_toml({"experiment": 30}))
    done = purge(worker(pg_url, policies, object_store_url=f"file://{tmp_path / 'store'}"))
    assert done.status is RunStatus.SUCCEEDED
    files = _state(pg_url)[2]
    assert files[str(nameless["segment_id"])] == "live"
    assert sorted(files.values()) == ["live", "unused"]


def _reviewed_plan(url: str, policies: Path, path: Path, **settings: Any) -> PlanFile:
    """A JSON dry run sealed into a plan file (what ``retention purge --plan`` applies)."""
    document = planfile.seal(
        report.report_document(engine_module.plan(worker(url, policies, **settings), identify=True))
    )
    path.write_text(json.dumps(document), encoding="utf-8")
    return planfile.read(path)


def _after_the_plan(url: str, reviewed: PlanFile) -> None:
    """Writes that come after a reviewed plan, in the purge that applies it (after its
    drift check): none of them was reviewed, so none of them may be deleted or marked.

    - an experiment registered since, expired, with a row and a live segment;
    - a new live segment of an experiment the plan expires, and a backdated row of it;
    - an experiment the plan expires moved to another project's registry entry (neither
      target's plan named it for that project);
    - an experiment the registry did not have (its segments planned as of none), now
      registered, expired: its segments are now those of an experiment the plan did not
      name."""
    targets = [t for t in reviewed.document["targets"] if t["object_type"] == "experiment"]
    named = [(t["project_id"], i) for t in targets for i in t["expired_object_ids"]]
    assert len(named) >= 2, "a world with expired experiments"
    old = NOW - timedelta(days=CUTOFF_DAYS + 200)
    engine = engine_for(url)
    late = Scenario()
    project, experiment = UUID(named[0][0]), UUID(named[0][1])
    fresh = UUID(int=0xFEED, version=4)
    late.add_object("experiment", fresh, project, old)
    late.add_event("experiment", fresh, project, old, "late-experiment")
    for object_id, key in ((fresh, 0xFEE1), (experiment, 0xFEE2)):
        late.add_segment(
            "experiment", object_id, project, old, old, segment_id=UUID(int=key, version=4)
        )
    late.add_event("experiment", experiment, project, old, "late-row")
    insert(engine, late)
    moved_from, moved = named[-1]
    to = next(t["project_id"] for t in targets if t["project_id"] != moved_from)
    planned_segments = {i for t in targets for i in t["segment_ids"]}
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE objects SET project_id = %(to)s WHERE object_type = 'experiment' "
            "AND object_id = %(e)s",
            {"to": UUID(to), "e": UUID(moved)},
        )
        unregistered = conn.exec_driver_sql(
            "SELECT DISTINCT s.object_id, s.project_id, s.segment_id FROM segments s "
            "WHERE s.object_type = 'experiment' AND NOT EXISTS (SELECT 1 FROM objects o "
            "WHERE o.object_type = 'experiment' AND o.object_id = s.object_id) "
            "ORDER BY s.segment_id"
        ).all()
        late_ones = [r for r in unregistered if str(r[2]) in planned_segments]
        if late_ones:
            conn.exec_driver_sql(
                "INSERT INTO objects (object_type, object_id, project_id, name, created) "
                "VALUES ('experiment', %(e)s, %(p)s, 'late', %(c)s)",
                {"e": late_ones[0][0], "p": late_ones[0][1], "c": old},
            )


@pytest.mark.parametrize("seed", range(5))
def test_applying_a_reviewed_plan_groups_and_deletes_only_what_it_names(
    two_pg_urls: tuple[str, str],
    tmp_path: Path,
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``purge --plan``: experiment targets and segment marks go in groups, each target
    joined with its own plan's experiments and segments. The result is exactly the
    per-target path's under the same plan, with writes after the plan that nobody
    reviewed (``_after_the_plan``) kept by both."""
    from retention import segments

    grouped_url, alone_url = two_pg_urls
    scenario, _, holds = world(100 + seed, count=12, per_project=6)
    for url in two_pg_urls:
        insert(engine_for(url), scenario)
    before = _keys(grouped_url)
    days = {"project_logs": CUTOFF_DAYS, "experiment": CUTOFF_DAYS, "dataset": CUTOFF_DAYS}
    policies = write_policies(tmp_path / "p", policy_toml(days, [], holds))
    _files(tmp_path / "store", scenario)
    store = f"file://{tmp_path / 'store'}"
    reviewed = _reviewed_plan(grouped_url, policies, tmp_path / "plan.json", batch_size=500)
    real = engine_module._delete
    group_delete, group_mark = dataplane.delete_experiment_group, segments.mark_group
    calls: dict[str, list[int]] = {"rows": [], "marks": [], "alone": []}
    one_mark = segments.mark_batch

    def late_then(url: str) -> Any:
        def delete(*args):  # type: ignore[no-untyped-def]
            _after_the_plan(url, reviewed)
            return real(*args)

        return delete

    def rows(conn, tables, resolutions, limit):  # type: ignore[no-untyped-def]
        assert all(r.reviewed_objects is not None for r in resolutions)
        calls["rows"].append(len(resolutions))
        return group_delete(conn, tables, resolutions, limit)

    def marks(conn, tables, resolutions, limit, clock):  # type: ignore[no-untyped-def]
        assert all(r.reviewed_segments is not None for r in resolutions)
        calls["marks"].append(len(resolutions))
        return group_mark(conn, tables, resolutions, limit, clock)

    def mark_one(conn, tables, resolution, after, limit, clock):  # type: ignore[no-untyped-def]
        calls["alone"].append(1)
        return one_mark(conn, tables, resolution, after, limit, clock)

    monkeypatch.setattr(engine_module, "_delete", late_then(grouped_url))
    monkeypatch.setattr(dataplane, "delete_experiment_group", rows)
    monkeypatch.setattr(segments, "mark_group", marks)
    monkeypatch.setattr(segments, "mark_batch", mark_one)
    settings = dict(batch_size=500, object_store_url=store)
    done = engine_module.purge(worker(grouped_url, policies, **settings), plan_file=reviewed)
    assert done.status is RunStatus.SUCCEEDED
    assert max(calls["rows"]) >= 2 and max(calls["marks"]) >= 2
    kept_whole = [o for o in done.outcomes if o.target.resolution.kept_whole]
    assert len(calls["alone"]) <= 2 * len(kept_whole)  # (their marks: first and last batch)
    monkeypatch.undo()
    monkeypatch.setattr(engine_module, "_delete", late_then(alone_url))
    keyset = engine_module.purge(
        worker(alone_url, policies, delete_strategy="keyset", **settings), plan_file=reviewed
    )
    assert keyset.status is RunStatus.SUCCEEDED
    assert _state(grouped_url) == _state(alone_url)
    assert _per_target(done) == _per_target(keyset)
    mine, theirs = _sums(grouped_url, policies), _sums(alone_url, policies)
    assert {k: v[1:] for k, v in mine.items()} == {k: v[1:] for k, v in theirs.items()}
    rows_left, entries, files = _state(grouped_url)
    assert {"late-experiment", "late-row"} <= rows_left
    assert ("experiment", str(UUID(int=0xFEED, version=4))) in entries
    assert any(v[2] for v in mine.values())  # registry entries went
    assert "unused" in files.values()
    _check_experiment_receipts(grouped_url, policies, before)


@pytest.mark.parametrize("strategy", ["auto", "keyset"])
@pytest.mark.parametrize(
    ("table", "statement", "change"),
    [
        ("rows", "DELETE FROM events", "UPDATE events SET object_id = :y WHERE id = 'xa-0'"),
        ("segments", "UPDATE segments", "UPDATE segments SET object_id = :y WHERE segment_id = :s"),
    ],
)
def test_under_a_plan_a_row_or_segment_moved_to_an_experiment_nobody_reviewed_is_kept(
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    strategy: str,
    table: str,
    statement: str,
    change: str,
) -> None:
    """Applying a reviewed plan, a row (or segment) of a reviewed experiment is moved to
    another expired experiment of the same project, registered since the plan, while the
    DELETE (or the mark) waits for its lock: it is kept, as the experiment it now belongs
    to was not reviewed; grouped (``auto``) as one target at a time (``keyset``)."""
    from tests.integration.test_races import (
        WAIT,
        _in_background,
        _open_transaction,
        _scalar,
        _wait_until,
    )

    def _waits_on_a_lock(url: str) -> Any:
        """The worker waits on a lock (the group's statements are longer than the text
        ``pg_stat_activity`` keeps, and only one lock is held here)."""
        return lambda: (
            _scalar(
                url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'retention' AND wait_event_type = 'Lock'",
            )
            == 1
        )

    old = NOW - timedelta(days=90)
    a, b = UUID(int=1, version=4), UUID(int=2, version=4)
    xa, xb, ya = (UUID(int=100 + i, version=4) for i in range(3))
    s = Scenario()
    for project, experiment, name in ((a, xa, "xa"), (b, xb, "xb")):
        s.add_object("experiment", experiment, project, old)
        for i in range(2):
            s.add_event("experiment", experiment, project, old, f"{name}-{i}")
    segment = s.add_segment("experiment", xa, a, old, old)["segment_id"]
    s.add_segment("experiment", xb, b, old, old)
    engine = engine_for(pg_url)
    insert(engine, s)
    _files(tmp_path / "store", s)
    policies = write_policies(tmp_path / "p", policy_toml({"experiment": 30}))
    settings = dict(object_store_url=f"file://{tmp_path / 'store'}", delete_strategy=strategy)
    reviewed = _reviewed_plan(pg_url, policies, tmp_path / "plan.json", **settings)
    real = engine_module._delete
    late = Scenario()
    late.add_object("experiment", ya, a, old)
    ready = threading.Event()

    with _open_transaction(pg_url) as other:

        def delete(*args):  # type: ignore[no-untyped-def]
            insert(engine, late)  # registered after the plan's drift check
            other.execute(sa.text(change), {"y": ya, "s": segment})
            ready.set()
            return real(*args)

        monkeypatch.setattr(engine_module, "_delete", delete)
        w = worker(pg_url, policies, **settings)
        with _in_background(lambda: engine_module.purge(w, plan_file=reviewed)) as running:
            assert ready.wait(WAIT)
            _wait_until(_waits_on_a_lock(pg_url), f"the lock wait of {statement}", running)
            other.commit()
            done = running.result(timeout=WAIT)

    assert done.status is RunStatus.SUCCEEDED
    files = _state(pg_url)[2]
    if table == "rows":
        assert surviving_rows(engine) == {"xa-0"}  # now ya's
        assert registry(engine) == {("experiment", str(ya))}  # xa's rows are gone
        assert sorted(files.values()) == ["unused", "unused"]
    else:
        assert surviving_rows(engine) == set()
        assert registry(engine) == {("experiment", str(ya))}
        assert files[str(segment)] == "live"  # now ya's
        assert sorted(files.values()) == ["live", "unused"]


def _two_projects_with_segments(url: str, tmp_path: Path) -> tuple[list[UUID], Path, str]:
    """Two projects, each with expired logs rows, an expired and a young logs segment, and
    an expired experiment with a segment; the files in a store."""
    s = Scenario()
    projects = [UUID(int=i + 1, version=4) for i in range(2)]
    old, young = NOW - timedelta(days=90), NOW - timedelta(days=1)
    for i, p in enumerate(projects):
        s.add_object("project_logs", p, p, NOW - timedelta(days=400))
        s.add_event("project_logs", p, p, old, f"{i}-old")
        s.add_segment("project_logs", p, p, old, old)
        s.add_segment("project_logs", p, p, young, young)
        e = UUID(int=100 + i, version=4)
        s.add_object("experiment", e, p, old)
        s.add_event("experiment", e, p, old, f"{i}-experiment")
        s.add_segment("experiment", e, p, old, old)
    insert(engine_for(url), s)
    _files(tmp_path / "store", s)
    days = {"project_logs": 30, "experiment": 30}
    return projects, write_policies(tmp_path / "p", policy_toml(days)), f"file://{tmp_path}/store"


def test_a_segment_written_after_its_group_looked_is_still_marked(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups mark the expired segments found for their chunk beforehand, by key. An
    expired segment written after that (and one changed so that it no longer expires)
    does not slip by: the chunk's last look finds the new one, its target goes back to
    its segments phase and the per-target path marks it; the changed one stays live."""
    from retention import segments

    projects, policies, store = _two_projects_with_segments(pg_url, tmp_path)
    old = NOW - timedelta(days=80)
    real = segments.expired_live_ids_many
    late_id, young_id = UUID(int=0xFEED, version=4), []

    def then_a_new_one(conn, tables, resolutions):  # type: ignore[no-untyped-def]
        found = real(conn, tables, resolutions)
        late = Scenario()
        late.add_segment("project_logs", projects[0], projects[0], old, old, segment_id=late_id)
        insert(engine_for(pg_url), late)
        changed = found[(projects[1], "project_logs")][0]
        young_id.append(changed)
        with engine_for(pg_url).begin() as other:
            other.exec_driver_sql(
                "UPDATE segments SET max_created = %(at)s WHERE segment_id = %(s)s",
                {"at": NOW, "s": changed},
            )
        return found

    monkeypatch.setattr(segments, "expired_live_ids_many", then_a_new_one)
    done = purge(worker(pg_url, policies, object_store_url=store))
    assert done.status is RunStatus.SUCCEEDED
    files = _state(pg_url)[2]
    assert files[str(late_id)] == "unused"
    assert files[str(young_id[0])] == "live"
    marked = {o.target.key: o.segments for o in done.outcomes}
    assert marked == {
        f"{projects[0]}/project_logs": 2,
        f"{projects[0]}/experiment": 1,
        f"{projects[1]}/project_logs": 0,
        f"{projects[1]}/experiment": 1,
    }
    assert sorted(files.values()).count("unused") == 4
    assert surviving_rows(engine_for(pg_url)) == set()
    assert registry(engine_for(pg_url)) == {("project_logs", str(p)) for p in projects}


def test_a_segment_with_a_lower_id_written_before_the_group_is_marked(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One of the segments found for a target goes (compacted away) before its group,
    and a new expired one with a lower id than the others comes: the group marks what is
    left of those found, sees that it marked fewer, finds the new one, and the per-target
    path marks it from the start of the index (not after the last one the group marked,
    which would pass it by)."""
    from retention import segments

    p = UUID(int=1, version=4)
    old = NOW - timedelta(days=90)
    s = Scenario()
    s.add_object("project_logs", p, p, NOW - timedelta(days=400))
    s.add_event("project_logs", p, p, old, "old")
    first, second, new = (UUID(int=n, version=4) for n in (0x10, 0x20, 0x05))
    for segment_id in (first, second):
        s.add_segment("project_logs", p, p, old, old, segment_id=segment_id)
    insert(engine_for(pg_url), s)
    store = tmp_path / "store"
    _files(store, s)
    policies = write_policies(tmp_path / "p", policy_toml({"project_logs": 30}))
    real = segments.expired_live_ids_many

    def then_compacted(conn, tables, resolutions):  # type: ignore[no-untyped-def]
        found = real(conn, tables, resolutions)
        assert found[(p, "project_logs")] == [first, second]
        with engine_for(pg_url).begin() as other:
            other.exec_driver_sql("DELETE FROM segments WHERE segment_id = %(s)s", {"s": first})
        late = Scenario()
        late.add_segment("project_logs", p, p, old, old, segment_id=new)
        insert(engine_for(pg_url), late)
        return found

    monkeypatch.setattr(segments, "expired_live_ids_many", then_compacted)
    done = purge(worker(pg_url, policies, object_store_url=f"file://{store}"))
    assert done.status is RunStatus.SUCCEEDED
    assert _state(pg_url)[2] == {str(second): "unused", str(new): "unused"}
    assert [o.segments for o in done.outcomes] == [2]


@pytest.mark.parametrize("where", ["before the chunk", "after the chunk"])
def test_a_timeout_looking_for_a_chunks_segments_marks_them_all_the_same(
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """The chunk's one look at the segments index gives up on a statement timeout: the
    run goes on, each group looking for its own segments (before), or every target of
    the chunk looking again alone (after); every expired segment is marked either way."""
    import psycopg

    from retention import segments

    _, policies, store = _two_projects_with_segments(pg_url, tmp_path)
    name = "expired_live_ids_many" if where == "before the chunk" else "with_marks_left"
    real = getattr(segments, name)
    calls: list[int] = []

    def times_out(conn, tables, resolutions):  # type: ignore[no-untyped-def]
        calls.append(len(resolutions))
        if len(calls) == 1 and (name == "expired_live_ids_many" or len(resolutions) == 2):
            cause = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
            raise sa.exc.OperationalError("SELECT", {}, cause)
        return real(conn, tables, resolutions)

    monkeypatch.setattr(segments, name, times_out)
    done = purge(worker(pg_url, policies, object_store_url=store))
    assert done.status is RunStatus.SUCCEEDED
    said = "each group looks alone" if name == "expired_live_ids_many" else "each looks again"
    assert any(said in r.getMessage() for r in caplog.records)
    files = _state(pg_url)[2]
    assert sorted(files.values()) == ["live", "live", "unused", "unused", "unused", "unused"]
    assert sorted(o.segments for o in done.outcomes) == [1, 1, 1, 1]
    assert surviving_rows(engine_for(pg_url)) == set()
