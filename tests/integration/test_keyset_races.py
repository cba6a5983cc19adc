"""The per-target keyset path: short batches under concurrency, ties on created, resumes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import sqlalchemy as sa

from retention.dataplane import keys_digest
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import StopAfter, purge, worker, write_policies
from tests.integration.test_races import (
    WAIT,
    _in_background,
    _open_transaction,
    _purge_waits_on_a_lock,
    _wait_until,
)
from tests.support import NOW, Scenario, insert, policy_toml, registry, surviving_rows

P = UUID("c1000000-0000-4000-8000-000000000001")


# --- a batch made short by a concurrent writer does not end its phase -----------------------


def test_row_changed_by_a_writer_does_not_end_the_rows_phase_early(
    pg_url: str, tmp_path: Path
) -> None:
    """A row of the first batch is moved past the cutoff while the DELETE waits for its lock:
    the batch deletes batch_size - 1 rows. That alone does not end the rows phase (only
    ``rows_left`` does), so the run deletes every other expired row and succeeds."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    for i in range(40):
        s.add_event("project_logs", P, P, NOW - timedelta(days=100, minutes=-i), f"old-{i}")
    kept = {
        s.add_event("project_logs", P, P, NOW - timedelta(days=10, minutes=i), f"new-{i}")
        for i in range(5)
    }
    engine = engine_for(pg_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    w = worker(pg_url, policies, batch_size=10, delete_strategy="keyset")

    with _open_transaction(pg_url) as other:
        other.execute(
            sa.text("UPDATE events SET created = :c WHERE id = 'old-3'"),
            {"c": NOW - timedelta(days=1)},
        )
        with _in_background(lambda: purge(w)) as running:
            _wait_until(_purge_waits_on_a_lock(pg_url, "DELETE FROM events"), "the wait", running)
            other.commit()
            report = running.result(timeout=WAIT)

    left = surviving_rows(engine) - kept - {"old-3"}
    # either every other expired row is gone, or the run must not claim success
    assert not left or report.status is not RunStatus.SUCCEEDED, (
        f"{len(left)} expired rows left in a {report.status} run"
    )


def test_registry_entry_changed_by_a_writer_does_not_end_the_registry_phase_early(
    pg_url: str, tmp_path: Path
) -> None:
    """The same for the registry phase: a short batch does not end it, ``registry_left``
    does."""
    s = Scenario()
    empties = [UUID(f"e5000000-0000-4000-8000-0000000000{i:02d}") for i in range(10)]
    for e in empties:  # expired experiments without rows: registry entries only
        s.add_object("experiment", e, P, NOW - timedelta(days=90))
    engine = engine_for(pg_url)
    insert(engine, s)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"experiment": 30}))
    w = worker(pg_url, policies, batch_size=3, delete_strategy="keyset")

    with _open_transaction(pg_url) as other:
        other.execute(
            sa.text("UPDATE objects SET created = :c WHERE object_id = :id"),
            {"c": NOW - timedelta(days=1), "id": empties[0]},
        )
        with _in_background(lambda: purge(w)) as running:
            _wait_until(_purge_waits_on_a_lock(pg_url, "DELETE FROM objects"), "the wait", running)
            other.commit()
            report = running.result(timeout=WAIT)

    left = registry(engine) - {("experiment", str(empties[0]))}
    assert not left or report.status is not RunStatus.SUCCEEDED, (
        f"{len(left)} expired registry entries left in a {report.status} run"
    )


# --- Gaps: ties on created across batches and across a resume ---------------------------------


def _ties(url: str, tmp_path: Path) -> tuple[sa.Engine, Path, set[str], set[str]]:
    """Logs and experiments whose rows share a handful of timestamps (ties across batches)."""
    s = Scenario()
    s.add_object("project_logs", P, P, NOW - timedelta(days=400))
    stamps = [NOW - timedelta(days=100), NOW - timedelta(days=50, microseconds=1)]
    cutoff = NOW - timedelta(days=30)
    gone: set[str] = set()
    kept: set[str] = set()
    for i in range(23):
        gone.add(s.add_event("project_logs", P, P, stamps[i % 2], f"log-{i}"))
    for i in range(4):
        kept.add(s.add_event("project_logs", P, P, cutoff, f"log-at-{i}"))
    experiments = [UUID(f"e6000000-0000-4000-8000-00000000000{i}") for i in range(3)]
    for e in experiments:
        s.add_object("experiment", e, P, NOW - timedelta(days=60))
        for i in range(7):  # one timestamp, some newer than the cutoff: all go
            gone.add(s.add_event("experiment", e, P, stamps[1] + timedelta(days=40), f"{e}-{i}"))
    fresh = UUID("e7000000-0000-4000-8000-000000000000")
    s.add_object("experiment", fresh, P, cutoff)
    kept.add(s.add_event("experiment", fresh, P, stamps[0], "fresh-row"))
    engine = engine_for(url)
    insert(engine, s)
    policies = write_policies(
        tmp_path / "p", policy_toml(defaults={"project_logs": 30, "experiment": 30})
    )
    return engine, policies, gone, kept


def _key(object_type: str, text: str) -> tuple[str, ...]:
    parts = text.split("/")
    if object_type == "experiment":
        return (parts[0], datetime.fromisoformat(parts[1]).isoformat(), f"{int(parts[2]):012d}")
    return (datetime.fromisoformat(parts[0]).isoformat(), f"{int(parts[1]):012d}")


def test_ties_on_created_across_batches_and_a_resume(db_url: str, tmp_path: Path) -> None:
    """Each receipt's first/last key range holds exactly the keys its digest covers, the
    ranges do not overlap, and together they are every deleted row (ties on created split
    across batches and across an interruption)."""
    engine, policies, gone, kept = _ties(db_url, tmp_path)
    with engine.connect() as conn:
        keys = {
            r[0]: (
                r[1],
                str(r[2]),
                datetime.fromisoformat(str(r[3])).replace(tzinfo=UTC)
                if isinstance(r[3], str)
                else r[3].astimezone(UTC),
                int(r[4]),
            )
            for r in conn.exec_driver_sql(
                "SELECT id, object_type, object_id, created, sequence_id FROM events"
            )
        }
    first = purge(worker(db_url, policies, batch_size=4, should_stop=StopAfter(4)))
    assert first.status is RunStatus.PARTIAL
    second = purge(worker(db_url, policies, batch_size=4))
    assert second.resumed and second.status is RunStatus.SUCCEEDED
    assert surviving_rows(engine) == kept
    assert registry(engine) == {
        ("project_logs", str(P)),
        ("experiment", "e7000000-0000-4000-8000-000000000000"),
    }
    with engine.connect() as conn:
        receipts = conn.exec_driver_sql(
            "SELECT object_type, rows, first_key, last_key, keys_digest FROM retention_receipts "
            "WHERE rows > 0 ORDER BY id"
        ).all()

    def order_key(row_id: str) -> tuple[str, ...]:
        object_type, object_id, created, seq = keys[row_id]
        base = (created.isoformat(), f"{seq:012d}")
        return (object_id, *base) if object_type == "experiment" else base

    covered: list[str] = []
    for object_type, rows, first_key, last_key, digest in receipts:
        lo, hi = _key(object_type, first_key), _key(object_type, last_key)
        batch = [g for g in gone if keys[g][0] == object_type and lo <= order_key(g) <= hi]
        assert len(batch) == rows, (object_type, first_key, last_key)
        assert keys_digest(keys[g][3] for g in batch) == digest
        covered += batch
    assert sorted(covered) == sorted(gone)
