"""Policy sources: where retention rules, holds and known projects come from.

A source either returns everything it has or raises; a half-read policy set is never used.
The control plane (a later source) implements the same protocol.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from .automations import parse_automations, parse_projects
from .controlplane import ClientConfig, ControlPlaneClient, TokenSource, open_client
from .errors import ControlPlaneError
from .models import PolicySet, ProjectInfo, RetentionRule
from .policyfiles import load_policy_dir
from .ratelimit import RateLimiter
from .settings import Settings

log = logging.getLogger(__name__)


class PolicySource(Protocol):
    @property
    def name(self) -> str: ...

    def load(self) -> PolicySet:
        """Everything the source says, complete, or an exception."""
        ...


@dataclass(frozen=True)
class LocalPolicySource:
    """Every ``*.toml`` file in a folder."""

    path: Path
    required: bool = True

    @property
    def name(self) -> str:
        return f"local:{self.path}"

    def load(self) -> PolicySet:
        return load_policy_dir(self.path, required=self.required)


@dataclass(frozen=True)
class StaticPolicySource:
    """A fixed policy set (tests, the demo)."""

    policy_set: PolicySet

    @property
    def name(self) -> str:
        return self.policy_set.source

    def load(self) -> PolicySet:
        return self.policy_set


@dataclass(frozen=True)
class ControlPlaneData:
    """Everything read from the control plane in one run."""

    projects: tuple[ProjectInfo, ...]
    rules: tuple[RetentionRule, ...]
    org_rules: tuple[RetentionRule, ...]
    skipped_automations: int
    org_endpoint: bool  # False: the server has no /v1/org_automation
    requests: int


@dataclass(frozen=True)
class ControlPlaneSource:
    """Projects and retention automations read with the read-only service token."""

    config: ClientConfig
    token: TokenSource
    limiter: RateLimiter | None = None
    transport: Any = None  # an httpx transport, for tests
    sleep: Callable[[float], None] = time.sleep

    @property
    def name(self) -> str:
        return f"controlplane:{self.config.host}"

    def _client(self) -> AbstractContextManager[ControlPlaneClient]:
        return open_client(
            self.config,
            self.token,
            limiter=self.limiter,
            transport=self.transport,
            sleep=self.sleep,
        )

    def fetch(self) -> ControlPlaneData:
        with self._client() as client:
            projects = parse_projects(_required(client.list_all("v1/project")))
            rules, skipped = parse_automations(_required(client.list_all("v1/project_automation")))
            org_items = client.list_all("v1/org_automation", allow_404=True)
            org_rules: tuple[RetentionRule, ...] = ()
            if org_items is not None:
                org_rules, org_skipped = parse_automations(org_items, org=True)
                skipped += org_skipped
            return ControlPlaneData(
                projects=projects,
                rules=rules,
                org_rules=org_rules,
                skipped_automations=skipped,
                org_endpoint=org_items is not None,
                requests=client.requests,
            )

    def load(self) -> PolicySet:
        data = self.fetch()
        warnings = []
        if not data.projects:
            warnings.append(
                f"{self.name} lists no projects: every project in the data plane is orphaned"
            )
        log.info(
            "%s: %d projects, %d retention automations, %d org automations in %d requests",
            self.name,
            len(data.projects),
            len(data.rules),
            len(data.org_rules),
            data.requests,
        )
        return PolicySet(
            source=self.name,
            rules=data.rules + data.org_rules,
            projects=data.projects,
            warnings=tuple(warnings),
        )

    def lookup(self, project_ids: Sequence[UUID]) -> dict[UUID, ProjectInfo | None]:
        """Each project by id (``GET /v1/project/{id}``); None where there is none (404)."""
        found: dict[UUID, ProjectInfo | None] = {}
        if not project_ids:
            return found
        with self._client() as client:
            for project_id in project_ids:
                body = client.get_json(f"v1/project/{project_id}", {}, allow_404=True)
                if body is None:
                    found[project_id] = None
                    continue
                if not isinstance(body, dict):
                    raise ControlPlaneError(
                        f"control plane sent no project object for GET /v1/project/{project_id}"
                    )
                (info,) = parse_projects([body])
                if info.project_id != project_id:
                    raise ControlPlaneError(
                        f"control plane answered GET /v1/project/{project_id} with another "
                        f"project ({info.project_id})"
                    )
                found[project_id] = info
        return found


def confirm_unknown(sources: Sequence[object], project_ids: Sequence[UUID]) -> None:
    """Before ``--purge-orphans`` deletes projects no listing named: look each one up.
    One found live means the listing was cut short (its paging ended early): fail closed."""
    for source in sources:
        if not isinstance(source, ControlPlaneSource):
            continue
        for project_id, info in sorted(source.lookup(project_ids).items()):
            if info is not None and info.deleted_at is None:
                raise ControlPlaneError(
                    f"{source.name}: project {project_id} was not in the listing of projects, "
                    "but GET /v1/project finds it live: the listing was incomplete; nothing "
                    "deleted"
                )


def _required(items: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    assert items is not None  # only the org endpoint may be absent
    return items


def control_plane_source(settings: Settings) -> ControlPlaneSource | None:
    """The control-plane source the settings describe, or None without BRAINTRUST_API_URL."""
    if not settings.api_url:
        return None
    config = ClientConfig(
        base_url=settings.api_url,
        org_name=settings.org_name,
        connect_timeout=settings.api_connect_timeout.total_seconds(),
        read_timeout=settings.api_read_timeout.total_seconds(),
        max_attempts=settings.api_max_attempts,
        backoff_initial=settings.api_backoff_initial.total_seconds(),
        backoff_max=settings.api_backoff_max.total_seconds(),
        page_size=settings.api_page_size,
        max_pages=settings.api_max_pages,
        audit=settings.audit,
        ca_bundle=settings.api_ca_bundle,
    )
    token = TokenSource(settings.service_token, settings.service_token_file)
    limiter = RateLimiter(settings.rate_limit_max_requests, settings.rate_limit_window_minutes * 60)
    return ControlPlaneSource(config=config, token=token, limiter=limiter)
