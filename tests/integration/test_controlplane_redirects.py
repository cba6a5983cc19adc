"""A same-host redirect keeps the client's query, or is refused.

Following a redirect whose Location has no query once sent the next request without
``org_name``, ``limit`` and ``starting_after``: a lost ``org_name`` silently reads the
token's default org instead, whose projects are not the data plane's (every project there
then looks like an orphan). A Location without a query now gets the same query again; one
with a query must carry the client's values unchanged, else the read fails (exit 3).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from retention.controlplane import ClientConfig, TokenSource
from retention.errors import ControlPlaneError
from retention.sources import ControlPlaneSource
from tests.fakecp import FakeControlPlane, project

PROJECTS = "v1/project"
P1 = "3c1f0000-0000-4000-8000-000000000001"


def _source(fake: FakeControlPlane, token_file: Path) -> ControlPlaneSource:
    config = ClientConfig(
        base_url=fake.url,
        org_name="acme",
        max_attempts=1,
        connect_timeout=2.0,
        read_timeout=5.0,
    )
    return ControlPlaneSource(
        config=config, token=TokenSource(file=token_file), sleep=lambda _: None
    )


def test_a_redirect_without_a_query_keeps_org_name_and_paging(
    fake_cp: FakeControlPlane, token_file: Path
) -> None:
    fake_cp.projects = [project(P1, "checkout")]
    fake_cp.fail(PROJECTS, redirect="/v1/project")

    data = _source(fake_cp, token_file).fetch()

    assert [str(p.project_id) for p in data.projects] == [P1]
    seen = fake_cp.requests_to(PROJECTS)
    assert [s.status for s in seen] == [302, 200, 200]  # the redirect, a page, the empty end
    for request in seen:
        assert request.query["org_name"] == ["acme"]
        assert request.query["limit"] == ["1000"]
    assert seen[2].query["starting_after"] == [P1]


@pytest.mark.parametrize(
    "location", ["/v1/project?org_name=other&limit=1000", "/v1/project?limit=1000"]
)
def test_a_redirect_that_changes_the_query_is_refused(
    fake_cp: FakeControlPlane, token_file: Path, location: str
) -> None:
    fake_cp.projects = [project(P1, "checkout")]
    fake_cp.fail(PROJECTS, redirect=location)

    with pytest.raises(ControlPlaneError, match="redirected GET /v1/project with a different"):
        _source(fake_cp, token_file).fetch()
    assert [s.status for s in fake_cp.requests_to(PROJECTS)] == [302]
