"""A random data plane for comparing two ways of counting or deleting the same targets:
projects with logs, a dataset and experiments at and around the cutoff (unregistered
ones, one misfiled under another project), live and unused segments, held objects (one
of them in no target) and a project held whole."""

from __future__ import annotations

import random
from datetime import timedelta
from uuid import UUID

from tests.support import NOW, Scenario

CUTOFF_DAYS = 30


def _id(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


def _when(rng: random.Random) -> object:
    """A time before, at or after the cutoff (the boundary itself is drawn often)."""
    cutoff = NOW - timedelta(days=CUTOFF_DAYS)
    return rng.choice(
        [
            cutoff,
            cutoff - timedelta(microseconds=1),
            cutoff + timedelta(microseconds=1),
            cutoff - timedelta(days=rng.randint(1, 300)),
            cutoff + timedelta(days=rng.randint(1, 29)),
        ]
    )


def world(
    seed: int, count: int = 7, per_project: int = 4
) -> tuple[Scenario, list[UUID], list[dict[str, str]]]:
    rng = random.Random(seed)
    s = Scenario()
    projects = [_id(rng) for _ in range(count)]
    held: list[dict[str, str]] = []
    experiments: list[tuple[UUID, UUID]] = []
    for project in projects:
        s.add_object("project_logs", project, project, NOW - timedelta(days=400))
        dataset = _id(rng)
        s.add_object("dataset", dataset, project, NOW - timedelta(days=400))
        for _ in range(rng.randint(0, 6)):
            s.add_event("project_logs", project, project, _when(rng))  # type: ignore[arg-type]
            s.add_event("dataset", dataset, project, _when(rng))  # type: ignore[arg-type]
        for _ in range(rng.randint(0, per_project)):
            experiment = _id(rng)
            experiments.append((project, experiment))
            registered = rng.random() < 0.8
            if registered:
                s.add_object("experiment", experiment, project, _when(rng))  # type: ignore[arg-type]
            for _ in range(rng.randint(0, 4)):
                s.add_event("experiment", experiment, project, _when(rng))  # type: ignore[arg-type]
            for _ in range(rng.randint(0, 2)):
                low = _when(rng)
                s.add_segment(
                    "experiment",
                    experiment,
                    project,
                    low,  # type: ignore[arg-type]
                    max(low, _when(rng)),  # type: ignore[type-var]
                    size=rng.randint(1, 10_000),
                    state=rng.choice(["live", "live", "unused"]),
                    unused_at=None,
                )
        for object_type, object_id in (("project_logs", project), ("dataset", dataset)):
            for _ in range(rng.randint(0, 2)):
                low = _when(rng)
                s.add_segment(
                    object_type,
                    object_id,
                    project,
                    low,  # type: ignore[arg-type]
                    max(low, _when(rng)),  # type: ignore[type-var]
                    size=rng.randint(1, 10_000),
                )
        if rng.random() < 0.3:
            held.append(
                {
                    "project": str(project),
                    "object_type": "dataset",
                    "object_id": str(dataset),
                    "reason": "audit",
                }
            )
    # a held experiment that has expired, with rows and a segment, next to one that is not
    # held: their target has work, and the held one's rows must stay
    project = projects[2]
    old = NOW - timedelta(days=CUTOFF_DAYS + 50)
    for experiment in (_id(rng), _id(rng)):
        s.add_object("experiment", experiment, project, old)
        for _ in range(2):
            s.add_event("experiment", experiment, project, old)
        s.add_segment("experiment", experiment, project, old, old)
    held.append(
        {
            "project": str(project),
            "object_type": "experiment",
            "object_id": str(experiment),
            "reason": "legal hold",
        }
    )
    if experiments:
        # a held experiment, and one with rows filed under another project (kept whole)
        project, experiment = rng.choice(experiments)
        held.append(
            {
                "project": str(project),
                "object_type": "experiment",
                "object_id": str(experiment),
                "reason": "legal",
            }
        )
        project, experiment = rng.choice(experiments)
        other = next(p for p in projects if p != project)
        s.add_event("experiment", experiment, other, _when(rng))  # type: ignore[arg-type]
    held.append(
        {
            "project": str(projects[0]),
            "object_type": "experiment",
            "object_id": str(_id(rng)),
            "reason": "nothing of it here",
        }
    )
    held.append({"project": str(projects[1]), "reason": "the whole project"})
    for i, row in enumerate(s.segments):
        if row["state"] == "unused":
            row["unused_at"] = NOW - timedelta(days=i % 3)
    return s, projects, held
