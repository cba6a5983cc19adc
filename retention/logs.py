"""Logging: JSON lines when not on a terminal, readable lines on one.

Every line carries the run id (``-`` outside a run) and an action (what the worker was
doing: plan, delete, mark, sweep, ...). Lines carry ids and counts, never row contents or
tokens.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_run_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("run_id", default=None)
_action: contextvars.ContextVar[str] = contextvars.ContextVar("action", default="cli")

FORMATS = ("auto", "json", "text")


@contextmanager
def context(*, run_id: int | None = None, action: str | None = None) -> Iterator[None]:
    """Lines logged inside carry this run id and action."""
    run_token = _run_id.set(run_id) if run_id is not None else None
    action_token = _action.set(action) if action is not None else None
    try:
        yield
    finally:
        if action_token is not None:
            _action.reset(action_token)
        if run_token is not None:
            _run_id.reset(run_token)


def set_run(run_id: int | None) -> None:
    _run_id.set(run_id)


def set_action(action: str) -> None:
    _action.set(action)


def outside_run() -> None:
    """Back to no run (``-``) and the ``cli`` action: between the runs of ``schedule``."""
    _run_id.set(None)
    _action.set("cli")


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = _run_id.get()
        record.action = _action.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an error's last line, and with ``debug``
    (``RETENTION_DEBUG``) its whole traceback too."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "run_id": getattr(record, "run_id", None),
            "action": getattr(record, "action", "cli"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            text = self.formatException(record.exc_info)
            doc["error"] = text.splitlines()[-1]
            if self.debug:
                doc["traceback"] = text
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [run %(run)s %(action)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.run = getattr(record, "run_id", None) or "-"
        return super().format(record)


def configure(level: str = "INFO", fmt: str = "auto", *, debug: bool = False) -> None:
    """JSON when stderr is not a terminal (``auto``), else readable text. ``debug``: JSON
    lines carry whole tracebacks (text lines always do)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Context())
    handler.setFormatter(JsonFormatter(debug) if use_json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    names = logging.getLevelNamesMapping()
    root.setLevel(level.upper() if level.upper() in names else "INFO")
    # alembic announces its context on every check; our own lines say what matters
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # we log requests ourselves
