"""Format-exact edits of Helm values files (pure: text in, text out).

ruamel.yaml is used only to *locate* the target scalars (their start/end offsets and quoting style); the new
scalar text is spliced into the original string, so every other byte (comments, blank lines, key order,
indentation, anchors, ``---``/``...`` markers, BOM, CRLF line endings) stays as it was. Old and new text are then
composed again (with libyaml through PyYAML when installed: fast, and a second parser's opinion; else ruamel) and
compared node by node, with merge keys resolved; if anything except the targets differs, `UnsafeEdit` is raised
and nothing is returned. A tab before a comment (valid YAML, rejected by ruamel's scanner) is read as a space.

Rules:

* Key paths follow `bridge.keypath.parse_key`: ``image.tag``, ``images[1].tag``, ``annotations["a.b/c"]``.
* Multi-document files: a key path must resolve in exactly one document, and only that document is changed.
  A path that resolves in several documents is refused (`UnsafeEdit` naming the file, the key and the
  documents), for `read_values` too; `KeyNotFound` when no document has it.
* Merge keys (``<<: *base``, ``<<: [*a, *b]``) follow YAML 1.1: a mapping's own keys override merged ones, and
  among several merged mappings the first wins. A key that exists only through ``<<`` is read through it; it is
  written by adding an override to the merging mapping, only with ``create_missing=True`` (else `UnsafeEdit`
  naming the merge). Editing a value that another mapping really inherits is refused; editing one that every
  merging mapping overrides is not. Helm's go-yaml lets a ``<<`` win over own keys written *before* it, so an
  edit whose effect depends on that order is refused too (put ``<<`` first).
* Quoting: a double-quoted target stays double-quoted, a single-quoted one single-quoted (double quotes only if
  the new value cannot be written in single quotes). A plain target stays plain when the new value, read back
  as YAML 1.1 *and* 1.2, is a string; or when old and new are both booleans; or both plain decimal integers
  below 1,000,000 (``tag: 123`` -> ``124``; Helm turns larger numbers into floats printed as ``1.234567e+06``).
  Anything else (``1.10``, ``true``, ``null``, ``0x1F``, ``1e3``, ``0123``, ``2024-01-01``, ``a: b``) is
  written in double quotes so the value stays a string. An empty or ``~``/``null`` target becomes a string.
* Refused with `UnsafeEdit`: a target that is a mapping, a list or a block scalar (``|``/``>``); a target
  reached through an alias (``*x``) or inside an inherited mapping; a target whose value is shared with another
  path through an anchor or a merge key; duplicate keys on the path; creating keys inside flow style (``{a: 1}``)
  or under a non-mapping.
* ``create_missing=True`` appends missing mapping keys (and missing parent mappings) after the last entry of the
  deepest existing block mapping, with that mapping's indentation (children indented by the file's step). Under
  a key with an empty value (``root:``) the new keys become its block mapping; a document that is only ``{}``
  becomes a block mapping. In a multi-document file the deepest existing prefix must be in one document (a
  document that is not a mapping does not count), else `UnsafeEdit`. List items are never created.
* A value that is already equal (also when inherited through ``<<``) leaves the text byte-identical and
  `EditResult.changed` False.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
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
_MERGE = "tag:yaml.org,2002:merge"
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
    empty_key: ScalarNode | None = None  # parent is the empty value of this key (`root:`): create a mapping there
    inherited: Node | None = None  # the key exists only through a merge key of parent, with this value


# Merge keys are told apart by the tag the resolver gives a plain `<<` (a quoted "<<" is an ordinary key). These
# helpers serve ruamel and PyYAML nodes alike (both name their kind in `node.id`).
def _is_merge(key: Any) -> bool:
    return bool(key.id == "scalar" and key.tag == _MERGE)


def _merge_sources(value: Any) -> list[Any]:
    """The mappings a `<<` value merges, the one that wins first."""
    if value.id == "mapping":
        return [value]
    if value.id == "sequence":
        return [v for v in value.value if v.id == "mapping"]
    return []  # not a valid merge: Helm fails on it, nothing is inherited


def _lookup(mapping: Any, part: str, searched: set[int] | None = None) -> Any | None:
    """The value of `part` in `mapping` as YAML 1.1 resolves merge keys; None when it has no such key."""
    for k, v in mapping.value:
        if k.id == "scalar" and k.value == part and not _is_merge(k):
            return v
    searched = set() if searched is None else searched
    if id(mapping) in searched:  # searched already (a cycle, or shared by several merges): not there
        return None
    searched.add(id(mapping))
    for k, v in reversed(mapping.value):  # of several `<<` keys the last wins, as in PyYAML and go-yaml
        if _is_merge(k):
            for source in _merge_sources(v):
                found = _lookup(source, part, searched)
                if found is not None:
                    return found
    return None


def _merged_after(mapping: Any, index: int, part: str) -> bool:
    """Whether a `<<` after the pair at `index` also provides `part` (go-yaml would let it win)."""
    return any(
        _is_merge(k) and any(_lookup(source, part) is not None for source in _merge_sources(v))
        for k, v in mapping.value[index + 1 :]
    )


def _resolve_path(root: Node | None, parts: KeyPath) -> Any | None:
    """The node at `parts`, through aliases and merge keys; None when the path does not resolve."""
    node: Any = root
    for part in parts:
        if node is None:
            return None
        if isinstance(part, int):
            node = node.value[part] if node.id == "sequence" and part < len(node.value) else None
        else:
            node = _lookup(node, part) if node.id == "mapping" else None
    return node


def _locate(text: str, root: Node | None, parts: KeyPath, key: str, filename: str) -> _Found | _Missing | None:
    """Walk `parts` from `root` for writing. None when the document is empty."""
    if root is None:
        return None
    node = root
    key_node: ScalarNode | None = None
    in_flow = False
    for depth, part in enumerate(parts):
        here = format_key(parts[:depth]) or "document"
        if isinstance(part, int):
            if not isinstance(node, SequenceNode):
                return _Missing(depth, node, f"{here} is not a list")
            if part >= len(node.value):
                return _Missing(depth, node, f"list {here} has {len(node.value)} items")
            child: Node = node.value[part]
            floor = _item_floor(text, node, part)
            key_node = None
        else:
            if not isinstance(node, MappingNode):
                if _is_empty(node) and key_node is not None and not in_flow and node.anchor is None:
                    return _Missing(depth, node, "", empty_key=key_node)
                return _Missing(depth, node, f"{here} is not a mapping")
            own = [i for i, (k, _) in enumerate(node.value) if k.id == "scalar" and k.value == part]
            own = [i for i in own if not _is_merge(node.value[i][0])]
            where = format_key(parts[: depth + 1])
            if len(own) > 1:
                raise UnsafeEdit(f"{filename}: duplicate key {where!r} in {key!r}")
            if not own:
                inherited = _lookup(node, part)
                if inherited is None:
                    return _Missing(depth, node, "")
                if depth < len(parts) - 1 or not isinstance(inherited, ScalarNode):
                    raise UnsafeEdit(
                        f"{filename}: {where!r} is inherited through the merge key '<<' of {here!r}; refusing to "
                        f"edit {key!r} (only an inherited scalar can be overridden, by a key of its own)"
                    )
                return _Missing(depth, node, "", inherited=inherited)
            if _merged_after(node, own[0], part):
                raise UnsafeEdit(
                    f"{filename}: {where!r} comes before a merge key '<<' that also provides {part!r}; Helm "
                    f"(go-yaml) lets the later '<<' win, so editing {key!r} is refused: put '<<' first in {here!r}"
                )
            key_node, child = node.value[own[0]]
            floor = key_node.end_mark.index
        # Anchors are defined before their aliases, so a node that starts before its own key is an alias.
        if child.start_mark.index < floor:
            alias = format_key(parts[: depth + 1])
            raise UnsafeEdit(f"{filename}: {alias!r} is an alias (*); refusing to edit {key!r}")
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


def _content_end(text: str, node: Node, key_node: Node | None, floor: int = 0) -> int | None:
    """Offset just after the last meaningful character of `node` (the key's end for an empty value).

    `floor` is where the node's own text can start at the earliest: a node that starts before it is an alias.
    """
    if node.start_mark.index < floor:
        return _alias_end(text, floor)
    if isinstance(node, MappingNode) and not node.flow_style and node.value:
        k, v = node.value[-1]
        return _content_end(text, v, k, int(k.end_mark.index))
    if isinstance(node, SequenceNode) and not node.flow_style and node.value:
        return _content_end(text, node.value[-1], None, _item_floor(text, node, len(node.value) - 1))
    if _is_empty(node):
        return int(key_node.end_mark.index) if key_node is not None else None
    end = int(node.end_mark.index)
    if isinstance(node, ScalarNode) and node.style in ("|", ">"):  # its end mark includes trailing blank lines
        while end > node.start_mark.index and text[end - 1] in " \t\r\n":
            end -= 1
    return end


def _alias_end(text: str, pos: int) -> int | None:
    """The end of the alias (`*name`) that follows `pos` after indicators, spaces and comments."""
    while pos < len(text):
        if text[pos] in " \t\r\n:-?[,":
            pos += 1
        elif text[pos] == "#":
            while pos < len(text) and text[pos] not in "\r\n":
                pos += 1
        elif text[pos] == "*":
            end = pos + 1
            while end < len(text) and text[end] not in " \t\r\n,[]{}":
                end += 1
            return end
        else:
            return None
    return None


def _item_floor(text: str, seq: Node, index: int) -> int:
    """Where the text of item `index` of `seq` starts at the earliest (an item starting before is an alias)."""
    floor = int(seq.start_mark.index)
    for item in seq.value[:index]:
        if item.start_mark.index < floor:  # an alias: its text is the `*name` token
            floor = _alias_end(text, floor) or floor
        else:
            floor = int(item.end_mark.index)
    return floor


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


def _block_lines(rest: KeyPath, value: str, column: int, step: int) -> list[str]:
    """`rest` as nested block-mapping lines starting at `column`, the last key holding `value`."""
    lines = []
    for i, part in enumerate(rest):
        assert isinstance(part, str)
        indent = " " * (column + i * step)
        if i < len(rest) - 1:
            lines.append(f"{indent}{_render_key(part)}:")
        else:
            rendered = value if _plain_ok(value, _NULL, False, False) else _double(value)
            lines.append(f"{indent}{_render_key(part)}: {rendered}")
    return lines


def _rest_of_line(text: str, pos: int) -> int | None:
    """Skip spaces and a comment from `pos`; the offset of the line end, None when anything else follows."""
    while pos < len(text) and text[pos] in _SPACE:
        pos += 1
    if pos < len(text) and text[pos] == "#":
        while pos < len(text) and text[pos] not in "\r\n":
            pos += 1
    return pos if pos == len(text) or text[pos] in "\r\n" else None


def _append_lines(text: str, at: int, eol: str, lines: list[str]) -> _Splice:
    block = eol.join(lines) + eol
    if at == len(text) and text and not text.endswith("\n"):
        block = eol + block
    return _Splice(at, at, block)


def _creation(
    text: str, root: Node, missing: _Missing, parts: KeyPath, value: str, key: str, filename: str
) -> tuple[list[_Splice], KeyPath | None]:
    """The splices that create `parts` below `missing`, and the path of a value turned into a block mapping."""
    parent = missing.parent
    rest = parts[missing.depth :]
    if missing.blocked or not all(isinstance(p, str) for p in rest):
        raise KeyNotFound(key, filename, missing.blocked or "list items are never created")
    step = _indent_step(root)
    where = format_key(parts[: missing.depth]) or "document"
    if missing.empty_key is not None:  # `root:` with nothing: the new keys become its block mapping
        pos = missing.empty_key.end_mark.index
        while pos < len(text) and text[pos] in _SPACE:
            pos += 1
        line_end = _rest_of_line(text, pos + 1) if pos < len(text) and text[pos] == ":" else None
        if line_end is None:
            raise UnsafeEdit(f"{filename}: cannot create {key!r}: unexpected text after the empty key {where!r}")
        at, eol = _line_end(text, line_end)
        lines = _block_lines(rest, value, int(missing.empty_key.start_mark.column) + step, step)
        return [_append_lines(text, at, eol, lines)], parts[: missing.depth]
    if isinstance(parent, MappingNode) and parent.flow_style and not parent.value and parent is root:
        # A document that is only `{}` (and comments) becomes a block mapping: `{}` gives way to the first line.
        start, end = int(parent.start_mark.index), int(parent.end_mark.index)
        line_end = _rest_of_line(text, end)
        if parent.start_mark.column == 0 and text[start:end].replace(" ", "") == "{}" and line_end is not None:
            at, eol = _line_end(text, line_end)
            lines = _block_lines(rest, value, 0, step)
            splices = [_Splice(start, end, lines[0])]
            if len(lines) > 1:
                splices.append(_append_lines(text, at, eol, lines[1:]))
            return splices, ()
    if not isinstance(parent, MappingNode) or parent.flow_style or not parent.value:
        raise UnsafeEdit(f"{filename}: cannot create {key!r}: {where} is not a block mapping (flow style or empty)")
    end_of_content = _content_end(text, parent, None)
    if end_of_content is None:
        raise UnsafeEdit(f"{filename}: cannot find where to append {key!r}")
    at, eol = _line_end(text, max(end_of_content - 1, 0))
    lines = _block_lines(rest, value, int(parent.value[0][0].start_mark.column), step)
    return [_append_lines(text, at, eol, lines)], None


def _creation_document(candidates: list[tuple[int, _Missing]], key: str, filename: str) -> tuple[int, _Missing]:
    """The one document to create `key` in: the one with the deepest existing prefix of its path."""
    viable = [(i, m) for i, m in candidates if m.depth or not m.blocked]  # a scalar or list document has no keys
    if not viable:
        detail = candidates[0][1].blocked if candidates else "the file has no document to create it in"
        raise KeyNotFound(key, filename, detail)
    deepest = max(m.depth for _, m in viable)
    best = [(i, m) for i, m in viable if m.depth == deepest]
    if len(best) > 1:
        raise UnsafeEdit(
            f"{filename}: cannot create {key!r}: documents {_numbers(i for i, _ in best)} of this multi-document "
            "file could each hold it; refusing to pick one"
        )
    return best[0]


def _numbers(indexes: Iterable[int]) -> str:
    shown = [str(i + 1) for i in indexes]
    return ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else "".join(shown)


def _several_documents(filename: str, key: str, indexes: list[int]) -> UnsafeEdit:
    return UnsafeEdit(
        f"{filename}: {key!r} is in documents {_numbers(indexes)} of this multi-document file; refusing to change "
        "a document the route does not name (keep the key in one document)"
    )


# --- verification --------------------------------------------------------------------------------------------


class _Verifier:
    """Compare old and new node trees; only the target paths may differ (and created paths may be added).

    Mappings are compared as written (own keys, the `<<` values themselves) and then as resolved: every value a
    mapping inherits through `<<` is compared at the inheriting path, so a change that leaks into a mapping that
    really inherits it is refused, while one that every merging mapping overrides is not. Both YAML 1.1 (own
    keys win) and go-yaml's order (a later `<<` wins) are checked. Works on ruamel and PyYAML nodes alike.
    """

    def __init__(
        self,
        targets: dict[tuple[Any, ...], str],
        created: dict[tuple[Any, ...], str],
        converted: set[tuple[Any, ...]],
        filename: str,
    ):
        self.targets = targets
        self.created = created
        self.created_prefixes = {path[:i] for path in created for i in range(1, len(path))}
        self.converted = converted  # empty values (`root:`, a `{}` document) that became block mappings
        self.filename = filename
        self.seen: dict[int, tuple[Any, bool, bool]] = {}  # id(old) -> (new, holds a target, compared)
        self.resolved: dict[int, dict[Any, tuple[Any, Any]]] = {}
        self.resolving: set[int] = set()

    def fail(self, path: tuple[Any, ...], why: str) -> UnsafeEdit:
        where = format_key(path[1:]) or "document"
        return UnsafeEdit(f"{self.filename}: refusing to write: {why} at {where!r} (document {path[0] + 1})")

    def compare(self, old: Any, new: Any, path: tuple[Any, ...]) -> bool:
        """Raise when they differ beyond the targets; return whether this subtree holds a target."""
        if old is None or new is None:
            if old is not new:
                raise self.fail(path, "document changed")
            return False
        if path in self.converted:
            self._check_converted(old, new, path)
            return True
        if id(old) in self.seen:
            mapped, changed, done = self.seen[id(old)]
            if not done:
                raise self.fail(path, "recursive alias")
            if mapped is not new:
                raise self.fail(path, "alias structure changed")
            if changed:
                raise self.fail(path, "the edited value is shared through an anchor/alias")
            return False
        self.seen[id(old)] = (new, False, False)
        changed = self._compare(old, new, path)
        self.seen[id(old)] = (new, changed, True)
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
            if _is_merge(ok):
                self._compare_merge_value(ov, nv, (*path, "<<"))
                continue
            sub = (*path, ok.value) if ok.id == "scalar" else (*path, "<complex key>")
            changed |= self.compare(ov, nv, sub)
        if any(_is_merge(k) for k, _ in old.value):
            changed |= self._compare_inherited(old, new, path)
        return changed

    def _compare_merge_value(self, old: Any, new: Any, path: tuple[Any, ...]) -> None:
        """The value of a `<<`: the same mappings as before; what they hold is judged where it is inherited."""
        if id(old) in self.seen:
            mapped, _, done = self.seen[id(old)]
            if not done:
                raise self.fail(path, "recursive merge key")
            if mapped is not new:
                raise self.fail(path, "alias structure changed")
            return
        if old.id == "sequence" and new.id == "sequence":  # `<<: [*a, *b]`
            anchors = getattr(old, "anchor", None), getattr(new, "anchor", None)
            if (old.tag, anchors[0], len(old.value)) != (new.tag, anchors[1], len(new.value)):
                raise self.fail(path, "merge key changed")
            self.seen[id(old)] = (new, False, False)
            for o, n in zip(old.value, new.value, strict=True):
                self._compare_merge_value(o, n, path)
            # Aliased as a whole elsewhere, the list counts as changed when a mapping in it holds a target.
            changed = any(self.seen[id(o)][1] for o in old.value if id(o) in self.seen)
            self.seen[id(old)] = (new, changed, True)
            return
        self.compare(old, new, path)  # an inline mapping is only reachable through the merge: nothing may change

    def _resolve(self, node: Any, path: tuple[Any, ...]) -> dict[Any, tuple[Any, Any]]:
        """Key -> (value by YAML 1.1, value by go-yaml v2) of a mapping with its merge keys resolved."""
        cached = self.resolved.get(id(node))
        if cached is not None:
            return cached
        if id(node) in self.resolving:
            raise self.fail(path, "recursive merge key")
        self.resolving.add(id(node))
        merged: dict[Any, Any] = {}
        own: dict[Any, Any] = {}
        in_order: dict[Any, Any] = {}  # go-yaml v2: every pair in order, a `<<` writes its mappings' keys
        for k, v in node.value:
            if _is_merge(k):
                for source in reversed(_merge_sources(v)):
                    for key, (spec, go) in self._resolve(source, path).items():
                        merged[key] = spec
                        in_order[key] = go
            else:
                if k.id != "scalar":
                    raise self.fail(path, "a complex key in a mapping with merge keys")
                own[(k.tag, k.value)] = in_order[(k.tag, k.value)] = v
        result = {key: (own[key] if key in own else merged[key], go) for key, go in in_order.items()}
        self.resolving.discard(id(node))
        self.resolved[id(node)] = result
        return result

    def _inherited(self, node: Any, path: tuple[Any, ...]) -> dict[Any, list[Any]]:
        """Key -> the inherited values that win by either rule (own values are compared as written)."""
        own = {id(v) for k, v in node.value if not _is_merge(k)}
        result: dict[Any, list[Any]] = {}
        for key, (spec, go) in self._resolve(node, path).items():
            values = [v for v in ([spec] if spec is go else [spec, go]) if id(v) not in own]
            if values:
                result[key] = values
        return result

    def _compare_inherited(self, old: Any, new: Any, path: tuple[Any, ...]) -> bool:
        old_inherited, new_inherited = self._inherited(old, path), self._inherited(new, path)
        changed = False
        for key in dict.fromkeys([*old_inherited, *new_inherited]):
            sub = (*path, key[1])
            before, after = old_inherited.get(key, []), new_inherited.get(key, [])
            if sub in self.targets:
                raise self.fail(sub, "the target is overridden by a merge key ('<<')")
            if sub in self.created:  # an override written into the merging mapping must win by both rules
                if after:
                    raise self.fail(sub, "the created override does not win over the merge key")
                continue
            if len(before) != len(after):
                raise self.fail(sub, "inherited keys changed")
            for o, n in zip(before, after, strict=True):
                if id(o) in self.seen and self.seen[id(o)][1]:
                    raise self.fail(sub, "the edited value is inherited here through a merge key ('<<')")
                changed |= self.compare(o, n, sub)
        return changed

    def _check_converted(self, old: Any, new: Any, path: tuple[Any, ...]) -> None:
        empty = (old.id == "scalar" and old.value == "" and old.tag == _NULL) or (
            old.id == "mapping" and old.flow_style and not old.value
        )
        if not empty or getattr(old, "anchor", None) or new.id != "mapping" or new.flow_style:
            raise self.fail(path, "structure changed")
        self._check_created(new, path)

    def _check_created(self, node: Any, path: tuple[Any, ...]) -> None:
        if path in self.created:
            if node.id != "scalar" or node.value != self.created[path] or node.tag != _STR:
                raise self.fail(path, "created value did not read back as a string")
            return
        if node.id != "mapping" or getattr(node, "anchor", None):
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


def _documents_with(docs: list[Node | None], parts: KeyPath) -> list[tuple[int, Any]]:
    """(index, node) of every document in which `parts` resolves (through aliases and merge keys)."""
    return [(i, node) for i, root in enumerate(docs) if (node := _resolve_path(root, parts)) is not None]


def read_values(text: str, keys: Sequence[str], *, filename: str = "values.yaml") -> dict[str, str | None]:
    """Current values of `keys` as strings, as written without quotes (``tag:`` -> "", ``~`` -> "~").

    Keys are read through aliases and merge keys (YAML 1.1: own keys win, then the first merged mapping). None
    when no document has the key. Raises `UnsafeEdit` when a key names a mapping or a list, or resolves in more
    than one document.
    """
    docs = _compose(text, filename)
    result: dict[str, str | None] = {}
    for key, parts in zip(keys, _parse_keys(keys, filename), strict=True):
        hits = _documents_with(docs, parts)
        if len(hits) > 1:
            raise _several_documents(filename, key, [i for i, _ in hits])
        result[key] = None
        if hits:
            node = hits[0][1]
            if not isinstance(node, ScalarNode):
                raise UnsafeEdit(f"{filename}: {key!r} is not a scalar")
            result[key] = str(node.value)
    return result


def _equal(node: ScalarNode, value: str) -> bool:
    return bool(node.value == value and node.tag != _NULL)


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
    missing: list[tuple[str, KeyPath, str | None]] = []  # (key, path, the value it inherits through `<<`)

    for key, parts in zip(keys, parsed, strict=True):
        value = updates[key]
        if not isinstance(value, str):
            raise ValuesEditError(f"{filename}: value for {key!r} must be a string, got {type(value).__name__}")
        hits = _documents_with(docs, parts)
        if len(hits) > 1:
            raise _several_documents(filename, key, [i for i, _ in hits])
        if not hits:
            if not create_missing:
                misses = [m for root in docs if isinstance(m := _locate(text, root, parts, key, filename), _Missing)]
                raise KeyNotFound(key, filename, next((m.blocked for m in misses if m.blocked), ""))
            missing.append((key, parts, None))
            continue
        index = hits[0][0]
        found = _locate(text, docs[index], parts, key, filename)
        if isinstance(found, _Missing) and isinstance(found.inherited, ScalarNode):
            if _equal(found.inherited, value):
                continue
            if not create_missing:
                raise UnsafeEdit(
                    f"{filename}: {key!r} is inherited through the merge key '<<' of "
                    f"{format_key(parts[:-1]) or 'document'!r}; writing it adds an override there, which needs "
                    "create_missing_keys"
                )
            missing.append((key, parts, str(found.inherited.value)))
            continue
        if not isinstance(found, _Found):  # resolves, yet cannot be walked for writing
            raise UnsafeEdit(f"{filename}: {key!r} cannot be edited in place")
        splice = _replacement(text, found, value, key, filename)
        previous = splices.get(id(found.node))
        if previous is not None and previous[0] != value:
            raise ValuesEditError(f"{filename}: conflicting values for the same scalar ({key!r})")
        splices[id(found.node)] = (value, splice)
        targets[(index, *parts)] = value
        if splice is not None:
            changes.append(Change(key, str(found.node.value), value))

    new_text = _apply(text, [s for _, s in splices.values() if s is not None])

    created: dict[tuple[Any, ...], str] = {}
    converted: set[tuple[Any, ...]] = set()
    for key, parts, inherited in missing:
        # Re-locate in the current text: an earlier creation may have added a parent.
        current = _compose(new_text, filename)
        hits = _documents_with(current, parts)
        if len(hits) > 1:
            raise _several_documents(filename, key, [i for i, _ in hits])
        found = _locate(new_text, current[hits[0][0]], parts, key, filename) if hits else None
        if isinstance(found, _Found):  # created a moment ago through an equivalent key path (`a.b` and `a["b"]`)
            if getattr(found.node, "value", None) != updates[key]:
                raise ValuesEditError(f"{filename}: conflicting values for the same scalar ({key!r})")
            continue
        if isinstance(found, _Missing):
            index, miss = hits[0][0], found
        else:
            located = [(i, _locate(new_text, root, parts, key, filename)) for i, root in enumerate(current)]
            candidates = [(i, m) for i, m in located if isinstance(m, _Missing)]
            index, miss = _creation_document(candidates, key, filename)
        root = current[index]
        assert root is not None
        made, became_mapping = _creation(new_text, root, miss, parts, updates[key], key, filename)
        new_text = _apply(new_text, made)
        created[(index, *parts)] = updates[key]
        if became_mapping is not None:
            converted.add((index, *became_mapping))
        changes.append(Change(key, inherited, updates[key]))

    if not changes:
        return EditResult(text, ())
    old_trees, new_trees = _trees_to_compare(docs, text, new_text, filename)
    if len(new_trees) != len(old_trees):
        raise UnsafeEdit(f"{filename}: refusing to write: the number of documents changed")
    verifier = _Verifier(targets, created, converted, filename)
    for index, (old_root, new_root) in enumerate(zip(old_trees, new_trees, strict=True)):
        verifier.compare(old_root, new_root, (index,))
    return EditResult(new_text, tuple(changes))
