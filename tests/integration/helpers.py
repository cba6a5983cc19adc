"""Building workers for integration tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from retention import engine as engine_module
from retention.engine import Worker
from retention.models import RunReport
from retention.settings import load_settings
from tests.support import NOW


def write_policies(folder: Path, text: str, name: str = "policy.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


def worker(
    url: str,
    policy_dir: Path,
    *,
    now: datetime | None = NOW,
    batch_size: int = 50,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], datetime] | None = None,
    **settings: Any,
) -> Worker:
    settings.setdefault("reconnect_timeout", "0")  # tests of reconnecting set it themselves
    if now is not None:  # a made-up world at NOW: the database's real clock is no second
        settings.setdefault("max_clock_skew", "36500d")  # opinion on it
    built = load_settings(
        database_url=url, policy_dir=policy_dir, now=now, batch_size=batch_size, **settings
    )
    extra: dict[str, Any] = {}
    if should_stop is not None:
        extra["should_stop"] = should_stop
    if clock is not None:
        extra["clock"] = clock
    elif now is not None:
        extra["clock"] = lambda: now
    return Worker.from_settings(built, **extra)


class StopAfter:
    """A should_stop callback that says stop after ``n`` checks."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


def purge(w: Worker, *, allow_large_deletes: bool = True, **kwargs: Any) -> RunReport:
    """A purge with the guards overridden, for tests that are not about the guards."""
    return engine_module.purge(w, allow_large_deletes=allow_large_deletes, **kwargs)
