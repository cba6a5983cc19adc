"""``--purge-orphans`` looks up each project the control plane's listing does not name.

A project in the data plane that the listing of projects leaves out is an "unknown" orphan,
and ``--purge-orphans`` deletes its data. But a listing can come back short (its paging
ends early when the server returns an empty page), and then live projects look unknown.
Before an unknown orphan's data is planned, each one is looked up by id
(``GET /v1/project/{id}``): not found (404) confirms it; found live means the listing was
incomplete, so the run fails closed (exit 3) and nothing is deleted; found deleted, it is a
deleted project's orphan.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from retention import engine as engine_module
from retention.errors import ControlPlaneError, ExitCode
from retention.models import RunStatus
from tests.conftest import engine_for
from tests.fakecp import FakeControlPlane, project
from tests.integration.helpers import purge, worker, write_policies
from tests.support import Expect, generate, insert, policy_toml, surviving_rows

LOOKUP = "v1/project/"


def _setup(db_url: str, tmp_path: Path, fake: FakeControlPlane):
    scenario = generate(43, projects=3, events=900)
    listed, hidden, unknown = scenario.project_ids()
    insert(engine_for(db_url), scenario)
    fake.projects = [project(listed, "listed")]
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 90}))
    w = worker(db_url, policies, api_url=fake.url, service_token_file=fake.token_file)
    return scenario, (listed, hidden, unknown), w


@pytest.fixture
def cp(fake_cp: FakeControlPlane, token_file: Path) -> FakeControlPlane:
    fake_cp.token_file = token_file  # type: ignore[attr-defined]
    return fake_cp


def _lookups(fake: FakeControlPlane) -> list[tuple[str, int]]:
    return sorted(
        (s.path.removeprefix(LOOKUP), s.status) for s in fake.seen if s.path.startswith(LOOKUP)
    )


def test_a_live_project_missing_from_the_listing_stops_the_run(
    db_url: str, tmp_path: Path, cp: FakeControlPlane
) -> None:
    _, (_, hidden, _), w = _setup(db_url, tmp_path, cp)
    cp.unlisted_projects = [project(hidden, "left out of the listing")]
    everything = surviving_rows(engine_for(db_url))

    with pytest.raises(ControlPlaneError) as caught:
        purge(w, purge_orphans=True)

    assert caught.value.exit_code is ExitCode.CONTROL_PLANE
    assert str(hidden) in caught.value.message and "incomplete" in caught.value.message
    assert surviving_rows(engine_for(db_url)) == everything
    with pytest.raises(ControlPlaneError):  # the dry run says so too
        engine_module.plan(w, purge_orphans=True)


def test_unknown_orphans_confirmed_by_a_404_are_purged(
    db_url: str, tmp_path: Path, cp: FakeControlPlane
) -> None:
    scenario, (listed, hidden, unknown), w = _setup(db_url, tmp_path, cp)
    cp.unlisted_projects = [project(hidden, "deleted since", deleted=True)]

    done = purge(w, purge_orphans=True)

    assert done.status is RunStatus.SUCCEEDED
    assert _lookups(cp) == sorted([(str(hidden), 200), (str(unknown), 404)])
    expect = Expect(
        days={
            (listed, "project_logs"): 90,
            **{
                (p, t): 1.0
                for p in (hidden, unknown)
                for t in ("project_logs", "experiment", "dataset")
            },
        }
    )
    assert surviving_rows(engine_for(db_url)) == expect.survivors(scenario)


def test_without_purge_orphans_nothing_is_looked_up(
    db_url: str, tmp_path: Path, cp: FakeControlPlane
) -> None:
    scenario, (listed, hidden, unknown), w = _setup(db_url, tmp_path, cp)
    cp.unlisted_projects = [project(hidden, "left out of the listing")]

    done = purge(w)

    assert done.status is RunStatus.SUCCEEDED
    assert _lookups(cp) == []
    assert {o.project_id for o in done.plan.orphans} == {hidden, unknown}
    expect = Expect(days={(listed, "project_logs"): 90})
    assert surviving_rows(engine_for(db_url)) == expect.survivors(scenario)
