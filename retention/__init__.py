"""retention: data-retention enforcement for self-hosted Braintrust data planes.

The library is usable without the CLI: build ``Settings``, wrap them in a ``Worker`` (with
an injected clock and policy sources if you like), and call ``plan`` or ``purge``.
"""

from .engine import explain, plan, purge
from .errors import (
    ControlPlaneError,
    DatabaseError,
    ExitCode,
    GuardError,
    LockedError,
    PolicyError,
    RetentionError,
    SchemaError,
    UsageError,
)
from .models import ObjectType, Plan, PolicySet, Resolution, RunReport, RunStatus, Target
from .settings import Settings, load_settings
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ControlPlaneError",
    "DatabaseError",
    "ExitCode",
    "GuardError",
    "LockedError",
    "ObjectType",
    "Plan",
    "PolicyError",
    "PolicySet",
    "Resolution",
    "RetentionError",
    "RunReport",
    "RunStatus",
    "SchemaError",
    "Settings",
    "Target",
    "UsageError",
    "Worker",
    "__version__",
    "explain",
    "load_settings",
    "plan",
    "purge",
]
