"""Local policy files: every ``*.toml`` in the policy folder (DESIGN §2).

Each file may hold ``[defaults]``, ``[[projects]]``, ``[[holds]]`` and ``[safety]``. Anything
else is an error naming the file and the key, so that a typo never silently keeps or deletes
data.
"""

from __future__ import annotations

import math
import threading
import tomllib
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from .errors import PolicyError
from .models import (
    MAX_RETENTION_DAYS,
    Hold,
    ObjectType,
    PolicySet,
    RetentionRule,
    SourceKind,
)

_TOP_KEYS = {"defaults", "projects", "holds", "safety"}
_PROJECT_KEYS = {"id", "name"} | {t.value for t in ObjectType}
_HOLD_KEYS = {"project", "object_type", "object_id", "reason", "expires"}
_SAFETY_KEYS = {"min_retention_days"}


def load_policy_dir(path: Path, *, required: bool = True) -> PolicySet:
    """Read every ``*.toml`` file in ``path``, sorted by name, into one policy set."""
    if not path.exists():
        if required:
            raise PolicyError(f"policy folder {path} does not exist")
        return PolicySet(
            source=f"local:{path}",
            warnings=(f"no policy folder {path}; local policies: none",),
        )
    if not path.is_dir():
        raise PolicyError(f"policy folder {path} is not a folder")
    files = sorted(path.glob("*.toml"))
    if not files and required:
        # an unmounted volume, or a ConfigMap mounted elsewhere, looks like this: running on
        # would drop every local hold while the control plane's automations still delete
        raise PolicyError(
            f"policy folder {path} holds no *.toml policy files; put the policies there "
            "(an empty file, e.g. none.toml, to run with none)"
        )
    sets = [load_policy_file(f) for f in files]
    warnings = () if files else (f"no *.toml policy files in {path}",)
    floors = [s.min_retention_days for s in sets if s.min_retention_days is not None]
    return PolicySet(
        source=f"local:{path}",
        rules=tuple(r for s in sets for r in s.rules),
        holds=tuple(h for s in sets for h in s.holds),
        min_retention_days=max(floors) if floors else None,
        warnings=warnings,
    )


def load_policy_file(path: Path) -> PolicySet:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: invalid TOML: {exc}") from exc
    return parse_policy_document(document, origin=str(path))


def parse_policy_document(document: Mapping[str, Any], *, origin: str) -> PolicySet:
    _known_keys(document, _TOP_KEYS, origin, "")
    rules: list[RetentionRule] = []
    holds: list[Hold] = []
    floor: float | None = None

    if "defaults" in document:
        defaults = _table(document["defaults"], origin, "defaults")
        _known_keys(defaults, {t.value for t in ObjectType}, origin, "defaults.", "object type")
        for key, value in defaults.items():
            rules.append(
                RetentionRule(
                    object_type=ObjectType(key),
                    days=_days(value, origin, f"defaults.{key}"),
                    kind=SourceKind.LOCAL_DEFAULT,
                    origin=origin,
                    label="defaults",
                )
            )

    for index, item in enumerate(_array(document.get("projects", []), origin, "projects")):
        where = f"projects[{index}]"
        entry = _table(item, origin, where)
        _known_keys(entry, _PROJECT_KEYS, origin, f"{where}.")
        project_id = _uuid(_required(entry, "id", origin, where), origin, f"{where}.id")
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            raise PolicyError(f"{origin}: {where}.name: expected a string")
        for object_type in ObjectType:
            if object_type.value in entry:
                rules.append(
                    RetentionRule(
                        object_type=object_type,
                        days=_days(entry[object_type.value], origin, f"{where}.{object_type}"),
                        kind=SourceKind.LOCAL_PROJECT,
                        origin=origin,
                        project_id=project_id,
                        label=name or where,
                    )
                )

    for index, entry in enumerate(_array(document.get("holds", []), origin, "holds")):
        holds.append(_hold(_table(entry, origin, f"holds[{index}]"), origin, f"holds[{index}]"))

    if "safety" in document:
        safety = _table(document["safety"], origin, "safety")
        _known_keys(safety, _SAFETY_KEYS, origin, "safety.")
        if "min_retention_days" in safety:
            floor = _days(safety["min_retention_days"], origin, "safety.min_retention_days")

    return PolicySet(
        source=f"local:{origin}", rules=tuple(rules), holds=tuple(holds), min_retention_days=floor
    )


def _hold(entry: Mapping[str, Any], origin: str, where: str) -> Hold:
    _known_keys(entry, _HOLD_KEYS, origin, f"{where}.")
    project_id = _uuid(_required(entry, "project", origin, where), origin, f"{where}.project")
    reason = _required(entry, "reason", origin, where)
    if not isinstance(reason, str) or not reason.strip():
        raise PolicyError(f"{origin}: {where}.reason: expected a non-empty string")
    object_type: ObjectType | None = None
    if "object_type" in entry:
        object_type = _object_type(entry["object_type"], origin, f"{where}.object_type")
    object_id = (
        _uuid(entry["object_id"], origin, f"{where}.object_id") if ("object_id" in entry) else None
    )
    expires = _expiry(entry["expires"], origin, f"{where}.expires") if "expires" in entry else None
    return Hold(
        project_id=project_id,
        reason=reason.strip(),
        origin=origin,
        object_type=object_type,
        object_id=object_id,
        expires=expires,
    )


def _known_keys(
    table: Mapping[str, Any], allowed: set[str], origin: str, prefix: str, what: str = "key"
) -> None:
    for key in table:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise PolicyError(
                f"{origin}: unknown {what} '{prefix}{key}' (expected one of {expected})"
            )


def _required(table: Mapping[str, Any], key: str, origin: str, where: str) -> Any:
    if key not in table:
        raise PolicyError(f"{origin}: {where}: missing required key '{key}'")
    return table[key]


def _table(value: Any, origin: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{origin}: {where}: expected a table")
    return value


def _array(value: Any, origin: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PolicyError(f"{origin}: {where}: expected an array of tables ([[{where}]])")
    return value


def _days(value: Any, origin: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{origin}: {where}: expected a number of days, got {value!r}")
    try:
        days = float(value)
    except OverflowError:
        raise PolicyError(f"{origin}: {where}: {MAX_RETENTION_DAYS:g} days at most") from None
    if not math.isfinite(days) or days < 0:
        raise PolicyError(f"{origin}: {where}: days must be a finite number >= 0, got {value!r}")
    if days > MAX_RETENTION_DAYS:
        raise PolicyError(f"{origin}: {where}: {value!r} days exceeds {MAX_RETENTION_DAYS:g}")
    return days


def _uuid(value: Any, origin: str, where: str) -> UUID:
    if not isinstance(value, str):
        raise PolicyError(f"{origin}: {where}: expected a UUID string, got {value!r}")
    try:
        return UUID(value)
    except ValueError as exc:
        raise PolicyError(f"{origin}: {where}: {value!r} is not a UUID") from exc


def _object_type(value: Any, origin: str, where: str) -> ObjectType:
    try:
        return ObjectType(value)
    except ValueError as exc:
        expected = ", ".join(t.value for t in ObjectType)
        raise PolicyError(
            f"{origin}: {where}: unknown object type {value!r} (expected one of {expected})"
        ) from exc


def _expiry(value: Any, origin: str, where: str) -> datetime | None:
    """A date keeps the hold through the whole of that day (UTC); a datetime needs an offset."""
    try:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise PolicyError(f"{origin}: {where}: a date-time needs a UTC offset, e.g. 'Z'")
            return value.astimezone(UTC)
        if isinstance(value, date):
            if value == date.max:
                return None  # through the end of time: never expires
            return datetime.combine(value + timedelta(days=1), time(0), tzinfo=UTC)
    except OverflowError:
        raise PolicyError(f"{origin}: {where}: {value} is out of range in UTC") from None
    raise PolicyError(f"{origin}: {where}: expected a TOML date (2027-01-31), got {value!r}")


class HoldWatcher:
    """The holds of a policy folder, re-read when a file changes (checked before each batch).

    A hold added while a run is in progress takes effect at the next batch of its target.
    A policy file that breaks while the run goes on stops the run (``PolicyError``), and so
    does a folder that was there and is gone, or a file that cannot be read: holds that
    cannot be read are not taken as no holds.
    """

    def __init__(self, path: Path, *, required: bool = False) -> None:
        """``required``: a configured folder, which had a policy file when the run read its
        policies (``load_policy_dir``); empty or gone at the first read, it lost them."""
        self.path = path
        self.required = required
        self._stamp: tuple[tuple[str, int, int, int, int], ...] | None = None
        self._holds: tuple[Hold, ...] = ()
        self._seen = False  # the folder was there at a read
        self._lock = threading.Lock()  # the sweep's helper threads share one watcher

    def _current_stamp(self) -> tuple[tuple[str, int, int, int, int], ...]:
        if not self.path.is_dir():
            if self._seen or self.required:
                raise PolicyError(
                    f"policy folder {self.path} is gone during the run; stopping, since its "
                    "holds cannot be checked"
                )
            return ()
        self._seen = True
        stamps = []
        for file in sorted(self.path.glob("*.toml")):
            try:
                info = file.stat()
            except OSError as exc:
                raise PolicyError(
                    f"{file}: cannot read during the run ({type(exc).__name__}); stopping, "
                    "since its holds cannot be checked"
                ) from exc
            # ctime and inode too: a rewrite that keeps size and mtime (cp -p, coarse file
            # system clocks) still changes them
            stamps.append(
                (file.name, info.st_mtime_ns, info.st_size, info.st_ctime_ns, info.st_ino)
            )
        if not stamps and (self._stamp or self.required):
            raise PolicyError(
                f"policy folder {self.path} lost all its *.toml files during the run; "
                "stopping, since its holds cannot be checked"
            )
        return tuple(stamps)

    def __call__(self) -> tuple[Hold, ...]:
        with self._lock:
            stamp = self._current_stamp()
            if stamp != self._stamp:
                self._holds = load_policy_dir(self.path, required=False).holds
                self._stamp = stamp
            return self._holds
