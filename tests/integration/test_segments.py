"""Segments: what expires, two-phase deletion (mark, grace, sweep), restore, faults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention import maintenance
from retention.errors import ObjectStoreError
from retention.models import ObjectType, RunStatus
from retention.segments import RestoreFilter
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.stores import FileStore, S3Store
from tests.support import NOW, Scenario, insert, policy_toml, segment_states

P = UUID("10000000-0000-4000-8000-000000000001")
Q = UUID("20000000-0000-4000-8000-000000000002")  # no policy at all
DS1 = UUID("d1000000-0000-4000-8000-000000000001")
DS2 = UUID("d2000000-0000-4000-8000-000000000002")  # held
EXP_OLD = UUID("e1000000-0000-4000-8000-000000000001")
EXP_NEW = UUID("e2000000-0000-4000-8000-000000000002")
EXP_GONE = UUID("e3000000-0000-4000-8000-000000000003")  # not in the registry


def day(n: float) -> Any:
    return NOW - timedelta(days=n)


@dataclass
class World:
    scenario: Scenario
    policies: Path
    names: dict[str, str]  # letter -> segment id
    keys: dict[str, str]  # letter -> object key


def _world(db_url: str, store: FileStore | S3Store, tmp_path: Path) -> World:
    s = Scenario()
    s.add_object("project_logs", P, P, day(400))
    s.add_object("project_logs", Q, Q, day(400))
    s.add_object("dataset", DS1, P, day(400))
    s.add_object("dataset", DS2, P, day(400))
    s.add_object("experiment", EXP_OLD, P, day(100))
    s.add_object("experiment", EXP_NEW, P, day(5))
    s.add_event("experiment", EXP_OLD, P, day(99), "exp-old-row")
    segments = {
        "A": s.add_segment("project_logs", P, P, day(60), day(40), size=100),  # expired
        "B": s.add_segment("project_logs", P, P, day(40), day(20), size=200),  # straddling
        "C": s.add_segment("project_logs", P, P, day(20), day(1), size=300),  # new
        "E": s.add_segment("dataset", DS1, P, day(30), day(11), size=400),  # expired (10 d)
        "F": s.add_segment("dataset", DS2, P, day(30), day(11), size=500),  # held object
        "G": s.add_segment("experiment", EXP_OLD, P, day(100), day(1), size=600),  # expired exp
        "H": s.add_segment("experiment", EXP_NEW, P, day(5), day(4), size=700),  # live exp
        "I": s.add_segment("experiment", EXP_GONE, P, day(50), day(49), size=800),  # unregistered
        "J": s.add_segment("project_logs", Q, Q, day(300), day(200), size=900),  # no policy
        "K": s.add_segment(
            "project_logs", P, P, day(90), day(80), size=1000, state="unused", unused_at=day(2)
        ),  # marked two days ago
    }
    insert(engine_for(db_url), s)
    for row in s.segments:
        store.write(row["object_key"])
    policies = write_policies(
        tmp_path / "p",
        policy_toml(
            projects=[(P, {"project_logs": 30, "dataset": 10, "experiment": 60})],
            holds=[
                {
                    "project": str(P),
                    "object_type": "dataset",
                    "object_id": str(DS2),
                    "reason": "audit",
                }
            ],
        ),
    )
    return World(
        scenario=s,
        policies=policies,
        names={k: str(v["segment_id"]) for k, v in segments.items()},
        keys={k: v["object_key"] for k, v in segments.items()},
    )


def _w(db_url: str, world: World, store: FileStore | S3Store, **kw: Any):
    return worker(db_url, world.policies, **store.settings(), **kw)


def _states(db_url: str, world: World) -> dict[str, str]:
    found = segment_states(engine_for(db_url))
    return {
        letter: found[sid][0] if sid in found else "gone" for letter, sid in world.names.items()
    }


def test_dry_run_reports_segments_per_target(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    world = _world(db_url, file_store, tmp_path)
    report = engine_module.plan(_w(db_url, world, file_store))
    by_key = {t.key: t.counts for t in report.plan.targets}
    logs = by_key[f"{P}/project_logs"]
    assert (logs.segments, logs.bytes, logs.straddling_segments) == (1, 100, 1)
    dataset = by_key[f"{P}/dataset"]
    assert (dataset.segments, dataset.bytes, dataset.straddling_segments) == (1, 400, 0)
    experiment = by_key[f"{P}/experiment"]
    assert (experiment.segments, experiment.bytes) == (2, 1400)  # G and the unregistered I
    assert f"{Q}/project_logs" not in by_key
    unused = report.plan.unused_segments
    assert (unused.segments, unused.bytes, unused.sweepable, unused.sweepable_bytes) == (
        1,
        1000,
        1,
        1000,
    )
    assert unused.next_sweepable_at is None


def test_purge_marks_then_sweeps_after_the_grace_period(
    db_url: str, store: FileStore | S3Store, tmp_path: Path
) -> None:
    world = _world(db_url, store, tmp_path)
    report = purge(_w(db_url, world, store))  # default grace: 24 h

    assert report.status is RunStatus.SUCCEEDED
    assert _states(db_url, world) == {
        "A": "unused",
        "B": "live",
        "C": "live",
        "E": "unused",
        "F": "live",
        "G": "unused",
        "H": "live",
        "I": "unused",
        "J": "live",
        "K": "gone",
    }
    assert not store.exists(world.keys["K"])  # swept: unused for two days
    for letter in "ABCEFGHIJ":
        assert store.exists(world.keys[letter])  # marked files stay through the grace period
    assert report.sweep is not None
    assert (report.sweep.files, report.sweep.bytes, report.sweep.missing) == (1, 1000, 0)
    marked = {o.target.key: (o.segments, o.bytes) for o in report.outcomes}
    assert marked[f"{P}/project_logs"] == (1, 100)
    assert marked[f"{P}/experiment"] == (2, 1400)
    with engine_for(db_url).connect() as conn:
        receipts = conn.exec_driver_sql(
            "SELECT action, sum(segments), sum(bytes) FROM retention_receipts "
            "WHERE segments > 0 GROUP BY action ORDER BY action"
        ).all()
    assert [tuple(r) for r in receipts] == [("mark", 4, 1900), ("sweep", 1, 1000)]


def test_grace_boundary_with_an_injected_clock(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    world = _world(db_url, file_store, tmp_path)
    purge(_w(db_url, world, file_store))  # marks A, E, G, I at NOW
    just_before = NOW + timedelta(hours=24) - timedelta(microseconds=1)
    early = maintenance.sweep_only(
        _w(db_url, world, file_store, now=NOW, clock=lambda: just_before)
    )
    assert early.outcome.files == 0
    assert _states(db_url, world)["A"] == "unused" and file_store.exists(world.keys["A"])
    exactly = NOW + timedelta(hours=24)
    done = maintenance.sweep_only(_w(db_url, world, file_store, now=NOW, clock=lambda: exactly))
    assert (done.outcome.files, done.outcome.bytes) == (4, 1900)
    assert {k for k, v in _states(db_url, world).items() if v == "gone"} == set("AEGIK")
    assert file_store.keys() == {world.keys[letter] for letter in "BCFHJ"}


def test_grace_zero_sweeps_what_the_same_run_marked(
    db_url: str, store: FileStore | S3Store, tmp_path: Path
) -> None:
    world = _world(db_url, store, tmp_path)
    report = purge(_w(db_url, world, store, grace_period="0"))
    assert report.sweep is not None and report.sweep.files == 5
    assert store.keys() == {world.keys[letter] for letter in "BCFHJ"}
    assert {k for k, v in _states(db_url, world).items() if v != "gone"} == set("BCFHJ")


def test_a_missing_file_counts_as_deleted(
    db_url: str, store: FileStore | S3Store, tmp_path: Path
) -> None:
    world = _world(db_url, store, tmp_path)
    if isinstance(store, FileStore):
        (store.root / world.keys["K"]).unlink()
    else:
        store.client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}/{world.keys['K']}")
    report = purge(_w(db_url, world, store))
    assert report.sweep is not None
    assert report.sweep.files == 1
    assert report.sweep.missing == (1 if isinstance(store, FileStore) else 0)  # S3: silent
    assert _states(db_url, world)["K"] == "gone"


@pytest.mark.parametrize("key", ["../outside.seg", "/etc/passwd", "a//b.seg", "a/./b.seg"])
def test_keys_outside_the_store_are_refused(
    db_url: str, file_store: FileStore, tmp_path: Path, key: str
) -> None:
    world = _world(db_url, file_store, tmp_path)
    outside = tmp_path / "outside.seg"
    outside.write_bytes(b"not ours")
    with engine_for(db_url).begin() as conn:
        conn.exec_driver_sql(
            "UPDATE segments SET object_key = %s WHERE segment_id = %s"
            if engine_for(db_url).dialect.name == "postgresql"
            else "UPDATE segments SET object_key = ? WHERE segment_id = ?",
            (key, world.names["K"]),
        )
    report = purge(_w(db_url, world, file_store))
    assert report.sweep is not None
    assert (report.sweep.refused, report.sweep.files) == (1, 0)
    assert _states(db_url, world)["K"] == "unused"  # the index row stays, reported
    assert outside.read_bytes() == b"not ours"
    assert any("outside the store URL" in w for w in report.warnings)


def test_a_store_failure_keeps_the_index_row_and_the_next_sweep_finishes(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    world = _world(db_url, file_store, tmp_path)
    # A real failure on real files: the key names a non-empty folder, which a file delete
    # cannot remove (permissions would not stop root, under which CI runs).
    blocked = file_store.root / world.keys["K"]
    blocked.unlink()
    blocked.mkdir()
    (blocked / "inside").write_bytes(b"x")
    report = purge(_w(db_url, world, file_store, grace_period="0"))
    assert report.sweep is not None
    assert (report.sweep.files, report.sweep.failed) == (4, 1)
    assert report.status is RunStatus.PARTIAL
    assert _states(db_url, world)["K"] == "unused"
    # the operator clears the obstacle; the next sweep completes
    (blocked / "inside").unlink()
    blocked.rmdir()
    done = maintenance.sweep_only(_w(db_url, world, file_store, grace_period="0"))
    assert (done.outcome.files, done.outcome.missing, done.outcome.failed) == (1, 1, 0)
    assert _states(db_url, world)["K"] == "gone"


def test_an_unreachable_store_stops_the_run_before_anything_is_touched(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    world = _world(db_url, file_store, tmp_path)
    before = _states(db_url, world)
    missing = FileStore(tmp_path / "no-such-store")
    with pytest.raises(ObjectStoreError) as caught:
        purge(_w(db_url, world, missing))
    assert caught.value.exit_code == 4
    assert "no-such-store" in caught.value.message
    assert _states(db_url, world) == before
    with engine_for(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar() == 1


def test_an_unreachable_s3_endpoint_is_exit_4(
    db_url: str, tmp_path: Path, file_store: FileStore
) -> None:
    from tests.pg import free_port

    world = _world(db_url, file_store, tmp_path)
    dead = S3Store(
        endpoint=f"http://127.0.0.1:{free_port()}", bucket="nowhere", prefix="x", client=None
    )
    with pytest.raises(ObjectStoreError):
        purge(_w(db_url, world, dead, object_store_max_retries=0, object_store_timeout="2s"))
    assert _states(db_url, world)["A"] == "live"


def test_without_a_store_segments_are_reported_not_marked(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    world = _world(db_url, file_store, tmp_path)
    report = purge(worker(db_url, world.policies))
    assert report.sweep is None
    assert set(_states(db_url, world).values()) <= {"live", "unused"}
    assert _states(db_url, world)["A"] == "live"
    assert any(
        "RETENTION_OBJECT_STORE_URL is not set: 4 expired segments" in w for w in report.warnings
    )


def test_restore_within_grace_then_the_next_run_marks_again(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    world = _world(db_url, file_store, tmp_path)
    purge(_w(db_url, world, file_store))
    later = NOW + timedelta(hours=3)
    restored = maintenance.restore(
        _w(db_url, world, file_store, now=NOW, clock=lambda: later),
        RestoreFilter(project_id=P, object_type=ObjectType.PROJECT_LOGS),
    )
    assert [str(f.segment_id) for f in restored.result.restored] == [world.names["A"]]
    assert restored.result.past_grace == 0
    assert _states(db_url, world)["A"] == "live"
    # the policy still expires it: the next run marks it again
    again = purge(_w(db_url, world, file_store, now=later, clock=lambda: later))
    assert _states(db_url, world)["A"] == "unused"
    assert again.sweep is not None and again.sweep.files == 0


def test_restore_refuses_past_grace_and_after_sweep(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    world = _world(db_url, file_store, tmp_path)
    # K has been unused for two days: past the 24 h grace
    late = maintenance.restore(
        _w(db_url, world, file_store), RestoreFilter(segment_id=UUID(world.names["K"]))
    )
    assert late.result.restored == [] and late.result.past_grace == 1
    assert _states(db_url, world)["K"] == "unused"
    purge(_w(db_url, world, file_store))  # sweeps K
    gone = maintenance.restore(
        _w(db_url, world, file_store), RestoreFilter(segment_id=UUID(world.names["K"]))
    )
    assert gone.result.restored == [] and gone.result.past_grace == 0


def test_restore_filters_by_object_and_since(
    db_url: str, file_store: FileStore, tmp_path: Path
) -> None:
    world = _world(db_url, file_store, tmp_path)
    purge(_w(db_url, world, file_store))  # marks A, E, G, I at NOW
    only = maintenance.restore(
        _w(db_url, world, file_store),
        RestoreFilter(project_id=P, object_id=EXP_OLD),
    )
    assert [str(f.segment_id) for f in only.result.restored] == [world.names["G"]]
    none = maintenance.restore(
        _w(db_url, world, file_store),
        RestoreFilter(project_id=P, since=NOW + timedelta(seconds=1)),
    )
    assert none.result.restored == []


def test_segments_check_reports_both_differences(
    db_url: str, store: FileStore | S3Store, tmp_path: Path
) -> None:
    world = _world(db_url, store, tmp_path)
    store.write("project_logs/stray.seg")
    if isinstance(store, FileStore):
        (store.root / world.keys["J"]).unlink()
    else:
        store.client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}/{world.keys['J']}")
    found = maintenance.check(_w(db_url, world, store), "project_logs/")
    assert found.unindexed_files == ["project_logs/stray.seg"]
    assert found.missing_files == [world.keys["J"]]
    assert store.exists("project_logs/stray.seg")  # reported, never deleted
    assert found.files == 5 and found.indexed == 5  # A, B, C, J, K


def test_s3_sweep_uses_bulk_deletes(db_url: str, s3_store: S3Store, tmp_path: Path) -> None:
    s = Scenario()
    s.add_object("project_logs", P, P, day(400))
    for _ in range(2500):
        row = s.add_segment(
            "project_logs", P, P, day(90), day(80), size=1, state="unused", unused_at=day(2)
        )
        s3_store.write(row["object_key"])
    insert(engine_for(db_url), s)
    policies = write_policies(tmp_path / "p", policy_toml(projects=[(P, {"project_logs": 30})]))
    done = maintenance.sweep_only(worker(db_url, policies, **s3_store.settings()))
    assert (done.outcome.files, done.outcome.batches, done.outcome.requests) == (2500, 3, 3)
    assert s3_store.keys() == set()
