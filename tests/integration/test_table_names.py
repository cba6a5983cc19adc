"""Unusual but legal table, column and partition names; search_path shadowing (a review in
the sixth session: the tests without "passes:" failed before their fixes).

Every test seeds the reference schema, renames or moves its tables, points the worker at
them by settings, and checks the exact surviving rows (and that decoys stay untouched).
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from retention import engine as engine_module
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Expect, Scenario, generate, insert, policy_toml

DAYS = {"project_logs": 60, "dataset": 45, "experiment": 90}


def _seed(url: str, tmp_path: Path, seed: int, events: int = 1500) -> tuple[Scenario, Expect, Path]:
    scenario = generate(seed, projects=3, events=events, span_days=200)
    projects = scenario.project_ids()
    policy_dir = write_policies(tmp_path / "policies", policy_toml(defaults=DAYS))
    expect = Expect(days={(p, t): float(d) for p in projects for t, d in DAYS.items()})
    insert(engine_for(url), scenario)
    return scenario, expect, policy_dir


def _pct(statement: str, sqlite: bool = False) -> str:
    """exec_driver_sql goes through psycopg's placeholders: a literal % is written %%."""
    return statement if sqlite else statement.replace("%", "%%")


def _ids(url: str, relation: str) -> set[str]:
    engine = engine_for(url)
    sql = _pct(f"SELECT id FROM {relation}", engine.dialect.name == "sqlite")
    with engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql(sql)}


def _ddl(url: str, *statements: str) -> None:
    engine = engine_for(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(_pct(statement, engine.dialect.name == "sqlite"))


def _check(report: Any) -> None:
    assert report.status is RunStatus.SUCCEEDED, (report.status, report.warnings)


# --- fixed aliases of the worker's statements vs. the configured names --------------------


@pytest.mark.parametrize(
    ("name", "strategy"),
    [("t", "keyset"), ("t", "blocks"), ("picked", "auto")],  # auto: grouped small targets
)
def test_events_table_named_like_a_statement_alias(
    pg_url: str, tmp_path: Path, name: str, strategy: str
) -> None:
    """An events table called ``t`` or ``picked`` (legal names) is deleted from like any
    other: the worker's statements alias their own derived tables ``t`` and ``picked``."""
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 101)
    _ddl(pg_url, f"ALTER TABLE events RENAME TO {name}")
    w = worker(pg_url, policy_dir, table_events=name, delete_strategy=strategy)
    _check(purge(w))
    assert _ids(pg_url, name) == expect.survivors(scenario)


def test_segments_table_named_t(pg_url: str, tmp_path: Path) -> None:
    """A segments table called ``t``: the plan's segment counts join it to their own ``t``."""
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 110)
    _ddl(pg_url, "ALTER TABLE segments RENAME TO t")
    w = worker(pg_url, policy_dir, table_segments="t", delete_strategy="keyset")
    _check(purge(w))
    assert _ids(pg_url, "events") == expect.survivors(scenario)


def test_objects_table_named_t_with_partitions(pg_url: str, tmp_path: Path) -> None:
    """An objects table called ``t`` next to a partitioned events table: the partition
    check's experiment lookup correlates to its own ``t``."""
    _partitioned(pg_url, "events", lambda lo: f"events_{lo:%Y_%m}")
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 111)
    before = _leaves(pg_url, "events")
    _ddl(pg_url, "ALTER TABLE objects RENAME TO t")
    w = worker(pg_url, policy_dir, table_objects="t", delete_strategy="keyset")
    _check(purge(w))
    assert _ids(pg_url, "events") == expect.survivors(scenario)
    assert len(_leaves(pg_url, "events")) < len(before)


def test_events_table_named_walk(db_url: str, tmp_path: Path) -> None:
    """An events table called ``walk`` (a legal name), on SQLite and PostgreSQL."""
    scenario, expect, policy_dir = _seed(db_url, tmp_path, 107)
    _ddl(db_url, "ALTER TABLE events RENAME TO walk")
    w = worker(db_url, policy_dir, table_events="walk", delete_strategy="keyset")
    _check(purge(w))
    assert _ids(db_url, "walk") == expect.survivors(scenario)


# --- keywords the SQL dialect's quoting does not know ------------------------------------


@pytest.mark.parametrize("name", ["lateral", "tablesample"])
def test_events_table_named_a_postgres_keyword(pg_url: str, tmp_path: Path, name: str) -> None:
    """``lateral`` is a reserved word of PostgreSQL (``tablesample``: reserved as a table
    name); the worker must quote it."""
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 116)
    _ddl(pg_url, f'ALTER TABLE events RENAME TO "{name}"')
    w = worker(pg_url, policy_dir, table_events=name, delete_strategy="keyset")
    _check(purge(w))
    assert _ids(pg_url, f'"{name}"') == expect.survivors(scenario)


@pytest.mark.parametrize("name", ["returning", "nothing"])
def test_events_table_named_a_sqlite_keyword(sqlite_url: str, tmp_path: Path, name: str) -> None:
    scenario, expect, policy_dir = _seed(sqlite_url, tmp_path, 117)
    _ddl(sqlite_url, f'ALTER TABLE events RENAME TO "{name}"')
    w = worker(sqlite_url, policy_dir, table_events=name)
    _check(purge(w))
    assert _ids(sqlite_url, f'"{name}"') == expect.survivors(scenario)


# --- a percent sign in a name --------------------------------------------------------------


def test_events_table_with_percent_sign(pg_url: str, tmp_path: Path) -> None:
    """``events 100%``: the schema check must find the table, the purge delete from it."""
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 102)
    _ddl(pg_url, 'ALTER TABLE events RENAME TO "events 100%"')
    w = worker(pg_url, policy_dir, table_events="events 100%", delete_strategy="keyset")
    _check(purge(w))
    assert _ids(pg_url, '"events 100%"') == expect.survivors(scenario)


def _partitioned(
    url: str,
    parent: str,
    name_of: Any,
    default: str = "events_default",
    months: int = 8,
    drop_events: bool = True,
) -> list[str]:
    """Recreate ``parent`` (SQL name) partitioned by month on created; ``name_of(lo)`` is
    each partition's SQL name. Returns the partition SQL names, newest first."""
    made = []
    with engine_for(url).begin() as conn:
        if drop_events:
            conn.exec_driver_sql("DROP TABLE events")
        conn.exec_driver_sql(
            _pct(
                f"""CREATE TABLE {parent} (
              sequence_id bigserial, object_type text NOT NULL, object_id uuid NOT NULL,
              project_id uuid NOT NULL, id text NOT NULL, _xact_id bigint NOT NULL,
              created timestamptz NOT NULL, data jsonb,
              PRIMARY KEY (sequence_id, created)) PARTITION BY RANGE (created)"""
            )
        )
        conn.exec_driver_sql(_pct(f"CREATE INDEX ON {parent} (project_id, object_type, created)"))
        conn.exec_driver_sql(_pct(f"CREATE INDEX ON {parent} (object_type, object_id, created)"))
        top = NOW.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)
        bounds = [top.replace(day=1)]
        for _ in range(months):
            bounds.append((bounds[-1] - timedelta(days=1)).replace(day=1))
        for hi, lo in pairwise(bounds):
            name = name_of(lo)
            conn.exec_driver_sql(
                _pct(
                    f"CREATE TABLE {name} PARTITION OF {parent} "
                    f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
                )
            )
            made.append(name)
        conn.exec_driver_sql(_pct(f"CREATE TABLE {default} PARTITION OF {parent} DEFAULT"))
    return made


def test_percent_sign_name_resolves_to_another_table(pg_url: str, tmp_path: Path) -> None:
    """Configured ``ev%``; a partitioned table ``ev%%`` also exists. The worker must not
    drop (or even look at) the partitions of ``ev%%``: it is not the configured table."""
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 115)
    _ddl(pg_url, 'ALTER TABLE events RENAME TO "ev%"')
    _partitioned(
        pg_url,
        '"ev%%"',
        lambda lo: f"decoy_{lo:%Y_%m}",
        default="decoy_default",
        drop_events=False,
    )
    _ddl(
        pg_url,
        'INSERT INTO "ev%%" (object_type, object_id, project_id, id, _xact_id, created) '
        'SELECT object_type, object_id, project_id, id, _xact_id, created FROM "ev%"',
    )
    w = worker(pg_url, policy_dir, table_events="ev%", delete_strategy="keyset")
    _check(purge(w))
    assert _ids(pg_url, '"ev%"') == expect.survivors(scenario)
    assert _ids(pg_url, '"ev%%"') == {e["id"] for e in scenario.events}


def _leaves(url: str, parent: str) -> set[str]:
    with engine_for(url).connect() as conn:
        return {
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT relid::regclass::text FROM pg_partition_tree(CAST(:p AS regclass)) "
                    "WHERE isleaf"
                ),
                {"p": parent},
            )
        }


@pytest.mark.parametrize("action", ["drop", "detach"])
def test_partitions_with_percent_sign_in_their_names(
    pg_url: str, tmp_path: Path, action: str
) -> None:
    """Partitions named ``events 2026-03 (100%)`` that expired whole go whole."""
    _partitioned(pg_url, "events", lambda lo: f'"events {lo:%Y-%m} (100%)"')
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 103)
    before = _leaves(pg_url, "events")
    w = worker(pg_url, policy_dir, delete_strategy="keyset", partition_action=action)
    _check(purge(w))
    assert _ids(pg_url, "events") == expect.survivors(scenario)
    gone = before - _leaves(pg_url, "events")
    assert gone, "no expired partition went whole"


# --- odd names everywhere, schema outside the search path, decoys on it --------------------

ODD_SCHEMA = 'Data "Plane".v2'  # a space, a double quote and a dot
ODD = {"events": "order", "objects": "user", "segments": "Segments Index"}
ODD_COLUMNS = {
    "events.created": "Created At",
    "events.sequence_id": 'Seq "Id"',
    "events.project_id": "project.id",
    "events.object_type": "type",
    "events.object_id": "select",
    "objects.created": "Born At",
    "objects.object_id": "Object Id",
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _move_to_odd_names(url: str, decoys: bool = True) -> str:
    """Move the reference tables into ODD_SCHEMA under ODD names and columns; leave copies
    of them (decoys) under the reference names in public. Returns the events SQL name."""
    schema = _q(ODD_SCHEMA)
    statements = [f"CREATE SCHEMA {schema}"]
    for role, name in ODD.items():
        if decoys:
            statements.append(f"CREATE TABLE public.decoy_{role} AS TABLE public.{role}")
        statements.append(f"ALTER TABLE public.{role} SET SCHEMA {schema}")
        statements.append(f"ALTER TABLE {schema}.{role} RENAME TO {_q(name)}")
    for key, real in ODD_COLUMNS.items():
        role, _, column = key.partition(".")
        statements.append(
            f"ALTER TABLE {schema}.{_q(ODD[role])} RENAME COLUMN {column} TO {_q(real)}"
        )
    if decoys:
        for role in ODD:
            statements.append(f"ALTER TABLE public.decoy_{role} RENAME TO {role}")
    _ddl(url, *statements)
    return f"{schema}.{_q(ODD['events'])}"


def _odd_settings() -> dict[str, Any]:
    return {
        "table_events": f"{ODD_SCHEMA}.{ODD['events']}",
        "table_objects": f"{ODD_SCHEMA}.{ODD['objects']}",
        "table_segments": f"{ODD_SCHEMA}.{ODD['segments']}",
        "table_columns": ",".join(f"{k}={v}" for k, v in ODD_COLUMNS.items()),
    }


@pytest.mark.parametrize("strategy", ["auto", "blocks"])
def test_odd_names_outside_search_path_with_decoys(
    pg_url: str, tmp_path: Path, strategy: str
) -> None:
    """passes: every table in a schema named with a space, a quote and a dot, under
    reserved or quoted names and with renamed columns; tables of the reference names on
    the search path are left alone (plan counts, grouped batches, block sweep)."""
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 104)
    events = _move_to_odd_names(pg_url)
    w = worker(pg_url, policy_dir, delete_strategy=strategy, **_odd_settings())
    planned = engine_module.plan(w)
    survivors = expect.survivors(scenario)
    assert sum(t.counts.rows for t in planned.plan.targets) == len(scenario.events) - len(survivors)
    _check(purge(w))
    assert _ids(pg_url, events) == survivors
    assert _ids(pg_url, "public.events") == {e["id"] for e in scenario.events}


@pytest.mark.parametrize(("action", "strategy"), [("drop", "keyset"), ("detach", "blocks")])
def test_odd_partitions_in_another_schema(
    pg_url: str, tmp_path: Path, action: str, strategy: str
) -> None:
    """passes: events in a quoted schema, partitions with quotes, dots and a reserved word
    in their names in a third schema, decoys of every table on the search path."""
    _ddl(pg_url, 'CREATE SCHEMA "Part.s ""x"""')
    _partitioned(pg_url, "events", lambda lo: f'"Part.s ""x"""."ev.{lo:%Y-%m} ""q"" o\'rder"')
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 105)
    before = _leaves(pg_url, "events")
    events = _move_to_odd_names(pg_url)
    w = worker(
        pg_url, policy_dir, delete_strategy=strategy, partition_action=action, **_odd_settings()
    )
    _check(purge(w))
    assert _ids(pg_url, events) == expect.survivors(scenario)
    assert _ids(pg_url, "public.events") == {e["id"] for e in scenario.events}
    assert len(_leaves(pg_url, events)) < len(before)


def test_search_path_schema_first(pg_url: str, tmp_path: Path) -> None:
    """passes: unqualified names resolved by the URL's search_path (dp first): the
    partitions, the block sweep on two connections and the rows act on dp's tables only."""
    _partitioned(pg_url, "events", lambda lo: f"events_{lo:%Y_%m}")
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 106)
    statements = ["CREATE SCHEMA dp"]
    for role in ("events", "objects", "segments"):
        statements.append(f"CREATE TABLE public.decoy_{role} AS TABLE public.{role}")
        statements.append(f"ALTER TABLE public.{role} SET SCHEMA dp")
        statements.append(f"ALTER TABLE public.decoy_{role} RENAME TO {role}")
    _ddl(pg_url, *statements)
    url = pg_url + "?options=-c%20search_path%3Ddp,public"
    w = worker(url, policy_dir, delete_strategy="blocks", sweep_connections=2, sweep_unit_blocks=2)
    _check(purge(w))
    assert _ids(pg_url, "dp.events") == expect.survivors(scenario)
    assert _ids(pg_url, "public.events") == {e["id"] for e in scenario.events}


SQLITE_ODD = {"events": 'ev "log" rows', "objects": "order", "segments": "Segments 100%"}
SQLITE_COLUMNS = {
    "events.created": "Created At",
    "events.sequence_id": "Seq 'Id'",
    "events.project_id": 'project "id"',
    "objects.created": "when",
}


def test_sqlite_odd_names(sqlite_url: str, tmp_path: Path) -> None:
    """passes: quoted, reserved and percent-signed names, qualified by ``main.``, on
    SQLite."""
    scenario, expect, policy_dir = _seed(sqlite_url, tmp_path, 108)
    statements = []
    for role, name in SQLITE_ODD.items():
        statements.append(f"ALTER TABLE {role} RENAME TO {_q(name)}")
    for key, real in SQLITE_COLUMNS.items():
        role, _, column = key.partition(".")
        statements.append(
            f"ALTER TABLE {_q(SQLITE_ODD[role])} RENAME COLUMN {column} TO {_q(real)}"
        )
    _ddl(sqlite_url, *statements)
    prefix = "main."
    w = worker(
        sqlite_url,
        policy_dir,
        table_events=prefix + SQLITE_ODD["events"],
        table_objects=prefix + SQLITE_ODD["objects"],
        table_segments=prefix + SQLITE_ODD["segments"],
        table_columns=",".join(f"{k}={v}" for k, v in SQLITE_COLUMNS.items()),
    )
    _check(purge(w))
    assert _ids(sqlite_url, _q(SQLITE_ODD["events"])) == expect.survivors(scenario)


CATALOG_DECOYS = {  # name: the columns copied (some catalog columns have pseudo-types)
    "pg_class": "*",
    "pg_namespace": "*",
    "pg_inherits": "*",
    "pg_locks": "*",
    "pg_settings": "*",
    "pg_partitioned_table": "partrelid, partstrat, partnatts, partattrs",
    "pg_attribute": "attrelid, attname, attnum, attisdropped",
    "pg_stat_activity": "*",
    "pg_database": "oid, datname",
}


def test_catalog_tables_shadowed_by_the_search_path(pg_url: str, tmp_path: Path) -> None:
    """A search_path that names ``pg_catalog`` after a schema holding empty tables called
    ``pg_class``, ``pg_inherits``, ``pg_locks``...: the worker's catalog lookups still read
    the catalog, so expired partitions go whole and the rest is swept on two connections."""
    _partitioned(pg_url, "events", lambda lo: f"events_{lo:%Y_%m}")
    scenario, expect, policy_dir = _seed(pg_url, tmp_path, 107)
    before = _leaves(pg_url, "events")
    _ddl(
        pg_url,
        "CREATE SCHEMA shadow",
        *(
            f"CREATE TABLE shadow.{name} AS SELECT {columns} FROM pg_catalog.{name} WHERE false"
            for name, columns in CATALOG_DECOYS.items()
        ),
    )
    url = pg_url + "?options=-c%20search_path%3Dshadow,pg_catalog,public"
    w = worker(url, policy_dir, delete_strategy="blocks", sweep_connections=2, sweep_unit_blocks=2)
    _check(purge(w))
    assert _ids(pg_url, "public.events") == expect.survivors(scenario)
    assert len(_leaves(pg_url, "public.events")) < len(before)
