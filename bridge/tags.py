"""Image tag templates: which placeholders exist, and how a build renders into a valid OCI tag (pure)."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from bridge.errors import InvalidBuild

PLACEHOLDERS = ("build.id", "build.number", "commit", "commit7", "branch", "definition.id")
OCI_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def template_fields(template: str) -> list[str]:
    """Placeholder names used by a template; ValueError for malformed braces."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from None
    fields = []
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if spec or conv:
            raise ValueError(f"format specs are not supported in {template!r}")
        fields.append(name)
    return fields


def unknown_placeholders(template: str) -> list[str]:
    return [name for name in template_fields(template) if name not in PLACEHOLDERS]


# A valid value of each placeholder's kind: what a real build renders (a branch slug has no '/').
SAMPLES = {
    "build.id": "4711",
    "build.number": "20261127.3",
    "commit": "6e12f614c0b5e4b33d4a8f0a9c3b2d1e0f9a8b7c",
    "commit7": "6e12f61",
    "branch": "release-1.2",
    "definition.id": "42",
}


def template_problem(template: str) -> str | None:
    """Why the template can never render a valid OCI tag, checked with every placeholder replaced by a valid sample
    of its kind (so the fixed text is what is judged); None when it can."""
    try:
        unknown = unknown_placeholders(template)
    except ValueError as exc:
        return str(exc)
    if unknown:
        return f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} in {template!r}"
    try:
        render_tag(template, SAMPLES)
    except InvalidBuild:
        sample = "".join(literal + (SAMPLES[name] if name else "")
                         for literal, name, _, _ in string.Formatter().parse(template))
        shown = repr(sample) if len(sample) <= 60 else repr(sample[:60]) + f"... ({len(sample)} characters)"
        return (f"cannot form a valid OCI tag: with sample values it renders {shown}; a tag is 1 to 128 of "
                "[A-Za-z0-9_.-], not starting with '.' or '-'")
    return None


def branch_slug(ref: str | None) -> str:
    """`refs/heads/release/1.2` → `release-1.2`."""
    if not ref:
        return ""
    for prefix in ("refs/heads/", "refs/tags/", "refs/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix) :]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "-", ref).strip("-.")


def build_values(
    *, build_id: int, build_number: str | None, commit: str | None, branch: str | None, definition_id: int | None
) -> dict[str, str]:
    return {
        "build.id": str(build_id),
        "build.number": build_number or "",
        "commit": commit or "",
        "commit7": (commit or "")[:7],
        "branch": branch_slug(branch),
        "definition.id": "" if definition_id is None else str(definition_id),
    }


def render_tag(template: str, values: Mapping[str, str]) -> str:
    """Render and validate against the OCI tag grammar; InvalidBuild names what is wrong, nothing is written."""
    out: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            if name not in values:
                raise InvalidBuild(f"tag template {template!r} uses unknown placeholder {{{name}}}")
            if not values[name]:
                raise InvalidBuild(f"tag template {template!r}: the build has no value for {{{name}}}")
            out.append(values[name])
    tag = "".join(out)
    if not OCI_TAG.fullmatch(tag):
        raise InvalidBuild(f"rendered tag {tag!r} is not a valid OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})")
    return tag
