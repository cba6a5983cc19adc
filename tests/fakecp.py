"""A fake Braintrust control plane: a real HTTP server on loopback, serving the spec's shapes.

It serves ``GET /v1/project``, ``/v1/project_automation`` and ``/v1/org_automation`` from
fixture lists with ``limit`` + ``starting_after`` paging (newest first, like the API), checks
the bearer token, records every request, and injects faults on demand:

    fake.fail("v1/project", status=429, headers={"Retry-After": "2"})
    fake.fail("v1/project", stall=2.0)            # answer after 2 s (a client timeout)
    fake.fail("v1/project", body=b"{not json")    # malformed JSON
    fake.fail("v1/project", redirect="http://elsewhere.invalid/v1/project")

Faults are used up in order, one request each (``times`` repeats one).
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

ORG_ID = "0a0a0a0a-0000-4000-8000-000000000001"
USER_ID = "0b0b0b0b-0000-4000-8000-000000000002"


@dataclass
class Fault:
    path: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stall: float = 0.0
    redirect: str | None = None


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


class FakeControlPlane:
    def __init__(self, token: str = "fake-token-0001") -> None:
        self.tokens = {token}
        self.projects: list[dict[str, Any]] = []
        # found by GET /v1/project/{id} but missing from the listing (a listing cut short)
        self.unlisted_projects: list[dict[str, Any]] = []
        self.automations: list[dict[str, Any]] = []
        self.org_automations: list[dict[str, Any]] | None = None  # None: endpoint absent
        self.max_page = 1000  # the server's own cap on a page
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.audit_resources: str | None = None  # x-bt-audit-resources to send when asked
        self.on_request: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeControlPlane:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, path: str, *, times: int = 1, **kwargs: Any) -> None:
        with self._lock:
            self.faults.extend(Fault(path=path, **kwargs) for _ in range(times))

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    # -- serving -------------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.path == path:
                    return self.faults.pop(index)
        return None

    def collection(self, path: str) -> list[dict[str, Any]] | None:
        return {
            "v1/project": self.projects,
            "v1/project_automation": self.automations,
            "v1/org_automation": self.org_automations,
        }.get(path, [])

    def page(self, path: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        items = self.collection(path) or []
        limit = min(int(query.get("limit", ["100"])[0]), self.max_page)
        after = query.get("starting_after", [None])[0]
        start = 0
        if after is not None:
            ids = [item["id"] for item in items]
            start = ids.index(after) + 1 if after in ids else len(items)
        return items[start : start + limit]


def _handler(fake: FakeControlPlane) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            parts = urlsplit(self.path)
            fake.seen.append(
                Seen(
                    path=parts.path.lstrip("/"),
                    query=parse_qs(parts.query),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    status=status,
                )
            )
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path.lstrip("/")
            if fake.on_request:
                fake.on_request(path)
            fault = fake._take_fault(path)
            if fault is not None:
                if fault.stall:
                    time.sleep(fault.stall)
                if fault.redirect:
                    self._send(302, b"", {"Location": fault.redirect})
                    return
                if fault.status is not None or fault.body is not None:
                    self._send(
                        fault.status or 200,
                        fault.body or b"",
                        {"Content-Type": "application/json", **fault.headers},
                    )
                    return
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if token not in fake.tokens:
                self._send(401, b"No valid API key provided", {"Content-Type": "text/plain"})
                return
            if path.startswith("v1/project/") and path.count("/") == 2:  # GET one project
                wanted = path.rsplit("/", 1)[1]
                everyone = fake.projects + fake.unlisted_projects
                found = next((p for p in everyone if p["id"] == wanted), None)
                if found is None:
                    self._send(404, b"Not found", {"Content-Type": "text/plain"})
                else:
                    body = json.dumps(found).encode()
                    self._send(200, body, {"Content-Type": "application/json"})
                return
            if fake.collection(path) is None:
                self._send(404, b"Not found", {"Content-Type": "text/plain"})
                return
            if path not in ("v1/project", "v1/project_automation", "v1/org_automation"):
                self._send(404, b"Not found", {"Content-Type": "text/plain"})
                return
            headers = {"Content-Type": "application/json"}
            if self.headers.get("x-bt-enable-audit") == "true":
                headers["x-bt-audit-user-id"] = USER_ID
                headers["x-bt-audit-user-email"] = "svc@example.com"
                headers["x-bt-audit-normalized-url"] = "/" + path
                if fake.audit_resources is not None:
                    headers["x-bt-audit-resources"] = fake.audit_resources
            body = json.dumps({"objects": fake.page(path, parse_qs(parts.query))}).encode()
            self._send(200, body, headers)

    return Handler


# -- fixtures in the spec's shapes -------------------------------------------------------


def project(
    project_id: str | uuid.UUID,
    name: str,
    *,
    deleted: bool = False,
    created: datetime | None = None,
) -> dict[str, Any]:
    created = created or datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "id": str(project_id),
        "org_id": ORG_ID,
        "name": name,
        "description": None,
        "created": created.isoformat().replace("+00:00", "Z"),
        "deleted_at": (created + timedelta(days=30)).isoformat().replace("+00:00", "Z")
        if deleted
        else None,
        "user_id": USER_ID,
    }


def retention_automation(
    project_id: str | uuid.UUID,
    object_type: str,
    days: float,
    *,
    name: str | None = None,
    automation_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": automation_id or str(uuid.uuid4()),
        "project_id": str(project_id),
        "user_id": USER_ID,
        "created": "2026-02-01T00:00:00Z",
        "name": name or f"retain {object_type} {days}d",
        "description": None,
        "config": {"event_type": "retention", "object_type": object_type, "retention_days": days},
    }


def org_retention_automation(
    object_type: str, days: float, *, name: str | None = None
) -> dict[str, Any]:
    """The assumed shape of an org automation (not in the vendored spec): no project_id."""
    return {
        "id": str(uuid.uuid4()),
        "org_id": ORG_ID,
        "user_id": USER_ID,
        "created": "2026-02-01T00:00:00Z",
        "name": name or f"org retain {object_type} {days}d",
        "description": None,
        "config": {"event_type": "retention", "object_type": object_type, "retention_days": days},
    }


def logs_alert_automation(project_id: str | uuid.UUID) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "project_id": str(project_id),
        "user_id": USER_ID,
        "created": "2026-02-01T00:00:00Z",
        "name": "error alert",
        "description": "page on errors",
        "config": {
            "event_type": "logs",
            "btql_filter": "error IS NOT NULL",
            "interval_seconds": 3600,
            "action": {"type": "webhook", "url": "https://hooks.example.com/x"},
        },
    }


def export_automation(project_id: str | uuid.UUID) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "project_id": str(project_id),
        "user_id": USER_ID,
        "created": "2026-02-01T00:00:00Z",
        "name": "nightly export",
        "description": None,
        "config": {
            "event_type": "btql_export",
            "export_definition": {"type": "log_traces"},
            "export_path": "s3://bucket/exports",
            "format": "jsonl",
            "interval_seconds": 86400,
            "credentials": {
                "type": "aws_iam",
                "role_arn": "arn:aws:iam::1:role/x",
                "external_id": "ext-1",
            },
        },
    }


def big_org(
    projects: int, automations: int, seed: int = 5
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Many projects and automations (a third of them retention), newest first."""
    rng = random.Random(seed)
    project_list = [
        project(uuid.UUID(int=rng.getrandbits(128), version=4), f"p{i}", deleted=i % 17 == 0)
        for i in range(projects)
    ]
    automation_list = []
    for i in range(automations):
        owner = project_list[i % projects]["id"]
        kind = i % 3
        if kind == 0:
            item = retention_automation(
                owner,
                ("project_logs", "experiment", "dataset")[i % 9 // 3],
                30 + i % 60,
                automation_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            )
        elif kind == 1:
            item = logs_alert_automation(owner)
        else:
            item = export_automation(owner)
        automation_list.append(item)
    return project_list, automation_list


def audit_header(resources: list[dict[str, Any]], *, version: int = 1) -> str:
    payload = base64.b64encode(gzip.compress(json.dumps(resources).encode())).decode()
    return json.dumps({"v": version, "p": payload})
