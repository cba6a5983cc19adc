"""Policies from the control plane merged with local files; orphans; paging costs."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest

from retention import engine as engine_module
from retention.controlplane import ClientConfig, TokenSource
from retention.errors import ControlPlaneError
from retention.models import RunStatus, SourceKind
from retention.report import render_explain
from retention.sources import ControlPlaneSource
from tests.conftest import engine_for
from tests.fakecp import (
    FakeControlPlane,
    big_org,
    export_automation,
    logs_alert_automation,
    org_retention_automation,
    project,
    retention_automation,
)
from tests.integration.helpers import purge, worker, write_policies
from tests.support import Expect, generate, insert, policy_toml, surviving_rows

AUTOMATION_A = "a0000000-0000-4000-8000-00000000000a"


def _cp_worker(url: str, policies: Path, fake: FakeControlPlane, token_file: Path, **kw):
    return worker(url, policies, api_url=fake.url, service_token_file=token_file, **kw)


def _setup(db_url: str, tmp_path: Path, fake: FakeControlPlane, *, org_endpoint: bool = True):
    scenario = generate(41, projects=4, events=1600)
    a, b, c, d = scenario.project_ids()
    insert(engine_for(db_url), scenario)
    fake.projects = [project(a, "alpha"), project(b, "beta"), project(c, "gamma", deleted=True)]
    # d is not listed at all: unknown to the control plane
    fake.automations = [
        retention_automation(
            a, "project_logs", 30, name="alpha logs 30d", automation_id=AUTOMATION_A
        ),
        retention_automation(b, "project_logs", 20, name="beta logs 20d"),
        retention_automation(c, "project_logs", 1, name="deleted project's automation"),
        logs_alert_automation(a),
        export_automation(b),
        {
            **retention_automation(b, "dataset", 3),
            "config": {"event_type": "some_future_type", "whatever": 1},
        },
    ]
    fake.org_automations = (
        [org_retention_automation("dataset", 45, name="org datasets")] if (org_endpoint) else None
    )
    policies = write_policies(
        tmp_path / "p",
        policy_toml(
            defaults={"project_logs": 90},
            projects=[(b, {"project_logs": 10})],
            holds=[{"project": str(d), "object_type": "dataset", "reason": "audit"}],
        ),
    )
    return scenario, (a, b, c, d), policies


def test_control_plane_and_local_policies_merge_shortest_wins(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    scenario, (a, b, c, d), policies = _setup(db_url, tmp_path, fake_cp)
    report = purge(_cp_worker(db_url, policies, fake_cp, token_file))

    assert report.status is RunStatus.SUCCEEDED
    by_key = {t.key: t for t in report.plan.targets}
    logs_a = by_key[f"{a}/project_logs"].resolution
    assert logs_a.retention_days == 30 and logs_a.winner is not None
    assert logs_a.winner.kind is SourceKind.PROJECT_AUTOMATION
    assert logs_a.winner.origin == AUTOMATION_A and logs_a.winner.label == "alpha logs 30d"
    logs_b = by_key[f"{b}/project_logs"].resolution
    assert logs_b.retention_days == 10 and logs_b.winner is not None
    assert logs_b.winner.kind is SourceKind.LOCAL_PROJECT
    assert {r.days for r in logs_b.candidates} == {90, 20, 10}
    dataset_a = by_key[f"{a}/dataset"].resolution
    assert dataset_a.retention_days == 45 and dataset_a.winner is not None
    assert dataset_a.winner.kind is SourceKind.ORG_AUTOMATION
    # orphans are left out of planning and listed with what they hold
    assert not any(t.project_id in (c, d) for t in report.plan.targets)
    rows = {p: sum(1 for e in scenario.events if e["project_id"] == p) for p in (c, d)}
    assert {(o.project_id, o.reason, o.rows) for o in report.plan.orphans} == {
        (c, "deleted", rows[c]),
        (d, "unknown", rows[d]),
    }
    expect = Expect(
        days={
            (a, "project_logs"): 30,
            (b, "project_logs"): 10,
            (a, "dataset"): 45,
            (b, "dataset"): 45,
        }
    )
    assert surviving_rows(engine_for(db_url)) == expect.survivors(scenario)


def test_purge_orphans_deletes_their_data_except_holds_and_the_floor(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    scenario, (a, b, c, d), policies = _setup(db_url, tmp_path, fake_cp)
    w = _cp_worker(db_url, policies, fake_cp, token_file)
    dry = engine_module.plan(w, purge_orphans=True)
    orphan_targets = {t.key for t in dry.plan.targets if t.project_id in (c, d)}
    assert orphan_targets == {
        f"{p}/{t}" for p in (c, d) for t in ("project_logs", "experiment", "dataset")
    }
    held = dry.plan.target(d, "dataset")  # type: ignore[arg-type]
    assert held is not None and held.resolution.held and held.counts.rows == 0

    purge(w, purge_orphans=True)

    expect = Expect(
        days={
            (a, "project_logs"): 30,
            (b, "project_logs"): 10,
            (a, "dataset"): 45,
            (b, "dataset"): 45,
            **{(p, t): 1.0 for p in (c, d) for t in ("project_logs", "experiment", "dataset")},
        },
        held=[(d, "dataset", None)],
    )
    assert surviving_rows(engine_for(db_url)) == expect.survivors(scenario)


def test_without_the_org_endpoint_there_are_no_org_rules(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    _, (a, _b, _c, _d), policies = _setup(db_url, tmp_path, fake_cp, org_endpoint=False)
    report = engine_module.plan(_cp_worker(db_url, policies, fake_cp, token_file))
    assert report.plan.target(a, "dataset") is None  # type: ignore[arg-type]
    assert [s.status for s in fake_cp.requests_to("v1/org_automation")] == [404]


def test_explain_names_automation_id_and_name(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    _, (a, _b, _c, _d), policies = _setup(db_url, tmp_path, fake_cp)
    resolved = engine_module.explain(_cp_worker(db_url, policies, fake_cp, token_file))
    text = render_explain(resolved)
    assert (
        f"source: project-automation {AUTOMATION_A} (alpha logs 30d) [project {a}]: 30 days"
        "  <- shortest" in text
    )
    assert "org-automation" in text and "(org datasets) [org]: 45 days" in text
    token = next(iter(fake_cp.tokens))
    assert token not in text


@pytest.mark.parametrize(
    ("projects", "automations", "page", "server_cap"),
    [
        (5000, 15000, 1000, 1000),
        (2500, 7000, 1000, 1000),
        (700, 100, 1000, 250),  # the server returns fewer than asked: paging goes on
    ],
)
def test_a_whole_org_costs_a_few_requests(
    fake_cp: FakeControlPlane,
    token_file: Path,
    projects: int,
    automations: int,
    page: int,
    server_cap: int,
) -> None:
    fake_cp.projects, fake_cp.automations = big_org(projects, automations)
    fake_cp.max_page = server_cap
    source = ControlPlaneSource(
        config=ClientConfig(base_url=fake_cp.url, page_size=page, org_name="acme"),
        token=TokenSource(file=token_file),
    )
    data = source.fetch()
    assert len(data.projects) == projects
    assert len(data.rules) == len(range(0, automations, 3))
    assert data.skipped_automations == automations - len(data.rules)
    per_page = min(page, server_cap)
    expected = (-(-projects // per_page) + 1) + (-(-automations // per_page) + 1) + 1
    assert data.requests == expected == len(fake_cp.seen)
    if (projects, automations) == (5000, 15000):
        assert data.requests <= 40
    assert all(s.query["org_name"] == ["acme"] for s in fake_cp.seen)
    assert all(s.query["limit"] == [str(page)] for s in fake_cp.seen)
    cursors = [s.query.get("starting_after", [None])[0] for s in fake_cp.requests_to("v1/project")]
    assert cursors[0] is None and len(set(cursors)) == len(cursors)


def test_deleted_projects_are_known_but_orphaned(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path
) -> None:
    scenario = generate(43, projects=2, events=300)
    live, gone = scenario.project_ids()
    insert(engine_for(db_url), scenario)
    fake_cp.projects = [project(live, "live"), project(gone, "gone", deleted=True)]
    fake_cp.automations = [retention_automation(gone, "project_logs", 1)]
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 1}))
    report = purge(_cp_worker(db_url, policies, fake_cp, token_file))
    assert [(o.project_id, o.reason) for o in report.plan.orphans] == [(gone, "deleted")]
    kept = {e["id"] for e in scenario.events if e["project_id"] == gone}
    assert kept <= surviving_rows(engine_for(db_url))


@pytest.mark.parametrize("listed", ["none", "another org's"])
def test_a_listing_that_knows_none_of_the_data_planes_projects_is_exit_3(
    db_url: str, tmp_path: Path, fake_cp: FakeControlPlane, token_file: Path, listed: str
) -> None:
    """A token of another organization (or one that sees nothing): every project would be an
    orphan, kept silently every night, and --purge-orphans would delete the whole data plane.
    The run stops before planning, and nothing is deleted, with --purge-orphans too."""
    scenario = generate(44, projects=2, events=200)
    insert(engine_for(db_url), scenario)
    if listed != "none":
        fake_cp.projects = [project(UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"), "theirs")]
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 1}))
    for purge_orphans in (False, True):
        with pytest.raises(ControlPlaneError, match="lists none of the data plane's 2 projects"):
            purge(_cp_worker(db_url, policies, fake_cp, token_file), purge_orphans=purge_orphans)
    assert len(surviving_rows(engine_for(db_url))) == 200


def test_local_only_without_api_url(db_url: str, tmp_path: Path) -> None:
    scenario = generate(45, projects=2, events=200)
    insert(engine_for(db_url), scenario)
    policies = write_policies(tmp_path / "p", policy_toml(defaults={"project_logs": 30}))
    report = engine_module.plan(worker(db_url, policies))
    assert report.plan.orphans == ()
    assert {t.project_id for t in report.plan.targets} == set(scenario.project_ids())


def test_project_ids_are_uuids_from_the_control_plane(
    fake_cp: FakeControlPlane, token_file: Path
) -> None:
    p = UUID("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11")
    fake_cp.projects = [project(p, "alpha")]
    fake_cp.automations = [retention_automation(p, "experiment", 12.5)]
    source = ControlPlaneSource(
        config=ClientConfig(base_url=fake_cp.url), token=TokenSource(file=token_file)
    )
    policy_set = source.load()
    assert policy_set.projects is not None
    assert [x.project_id for x in policy_set.projects] == [p]
    (rule,) = policy_set.rules
    assert (rule.project_id, rule.object_type, rule.days) == (p, "experiment", 12.5)
