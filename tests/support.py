"""Test data planes, built and checked without the worker's own SQL.

The DDL is DESIGN §3 verbatim (with the SQLite spellings of its types); rows are inserted
with plain SQL; expectations are computed in Python from the generated rows.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import sqlalchemy as sa

PG_DDL = [
    """CREATE TABLE objects (
      object_type text        NOT NULL,
      object_id   uuid        NOT NULL,
      project_id  uuid        NOT NULL,
      name        text,
      created     timestamptz NOT NULL,
      PRIMARY KEY (object_type, object_id))""",
    """CREATE TABLE events (
      sequence_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      object_type text        NOT NULL,
      object_id   uuid        NOT NULL,
      project_id  uuid        NOT NULL,
      id          text        NOT NULL,
      _xact_id    bigint      NOT NULL,
      created     timestamptz NOT NULL,
      data        jsonb)""",
    "CREATE INDEX events_project_type_created ON events (project_id, object_type, created)",
    "CREATE INDEX events_object_created ON events (object_type, object_id, created)",
    """CREATE TABLE segments (
      segment_id  uuid        PRIMARY KEY,
      object_type text        NOT NULL,
      object_id   uuid        NOT NULL,
      project_id  uuid        NOT NULL,
      min_created timestamptz NOT NULL,
      max_created timestamptz NOT NULL,
      row_count   bigint      NOT NULL,
      byte_size   bigint      NOT NULL,
      object_key  text        NOT NULL UNIQUE,
      state       text        NOT NULL DEFAULT 'live',
      unused_at   timestamptz)""",
]

# SQLite: uuids as canonical text, timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
SQLITE_DDL = [
    """CREATE TABLE objects (
      object_type text NOT NULL, object_id text NOT NULL, project_id text NOT NULL,
      name text, created text NOT NULL, PRIMARY KEY (object_type, object_id))""",
    """CREATE TABLE events (
      sequence_id INTEGER PRIMARY KEY, object_type text NOT NULL, object_id text NOT NULL,
      project_id text NOT NULL, id text NOT NULL, _xact_id bigint NOT NULL,
      created text NOT NULL, data text)""",
    "CREATE INDEX events_project_type_created ON events (project_id, object_type, created)",
    "CREATE INDEX events_object_created ON events (object_type, object_id, created)",
    """CREATE TABLE segments (
      segment_id text PRIMARY KEY, object_type text NOT NULL, object_id text NOT NULL,
      project_id text NOT NULL, min_created text NOT NULL, max_created text NOT NULL,
      row_count bigint NOT NULL, byte_size bigint NOT NULL, object_key text NOT NULL UNIQUE,
      state text NOT NULL DEFAULT 'live', unused_at text)""",
]

NOW = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


def create_reference_schema(engine: sa.Engine) -> None:
    ddl = SQLITE_DDL if engine.dialect.name == "sqlite" else PG_DDL
    with engine.begin() as conn:
        for statement in ddl:
            conn.exec_driver_sql(statement)


def _ts(engine: sa.Engine, value: datetime) -> Any:
    if engine.dialect.name == "sqlite":
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def _id(engine: sa.Engine, value: UUID) -> Any:
    return str(value)


@dataclass
class Scenario:
    objects: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)

    def add_segment(
        self,
        object_type: str,
        object_id: UUID,
        project_id: UUID,
        min_created: datetime,
        max_created: datetime,
        *,
        key: str | None = None,
        size: int = 1000,
        state: str = "live",
        unused_at: datetime | None = None,
        segment_id: UUID | None = None,
    ) -> dict[str, Any]:
        segment_id = segment_id or uuid.UUID(int=len(self.segments) + 1, version=4)
        row = dict(
            segment_id=segment_id,
            object_type=object_type,
            object_id=object_id,
            project_id=project_id,
            min_created=min_created,
            max_created=max_created,
            row_count=10,
            byte_size=size,
            object_key=key or f"{object_type}/{project_id}/{object_id}/{segment_id}.seg",
            state=state,
            unused_at=unused_at,
        )
        self.segments.append(row)
        return row

    def project_ids(self) -> list[UUID]:
        return sorted({o["project_id"] for o in self.objects})

    def add_object(
        self,
        object_type: str,
        object_id: UUID,
        project_id: UUID,
        created: datetime,
        name: str | None = None,
    ) -> None:
        self.objects.append(
            dict(
                object_type=object_type,
                object_id=object_id,
                project_id=project_id,
                name=name,
                created=created,
            )
        )

    def add_event(
        self,
        object_type: str,
        object_id: UUID,
        project_id: UUID,
        created: datetime,
        row_id: str | None = None,
    ) -> str:
        row_id = row_id or f"r{len(self.events)}"
        self.events.append(
            dict(
                object_type=object_type,
                object_id=object_id,
                project_id=project_id,
                id=row_id,
                _xact_id=len(self.events) + 1,
                created=created,
            )
        )
        return row_id


def insert(engine: sa.Engine, scenario: Scenario) -> None:
    objects = [
        {
            **o,
            "object_id": _id(engine, o["object_id"]),
            "project_id": _id(engine, o["project_id"]),
            "created": _ts(engine, o["created"]),
        }
        for o in scenario.objects
    ]
    events = [
        {
            **e,
            "object_id": _id(engine, e["object_id"]),
            "project_id": _id(engine, e["project_id"]),
            "created": _ts(engine, e["created"]),
        }
        for e in scenario.events
    ]
    with engine.begin() as conn:
        if objects:
            conn.execute(
                sa.text(
                    "INSERT INTO objects (object_type, object_id, project_id, name, created) "
                    "VALUES (:object_type, :object_id, :project_id, :name, :created)"
                ),
                objects,
            )
        if scenario.segments:
            conn.execute(
                sa.text(
                    "INSERT INTO segments (segment_id, object_type, object_id, project_id, "
                    "min_created, max_created, row_count, byte_size, object_key, state, "
                    "unused_at) VALUES (:segment_id, :object_type, :object_id, :project_id, "
                    ":min_created, :max_created, :row_count, :byte_size, :object_key, :state, "
                    ":unused_at)"
                ),
                [
                    {
                        **g,
                        "segment_id": str(g["segment_id"]),
                        "object_id": str(g["object_id"]),
                        "project_id": str(g["project_id"]),
                        "min_created": _ts(engine, g["min_created"]),
                        "max_created": _ts(engine, g["max_created"]),
                        "unused_at": _ts(engine, g["unused_at"]) if g["unused_at"] else None,
                    }
                    for g in scenario.segments
                ],
            )
        for start in range(0, len(events), 5000):
            conn.execute(
                sa.text(
                    "INSERT INTO events "
                    "(object_type, object_id, project_id, id, _xact_id, created) "
                    "VALUES (:object_type, :object_id, :project_id, :id, :_xact_id, :created)"
                ),
                events[start : start + 5000],
            )


def surviving_rows(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {row[0] for row in conn.exec_driver_sql("SELECT id FROM events")}


def registry(engine: sa.Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {
            (r[0], str(r[1]))
            for r in conn.exec_driver_sql("SELECT object_type, object_id FROM objects")
        }


def generate(
    seed: int, *, projects: int = 4, events: int = 2000, now: datetime = NOW, span_days: float = 200
) -> Scenario:
    """Projects with logs, two datasets and five experiments each, rows over ``span_days``."""
    rng = random.Random(seed)
    scenario = Scenario()
    project_ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(projects)]
    kinds: list[tuple[str, UUID, UUID, datetime]] = []
    for p in project_ids:
        scenario.add_object("project_logs", p, p, now - timedelta(days=span_days))
        kinds.append(("project_logs", p, p, now))
        for _ in range(2):
            d = uuid.UUID(int=rng.getrandbits(128), version=4)
            scenario.add_object("dataset", d, p, now - timedelta(days=span_days))
            kinds.append(("dataset", d, p, now))
        for _ in range(5):
            e = uuid.UUID(int=rng.getrandbits(128), version=4)
            created = now - timedelta(days=rng.uniform(0, span_days))
            scenario.add_object("experiment", e, p, created)
            kinds.append(("experiment", e, p, created))
    for _ in range(events):
        object_type, object_id, project_id, anchor = rng.choice(kinds)
        if object_type == "experiment":
            created = anchor + timedelta(seconds=rng.uniform(0, 3 * 86400))
        else:
            created = now - timedelta(seconds=rng.uniform(0, span_days * 86400))
        scenario.add_event(object_type, object_id, project_id, created)
    return scenario


@dataclass(frozen=True)
class Expect:
    """An independent statement of the semantics for tests: days per (project, type)."""

    days: dict[tuple[UUID, str], float]
    held: Sequence[tuple[UUID, str | None, UUID | None]] = ()
    now: datetime = NOW

    def _held(self, project: UUID, object_type: str, object_id: UUID) -> bool:
        return any(
            p == project and t in (None, object_type) and o in (None, object_id)
            for p, t, o in self.held
        )

    def _cutoff(self, project: UUID, object_type: str) -> datetime | None:
        days = self.days.get((project, object_type))
        return None if days is None else self.now - timedelta(days=days)

    def expired_experiments(self, scenario: Scenario) -> set[UUID]:
        expired = set()
        for o in scenario.objects:
            if o["object_type"] != "experiment":
                continue
            cutoff = self._cutoff(o["project_id"], "experiment")
            if (
                cutoff is not None
                and o["created"] < cutoff
                and not self._held(o["project_id"], "experiment", o["object_id"])
            ):
                expired.add(o["object_id"])
        return expired

    def survivors(self, scenario: Scenario) -> set[str]:
        gone_experiments = self.expired_experiments(scenario)
        keep = set()
        for e in scenario.events:
            if e["object_type"] == "experiment":
                if e["object_id"] not in gone_experiments:
                    keep.add(e["id"])
                continue
            cutoff = self._cutoff(e["project_id"], e["object_type"])
            expired = (
                cutoff is not None
                and e["created"] < cutoff
                and not self._held(e["project_id"], e["object_type"], e["object_id"])
            )
            if not expired:
                keep.add(e["id"])
        return keep

    def registry(self, scenario: Scenario) -> set[tuple[str, str]]:
        gone = self.expired_experiments(scenario)
        return {
            (o["object_type"], str(o["object_id"]))
            for o in scenario.objects
            if not (o["object_type"] == "experiment" and o["object_id"] in gone)
        }


def policy_toml(
    defaults: dict[str, float] | None = None,
    projects: Iterable[tuple[UUID, dict[str, float]]] = (),
    holds: Iterable[dict[str, str]] = (),
    floor: float | None = None,
) -> str:
    lines: list[str] = []
    if defaults:
        lines.append("[defaults]")
        lines += [f"{k} = {v}" for k, v in defaults.items()]
    for project, rules in projects:
        lines += ["", "[[projects]]", f'id = "{project}"']
        lines += [f"{k} = {v}" for k, v in rules.items()]
    for hold in holds:
        lines += ["", "[[holds]]"] + [f'{k} = "{v}"' for k, v in hold.items()]
    if floor is not None:
        lines += ["", "[safety]", f"min_retention_days = {floor}"]
    return "\n".join(lines) + "\n"


def segment_states(engine: sa.Engine) -> dict[str, tuple[str, bool]]:
    """segment_id -> (state, has unused_at)."""
    with engine.connect() as conn:
        return {
            str(r[0]): (r[1], r[2] is not None)
            for r in conn.exec_driver_sql("SELECT segment_id, state, unused_at FROM segments")
        }


def partition_events(engine: sa.Engine, months: int) -> None:
    """Recreate (empty) events as a table partitioned by month on created, from the month
    after NOW back ``months`` months, plus a default partition (PostgreSQL)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE events")
        conn.exec_driver_sql(
            """CREATE TABLE events (
              sequence_id bigserial, object_type text NOT NULL, object_id uuid NOT NULL,
              project_id uuid NOT NULL, id text NOT NULL, _xact_id bigint NOT NULL,
              created timestamptz NOT NULL, data jsonb,
              PRIMARY KEY (sequence_id, created)) PARTITION BY RANGE (created)"""
        )
        conn.exec_driver_sql(
            "CREATE INDEX events_project_type_created ON events (project_id, object_type, created)"
        )
        conn.exec_driver_sql(
            "CREATE INDEX events_object_created ON events (object_type, object_id, created)"
        )
        top = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)
        bounds = [top.replace(day=1)]
        for _ in range(months):
            bounds.append((bounds[-1] - timedelta(days=1)).replace(day=1))
        for hi, lo in itertools.pairwise(bounds):
            conn.exec_driver_sql(
                f"CREATE TABLE events_{lo:%Y_%m} PARTITION OF events "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
        conn.exec_driver_sql("CREATE TABLE events_default PARTITION OF events DEFAULT")
