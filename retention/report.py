"""Reports: the JSON document (a contract, DESIGN §5), tables for people, markdown.

The JSON document has at least ``now``, ``dry_run``, ``targets`` (one per project and object
type with a policy or a hold) and ``totals``; ``orphans`` lists projects left out of planning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .models import Identities, Plan, RunReport, Target, TargetOutcome, days_text
from .policy import Resolved

FORMATS = ("table", "json", "markdown")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _days(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def target_document(
    target: Target, outcome: TargetOutcome | None = None, ids: Identities | None = None
) -> dict[str, Any]:
    r, c = target.resolution, target.counts
    doc: dict[str, Any] = {
        "project_id": str(r.project_id),
        "object_type": r.object_type.value,
        "retention_days": _days(r.retention_days),
        "cutoff": _iso(r.cutoff),
        "source": r.winner.describe() if r.winner else "none",
        "source_kind": r.winner.kind.value if r.winner else None,
        "policy_days": _days(r.winner.days) if r.winner else None,
        "floor_days": _days(r.floor_days),
        "floor_applied": r.floor_applied,
        "held": r.held,
        "hold_reason": r.hold.reason if r.hold else None,
        "held_objects": sorted(str(o) for o in c.held_objects),
        "held_object_ids": sorted(str(o) for o in r.held_object_ids),
        "rows": c.rows,
        "total_rows": c.total_rows,
        "total_rows_exact": c.total_exact,
        "expired_objects": c.objects,
        "segments": c.segments,
        "bytes": c.bytes,
        "straddling_segments": c.straddling_segments,
        "oldest_row": _iso(c.oldest_row),
    }
    if ids is not None:  # a reviewed plan names what expires
        doc.update(expired_object_ids=list(ids.experiments), segment_ids=list(ids.segments))
    if outcome is not None:
        doc.update(
            planned_rows=c.rows,
            planned_segments=c.segments,
            segments=outcome.segments,
            bytes=outcome.bytes,
            rows=outcome.rows,
            deleted_objects=outcome.objects,
            batches=outcome.batches,
            phase=outcome.phase.value,
            note=outcome.note,
            guard=outcome.guard or None,
            lock_waits=outcome.lock_waits,
        )
    return doc


def report_document(report: RunReport) -> dict[str, Any]:
    outcomes = {o.target.key: o for o in report.outcomes}
    unused = report.plan.unused_segments
    ids = report.plan.identities or {}
    targets = [target_document(t, outcomes.get(t.key), ids.get(t.key)) for t in report.plan.targets]
    doc: dict[str, Any] = {
        "now": _iso(report.plan.now),
        "dry_run": report.dry_run,
        **({} if report.plan.newest_row is None else {"newest_row": report.plan.newest_row}),
        "targets": targets,
        "totals": {
            "rows": sum(t["rows"] for t in targets) + report.unplanned[0],
            "segments": sum(t["segments"] for t in targets) + report.unplanned[1],
            "bytes": sum(t["bytes"] for t in targets) + report.unplanned[2],
        },
        **(
            {}
            if not any(report.unplanned)
            else {
                "unplanned": dict(zip(("rows", "segments", "bytes"), report.unplanned, strict=True))
            }
        ),
        "orphans": [
            {
                "project_id": str(o.project_id),
                "reason": o.reason,
                "rows": o.rows,
                "segments": o.segments,
                "bytes": o.bytes,
            }
            for o in report.plan.orphans
        ],
        "unused_segments": {
            "segments": unused.segments,
            "bytes": unused.bytes,
            "sweepable": unused.sweepable,
            "sweepable_bytes": unused.sweepable_bytes,
            "next_sweepable_at": _iso(unused.next_sweepable_at),
        },
        "warnings": list(report.warnings),
        "timings": dict(report.timings),
    }
    if report.plan.clocks is not None:
        local, database = report.plan.clocks
        doc["clock"] = {"local": local.isoformat(), "database": database.isoformat()}
    if report.sweep is not None:
        doc["sweep"] = {
            "files": report.sweep.files,
            "bytes": report.sweep.bytes,
            "missing": report.sweep.missing,
            "failed": report.sweep.failed,
            "refused": report.sweep.refused,
            "requests": report.sweep.requests,
        }
    if not report.dry_run:
        doc.update(
            run_id=report.run_id,
            status=report.status.value if report.status else None,
            resumed=report.resumed,
        )
    return doc


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan part of a report: what a run records and hashes."""
    doc = report_document(RunReport(plan=plan, dry_run=True, warnings=plan.warnings))
    doc.pop("timings", None)
    return doc


def plan_hash(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def render(report: RunReport, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report_document(report), indent=2) + "\n"
    return _render_table(report, markdown=fmt == "markdown")


def _n(value: int) -> str:
    return f"{value:,}"


def _bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover


def _segments(doc: dict[str, Any]) -> str:
    if not doc["segments"] and not doc["straddling_segments"]:
        return ""
    text = f"{_n(doc['segments'])} ({_bytes(doc['bytes'])})"
    if doc["straddling_segments"]:
        text += f" +{doc['straddling_segments']} straddling"
    return text


def _note(doc: dict[str, Any]) -> str:
    notes = []
    if doc["held"]:
        notes.append(f"held: {doc['hold_reason']}")
    if doc["held_objects"]:
        notes.append(f"{len(doc['held_objects'])} object(s) held")
    if doc["floor_applied"]:
        notes.append(f"floor {days_text(doc['floor_days'])}d (policy {doc['policy_days']}d)")
    if doc.get("note"):
        notes.append(doc["note"])
    if doc.get("guard"):
        notes.append(f"GUARDED: {doc['guard']}")
    return "; ".join(notes)


def _render_table(report: RunReport, *, markdown: bool) -> str:
    doc = report_document(report)
    if report.dry_run:
        title = "Retention plan (dry run)"
    else:
        title = f"Retention purge: run {doc['run_id']} {doc['status']}"
        if doc["resumed"]:
            title += " (resumed)"
    verb = "EXPIRED" if report.dry_run else "DELETED"
    header = [
        "PROJECT",
        "TYPE",
        "DAYS",
        "CUTOFF",
        verb,
        "OF ROWS",
        "EXPERIMENTS",
        "SEGMENTS",
        "OLDEST ROW",
        "NOTE",
    ]
    rows = [
        [
            t["project_id"],
            t["object_type"],
            "-" if t["retention_days"] is None else str(t["retention_days"]),
            (t["cutoff"] or "-")[:19],
            _n(t["rows"]),
            ("" if t.get("total_rows_exact", True) else "≥") + _n(t["total_rows"]),
            _n(t.get("deleted_objects", t["expired_objects"]))
            if t["object_type"] == "experiment"
            else "",
            _segments(t),
            (t["oldest_row"] or "-")[:19],
            _note(t),
        ]
        for t in doc["targets"]
    ]
    lines = [f"{title} · now {doc['now']}"]
    lines.extend(_table(header, rows, markdown=markdown))
    totals = doc["totals"]
    lines.append(
        f"Total: {_n(totals['rows'])} rows, {_n(totals['segments'])} segments, "
        f"{_n(totals['bytes'])} bytes in {len(doc['targets'])} targets"
    )
    unused = doc["unused_segments"]
    if unused["segments"]:
        when = unused["next_sweepable_at"]
        lines.append(
            f"Unused segments (before this run): {_n(unused['segments'])} "
            f"({_bytes(unused['bytes'])}), "
            f"{_n(unused['sweepable'])} past the grace period"
            + (f"; the next becomes sweepable at {when}" if when else "")
        )
    if "sweep" in doc:
        sweep = doc["sweep"]
        lines.append(
            f"Sweep: {_n(sweep['files'])} files deleted ({_bytes(sweep['bytes'])}), "
            f"{_n(sweep['missing'])} already gone, {_n(sweep['failed'])} failed, "
            f"{_n(sweep['refused'])} refused"
        )
    if doc["orphans"]:
        lines.append("Orphaned projects (left out; --purge-orphans deletes them):")
        lines.extend(
            f"  {o['project_id']} ({o['reason']}): {_n(o['rows'])} rows" for o in doc["orphans"]
        )
    lines.extend(f"warning: {w}" for w in doc["warnings"])
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> list[str]:
    if markdown:
        out = ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out.extend(
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
        )
        out.append("")
        return out
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*row).rstrip() for row in rows]


def render_explain(resolved: Resolved, *, fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(explain_document(resolved), indent=2) + "\n"
    lines = [
        f"Effective policies · now {resolved.now.isoformat()} · safety floor "
        f"{days_text(resolved.floor_days)} days"
    ]
    for r in resolved.resolutions:
        lines.append(f"{r.project_id} {r.object_type}")
        if not r.candidates:
            lines.append("  sources: none")
        for rule in r.candidates:
            mark = "  <- shortest" if rule is r.winner else ""
            lines.append(f"  source: {rule.describe()}{mark}")
        if r.hold is not None:
            lines.append(f"  {r.hold.describe()}: beats every policy")
        for hold in r.object_holds:
            lines.append(f"  {hold.describe()}: that object is kept")
        if r.floor_applied and r.winner is not None:
            lines.append(
                f"  floor: {days_text(r.winner.days)} days raised to the safety floor "
                f"of {days_text(r.floor_days)} days"
            )
        if r.cutoff is not None and r.retention_days is not None:
            lines.append(
                f"  effective: {days_text(r.retention_days)} days, cutoff {r.cutoff.isoformat()}"
            )
        elif r.hold is not None:
            lines.append("  effective: held, nothing deleted")
        else:
            lines.append("  effective: no policy, kept forever")
    lines.extend(f"warning: {w}" for w in resolved.warnings)
    return "\n".join(lines) + "\n"


def explain_document(resolved: Resolved) -> dict[str, Any]:
    return {
        "now": resolved.now.isoformat(),
        "floor_days": _days(resolved.floor_days),
        "policies": [
            {
                "project_id": str(r.project_id),
                "object_type": r.object_type.value,
                "sources": [
                    {
                        "kind": rule.kind.value,
                        "origin": rule.origin,
                        "label": rule.label,
                        "scope": str(rule.project_id) if rule.project_id else "org",
                        "days": _days(rule.days),
                        "winner": rule is r.winner,
                    }
                    for rule in r.candidates
                ],
                "floor_applied": r.floor_applied,
                "hold": r.hold.describe() if r.hold else None,
                "object_holds": [h.describe() for h in r.object_holds],
                "retention_days": _days(r.retention_days),
                "cutoff": _iso(r.cutoff),
            }
            for r in resolved.resolutions
        ],
        "warnings": list(resolved.warnings),
    }
