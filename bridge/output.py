"""How the CLI and the demo print things: `-o table|wide|json|yaml`, like kubectl.

Pure functions from API answers (dicts) to text; no I/O, so both the CLI and the demo use them without importing
each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

FORMATS = ("table", "wide", "json", "yaml")

DEPLOYMENT_COLUMNS = ("build", "route", "env", "tag", "state", "verdict", "age", "reason")
DEPLOYMENT_WIDE = ("id", "build", "route", "env", "tag", "state", "verdict", "commit", "by", "age", "reason")
HOLD_COLUMNS = ("route", "env", "by", "age", "reason")
HOLD_WIDE = ("route", "env", "by", "note", "since", "age", "reason")
TIMELINE_COLUMNS = ("step", "at", "age")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Columns padded to their widest cell, headers upper-cased; the last column is never padded or cut."""
    cells = [[str(row.get(c) if row.get(c) not in (None, "") else "-") for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    widths[-1] = 0

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line([c.upper() for c in columns]), *(line(r) for r in cells)])


def age(then: float | str | None, now: float | None = None) -> str:
    """kubectl's AGE: `45s`, `12m`, `3h`, `5d` (the largest whole unit); `-` when unknown."""
    if then is None:
        return "-"
    if isinstance(then, str):
        try:
            then = datetime.fromisoformat(then.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return "-"
    seconds = max(0, int((now if now is not None else datetime.now(UTC).timestamp()) - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _by(item: dict[str, Any]) -> str | None:
    by = (item.get("details") or {}).get("promoted_by") or item.get("by")
    return str(by) if by else None


def deployment_rows(items: Sequence[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    return [{**item, "build": item.get("build_id"), "env": item.get("environment"),
             "commit": (item.get("commit_sha") or "")[:10] or None, "by": _by(item),
             "age": age(item.get("created"), now)} for item in items]


def hold_rows(items: Sequence[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
    return [{**item, "env": item.get("environment"), "age": age(item.get("since"), now)} for item in items]


def timeline_rows(record: dict[str, Any], now: float | None = None) -> list[dict[str, Any]]:
    stamps = sorted((record.get("timeline") or {}).items(), key=lambda kv: kv[1])
    return [{"step": step, "at": at, "age": age(at, now)} for step, at in stamps]


def deployment_detail(record: dict[str, Any], wide: bool, now: float | None = None) -> str:
    """One deployment, `kubectl describe` style: its fields, then its timeline."""
    fields = ["id", "build_id", "build_number", "route", "environment", "tag", "state", "verdict", "reason",
              "commit_sha", "pr_url", "promoted_from", "promoted_by", "argocd_app", "file"]
    if wide:
        fields += ["build_url", "repository", "keys", "source_branch", "source_commit", "argocd_url", "old_tags"]
    values = {**record, "promoted_by": _by(record)}
    width = max(len(f) for f in fields) + 1
    lines = [f"{(name + ':').ljust(width)} {_scalar(values.get(name))}" for name in fields
             if values.get(name) not in (None, "", [], {}) or name in ("verdict", "reason")]
    apps = argocd_app_rows(record)
    if apps:
        lines += ["", "Argo CD applications:"]
        lines += ["  " + line for line in format_table(apps, ["app", "state", "reason"]).splitlines()]
    lines += ["", "Timeline:"]
    lines += ["  " + line for line in format_table(timeline_rows(record, now), TIMELINE_COLUMNS).splitlines()]
    return "\n".join(lines)


def argocd_app_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each Argo CD application of an estate deployment with its state (`details.argocd.apps`)."""
    apps = ((record.get("details") or {}).get("argocd") or {}).get("apps") or {}
    return [{"app": name, "state": a.get("state"), "reason": a.get("reason")} for name, a in sorted(apps.items())
            if isinstance(a, dict)]


def _scalar(value: Any) -> str:
    if value in (None, ""):
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def dump(body: Any, fmt: str) -> str:
    """The API's answer as JSON or YAML, unchanged (scripts rely on the field names)."""
    if fmt == "json":
        return json.dumps(body, indent=2)
    import yaml

    text: str = yaml.safe_dump(body, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.rstrip("\n")
