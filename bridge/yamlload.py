"""Reading configuration YAML fast and lean: libyaml's C parser (through PyYAML), values built straight from its events.

ruamel's pure-Python safe loader needed ~5 s for a 2,000-route file, and PyYAML's loaders first build a graph of
nodes (with two source marks each) that is as large again as the data and stays in the process's memory as
fragmentation. Here libyaml's events become dicts, lists and scalars directly: faster than `yaml.CSafeLoader`, and
the only memory left is the data.

The meaning is what ruamel (YAML 1.2 core schema) gives the file, not PyYAML's YAML 1.1 defaults: `yes`/`no`/`on`/
`off` stay strings, `010` is ten, `1:30` is a string, `1_000` and `0b101` are numbers; anchors, aliases and merge
keys (`<<`) work; a duplicate key is an error, as in ruamel. Errors are PyYAML's `MarkedYAMLError`s with `problem`,
`problem_mark` (0-based line and column), `context` and `context_mark`, ready for `file:line:column` messages.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

YAMLError = yaml.YAMLError

try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # PyYAML without libyaml: the same meaning, at pure-Python speed
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef,misc]  # PyYAML ships no type hints
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

_TAG = "tag:yaml.org,2002:"
_PLAIN = [  # the YAML 1.2 core schema, plus timestamps and merge keys as ruamel's safe loader resolves them
    ("null", re.compile(r"~|null|Null|NULL|")),
    ("bool", re.compile(r"true|True|TRUE|false|False|FALSE")),
    ("int", re.compile(r"[-+]?(?:[0-9][0-9_]*|0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+)")),
    ("float", re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                         r"|\.(?:nan|NaN|NAN)")),
    ("timestamp", re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:[Tt]|[ \t]+)[0-9]{1,2}:"
                             r"[0-9]{2}:[0-9]{2}(?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?")),
    ("merge", re.compile(r"<<")),
]
_MAYBE = frozenset("~nNtTfF-+0123456789.<")  # first characters any of the patterns above can start with
_MERGE = object()  # the key `<<`


def _int(value: str) -> int:
    digits = value.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2], 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


def _float(value: str) -> float:
    v = value.replace("_", "").lower()
    if v.endswith(".inf"):
        return -math.inf if v.startswith("-") else math.inf
    if v == ".nan":
        return math.nan
    return float(v)


class _Builder:
    """Values from one document's events (recursive descent; anchors are registered before their contents)."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.anchors: dict[str, Any] = {}
        self.strings: dict[str, str] = {}  # one object per distinct text: keys and repeated values are shared
        self._timestamps = SafeConstructor()

    def value(self, event: Event) -> Any:
        if isinstance(event, ScalarEvent):
            out = self.scalar(event)
        elif isinstance(event, MappingStartEvent):
            self.check_tag(event, "map")
            out = {}
            if event.anchor is not None:
                self.anchors[event.anchor] = out
            self.mapping(event, out)
            return out
        elif isinstance(event, SequenceStartEvent):
            self.check_tag(event, "seq")
            out = []
            if event.anchor is not None:
                self.anchors[event.anchor] = out
            while not isinstance(nxt := self.parser.get_event(), SequenceEndEvent):
                out.append(self.value(nxt))
            return out
        elif isinstance(event, AliasEvent):
            if event.anchor not in self.anchors:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
            return self.anchors[event.anchor]
        else:  # pragma: no cover - libyaml only emits the events above inside a document
            raise ComposerError(None, None, f"unexpected {type(event).__name__}", event.start_mark)
        if event.anchor is not None:
            self.anchors[event.anchor] = out
        return out

    def check_tag(self, event: Any, kind: str) -> None:
        if event.tag not in (None, "!", _TAG + kind):
            raise ConstructorError(None, None, f"could not determine a constructor for the tag {event.tag!r}",
                                   event.start_mark)

    def scalar(self, event: ScalarEvent) -> Any:
        value, tag = self.strings.setdefault(event.value, event.value), event.tag
        if tag is None or tag == "!":
            if not event.implicit[0] or (value and value[0] not in _MAYBE):
                return value
            tag = next((_TAG + name for name, pattern in _PLAIN if pattern.fullmatch(value)), _TAG + "str")
        kind = tag.removeprefix(_TAG)
        try:
            if kind == "str":
                return value
            if kind == "null":
                return None
            if kind == "bool":
                return value.lower() == "true"
            if kind == "int":
                return _int(value)
            if kind == "float":
                return _float(value)
            if kind == "timestamp":
                return self._timestamps.construct_yaml_timestamp(ScalarNode(tag, value))
            if kind == "merge":
                return _MERGE
        except (ValueError, AttributeError):
            raise ConstructorError(None, None, f"cannot read {value!r} as {kind}", event.start_mark) from None
        raise ConstructorError(None, None, f"could not determine a constructor for the tag {tag!r}",
                               event.start_mark)

    def mapping(self, start: MappingStartEvent, out: dict[Any, Any]) -> None:
        explicit: set[Any] = set()
        while not isinstance(key_event := self.parser.get_event(), MappingEndEvent):
            key = self.value(key_event)
            value = self.value(self.parser.get_event())
            if key is _MERGE:
                for merged in value if isinstance(value, list) else [value]:
                    if not isinstance(merged, dict):
                        raise ConstructorError("while constructing a mapping", start.start_mark,
                                               "expected a mapping or list of mappings for merging",
                                               key_event.start_mark)
                    for k, v in merged.items():
                        if k not in explicit:
                            out.setdefault(k, v)
                continue
            try:
                duplicate = key in explicit
            except TypeError:
                raise ConstructorError("while constructing a mapping", start.start_mark, "found unhashable key",
                                       key_event.start_mark) from None
            if duplicate:
                raise ConstructorError("while constructing a mapping", start.start_mark,
                                       f"found duplicate key {key!r}", key_event.start_mark)
            explicit.add(key)
            out[key] = value


def safe_load(text: str) -> Any:
    """One YAML document as plain Python data (dict, list, str, int, float, bool, None, dates). YAMLError."""
    parser = _Parser(text)
    try:
        parser.get_event()  # stream start
        if isinstance(parser.peek_event(), StreamEndEvent):
            return None
        document = parser.get_event()
        try:
            data = _Builder(parser).value(parser.get_event())
        except RecursionError:
            raise ComposerError(None, None, "nested too deeply", document.start_mark) from None
        parser.get_event()  # document end
        extra = parser.get_event()
        if isinstance(extra, DocumentStartEvent):
            raise ComposerError("expected a single document in the stream", document.start_mark,
                                "but found another document", extra.start_mark)
        return data
    finally:
        dispose = getattr(parser, "dispose", None)
        if dispose is not None:
            dispose()
