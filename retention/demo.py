"""A synthetic data plane in the embedded SQLite default, for ``retention demo``.

Four projects with all three object types over 400 days: one with a short logs policy, one
under a legal hold, one on the org defaults, one with an experiment policy and a held
experiment. Everything is relative to ``now`` so the demo always has expired data.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import Engine, insert

from . import migrate, planfile, report
from .db import make_engine, parse_database_url, translate_errors, use_wal
from .models import ObjectType, RunReport
from .objectstore import ObjectStore, open_store
from .settings import Settings, load_settings
from .tables import DataPlaneTables

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


ACME_WEB = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
ACME_RESEARCH = UUID("8a1d2f3e-4b5c-4d6e-8f70-8192a3b4c5d6")
BETA_CHAT = UUID("b3e4f5a6-b7c8-4d9e-a0f1-23456789abcd")
GAMMA_EVAL = UUID("c0ffee00-1234-4abc-8def-0123456789ab")
HELD_EXPERIMENT = UUID("0b7e0000-0000-4000-8000-00000000e001")

PROJECTS = {
    ACME_WEB: "acme-web",
    ACME_RESEARCH: "acme-research",
    BETA_CHAT: "beta-chat",
    GAMMA_EVAL: "gamma-eval",
}

POLICY_TOML = f"""\
# Demo policies (written by `retention demo`).
[defaults]
project_logs = 90
experiment = 365
dataset = 180

[[projects]]
id = "{ACME_WEB}"
name = "acme-web"
project_logs = 30

[[projects]]
id = "{GAMMA_EVAL}"
name = "gamma-eval"
experiment = 60
dataset = 14

[[holds]]
project = "{ACME_RESEARCH}"
reason = "legal matter 2026-14"

[[holds]]
project = "{GAMMA_EVAL}"
object_type = "experiment"
object_id = "{HELD_EXPERIMENT}"
reason = "benchmark baseline"

[safety]
min_retention_days = 1
"""

SPAN_DAYS = 400


@dataclass(frozen=True)
class DemoData:
    objects: int
    events: int
    segments: int = 0
    files: int = 0


def _uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


def _objects(rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for project, name in PROJECTS.items():
        rows.append(
            dict(
                object_type="project_logs",
                object_id=project,
                project_id=project,
                name=name,
                created=now - timedelta(days=SPAN_DAYS),
            )
        )
        for i in range(8):  # experiments from 10 to 395 days old
            object_id = HELD_EXPERIMENT if (project == GAMMA_EVAL and i == 7) else _uuid(rng)
            rows.append(
                dict(
                    object_type="experiment",
                    object_id=object_id,
                    project_id=project,
                    name=f"{name}-exp-{i}",
                    created=now - timedelta(days=10 + i * 55),
                )
            )
        for i in range(2):
            rows.append(
                dict(
                    object_type="dataset",
                    object_id=_uuid(rng),
                    project_id=project,
                    name=f"{name}-ds-{i}",
                    created=now - timedelta(days=SPAN_DAYS),
                )
            )
    return rows


def _events(
    rng: random.Random, now: datetime, objects: list[dict[str, Any]], count: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    xact = 1_000_000
    for n in range(count):
        index = rng.randrange(len(objects))
        obj = objects[index]
        if obj["object_type"] == ObjectType.EXPERIMENT:
            # experiment rows are written within a day of the experiment's creation
            created = obj["created"] + timedelta(seconds=rng.uniform(0, 86_400))
        else:
            created = now - timedelta(seconds=rng.uniform(0, SPAN_DAYS * 86_400))
        xact += 1
        yield (
            index,
            dict(
                object_type=obj["object_type"],
                object_id=obj["object_id"],
                project_id=obj["project_id"],
                id=f"row-{n}",
                _xact_id=xact,
                created=min(created, now),
                data={"input": "synthetic", "n": n},
            ),
        )


SEGMENT_DAYS = 30
ROW_BYTES = 420  # what one row costs in a segment file, roughly


def seed(
    engine: Engine,
    tables: DataPlaneTables,
    *,
    now: datetime,
    events: int,
    seed: int = 7,
    store: ObjectStore | None = None,
) -> DemoData:
    """Create the reference schema and fill it; the database must be empty.

    With a ``store``, every object's rows are also cut into segment files (30 days each,
    one per experiment), indexed in ``segments``; a few old ones are already unused, two
    days ago (past the default grace) or an hour ago (in grace), so one run shows the
    whole lifecycle.
    """
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not security
    tables.metadata.create_all(engine)
    objects = _objects(rng, now)
    buckets: Counter[tuple[int, int]] = Counter()  # (object index, 30-day bucket) -> rows
    with engine.begin() as conn:
        conn.execute(insert(tables.objects), objects)
        chunk: list[dict[str, Any]] = []
        for index, row in _events(rng, now, objects, events):
            buckets[(index, _bucket(now, row["created"], objects[index]))] += 1
            chunk.append(row)
            if len(chunk) == 10_000:
                conn.execute(insert(tables.events), chunk)
                chunk = []
        if chunk:
            conn.execute(insert(tables.events), chunk)
    files = 0
    segment_rows: list[dict[str, Any]] = []
    if store is not None:
        segment_rows = _segments(rng, now, objects, buckets)
        for row in segment_rows:
            store.put(row["object_key"], b"demo segment " + row["object_key"].encode())
            files += 1
        with engine.begin() as conn:
            conn.execute(insert(tables.segments), segment_rows)
    return DemoData(objects=len(objects), events=events, segments=len(segment_rows), files=files)


def _bucket(now: datetime, created: datetime, obj: dict[str, Any]) -> int:
    if obj["object_type"] == ObjectType.EXPERIMENT:
        return 0
    return int((now - created).total_seconds() // (SEGMENT_DAYS * 86_400))


def _segments(
    rng: random.Random,
    now: datetime,
    objects: list[dict[str, Any]],
    buckets: Counter[tuple[int, int]],
) -> list[dict[str, Any]]:
    rows = []
    for (index, bucket), count in sorted(buckets.items()):
        obj = objects[index]
        if obj["object_type"] == ObjectType.EXPERIMENT:
            low = obj["created"]
            high = min(obj["created"] + timedelta(days=1), now)
        else:
            high = now - timedelta(days=bucket * SEGMENT_DAYS)
            low = now - timedelta(days=(bucket + 1) * SEGMENT_DAYS)
        segment_id = _uuid(rng)
        rows.append(
            dict(
                segment_id=segment_id,
                object_type=obj["object_type"],
                object_id=obj["object_id"],
                project_id=obj["project_id"],
                min_created=low,
                max_created=high,
                row_count=count,
                byte_size=count * ROW_BYTES,
                object_key=f"{obj['object_type']}/{obj['project_id']}/{obj['object_id']}/"
                f"{segment_id}.seg",
                state="live",
                unused_at=None,
            )
        )
    # A few of the oldest log segments were marked by an earlier run: two days ago (past the
    # default 24 h grace, so this run sweeps them) and an hour ago (still in grace).
    old_logs = sorted(
        (r for r in rows if r["object_type"] == "project_logs" and r["project_id"] == BETA_CHAT),
        key=lambda r: r["max_created"],
    )
    for row, ago in zip(
        old_logs[:3], (timedelta(days=2), timedelta(days=2), timedelta(hours=1)), strict=False
    ):
        row["state"] = "unused"
        row["unused_at"] = now - ago
    return rows


def write_policies(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.toml"):
        old.unlink()
    path = folder / "demo.toml"
    path.write_text(POLICY_TOML, encoding="utf-8")
    return path


def reset_file(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            candidate.unlink()


@dataclass(frozen=True)
class DemoRun:
    plan_path: Path
    store_url: str | None
    database_url: str
    policy_file: Path
    data: DemoData
    dry_run: RunReport
    purge: RunReport


def run(
    settings: Settings, *, events: int = 120_000, seed_value: int = 7, clock: Clock | None = None
) -> DemoRun:
    """Seed ``<state dir>/demo.sqlite3`` from scratch, then dry-run and purge it."""
    from . import engine as engine_module

    path = settings.state_dir / "demo.sqlite3"
    reset_file(path)
    url = f"sqlite:///{path}"
    policy_file = write_policies(settings.state_dir / "demo-policies")
    store_dir = settings.state_dir / "demo-store"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    now = (clock or _utc_now)()
    demo_settings = load_settings(
        database_url=url,
        policy_dir=policy_file.parent,
        state_dir=settings.state_dir,
        batch_size=settings.batch_size,
        object_store_url=f"file://{store_dir.resolve()}",
        now=now,  # the dry run and the purge share one pinned now
    )
    store = open_store(demo_settings, create=True)
    worker = engine_module.Worker.from_settings(demo_settings)
    if clock is not None:
        worker = replace(worker, clock=clock)
    database = parse_database_url(url)
    with translate_errors(database):
        db_engine = make_engine(database, create=True)
        try:
            data = seed(
                db_engine,
                worker.tables,
                now=worker.pinned_now(),
                events=events,
                seed=seed_value,
                store=store,
            )
            migrate.upgrade(db_engine)
            use_wal(db_engine)
        finally:
            db_engine.dispose()
    dry = engine_module.plan(worker, identify=True)
    # The reviewed flow: the dry run goes to a plan file, and the purge applies exactly that
    # plan (the first run on a database needs such a review).
    plan_path = settings.state_dir / "demo-plan.json"
    plan_path.write_text(
        json.dumps(planfile.seal(report.report_document(dry)), indent=2), encoding="utf-8"
    )
    done = engine_module.purge(worker, mode="demo", plan_file=planfile.read(plan_path))
    return DemoRun(
        plan_path=plan_path,
        store_url=demo_settings.object_store_url,
        database_url=url,
        policy_file=policy_file,
        data=data,
        dry_run=dry,
        purge=done,
    )
