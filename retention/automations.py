"""Control-plane payloads to domain objects: projects and retention automations.

Shapes follow ``braintrust-openapi/spec.json`` (``Project``, ``ProjectAutomation``).
Automations of other event types are skipped, unknown future ones too. A payload that
breaks the spec where it matters (ids, names, a retention config) is an error: the caller
uses all of it or none.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NoReturn
from uuid import UUID

from .errors import ControlPlaneError
from .models import (
    MAX_RETENTION_DAYS,
    ObjectType,
    ProjectInfo,
    RetentionRule,
    SourceKind,
    as_utc,
)

RETENTION_EVENT = "retention"


def _uuid(item: dict[str, Any], key: str, where: str) -> UUID:
    value = item.get(key)
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    _bad(where, key, value)


def _bad(where: str, key: str, value: Any) -> NoReturn:
    shown = value if isinstance(value, int | float | bool) or value is None else type(value)
    raise ControlPlaneError(f"control plane payload breaks the spec: {where}.{key} = {shown!r}")


def _string(item: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        _bad(where, key, value)
    return value


def _timestamp(item: dict[str, Any], key: str, where: str) -> datetime | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        _bad(where, key, value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        _bad(where, key, value)
    if parsed.tzinfo is None:
        _bad(where, key, value)
    return as_utc(parsed)


def parse_projects(items: list[dict[str, Any]]) -> tuple[ProjectInfo, ...]:
    projects = []
    for index, item in enumerate(items):
        where = f"project[{index}]"
        projects.append(
            ProjectInfo(
                project_id=_uuid(item, "id", where),
                name=_string(item, "name", where),
                deleted_at=_timestamp(item, "deleted_at", where),
            )
        )
        _uuid(item, "org_id", where)
    return tuple(projects)


def _retention_days(config: dict[str, Any], where: str) -> float:
    value = config.get("retention_days")
    if isinstance(value, bool) or not isinstance(value, int | float):
        _bad(where, "config.retention_days", value)
    try:
        days = float(value)
    except OverflowError:
        _bad(where, "config.retention_days", "huge")
    if not math.isfinite(days) or days < 0 or days > MAX_RETENTION_DAYS:
        _bad(where, "config.retention_days", value)
    return days


def _object_type(config: dict[str, Any], where: str) -> ObjectType:
    value = config.get("object_type")
    if isinstance(value, str) and value in ObjectType.__members__.values():
        return ObjectType(value)
    _bad(where, "config.object_type", value)


def parse_automations(
    items: list[dict[str, Any]], *, org: bool = False
) -> tuple[tuple[RetentionRule, ...], int]:
    """(retention rules, number of automations of other types skipped)."""
    rules = []
    skipped = 0
    kind = SourceKind.ORG_AUTOMATION if org else SourceKind.PROJECT_AUTOMATION
    for index, item in enumerate(items):
        where = f"{'org' if org else 'project'}_automation[{index}]"
        automation_id = _uuid(item, "id", where)
        name = _string(item, "name", where)
        project_id = None if org else _uuid(item, "project_id", where)
        if org and item.get("project_id") is not None:
            # an org automation is for every project; one that names a project is neither
            # (the spec does not say), so it is not guessed at
            _bad(where, "project_id", item.get("project_id"))
        config = item.get("config")
        if not isinstance(config, dict):
            _bad(where, "config", config)
            continue
        if config.get("event_type") != RETENTION_EVENT:
            skipped += 1  # logs, exports, alerts, and event types that do not exist yet
            continue
        rules.append(
            RetentionRule(
                object_type=_object_type(config, where),
                days=_retention_days(config, where),
                kind=kind,
                origin=str(automation_id),
                project_id=project_id,
                label=name or "",
            )
        )
    return tuple(rules), skipped
