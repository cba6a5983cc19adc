"""What a run needs from the outside world: settings, policy sources, a clock, a stop flag."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .db import Database, parse_database_url
from .errors import UsageError
from .models import Hold, PolicySet
from .policyfiles import HoldWatcher
from .progress import ProgressSink
from .settings import Settings
from .sources import LocalPolicySource, PolicySource, control_plane_source
from .tables import DataPlaneTables, build_tables

log = logging.getLogger(__name__)

# A pinned `now` may lead the local clock by this much at most (clock skew between hosts).
MAX_NOW_LEAD = timedelta(minutes=1)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Worker:
    """What a run needs from the outside world."""

    settings: Settings
    sources: Sequence[PolicySource]
    clock: Callable[[], datetime] = utc_now
    should_stop: Callable[[], bool] = field(default=lambda: False)
    progress: ProgressSink | None = None  # a progress bar on a terminal

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: object) -> Worker:
        """Local policy files, plus the control plane when BRAINTRUST_API_URL is set."""
        sources: list[PolicySource] = [
            LocalPolicySource(settings.policy_dir, required=settings.policy_dir_required)
        ]
        remote = control_plane_source(settings)
        if remote is not None:
            sources.append(remote)
        return cls(settings=settings, sources=tuple(sources), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def local_only(cls, settings: Settings, **kwargs: object) -> Worker:
        """The local policy files only: for commands that show what the worker holds or
        did (``holds``, ``receipts``), which must work while the control plane is down."""
        source = LocalPolicySource(settings.policy_dir, required=settings.policy_dir_required)
        return cls(settings=settings, sources=(source,), **kwargs)  # type: ignore[arg-type]

    @property
    def database(self) -> Database:
        return parse_database_url(self.settings.resolved_database_url)

    @property
    def tables(self) -> DataPlaneTables:
        s = self.settings
        return build_tables(
            events=s.table_events,
            objects=s.table_objects,
            segments=s.table_segments,
            columns=s.table_columns,
        )

    def pinned_now(self, server: datetime | None = None) -> datetime:
        """RETENTION_NOW, or the clock; never in the future.

        With ``server`` (the database's clock): when the two clocks disagree by more than
        RETENTION_MAX_CLOCK_SKEW, the earlier one is used, so a host clock set a year ahead
        (or a database's) never deletes a year of data.
        """
        clock = self.clock()
        if server is not None and abs(clock - server) > self.settings.max_clock_skew:
            log.warning(
                "clocks disagree: local %s, database %s; using the earlier",
                clock.isoformat(),
                server.isoformat(),
            )
            clock = min(clock, server)
        now = self.settings.now or clock
        if now > clock + MAX_NOW_LEAD:
            raise UsageError(
                f"pinned now {now.isoformat()} is in the future (clock {clock.isoformat()})"
            )
        return now

    def clock_bounds(
        self, server: datetime, host: datetime | None = None
    ) -> tuple[datetime, datetime]:
        """(earlier, later) of the host's clock (``host``, or read now) and the database's
        when they disagree by more than RETENTION_MAX_CLOCK_SKEW, else the host's twice.
        The grace period is measured from the later (a mark) to the earlier (a sweep), so a
        wrong clock on either side lengthens it and never shortens it."""
        clock = host or self.clock()
        if abs(clock - server) <= self.settings.max_clock_skew:
            return clock, clock
        return min(clock, server), max(clock, server)

    def active_holds(self, now: datetime) -> Callable[[], tuple[Hold, ...]]:
        """The local policy folder's holds active at ``now``, read at each call."""
        watcher = self.hold_watcher()

        def active() -> tuple[Hold, ...]:
            return tuple(h for h in watcher() if h.active(now)) if watcher else ()

        return active

    def hold_watcher(self) -> Callable[[], tuple[Hold, ...]] | None:
        """Holds of the local policy folder, re-read before each batch."""
        local = next((s for s in self.sources if isinstance(s, LocalPolicySource)), None)
        return HoldWatcher(local.path, required=local.required) if local is not None else None

    def load_policies(self) -> list[PolicySet]:
        """Every source completely, or an exception: never a half-read policy set."""
        return [source.load() for source in self.sources]
