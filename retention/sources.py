"""Policy sources: where retention rules, holds and known projects come from.

A source either returns everything it has or raises; a half-read policy set is never used.
The control plane (a later source) implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .models import PolicySet
from .policyfiles import load_policy_dir


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
