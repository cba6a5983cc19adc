"""The exception tree. Each class carries the exit code that the CLI turns it into.

    RetentionError                 1  unexpected error
    ├── UsageError                 2  bad command line or configuration
    │   ├── PolicyError            2  a policy file is invalid (names file and key)
    │   └── SchemaError            2  a table or column the worker needs is missing
    ├── ControlPlaneError          3  policies could not be read completely; nothing deleted
    ├── DatabaseError              4  the database failed
    │   └── DatabaseUnavailable    4  unreachable, or the connection was lost (retryable)
    ├── ObjectStoreError           4  the object store is unreachable or misconfigured
    ├── GuardError                 6  a safety guard refused the whole run
    └── LockedError                7  another run holds the lock

Exit code 5 (partial, resumable) and 6 for a guarded target are run outcomes, not
exceptions: the engine finishes the other targets and reports them.

Driver errors are translated in one place (``retention.db``) and chained with ``from``.
Messages carry ids, names and counts, never secrets or row contents.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1
    USAGE = 2
    CONTROL_PLANE = 3
    DATABASE = 4
    PARTIAL = 5
    GUARD = 6
    LOCKED = 7


class RetentionError(Exception):
    """An unexpected error."""

    exit_code: ExitCode = ExitCode.UNEXPECTED

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(RetentionError):
    """Invalid command line or configuration."""

    exit_code = ExitCode.USAGE


class PolicyError(UsageError):
    """Invalid policy file."""


class SchemaError(UsageError):
    """The database lacks a table or column the worker needs."""


class ControlPlaneError(RetentionError):
    """The control plane could not be read; nothing was deleted."""

    exit_code = ExitCode.CONTROL_PLANE


class DatabaseError(RetentionError):
    """The database is unavailable."""

    exit_code = ExitCode.DATABASE


class DatabaseUnavailable(DatabaseError):
    """The database is unreachable or the connection was lost."""


class ObjectStoreError(RetentionError):
    """The object store is unavailable."""

    exit_code = ExitCode.DATABASE


class GuardError(RetentionError):
    """A safety guard refused the run; nothing was deleted."""

    exit_code = ExitCode.GUARD


class LockedError(RetentionError):
    """Another retention run holds the lock on this database."""

    exit_code = ExitCode.LOCKED
