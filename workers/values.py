"""Format-exact edits of Helm values files (pure: text in, text out).

ruamel.yaml is used only to *locate* the target scalars (their start/end offsets and quoting style); the new
scalar text is spliced into the original string, so every other byte (comments, blank lines, key order,
indentation, anchors, ``---``/``...`` markers, BOM, CRLF line endings) stays as it was. Old and new text are then
composed again (with libyaml through PyYAML when installed: fast, and a second parser's opinion; else ruamel) and
compared node by node; if anything except the targets differs, `UnsafeEdit` is raised and nothing is returned.
A tab before a comment (valid YAML, rejected by ruamel's scanner) is read as a space.

Rules:

* Key paths follow `bridge.keypath.parse_key`: ``image.tag``, ``images[1].tag``, ``annotations["a.b/c"]``.
* Multi-document files: a key is set in *every* document that contains its full path; `KeyNotFound` when no
  document does. `read_values` reports the first document that has the path.
* Quoting: a double-quoted target stays double-quoted, a single-quoted one single-quoted (double quotes only if
  the new value cannot be written in single quotes). A plain target stays plain when the new value, read back
  as YAML 1.1 *and* 1.2, is a string; or when old and new are both booleans; or both plain decimal integers
  below 1,000,000 (``tag: 123`` -> ``124``; Helm turns larger numbers into floats printed as ``1.234567e+06``).
  Anything else (``1.10``, ``true``, ``null``, ``0x1F``, ``1e3``, ``0123``, ``2024-01-01``, ``a: b``) is
  written in double quotes so the value stays a string. An empty or ``~``/``null`` target becomes a string.
* Refused with `UnsafeEdit`: a target that is a mapping, a list or a block scalar (``|``/``>``); a target
  reached through an alias (``*x``); a target whose value is shared with another path through an anchor;
  duplicate keys on the path; creating keys inside flow style (``{}``) or under a non-mapping.
* ``create_missing=True`` appends missing mapping keys (and missing parent mappings) after the last entry of the
  deepest existing block mapping, with that mapping's indentation (children indented by the file's step). It is
  created in the document with the deepest existing prefix (the first such one). List items are never created.
* A value that is already equal leaves the text byte-identical and `EditResult.changed` False.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver

try:  # optional: PyYAML's libyaml binding makes the re-parse check ~20x faster than pure-Python ruamel
    import yaml as _pyyaml

    _FAST_LOADER: Any = _pyyaml.CSafeLoader
except (ImportError, AttributeError):  # pragma: no cover - depends on the installation
    _FAST_LOADER = None

from bridge.errors import PermanentError, UnsafeWrite
from bridge.keypath import KeyPath, format_key, parse_key

__all__ = [
    "Change",
    "EditResult",
    "KeyNotFound",
    "UnsafeEdit",
    "ValuesEditError",
    "read_values",
    "set_values",
]

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_SMALL_INT = re.compile(r"-?(0|[1-9][0-9]{0,5})")
_SPACE = " \t"


class ValuesEditError(PermanentError):
    """The values file cannot be edited as asked."""


class KeyNotFound(ValuesEditError):
    def __init__(self, key: str, filename: str, detail: str = "") -> None:
        self.key = key
        self.filename = filename
        super().__init__(f"{filename}: key {key!r} not found" + (f" ({detail})" if detail else ""))


class UnsafeEdit(ValuesEditError, UnsafeWrite):
    """The edit is refused: it would change more than the target scalars, or the target is not editable."""


@dataclass(frozen=True)
class Change:
    key: str
    old: str | None
    new: str


@dataclass(frozen=True)
class EditResult:
    text: str
    changes: tuple[Change, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


# --- parsing -------------------------------------------------------------------------------------------------

_local = threading.local()
_RESOLVERS = (VersionedResolver(version=(1, 1)), VersionedResolver(version=(1, 2)))


def _yaml() -> YAML:
    # A YAML() object keeps parser state while composing, so one per thread, reused across calls.
    y: YAML | None = getattr(_local, "yaml", None)
    if y is None:
        y = _local.yaml = YAML(typ="safe", pure=True)
    return y


# ruamel (like PyYAML) rejects a tab as the whitespace before a comment or at the end of a line, which YAML and
# Helm's go-yaml allow. Such tabs are read as spaces: same length, so every offset still points into the original.
_TAB_SEPARATOR = re.compile(r"[ \t]*\t[ \t]*(?=#|\r?$)", re.MULTILINE)


def _compose_all(text: str) -> list[Node | None]:
    try:
        return list(_yaml().compose_all(text))
    except YAMLError:
        spaced = _TAB_SEPARATOR.sub(lambda m: " " * len(m.group()), text)
        if spaced == text:
            raise
        try:
            return list(_yaml().compose_all(spaced))
        except YAMLError:
            pass
        raise


def _compose(text: str, filename: str) -> list[Node | None]:
    try:
        return _compose_all(text)
    except YAMLError as exc:
        raise ValuesEditError(f"{filename}: not valid YAML: {exc}") from exc


def _parse_keys(keys: Sequence[str], filename: str) -> list[KeyPath]:
    parsed = []
    for key in keys:
        try:
            parsed.append(parse_key(key))
        except ValueError as exc:
            raise ValuesEditError(f"{filename}: invalid key path: {exc}") from exc
    return parsed


# --- locating ------------------------------------------------------------------------------------------------


@dataclass
class _Found:
    node: Node
    key_node: ScalarNode | None  # the mapping key holding the target, None for list items
    in_flow: bool


@dataclass
class _Missing:
    depth: int  # parts[:depth] exist
    parent: Node  # the node at parts[:depth]
    blocked: str  # why it cannot be created ("" when it can)


def _locate(root: Node | None, parts: KeyPath, key: str, filename: str) -> _Found | _Missing | None:
    """Walk `parts` from `root`. None when the document is empty."""
    if root is None:
        return None
    node = root
    key_node: ScalarNode | None = None
    in_flow = False
    for depth, part in enumerate(parts):
        if isinstance(part, int):
            if not isinstance(node, SequenceNode):
                return _Missing(depth, node, f"{format_key(parts[:depth]) or 'document'} is not a list")
            if part >= len(node.value):
                return _Missing(depth, node, f"list {format_key(parts[:depth])} has {len(node.value)} items")
            child: Node = node.value[part]
            floor = node.value[part - 1].end_mark.index if part else node.start_mark.index
            key_node = None
        else:
            if not isinstance(node, MappingNode):
                return _Missing(depth, node, f"{format_key(parts[:depth]) or 'document'} is not a mapping")
            pairs = [(k, v) for k, v in node.value if isinstance(k, ScalarNode) and k.value == part]
            if len(pairs) > 1:
                raise UnsafeEdit(f"{filename}: duplicate key {format_key(parts[: depth + 1])!r} in {key!r}")
            if not pairs:
                return _Missing(depth, node, "")
            key_node, child = pairs[0]
            floor = key_node.end_mark.index
        # Anchors are defined before their aliases, so a node that starts before its own key is an alias.
        if child.start_mark.index < floor:
            where = format_key(parts[: depth + 1])
            raise UnsafeEdit(f"{filename}: {where!r} is an alias (*); refusing to edit {key!r}")
        in_flow = bool(node.flow_style)
        node = child
    return _Found(node, key_node, in_flow)


def _is_empty(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.value == "" and node.style is None and node.tag == _NULL


# --- rendering scalars ---------------------------------------------------------------------------------------


def _printable(ch: str) -> bool:
    o = ord(ch)
    if o < 0x20 or 0x7F <= o <= 0x9F or ch in "\u2028\u2029\ufeff" or 0xD800 <= o <= 0xDFFF:
        return False
    return o not in (0xFFFE, 0xFFFF)


def _double(value: str) -> str:
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif _printable(ch):
            out.append(ch)
        elif ch in "\n\t":
            out.append("\\n" if ch == "\n" else "\\t")
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + '"'


def _single(value: str) -> str:
    if not all(_printable(ch) for ch in value):
        return _double(value)
    return "'" + value.replace("'", "''") + "'"


def _resolved(value: str) -> set[str]:
    return {str(r.resolve(ScalarNode, value, (True, False))) for r in _RESOLVERS}


def _plain_syntax_ok(value: str, in_flow: bool) -> bool:
    if not value or value != value.strip(_SPACE) or not all(_printable(ch) for ch in value):
        return False
    probe = "{k: " + value + "}\n" if in_flow else "k: " + value + "\n"
    try:
        doc = _yaml().compose(probe)
    except YAMLError:
        return False
    if not isinstance(doc, MappingNode) or len(doc.value) != 1:
        return False
    node = doc.value[0][1]
    return isinstance(node, ScalarNode) and node.style is None and node.value == value


def _plain_ok(value: str, old_tag: str, in_flow: bool, explicit_tag: bool) -> bool:
    if explicit_tag:  # `!!str 12`: the tag decides the type
        return _plain_syntax_ok(value, in_flow)
    tags = _resolved(value)
    if tags == {_STR}:
        return _plain_syntax_ok(value, in_flow)
    if tags == {old_tag} == {_BOOL}:
        return value in ("true", "false")
    if tags == {old_tag} == {_INT}:
        return bool(_SMALL_INT.fullmatch(value))
    return False


def _render(node: ScalarNode, value: str, in_flow: bool, explicit_tag: bool) -> str:
    if node.style == '"':
        return _double(value)
    if node.style == "'":
        return _single(value)
    return value if _plain_ok(value, str(node.tag), in_flow, explicit_tag) else _double(value)


def _render_key(key: str) -> str:
    return key if _resolved(key) == {_STR} and _plain_syntax_ok(key, False) and ":" not in key else _double(key)


# --- splicing ------------------------------------------------------------------------------------------------


def _skip_properties(text: str, pos: int, end: int) -> tuple[int, bool]:
    """Skip `&anchor` / `!tag` before a scalar; returns (value start, had an explicit tag)."""
    explicit = False
    while pos < end and text[pos] in "&!":
        explicit = explicit or text[pos] == "!"
        while pos < end and text[pos] not in " \t\r\n":
            pos += 1
        while pos < end:
            if text[pos] in " \t\r\n":
                pos += 1
            elif text[pos] == "#":
                while pos < end and text[pos] not in "\r\n":
                    pos += 1
            else:
                break
    return pos, explicit


@dataclass
class _Splice:
    start: int
    end: int
    text: str


def _replacement(text: str, found: _Found, value: str, key: str, filename: str) -> _Splice | None:
    """The splice that sets `found` to `value`, None when it already holds it."""
    node = found.node
    if not isinstance(node, ScalarNode):
        kind = "a mapping" if isinstance(node, MappingNode) else "a list"
        raise UnsafeEdit(f"{filename}: {key!r} is {kind}, not a scalar")
    if node.style in ("|", ">"):
        raise UnsafeEdit(f"{filename}: {key!r} is a block scalar ({node.style}); refusing to edit it")
    if node.value == value and node.tag != _NULL:
        return None
    if _is_empty(node):
        if node.anchor is not None or found.key_node is None or found.in_flow:
            raise UnsafeEdit(f"{filename}: cannot set empty value of {key!r} here")
        pos = found.key_node.end_mark.index
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        if pos >= len(text) or text[pos] != ":":
            raise UnsafeEdit(f"{filename}: cannot find ':' after key {key!r}")
        pos += 1
        rendered = _render(node, value, False, False)
        if pos < len(text) and text[pos] in _SPACE:
            pos += 1
        else:
            rendered = " " + rendered
        if pos < len(text) and text[pos] == "#":
            rendered += " "
        return _Splice(pos, pos, rendered)
    start, explicit = _skip_properties(text, node.start_mark.index, node.end_mark.index)
    rendered = _render(node, value, found.in_flow, explicit)
    if text[start : node.end_mark.index] == rendered:
        return None
    return _Splice(start, node.end_mark.index, rendered)


def _apply(text: str, splices: list[_Splice]) -> str:
    out = text
    for s in sorted(splices, key=lambda s: s.start, reverse=True):
        out = out[: s.start] + s.text + out[s.end :]
    return out


# --- creating missing keys -----------------------------------------------------------------------------------


def _content_end(text: str, node: Node, key_node: Node | None) -> int | None:
    """Offset just after the last meaningful character of `node` (the key's end for an empty value)."""
    if isinstance(node, MappingNode) and not node.flow_style and node.value:
        k, v = node.value[-1]
        return _content_end(text, v, k)
    if isinstance(node, SequenceNode) and not node.flow_style and node.value:
        return _content_end(text, node.value[-1], None)
    if _is_empty(node):
        return int(key_node.end_mark.index) if key_node is not None else None
    end = int(node.end_mark.index)
    if isinstance(node, ScalarNode) and node.style in ("|", ">"):  # its end mark includes trailing blank lines
        while end > node.start_mark.index and text[end - 1] in " \t\r\n":
            end -= 1
    return end


def _line_end(text: str, pos: int) -> tuple[int, str]:
    """(offset of the start of the next line after `pos`, that line's line ending)."""
    nl = text.find("\n", pos)
    if nl < 0:
        eol = "\r\n" if "\r\n" in text else "\n"
        return len(text), eol
    return nl + 1, "\r\n" if nl > 0 and text[nl - 1] == "\r" else "\n"


def _indent_step(root: Node) -> int:
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, MappingNode) and not node.flow_style:
            for k, v in node.value:
                if isinstance(v, MappingNode) and not v.flow_style and v.value:
                    step = v.value[0][0].start_mark.column - k.start_mark.column
                    if step > 0:
                        return int(step)
                stack.append(v)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return 2


def _creation(text: str, root: Node, missing: _Missing, parts: KeyPath, value: str, key: str, filename: str) -> _Splice:
    parent = missing.parent
    rest = parts[missing.depth :]
    if missing.blocked or not all(isinstance(p, str) for p in rest):
        raise KeyNotFound(key, filename, missing.blocked or "list items are never created")
    if not isinstance(parent, MappingNode) or parent.flow_style or not parent.value:
        raise UnsafeEdit(
            f"{filename}: cannot create {key!r}: {format_key(parts[: missing.depth]) or 'document'} "
            "is not a block mapping (flow style or empty)"
        )
    end = _content_end(text, parent, None)
    if end is None:
        raise UnsafeEdit(f"{filename}: cannot find where to append {key!r}")
    insert_at, eol = _line_end(text, max(end - 1, 0))
    column = int(parent.value[0][0].start_mark.column)
    step = _indent_step(root)
    lines = []
    for i, part in enumerate(rest):
        assert isinstance(part, str)
        indent = " " * (column + i * step)
        if i < len(rest) - 1:
            lines.append(f"{indent}{_render_key(part)}:")
        else:
            rendered = value if _plain_ok(value, _NULL, False, False) else _double(value)
            lines.append(f"{indent}{_render_key(part)}: {rendered}")
    block = eol.join(lines) + eol
    if insert_at == len(text) and text and not text.endswith("\n"):
        block = eol + block
    return _Splice(insert_at, insert_at, block)


# --- verification --------------------------------------------------------------------------------------------


class _Verifier:
    """Compare old and new node trees; only the target paths may differ (and created paths may be added).

    Works on ruamel and PyYAML nodes alike (both name their kind in `node.id`).
    """

    def __init__(self, targets: dict[tuple[Any, ...], str], created: dict[tuple[Any, ...], str], filename: str):
        self.targets = targets
        self.created = created
        self.created_prefixes = {path[:i] for path in created for i in range(1, len(path))}
        self.filename = filename
        self.seen: dict[int, tuple[Any, bool]] = {}

    def fail(self, path: tuple[Any, ...], why: str) -> UnsafeEdit:
        where = format_key(path[1:]) or "document"
        return UnsafeEdit(f"{self.filename}: refusing to write: {why} at {where!r} (document {path[0] + 1})")

    def compare(self, old: Any, new: Any, path: tuple[Any, ...]) -> bool:
        """Raise when they differ beyond the targets; return whether this subtree holds a target."""
        if old is None or new is None:
            if old is not new:
                raise self.fail(path, "document changed")
            return False
        if id(old) in self.seen:
            mapped, changed = self.seen[id(old)]
            if mapped is not new:
                raise self.fail(path, "alias structure changed")
            if changed:
                raise self.fail(path, "the edited value is shared through an anchor/alias")
            return False
        self.seen[id(old)] = (new, False)
        changed = self._compare(old, new, path)
        self.seen[id(old)] = (new, changed)
        return changed

    def _compare(self, old: Any, new: Any, path: tuple[Any, ...]) -> bool:
        if old.id != new.id or getattr(old, "anchor", None) != getattr(new, "anchor", None):
            raise self.fail(path, "structure changed")
        if path in self.targets:
            want = self.targets[path]
            ok_tag = new.tag == _STR or (new.tag == old.tag and old.tag != _NULL)
            if new.id != "scalar" or new.value != want or not ok_tag:
                raise self.fail(path, f"target did not read back as the string {want!r}")
            return True
        if old.tag != new.tag:
            raise self.fail(path, "type changed")
        if old.id == "scalar":
            if old.value != new.value or old.style != new.style:
                raise self.fail(path, "value changed")
            return False
        if old.flow_style != new.flow_style:
            raise self.fail(path, "style changed")
        if old.id == "sequence":
            if len(old.value) != len(new.value):
                raise self.fail(path, "list length changed")
            changed = False
            for i, (o, n) in enumerate(zip(old.value, new.value, strict=True)):
                changed |= self.compare(o, n, (*path, i))
            return changed
        old_keys = {k.value for k, _ in old.value if k.id == "scalar"}
        new_pairs = []
        changed = False
        for k, v in new.value:
            sub = (*path, k.value) if k.id == "scalar" else None
            if sub is not None and k.value not in old_keys and (sub in self.created or sub in self.created_prefixes):
                self._check_created(v, sub)
                changed = True
            else:
                new_pairs.append((k, v))
        if len(new_pairs) != len(old.value):
            raise self.fail(path, "keys changed")
        for (ok, ov), (nk, nv) in zip(old.value, new_pairs, strict=True):
            self.compare(ok, nk, (*path, "<key>"))
            sub = (*path, ok.value) if ok.id == "scalar" else (*path, "<complex key>")
            changed |= self.compare(ov, nv, sub)
        return changed

    def _check_created(self, node: Any, path: tuple[Any, ...]) -> None:
        if path in self.created:
            if node.id != "scalar" or node.value != self.created[path] or node.tag != _STR:
                raise self.fail(path, "created value did not read back as a string")
            return
        if node.id != "mapping":
            raise self.fail(path, "created mapping did not read back")
        for k, v in node.value:
            sub = (*path, k.value)
            if sub not in self.created and sub not in self.created_prefixes:
                raise self.fail(sub, "unexpected key created")
            self._check_created(v, sub)


def _trees_to_compare(
    old_docs: list[Node | None], text: str, new_text: str, filename: str
) -> tuple[list[Any], list[Any]]:
    """Old and new node trees from one parser: libyaml when PyYAML has it (fast, and a second opinion), else ruamel."""
    if _FAST_LOADER is not None:
        try:
            return (
                list(_pyyaml.compose_all(text, Loader=_FAST_LOADER)),
                list(_pyyaml.compose_all(new_text, Loader=_FAST_LOADER)),
            )
        except _pyyaml.YAMLError:
            pass  # libyaml is stricter in places (e.g. control characters); ruamel decides
    try:
        return list(old_docs), _compose_all(new_text)
    except YAMLError as exc:
        raise UnsafeEdit(f"{filename}: refusing to write: the edited file does not parse: {exc}") from exc


# --- public API ----------------------------------------------------------------------------------------------


def read_values(text: str, keys: Sequence[str], *, filename: str = "values.yaml") -> dict[str, str | None]:
    """Current values of `keys` as strings, as written without quotes (``tag:`` -> "", ``~`` -> "~").

    None when no document has the key. Raises `UnsafeEdit` when a key names a mapping or a list.
    """
    docs = _compose(text, filename)
    result: dict[str, str | None] = {}
    for key, parts in zip(keys, _parse_keys(keys, filename), strict=True):
        result[key] = None
        for root in docs:
            try:
                found = _locate(root, parts, key, filename)
            except UnsafeEdit:
                found = _locate_through_aliases(root, parts)
            if isinstance(found, _Found):
                if not isinstance(found.node, ScalarNode):
                    raise UnsafeEdit(f"{filename}: {key!r} is not a scalar")
                result[key] = str(found.node.value)
                break
    return result


def _locate_through_aliases(root: Node | None, parts: KeyPath) -> _Found | None:
    node = root
    for part in parts:
        if isinstance(part, int) and isinstance(node, SequenceNode) and part < len(node.value):
            node = node.value[part]
        elif isinstance(part, str) and isinstance(node, MappingNode):
            node = next((v for k, v in node.value if isinstance(k, ScalarNode) and k.value == part), None)
        else:
            return None
        if node is None:
            return None
    return _Found(node, None, False) if node is not None else None


def set_values(
    text: str,
    updates: Mapping[str, str],
    *,
    create_missing: bool = False,
    filename: str = "values.yaml",
) -> EditResult:
    """Set every key of `updates` in the values file `text`, changing only the bytes of the target scalars."""
    keys = list(updates)
    parsed = _parse_keys(keys, filename)
    docs = _compose(text, filename)
    splices: dict[int, tuple[str, _Splice | None]] = {}  # by target node id: (value, splice)
    targets: dict[tuple[Any, ...], str] = {}
    changes: list[Change] = []
    missing: list[tuple[str, KeyPath]] = []

    for key, parts in zip(keys, parsed, strict=True):
        value = updates[key]
        if not isinstance(value, str):
            raise ValuesEditError(f"{filename}: value for {key!r} must be a string, got {type(value).__name__}")
        found_any = False
        old: str | None = None
        misses: list[tuple[int, _Missing]] = []
        for index, root in enumerate(docs):
            found = _locate(root, parts, key, filename)
            if isinstance(found, _Missing):
                misses.append((index, found))
            if not isinstance(found, _Found):
                continue
            found_any = True
            splice = _replacement(text, found, value, key, filename)
            previous = splices.get(id(found.node))
            if previous is not None and previous[0] != value:
                raise ValuesEditError(f"{filename}: conflicting values for the same scalar ({key!r})")
            splices[id(found.node)] = (value, splice)
            targets[(index, *parts)] = value
            if splice is not None and old is None:
                old = str(found.node.value)
        if not found_any:
            if not create_missing:
                blocked = next((m.blocked for _, m in misses if m.blocked), "")
                raise KeyNotFound(key, filename, blocked)
            missing.append((key, parts))
        elif old is not None:
            changes.append(Change(key, old, value))

    new_text = _apply(text, [s for _, s in splices.values() if s is not None])

    created: dict[tuple[Any, ...], str] = {}
    for key, parts in missing:
        # Re-locate in the current text: an earlier creation may have added a parent.
        current = _compose(new_text, filename)
        candidates = [
            (index, found)
            for index, root in enumerate(current)
            if isinstance(found := _locate(root, parts, key, filename), _Missing)
        ]
        existing = [f for root in current if isinstance(f := _locate(root, parts, key, filename), _Found)]
        if existing:  # created a moment ago through an equivalent key path (`a.b` and `a["b"]`)
            if any(getattr(f.node, "value", None) != updates[key] for f in existing):
                raise ValuesEditError(f"{filename}: conflicting values for the same scalar ({key!r})")
            continue
        if not candidates:
            raise KeyNotFound(key, filename, "the file has no document to create it in")
        best = max((m.depth, not m.blocked) for _, m in candidates)
        index, miss = next((i, m) for i, m in candidates if (m.depth, not m.blocked) == best)
        root = current[index]
        assert root is not None
        new_text = _apply(new_text, [_creation(new_text, root, miss, parts, updates[key], key, filename)])
        created[(index, *parts)] = updates[key]
        changes.append(Change(key, None, updates[key]))

    if not changes:
        return EditResult(text, ())
    old_trees, new_trees = _trees_to_compare(docs, text, new_text, filename)
    if len(new_trees) != len(old_trees):
        raise UnsafeEdit(f"{filename}: refusing to write: the number of documents changed")
    verifier = _Verifier(targets, created, filename)
    for index, (old_root, new_root) in enumerate(zip(old_trees, new_trees, strict=True)):
        verifier.compare(old_root, new_root, (index,))
    return EditResult(new_text, tuple(changes))
