"""The fake control plane serves exactly the spec's shapes, so it cannot drift from it."""

from __future__ import annotations

import httpx
import pytest

from tests.fakecp import (
    FakeControlPlane,
    big_org,
    export_automation,
    logs_alert_automation,
    project,
    retention_automation,
)
from tests.spec import validate_list_response, validate_schema


def test_fixture_objects_match_the_spec_schemas() -> None:
    projects, automations = big_org(40, 90)
    for item in [*projects, project("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11", "x", deleted=True)]:
        validate_schema("Project", item)
    for item in [
        *automations,
        retention_automation("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11", "dataset", 0.5),
        logs_alert_automation("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"),
        export_automation("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11"),
    ]:
        validate_schema("ProjectAutomation", item)


def test_a_broken_object_fails_the_spec() -> None:
    from jsonschema.exceptions import ValidationError

    bad = retention_automation("5f0c6c1e-3d5b-4b7e-9a51-0d6f7c2b9e11", "logs", 30)
    with pytest.raises(ValidationError):
        validate_schema("ProjectAutomation", bad)
    with pytest.raises(ValidationError):
        validate_schema("Project", {"id": "x", "name": "y"})


@pytest.mark.parametrize("path", ["/v1/project", "/v1/project_automation"])
def test_every_page_the_fake_serves_matches_the_spec(path: str) -> None:
    fake = FakeControlPlane().start()
    try:
        fake.projects, fake.automations = big_org(25, 60)
        fake.max_page = 7
        token = next(iter(fake.tokens))
        cursor = None
        pages = 0
        with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {token}"}) as c:
            while True:
                params = {"limit": 10, **({"starting_after": cursor} if cursor else {})}
                body = c.get(path, params=params).json()
                validate_list_response(path, body)
                pages += 1
                if not body["objects"]:
                    break
                cursor = body["objects"][-1]["id"]
        expected = 25 if path == "/v1/project" else 60
        assert pages == -(-expected // 7) + 1  # full pages of the server's cap, then empty
    finally:
        fake.stop()
