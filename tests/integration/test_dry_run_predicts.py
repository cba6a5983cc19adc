"""The dry run predicts the purge (DESIGN §5): at the same pinned now, what a dry run reports
per target (rows, expired experiments, segments, bytes) and as sweepable is what the purge
then deletes, marks and sweeps; an operator reviews the one to allow the other."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from retention import engine as engine_module
from retention import report
from retention.engine import Worker
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.stores import FileStore
from tests.support import (
    NOW,
    Scenario,
    insert,
    partition_events,
    policy_toml,
    segment_states,
    surviving_rows,
)

P1 = UUID("11000000-0000-4000-8000-000000000001")
P2 = UUID("22000000-0000-4000-8000-000000000002")
P3 = UUID("33000000-0000-4000-8000-000000000003")
D1 = UUID("d1000000-0000-4000-8000-000000000001")  # held object
D2 = UUID("d2000000-0000-4000-8000-000000000002")
D3 = UUID("d3000000-0000-4000-8000-000000000003")  # P3: no dataset policy (any more)
E_OLD = UUID("e1000000-0000-4000-8000-000000000001")
E_NEW = UUID("e2000000-0000-4000-8000-000000000002")
E_HELD = UUID("e3000000-0000-4000-8000-000000000003")
E_GONE = UUID("e4000000-0000-4000-8000-000000000004")  # segments, no registry entry
E_P2 = UUID("e5000000-0000-4000-8000-000000000005")
E_MIS = UUID("e6000000-0000-4000-8000-000000000006")
E_TWO = UUID("e7000000-0000-4000-8000-000000000007")


def day(n: float) -> datetime:
    return NOW - timedelta(days=n)


def _dry_and_purge(w: Worker) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dry run's JSON, then the purge's, at the same pinned now."""
    dry = json.loads(report.render(engine_module.plan(w), "json"))
    done = json.loads(report.render(purge(w), "json"))
    return dry, done


def _by_key(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{t['project_id']}/{t['object_type']}": t for t in doc["targets"]}


def _predicted(dry: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    return {
        k: (t["rows"], t["expired_objects"], t["segments"], t["bytes"])
        for k, t in _by_key(dry).items()
    }


def _done(done: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    return {
        k: (t["rows"], t["deleted_objects"], t["segments"], t["bytes"])
        for k, t in _by_key(done).items()
    }


def test_partition_drop_keeps_an_experiment_the_dry_run_keeps_whole(
    pg_url: str, tmp_path: Path
) -> None:
    """E_MIS expired (registry P1, 200 days old) but one of its rows is filed under P2: the
    dry run keeps it whole (and warns), counting only E_TWO's 3 rows. Both experiments'
    P1 rows fill the July partition, so the partition path drops it whole, E_MIS's rows
    with it: the purge deletes 6 rows where the dry run said 3."""
    engine = engine_for(pg_url)
    partition_events(engine, 8)
    s = Scenario()
    for p in (P1, P2):
        s.add_object("project_logs", p, p, day(400))
    s.add_object("experiment", E_MIS, P1, day(200))
    s.add_object("experiment", E_TWO, P1, day(200))
    july = datetime(2026, 7, 15, tzinfo=UTC)
    for i in range(3):
        s.add_event("experiment", E_MIS, P1, july, f"mis-p1-{i}")
        s.add_event("experiment", E_TWO, P1, july, f"two-{i}")
    s.add_event("experiment", E_MIS, P2, day(2), "mis-p2")
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))

    dry, done = _dry_and_purge(worker(pg_url, policies))

    key = f"{P1}/experiment"
    assert _predicted(dry)[key] == (3, 1, 0, 0)
    assert any("kept whole" in w for w in dry["warnings"])
    assert _done(done)[key] == (3, 1, 0, 0), "the purge deleted more than the dry run said"
    assert surviving_rows(engine) == {"mis-p1-0", "mis-p1-1", "mis-p1-2", "mis-p2"}


def test_a_segment_filed_under_another_project_is_marked_only_as_the_dry_run_said(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """E_OLD (registry P1) expires; one of its segments is filed under P2. The purge removed
    E_OLD's registry entry (target P1/experiment) before P2/experiment marked its segments,
    and then marked (and, with no grace, swept) that file too, as an unregistered
    experiment's: a deletion the dry run did not report. An experiment filed under another
    project too is now kept whole (rows, segments, entry), and the dry run says so."""
    s = Scenario()
    for p in (P1, P2):
        s.add_object("project_logs", p, p, day(400))
    s.add_object("experiment", E_OLD, P1, day(60))
    s.add_event("experiment", E_OLD, P1, day(59), "e-old")
    s.add_segment("experiment", E_OLD, P1, day(59), day(58), size=5)
    stray = s.add_segment("experiment", E_OLD, P2, day(59), day(58), size=7)
    s.add_object("experiment", E_P2, P2, day(60))  # gives P2/experiment work of its own
    s.add_event("experiment", E_P2, P2, day(59), "e-p2")
    insert(engine_for(db_url), s)
    for row in s.segments:
        file_store.write(row["object_key"])
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))
    w = worker(db_url, policies, grace_period="0", **file_store.settings())

    dry, done = _dry_and_purge(w)

    predicted, did = _predicted(dry), _done(done)
    assert predicted[f"{P1}/experiment"] == (0, 0, 0, 0)  # E_OLD is kept whole
    assert any(str(E_OLD) in w and "kept whole" in w for w in dry["warnings"])
    assert did == predicted, "the purge marked segments the dry run did not report"
    assert str(stray["segment_id"]) in segment_states(engine_for(db_url))
    assert file_store.exists(stray["object_key"])
    planned_segments = sum(v[2] for v in predicted.values())
    planned_bytes = sum(v[3] for v in predicted.values())
    assert (done["sweep"]["files"], done["sweep"]["bytes"]) == (planned_segments, planned_bytes)


def _varied_world(url: str, store: FileStore) -> None:
    """Three projects: logs with expired, straddling and new segments and unused ones past
    and within the grace period; datasets (one held, one of a project without a dataset
    policy, each with an unused segment past grace); experiments old, new, held, of a
    project-wide experiment hold, and one with segments but no registry entry."""
    s = Scenario()
    for p in (P1, P2, P3):
        s.add_object("project_logs", p, p, day(400))
        for i, age in enumerate((100, 50, 31, 29, 2)):
            s.add_event("project_logs", p, p, day(age), f"{p.hex[:2]}-l-{i}")
        s.add_segment("project_logs", p, p, day(90), day(40), size=11)
        s.add_segment("project_logs", p, p, day(40), day(10), size=13)  # straddling
        s.add_segment("project_logs", p, p, day(9), day(1), size=17)
        s.add_segment(
            "project_logs", p, p, day(99), day(80), size=19, state="unused", unused_at=day(3)
        )
        s.add_segment(
            "project_logs",
            p,
            p,
            day(99),
            day(80),
            size=23,
            state="unused",
            unused_at=NOW - timedelta(hours=2),
        )
    for d, p in ((D1, P1), (D2, P1), (D3, P3)):
        s.add_object("dataset", d, p, day(400))
        for i, age in enumerate((60, 45, 3)):
            s.add_event("dataset", d, p, day(age), f"{d.hex[:2]}-d-{i}")
        s.add_segment("dataset", d, p, day(60), day(45), size=29)
        s.add_segment("dataset", d, p, day(60), day(45), size=31, state="unused", unused_at=day(2))
    for e, p, age in ((E_OLD, P1, 60), (E_NEW, P1, 5), (E_HELD, P1, 70), (E_P2, P2, 70)):
        s.add_object("experiment", e, p, day(age))
        for i in range(3):
            s.add_event("experiment", e, p, day(age - 1 - i), f"{e.hex[:2]}-e-{i}")
        s.add_segment("experiment", e, p, day(age - 1), day(age - 3), size=37)
    s.add_event("experiment", E_OLD, P1, day(1), "e1-late")  # a new row of an old experiment
    s.add_segment("experiment", E_GONE, P1, day(200), day(190), size=41)
    s.add_segment(
        "experiment", E_GONE, P1, day(200), day(190), size=43, state="unused", unused_at=day(2)
    )
    insert(engine_for(url), s)
    for row in s.segments:
        store.write(row["object_key"])


VARIED_POLICY = policy_toml(
    defaults={"project_logs": 30, "experiment": 30},
    projects=[(P1, {"dataset": 30})],
    holds=[
        {"project": str(P1), "object_type": "dataset", "object_id": str(D1), "reason": "x"},
        {"project": str(P1), "object_type": "experiment", "object_id": str(E_HELD), "reason": "y"},
        {"project": str(P2), "object_type": "experiment", "reason": "z"},
    ],
)


def test_a_varied_world_dry_run_predicts_the_purge_and_its_sweep(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    """Per target, the dry run's rows, experiments, segments and bytes are what the purge
    deletes and marks. Its sweepable count must be what the purge's sweep deletes: of the
    7 unused segments past the grace period, D1's is held and D3's has no policy (a
    purge puts it back to live), so 5 files (131 bytes) are swept, not 7 (193)."""
    _varied_world(db_url, file_store)
    policies = write_policies(tmp_path / "p", VARIED_POLICY)

    dry, done = _dry_and_purge(worker(db_url, policies, **file_store.settings()))

    predicted = _predicted(dry)
    assert predicted[f"{P1}/project_logs"] == (3, 0, 1, 11)
    assert predicted[f"{P1}/experiment"] == (4, 1, 2, 37 + 41)  # E_OLD whole, E_GONE's file
    assert predicted[f"{P1}/dataset"] == (2, 0, 1, 29)  # D2 only: D1 is held
    assert predicted[f"{P2}/experiment"] == (0, 0, 0, 0)  # held
    assert _done(done) == predicted
    assert dry["totals"] == done["totals"]
    sweep = done["sweep"]
    assert (sweep["files"], sweep["bytes"]) == (5, 3 * 19 + 31 + 43)
    unused = dry["unused_segments"]
    assert (unused["sweepable"], unused["sweepable_bytes"]) == (sweep["files"], sweep["bytes"])
