"""Property: for any retention and any row times, exactly the rows before the cutoff go."""

from __future__ import annotations

import shutil
import uuid
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import engine_for
from tests.integration.helpers import purge, worker, write_policies
from tests.support import NOW, Scenario, insert, policy_toml, surviving_rows

PROJECT = uuid.UUID("77777777-7777-4777-8777-777777777777")

offsets = st.integers(min_value=-3_000_000, max_value=3_000_000)  # microseconds around cutoff


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    days=st.floats(min_value=0, max_value=400, allow_nan=False).map(lambda d: round(d, 6)),
    row_offsets=st.lists(offsets, min_size=1, max_size=30),
    batch_size=st.integers(min_value=1, max_value=7),
)
def test_exactly_the_rows_before_the_cutoff_go(
    sqlite_template: Path, tmp_path: Path, days: float, row_offsets: list[int], batch_size: int
) -> None:
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    path = folder / "db.sqlite3"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    cutoff = NOW - timedelta(days=days)
    scenario = Scenario()
    scenario.add_object("project_logs", PROJECT, PROJECT, NOW - timedelta(days=500))
    expected = set()
    for i, offset in enumerate(row_offsets):
        created = min(cutoff + timedelta(microseconds=offset), NOW)
        row = scenario.add_event("project_logs", PROJECT, PROJECT, created, f"r{i}")
        if created >= cutoff:
            expected.add(row)
    insert(engine_for(url), scenario)
    policies = write_policies(folder / "p", policy_toml(defaults={"project_logs": days}, floor=0))

    purge(worker(url, policies, batch_size=batch_size))

    assert surviving_rows(engine_for(url)) == expected
