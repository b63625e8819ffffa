from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml as pyyaml
from hypothesis import event, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from bridge.errors import PermanentError, UnsafeWrite
from workers import values as values_module
from workers.values import (
    Change,
    EditResult,
    KeyNotFound,
    UnsafeEdit,
    ValuesEditError,
    read_values,
    set_values,
)

DATA = Path(__file__).parent / "data" / "values"
HELM_CREATE = (DATA / "helm-create.yaml").read_bytes().decode("utf-8")


ISSUE_16 = """images:
  app: &app-image
    repository: myapp
    tag: v1.0.0  # Current version
    pullPolicy: IfNotPresent
  sidecar:
    <<: *app-image
    tag: v1.0.0
"""
MERGE_CHAIN = """base: &base
  repository: r1
  tag: t1
app: &app
  <<: *base
  tag: t2
web:
  <<: [*app, {port: p1}]
"""


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def touched(old: str, new: str) -> tuple[list[int], int]:
    """(1-based numbers of the old lines that differ, how many lines were added overall)."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    replaced: list[int] = []
    for op, i1, i2, _, _ in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            replaced.extend(range(i1 + 1, i2 + 1))
    return replaced, len(b) - len(a)


def load_all(text: str) -> list[Any]:
    """PyYAML (YAML 1.1, like Helm's reader) needs the tab before a comment as a space, as go-yaml allows."""
    return list(pyyaml.safe_load_all(re.sub(r"\t(?=#)", " ", text.lstrip("\ufeff"))))


@pytest.fixture(params=["libyaml", "ruamel"])
def checker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the re-parse check with libyaml (PyYAML's C loader) and with the pure ruamel fallback."""
    if request.param == "ruamel":
        monkeypatch.setattr(values_module, "_FAST_LOADER", None)
    else:
        assert values_module._FAST_LOADER is not None
    return str(request.param)


# (id, input, updates, expected output, touched old lines, inserted lines, create_missing)
EDITS: list[tuple[str, str, dict[str, str], str, list[int], int, bool]] = [
    (
        "helm-create-empty-quoted-tag",
        HELM_CREATE,
        {"image.tag": "1.4.2"},
        HELM_CREATE.replace('  tag: ""\n', '  tag: "1.4.2"\n'),
        [14],
        0,
        False,
    ),
    (
        "helm-create-several-keys",
        HELM_CREATE,
        {"image.tag": "2024.05.01-7", "sidecars[0].tag": "v1.30.0", "sidecars[1].tag": "3.1", "replicaCount": "2"},
        HELM_CREATE.replace('  tag: ""\n', '  tag: "2024.05.01-7"\n')
        .replace("tag: v1.29.1   # pinned", "tag: v1.30.0   # pinned")
        .replace("tag: '3.0'", "tag: '3.1'")
        .replace("replicaCount: 1\n", "replicaCount: 2\n"),
        [6, 14, 51, 54],
        0,
        False,
    ),
    (
        "annotation-key-with-dots-and-tab-comment",
        HELM_CREATE,
        {'podAnnotations["example.com/rev"]': "42"},
        HELM_CREATE.replace('example.com/rev: "41"\t# tab', 'example.com/rev: "42"\t# tab'),
        [30],
        0,
        False,
    ),
    (
        "escaped-dot-key",
        "labels:\n  app.kubernetes.io/version: v1 # c\n",
        {"labels.app\\.kubernetes\\.io/version": "v2"},
        "labels:\n  app.kubernetes.io/version: v2 # c\n",
        [2],
        0,
        False,
    ),
    (
        "plain-stays-plain",
        "image:\n  tag: v1.2.3 # comment: keep\n",
        {"image.tag": "v1.2.4"},
        "image:\n  tag: v1.2.4 # comment: keep\n",
        [2],
        0,
        False,
    ),
    (
        "single-quoted-stays-single",
        "image:\n  tag: 'v1'\n",
        {"image.tag": "it's"},
        "image:\n  tag: 'it''s'\n",
        [2],
        0,
        False,
    ),
    (
        "double-quoted-escapes",
        'image:\n  tag: "v1"\n',
        {"image.tag": 'a"b\\c'},
        'image:\n  tag: "a\\"b\\\\c"\n',
        [2],
        0,
        False,
    ),
    (
        "plain-int-stays-plain",
        "image:\n  tag: 123\n",
        {"image.tag": "124"},
        "image:\n  tag: 124\n",
        [2],
        0,
        False,
    ),
    (
        "plain-int-too-big-for-helm-gets-quoted",
        "image:\n  tag: 123\n",
        {"image.tag": "20240501"},
        'image:\n  tag: "20240501"\n',
        [2],
        0,
        False,
    ),
    (
        "plain-bool-stays-plain",
        "ingress:\n  enabled: false  # off by default\n",
        {"ingress.enabled": "true"},
        "ingress:\n  enabled: true  # off by default\n",
        [2],
        0,
        False,
    ),
    (
        "flow-mapping",
        'image: {repository: nginx, tag: "1.25"}  # flow\nreplicas: 1\n',
        {"image.tag": "1.26"},
        'image: {repository: nginx, tag: "1.26"}  # flow\nreplicas: 1\n',
        [1],
        0,
        False,
    ),
    (
        "flow-mapping-plain-needing-quotes",
        "image: {repository: nginx, tag: v1}\n",
        {"image.tag": "a,b"},
        'image: {repository: nginx, tag: "a,b"}\n',
        [1],
        0,
        False,
    ),
    (
        "flow-sequence-index",
        "tags: [v1, v2, 'v3']\n",
        {"tags[1]": "v9", "tags[2]": "v10"},
        "tags: [v1, v9, 'v10']\n",
        [1],
        0,
        False,
    ),
    (
        "anchor-on-target-kept",
        'image:\n  tag: &tag "1.0" # anchored\n',
        {"image.tag": "1.1"},
        'image:\n  tag: &tag "1.1" # anchored\n',
        [2],
        0,
        False,
    ),
    (
        "anchor-and-explicit-tag",
        "image:\n  tag: &t !!str 12\n",
        {"image.tag": "13"},
        "image:\n  tag: &t !!str 13\n",
        [2],
        0,
        False,
    ),
    (
        "alias-elsewhere-untouched",
        "base: &b\n  pullPolicy: Always\nimage:\n  <<: *b\n  tag: v1\n",
        {"image.tag": "v2"},
        "base: &b\n  pullPolicy: Always\nimage:\n  <<: *b\n  tag: v2\n",
        [5],
        0,
        False,
    ),
    (
        "empty-value",
        "image:\n  tag:\n  repository: x\n",
        {"image.tag": "v1"},
        "image:\n  tag: v1\n  repository: x\n",
        [2],
        0,
        False,
    ),
    (
        "empty-value-with-comment",
        "image:\n  tag:   # set by CI\n",
        {"image.tag": "1.10"},
        'image:\n  tag: "1.10"  # set by CI\n',
        [2],
        0,
        False,
    ),
    (
        "tilde-value",
        "image:\n  tag: ~\n",
        {"image.tag": "v1"},
        "image:\n  tag: v1\n",
        [2],
        0,
        False,
    ),
    (
        "multiline-plain-target",
        "description: a long\n  plain value\nnext: 1\n",
        {"description": "short"},
        "description: short\nnext: 1\n",
        [1, 2],
        -1,
        False,
    ),
    (
        "multi-document-key-in-one-of-three",
        "---\n# first\nimage:\n  repository: x\n...\n---\nimage:\n  tag: 'v1'\nother: x\n---\nkind: Secret\n",
        {"image.tag": "v2"},
        "---\n# first\nimage:\n  repository: x\n...\n---\nimage:\n  tag: 'v2'\nother: x\n---\nkind: Secret\n",
        [8],
        0,
        False,
    ),
    (
        "multi-document-key-in-second-only",
        "a: 1\n---\nimage:\n  tag: v1\n",
        {"image.tag": "v2"},
        "a: 1\n---\nimage:\n  tag: v2\n",
        [4],
        0,
        False,
    ),
    (
        "crlf",
        crlf('# c\nimage:\n  repository: x\n  tag: "1" # t\n\nservice:\n  port: 80\n'),
        {"image.tag": "2"},
        crlf('# c\nimage:\n  repository: x\n  tag: "2" # t\n\nservice:\n  port: 80\n'),
        [4],
        0,
        False,
    ),
    (
        "bom-and-unicode",
        '\ufeff# Überschrift – ☃\nimage:\n  tag: "café"  # ünïcödé\n',
        {"image.tag": "naïve-☃"},
        '\ufeff# Überschrift – ☃\nimage:\n  tag: "naïve-☃"  # ünïcödé\n',
        [3],
        0,
        False,
    ),
    (
        "no-trailing-newline",
        "image:\n  tag: v1",
        {"image.tag": "v2"},
        "image:\n  tag: v2",
        [2],
        0,
        False,
    ),
    (
        "list-of-mappings-index",
        "images:\n- name: a\n  tag: '1'\n- name: b\n  tag: \"2\"\n",
        {"images[1].tag": "3"},
        "images:\n- name: a\n  tag: '1'\n- name: b\n  tag: \"3\"\n",
        [5],
        0,
        False,
    ),
    (
        "create-key-in-existing-mapping",
        "image:\n  repository: x # repo\n  # pullPolicy: Always\n\nservice:\n  port: 80\n",
        {"image.tag": "v1"},
        "image:\n  repository: x # repo\n  tag: v1\n  # pullPolicy: Always\n\nservice:\n  port: 80\n",
        [],
        1,
        True,
    ),
    (
        "create-nested-keys-with-file-indent",
        "global:\n    env: prod\nimage:\n    repository: x\n",
        {"sidecar.image.tag": "1.0", "sidecar.image.repository": "y"},
        "global:\n    env: prod\nimage:\n    repository: x\n"
        'sidecar:\n    image:\n        tag: "1.0"\n        repository: "y"\n',  # y is a YAML 1.1 boolean
        [],
        4,
        True,
    ),
    (
        "create-after-nested-block-scalar",
        "config:\n  script: |\n    echo hi\n\n  # trailing comment\nz: 1\n",
        {"config.tag": "v1"},
        "config:\n  script: |\n    echo hi\n  tag: v1\n\n  # trailing comment\nz: 1\n",
        [],
        1,
        True,
    ),
    (
        "create-in-crlf-file-without-final-newline",
        crlf("image:\n  repository: x\n") + "other: 1",
        {"image.tag": "v1"},
        crlf("image:\n  repository: x\n  tag: v1\n") + "other: 1",
        [],
        1,
        True,
    ),
    (
        "create-at-eof-without-newline",
        "image:\n  repository: x",
        {"image.tag": "v1"},
        "image:\n  repository: x\n  tag: v1\n",
        [2],
        1,
        True,
    ),
    (
        "quoted-key-in-file",
        'image:\n  "tag": v1 # c\n',
        {"image.tag": "v2"},
        'image:\n  "tag": v2 # c\n',
        [2],
        0,
        False,
    ),
    (
        "create-key-needing-quotes-before-document-end",
        "podAnnotations:\n  a: b\n...\n---\nx: 1\n",
        {'podAnnotations["team: web"]': "yes"},
        'podAnnotations:\n  a: b\n  "team: web": "yes"\n...\n---\nx: 1\n',
        [],
        1,
        True,
    ),
    (
        "merge-own-key-overrides-merged",  # issue 16: sidecar's own tag wins over the merged one
        ISSUE_16,
        {"images.app.tag": "v2.0.0", "images.sidecar.tag": "v2.0.0"},
        ISSUE_16.replace("tag: v1.0.0", "tag: v2.0.0"),
        [4, 8],
        0,
        False,
    ),
    (
        "merge-anchor-edit-every-merger-overrides",
        ISSUE_16,
        {"images.app.tag": "v2.0.0"},
        ISSUE_16.replace("tag: v1.0.0  #", "tag: v2.0.0  #"),
        [4],
        0,
        False,
    ),
    (
        "merge-inherited-key-gets-an-override",
        ISSUE_16,
        {"images.sidecar.pullPolicy": "Always"},
        ISSUE_16 + "    pullPolicy: Always\n",
        [],
        1,
        True,
    ),
    (
        "merge-list-first-mapping-wins",  # c's tag comes from a, its port is its own: b's are not inherited
        "a: &a\n  tag: a1\nb: &b\n  tag: b1\n  port: b2\nc:\n  <<: [*a, *b]\n  port: c2\n",
        {"b.tag": "b9", "b.port": "b8"},
        "a: &a\n  tag: a1\nb: &b\n  tag: b9\n  port: b8\nc:\n  <<: [*a, *b]\n  port: c2\n",
        [4, 5],
        0,
        False,
    ),
    (
        "merge-alias-of-alias",  # web inherits app's own tag, not base's
        MERGE_CHAIN,
        {"base.tag": "t9"},
        MERGE_CHAIN.replace("tag: t1", "tag: t9"),
        [3],
        0,
        False,
    ),
    (
        "merge-inline-mapping-and-override-in-chain",
        MERGE_CHAIN,
        {"web.tag": "t9", "web.repository": "r9"},
        MERGE_CHAIN + "  tag: t9\n  repository: r9\n",
        [],
        2,
        True,
    ),
    (
        "create-under-empty-parent",
        "root:\nother: 1\n",
        {"root.new.nested": "v"},
        "root:\n  new:\n    nested: v\nother: 1\n",
        [],
        2,
        True,
    ),
    (
        "create-under-empty-parent-keeps-comment-and-file-indent",
        "a:\n    b: 1\nroot:   # filled by CI\n\nz: 1\n",
        {"root.new.x": "y", "root.tag": "v1"},
        'a:\n    b: 1\nroot:   # filled by CI\n    new:\n        x: "y"\n    tag: v1\n\nz: 1\n',
        [],
        3,
        True,
    ),
    (
        "create-under-empty-parent-in-list-item",
        "images:\n- name: a\n  extra:\n",
        {"images[0].extra.tag": "v1"},
        "images:\n- name: a\n  extra:\n    tag: v1\n",
        [],
        1,
        True,
    ),
    (
        "create-under-empty-parent-at-eof-crlf",
        crlf("a: 1\n") + "root:",
        {"root.tag": "v1"},
        crlf("a: 1\nroot:\n  tag: v1\n"),
        [2],
        1,
        True,
    ),
    (
        "empty-document-braces",
        "{}\n",
        {"image.tag": "v1", "image.repository": "r"},
        "image:\n  tag: v1\n  repository: r\n",
        [1],
        2,
        True,
    ),
    (
        "empty-document-braces-with-comments",
        "# Default values: none yet\n{}  # placeholder\n# end\n",
        {"image.tag": "v1"},
        "# Default values: none yet\nimage:  # placeholder\n  tag: v1\n# end\n",
        [2],
        1,
        True,
    ),
    (
        "empty-document-braces-crlf-one-key",
        crlf("{ }\n"),
        {"tag": "v1"},
        crlf("tag: v1\n"),
        [1],
        0,
        True,
    ),
    (
        "create-after-a-value-that-is-an-alias",  # appended after `*b`, not inside the anchored mapping
        "base: &b\n  x: 1\nimage:\n  repository: r\n  extra: *b  # shared\n",
        {"image.tag": "v1"},
        "base: &b\n  x: 1\nimage:\n  repository: r\n  extra: *b  # shared\n  tag: v1\n",
        [],
        1,
        True,
    ),
    (
        "create-after-a-list-ending-with-an-alias",
        "a: &a [1]\nb: &b {k: v}\nimage:\n  list:\n  - *b\n  - *a\n",
        {"image.tag": "v1"},
        "a: &a [1]\nb: &b {k: v}\nimage:\n  list:\n  - *b\n  - *a\n  tag: v1\n",
        [],
        1,
        True,
    ),
    (
        "create-in-list-item-mapping",
        "images:\n  - name: a\n    tag: v1\n",
        {"images[0].digest": "sha256:abc"},
        "images:\n  - name: a\n    tag: v1\n    digest: sha256:abc\n",
        [],
        1,
        True,
    ),
]


@pytest.mark.parametrize(
    ("text", "updates", "expected", "lines", "inserted", "create"),
    [pytest.param(*case[1:], id=case[0]) for case in EDITS],
)
def test_set_values_is_byte_exact(
    text: str, updates: dict[str, str], expected: str, lines: list[int], inserted: int, create: bool, checker: str
) -> None:
    result = set_values(text, updates, create_missing=create)
    assert result.text == expected
    assert result.changed
    assert touched(text, result.text) == (lines, inserted)
    # The edited file reads back with the new values as strings, and nothing else changed.
    assert read_values(result.text, list(updates)) == updates
    assert len(load_all(text)) == len(load_all(result.text))
    # Setting the same values again is a no-op.
    again = set_values(result.text, updates, create_missing=create)
    assert again.text == result.text and not again.changed and again.changes == ()


@pytest.mark.parametrize(
    ("new", "rendered"),
    [
        ("v1.2.3", "v1.2.3"),
        ("1.2.3", "1.2.3"),
        ("sha-3f2a1b", "sha-3f2a1b"),
        ("main_20240501.7", "main_20240501.7"),
        ("sha256:abc", "sha256:abc"),
        ("a b", "a b"),
        ("1.10", '"1.10"'),
        ("1.0", '"1.0"'),
        ("12", '"12"'),
        ("true", '"true"'),
        ("yes", '"yes"'),
        ("y", '"y"'),
        ("off", '"off"'),
        ("null", '"null"'),
        ("~", '"~"'),
        ("0x1F", '"0x1F"'),
        ("0o17", '"0o17"'),
        ("1e3", '"1e3"'),
        ("0123", '"0123"'),
        ("1_000", '"1_000"'),
        (".inf", '".inf"'),
        ("2024-01-01", '"2024-01-01"'),
        ("", '""'),
        ("a: b", '"a: b"'),
        ("a #b", '"a #b"'),
        ("#x", '"#x"'),
        ("-", '"-"'),
        ("*x", '"*x"'),
        ("&x", '"&x"'),
        ("!x", '"!x"'),
        ("@x", '"@x"'),
        ("'x", '"\'x"'),
        (" x", '" x"'),
        ("x:", '"x:"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("tab\there", '"tab\\there"'),
    ],
)
def test_plain_target_gets_quoted_only_when_needed(new: str, rendered: str) -> None:
    text = "image:\n  tag: v0 # c\n"
    result = set_values(text, {"image.tag": new})
    assert result.text == f"image:\n  tag: {rendered} # c\n"
    assert read_values(result.text, ["image.tag"]) == {"image.tag": new}
    assert pyyaml.safe_load(result.text)["image"]["tag"] == new  # YAML 1.1 reader (like Helm) sees a string


def test_single_quoted_target_with_unprintable_value_switches_to_double() -> None:
    assert set_values("tag: 'a'\n", {"tag": "a\nb"}).text == 'tag: "a\\nb"\n'


@pytest.mark.parametrize(
    ("text", "updates"),
    [
        pytest.param('image:\n  tag: "1.0"\n', {"image.tag": "1.0"}, id="quoted"),
        pytest.param("image:\n  tag: 1.0\n", {"image.tag": "1.0"}, id="plain-float-left-alone"),
        pytest.param("image:\n  tag: 123\n", {"image.tag": "123"}, id="plain-int"),
        pytest.param("image:\n  tag: &a v1\nx: *a\n", {"image.tag": "v1"}, id="anchored-and-aliased"),
        pytest.param(crlf("a: 1\nimage:\n  tag: v1\n"), {"image.tag": "v1"}, id="crlf"),
        pytest.param("---\nimage: {tag: v1}\n---\nimage:\n  other: v1\n", {"image.tag": "v1"}, id="two-docs"),
        pytest.param("a: &a {tag: v1}\nb:\n  <<: *a\n", {"b.tag": "v1"}, id="inherited-through-merge"),
    ],
)
def test_equal_value_is_byte_identical(text: str, updates: dict[str, str]) -> None:
    result = set_values(text, updates)
    assert result == EditResult(text, ())
    assert result.text is text
    assert not result.changed


def test_change_records_only_changed_keys() -> None:
    text = "image:\n  tag: v1\n  other: v9\nempty:\n"
    result = set_values(text, {"image.tag": "v1", "image.other": "v10", "empty": "x", "new": "n"}, create_missing=True)
    assert result.changes == (
        Change("image.other", "v9", "v10"),
        Change("empty", "", "x"),
        Change("new", None, "n"),
    )
    assert result.text == 'image:\n  tag: v1\n  other: v10\nempty: x\nnew: "n"\n'


@pytest.mark.parametrize(
    ("text", "updates", "message"),
    [
        pytest.param("image:\n  tag: &t v1\nsidecar:\n  tag: *t\n", {"image.tag": "v2"}, "shared", id="anchor-aliased"),
        pytest.param("image:\n  tag: &t v1\nsidecar:\n  tag: *t\n", {"sidecar.tag": "v2"}, "alias", id="alias-target"),
        pytest.param("base: &b\n  tag: v1\nimage: *b\n", {"image.tag": "v2"}, "alias", id="path-through-alias"),
        pytest.param("base: &b\n  tag: v1\nimage: *b\n", {"base.tag": "v2"}, "shared", id="anchored-mapping"),
        pytest.param("a: &a v1\nb: &b v2\nl: [*a, *b]\n", {"l[1]": "v3"}, "'l\\[1\\]' is an alias", id="alias-item"),
        pytest.param("a: &a v1\nl:\n- *a\n- x\n- *a\n", {"l[2]": "v3"}, "'l\\[2\\]' is an alias", id="alias-item-2"),
        pytest.param("image:\n  tag: |\n    v1\n", {"image.tag": "v2"}, "block scalar", id="block-literal"),
        pytest.param("image:\n  tag: >-\n    v1\n", {"image.tag": "v2"}, "block scalar", id="block-folded"),
        pytest.param("image:\n  tag: v1\n", {"image": "v2"}, "mapping", id="target-is-mapping"),
        pytest.param("tags:\n- a\n", {"tags": "v2"}, "list", id="target-is-list"),
        pytest.param("image:\n  tag: v1\n  tag: v2\n", {"image.tag": "v3"}, "duplicate", id="duplicate-key"),
        pytest.param("tags: [a, ]\n", {"tags[0]": "b"}, None, id="flow-seq-ok-control"),
        pytest.param("image: {}\n", {"image.tag": "v1"}, "flow", id="create-in-flow"),
        pytest.param("- a\n-\n", {"[1]": "v1"}, None, id="bad-key-path"),
    ],
)
def test_refused_edits(text: str, updates: dict[str, str], message: str | None, checker: str) -> None:
    if message is None:
        if "[1]" in updates:
            with pytest.raises(ValuesEditError, match="invalid key path"):
                set_values(text, updates)
        else:
            assert set_values(text, updates).text == "tags: [b, ]\n"
        return
    with pytest.raises(UnsafeEdit, match=message) as info:
        set_values(text, updates, create_missing=True)
    assert isinstance(info.value, UnsafeWrite) and isinstance(info.value, PermanentError)


MERGE_LIST = "a: &a\n  tag: a1\nb: &b\n  tag: b1\n  port: b2\nc:\n  <<: [*a, *b]\n"


@pytest.mark.parametrize(
    ("text", "updates", "create", "message"),
    [
        pytest.param(ISSUE_16, {"images.app.repository": "x"}, True, "inherited here", id="leaks-into-merger"),
        pytest.param(ISSUE_16, {"images.app.pullPolicy": "Always"}, False, "inherited here", id="leaks-2"),
        pytest.param(MERGE_LIST, {"a.tag": "a9"}, False, "inherited here.* at 'c.tag'", id="list-first-wins"),
        pytest.param(MERGE_LIST, {"b.port": "b9"}, False, "inherited here.* at 'c.port'", id="list-second-fills"),
        pytest.param(MERGE_CHAIN, {"app.tag": "t9"}, False, "inherited here.* at 'web.tag'", id="alias-of-alias"),
        pytest.param(MERGE_CHAIN, {"base.repository": "r9"}, False, "at 'app.repository'", id="chain-first-link"),
        pytest.param(
            ISSUE_16, {"images.sidecar.repository": "x"}, False, "'<<' of 'images.sidecar'.*create_missing_keys",
            id="inherited-needs-create-missing",
        ),
        pytest.param(
            "s:\n  tag: x\n  <<: {tag: y}\n", {"s.tag": "v2"}, True, "put '<<' first", id="own-key-before-merge"
        ),
        pytest.param(
            "b: &b\n  res:\n    cpu: 1\nx:\n  <<: *b\n", {"x.res.cpu": "2"}, True, "only an inherited scalar",
            id="inside-inherited-mapping",
        ),
        pytest.param(
            "b: &b\n  res:\n    cpu: 1\nx:\n  <<: *b\n", {"x.res": "2"}, True, "only an inherited scalar",
            id="inherited-mapping-target",
        ),
        pytest.param(ISSUE_16, {"images.app.digest": "sha"}, True, "inherited keys changed", id="create-leaks"),
        pytest.param("a: &a {tag: 1}\ns: {<<: *a}\n", {"s.tag": "2"}, True, "flow style", id="override-in-flow"),
        pytest.param("a: &a\n  tag: v1\n  self: *a\n", {"a.tag": "v2"}, False, "recursive", id="recursive-alias"),
        pytest.param("--- {}\n", {"image.tag": "v1"}, True, "flow style", id="braces-after-marker"),
        pytest.param("!!map {}\n", {"image.tag": "v1"}, True, "flow style", id="tagged-braces"),
        pytest.param("image: {}  # later\n", {"image.tag": "v1"}, True, "flow style", id="nested-braces"),
        pytest.param("{}\n", {"image.tag": "v1"}, False, "not found", id="braces-without-create-missing"),
    ],
)
def test_merge_and_empty_parent_refusals(
    text: str, updates: dict[str, str], create: bool, message: str, checker: str
) -> None:
    with pytest.raises(ValuesEditError, match=message):
        set_values(text, updates, create_missing=create)


@pytest.mark.parametrize(
    ("text", "updates", "create", "message"),
    [
        pytest.param(
            "image:\n  tag: v1\n---\nimage:\n  tag: v1\n", {"image.tag": "v2"}, False, "documents 1 and 2",
            id="key-in-both",
        ),
        pytest.param(
            "image:\n  tag: v1\n---\nimage:\n  tag: v1\n", {"image.tag": "v1"}, False, "documents 1 and 2",
            id="equal-value-is-refused-too",
        ),
        pytest.param(
            "image: {tag: v1}\n---\nx: 1\n---\nbase: &b {tag: v0}\nimage:\n  <<: *b\n", {"image.tag": "v2"}, True,
            "documents 1 and 3", id="second-through-merge-key",
        ),
        pytest.param(
            "a: &a {tag: v1}\nimage: *a\n---\nimage:\n  tag: v1\n", {"image.tag": "v2"}, True, "documents 1 and 2",
            id="first-through-alias",
        ),
        pytest.param("a: 1\n---\nb: 2\n", {"image.tag": "v1"}, True, "documents 1 and 2 .*could each", id="create"),
        pytest.param(
            "kind: one\n---\n{}\n", {"image.tag": "v1"}, True, "documents 1 and 2 .*could each", id="create-braces"
        ),
        pytest.param(
            "image:\n  repository: x\n---\nimage:\n  repository: y\n", {"image.tag": "v1"}, True,
            "documents 1 and 2 .*could each", id="create-same-depth",
        ),
    ],
)
def test_multi_document_refusals(
    text: str, updates: dict[str, str], create: bool, message: str, checker: str
) -> None:
    with pytest.raises(UnsafeEdit, match=message) as info:
        set_values(text, updates, create_missing=create, filename="envs/prod/values.yaml")
    assert "envs/prod/values.yaml" in str(info.value)
    assert all(key in str(info.value) for key in updates)


def test_multi_document_reads_refuse_ambiguity_too() -> None:
    text = "image:\n  tag: v1\n---\nimage:\n  tag: v2\n  repository: r\n"
    assert read_values(text, ["image.repository", "image.digest"]) == {"image.repository": "r", "image.digest": None}
    with pytest.raises(UnsafeEdit, match="'image.tag' is in documents 1 and 2"):
        read_values(text, ["image.tag"])


def test_reading_through_merge_keys() -> None:
    text = MERGE_CHAIN + MERGE_LIST.replace("a:", "la:").replace("b:", "lb:").replace("c:", "lc:")
    text = text.replace("*a", "*la").replace("*b", "*lb").replace("&a", "&la").replace("&b", "&lb")
    assert read_values(text, ["web.tag", "web.repository", "web.port", "app.repository", "lc.tag", "lc.port"]) == {
        "web.tag": "t2",
        "web.repository": "r1",
        "web.port": "p1",
        "app.repository": "r1",
        "lc.tag": "a1",
        "lc.port": "b2",
    }
    assert read_values('s:\n  "<<": q\n  <<: {x: 1}\n', ['s["<<"]', "s.x"]) == {'s["<<"]': "q", "s.x": "1"}


def test_a_deep_chain_of_merges_is_resolved_once_per_mapping() -> None:
    # 40 levels of `<<: [*prev, *prev]`: searched naively that is 2**40 lookups (go-yaml refuses such files too).
    text = "m0: &m0\n  tag: v0\n" + "".join(f"m{i}: &m{i}\n  <<: [*m{i - 1}, *m{i - 1}]\n" for i in range(1, 40))
    assert read_values(text, ["m39.tag", "m39.other"]) == {"m39.tag": "v0", "m39.other": None}
    with pytest.raises(UnsafeEdit, match="inherited here"):
        set_values(text, {"m0.tag": "v1"})
    assert set_values(text, {"m39.tag": "v1"}, create_missing=True).text == text + "  tag: v1\n"


def test_inherited_old_value_is_reported() -> None:
    result = set_values(ISSUE_16, {"images.sidecar.repository": "other"}, create_missing=True)
    assert result.changes == (Change("images.sidecar.repository", "myapp", "other"),)
    assert pyyaml.safe_load(result.text)["images"]["sidecar"]["repository"] == "other"
    assert pyyaml.safe_load(result.text)["images"]["app"]["repository"] == "myapp"


def test_verifier_refuses_a_splice_that_changes_anything_else(monkeypatch: pytest.MonkeyPatch, checker: str) -> None:
    def broken(value: str) -> str:
        return f'"{value}"\nextra: 1'

    monkeypatch.setattr(values_module, "_double", broken)
    with pytest.raises(UnsafeEdit, match="refusing to write"):
        set_values('image:\n  tag: "v1"\n', {"image.tag": "v2"})


def test_unparseable_result_is_refused(monkeypatch: pytest.MonkeyPatch, checker: str) -> None:
    monkeypatch.setattr(values_module, "_double", lambda value: '"' + value)
    with pytest.raises(UnsafeEdit, match="does not parse"):
        set_values('image:\n  tag: "v1"\n', {"image.tag": "v2"})


@pytest.mark.parametrize(
    ("text", "key", "create"),
    [
        pytest.param("image:\n  repository: x\n", "image.tag", False, id="missing-key"),
        pytest.param("image:\n  repository: x\n", "other.tag", False, id="missing-parent"),
        pytest.param("images:\n- tag: a\n", "images[3].tag", True, id="index-out-of-range"),
        pytest.param("images:\n  tag: a\n", "images[0].tag", True, id="not-a-list"),
        pytest.param("image: nginx\n", "image.tag", True, id="parent-is-scalar"),
        pytest.param("image:\n", "image.tag", False, id="parent-is-null"),
        pytest.param("image: ~\n", "image.tag", True, id="parent-is-tilde"),
        pytest.param("image: &i\nother: *i\n", "image.tag", True, id="parent-is-anchored-null"),
        pytest.param("a: {image: }\n", "a.image.tag", True, id="null-parent-in-flow"),
        pytest.param("- a\n", "image.tag", True, id="document-is-a-list"),
        pytest.param("images:\n- tag: a\n", "images[0].extra[0]", True, id="never-creates-list-items"),
        pytest.param("", "image.tag", True, id="empty-file"),
    ],
)
def test_key_not_found(text: str, key: str, create: bool) -> None:
    with pytest.raises(KeyNotFound) as info:
        set_values(text, {key: "v1"}, create_missing=create, filename="envs/prod/values.yaml")
    assert key in str(info.value) and "envs/prod/values.yaml" in str(info.value)
    assert info.value.key == key and info.value.filename == "envs/prod/values.yaml"
    assert isinstance(info.value, PermanentError)


def test_create_picks_document_with_deepest_prefix() -> None:
    text = "kind: one\n---\nimage:\n  repository: x\n---\nother: y\n"
    result = set_values(text, {"image.tag": "v1"}, create_missing=True)
    assert result.text == "kind: one\n---\nimage:\n  repository: x\n  tag: v1\n---\nother: y\n"


def test_conflicting_updates_of_the_same_scalar() -> None:
    with pytest.raises(ValuesEditError, match="conflicting"):
        set_values("a:\n  b: 1\n", {"a.b": "2", 'a["b"]': "3"})
    with pytest.raises(ValuesEditError, match="conflicting"):
        set_values("a:\n  c: 1\n", {"a.b": "2", 'a["b"]': "3"}, create_missing=True)
    same = set_values("a:\n  c: 1\n", {"a.b": "2", 'a["b"]': "2"}, create_missing=True)
    assert same.text == 'a:\n  c: 1\n  b: "2"\n' and same.changes == (Change("a.b", None, "2"),)


def test_create_skips_a_document_that_cannot_hold_the_key() -> None:
    text = "--- just a string\n---\nother: 1\n"
    assert set_values(text, {"image.tag": "v1"}, create_missing=True).text == text + "image:\n  tag: v1\n"


def test_invalid_yaml_is_a_values_edit_error_not_unsafe() -> None:
    with pytest.raises(ValuesEditError, match="not valid YAML") as info:
        set_values("image: [unclosed\n", {"image.tag": "v1"}, filename="bad.yaml")
    assert not isinstance(info.value, UnsafeEdit)
    assert "bad.yaml" in str(info.value)


def test_non_string_value_is_rejected() -> None:
    bad: dict[str, Any] = {"tag": 5}
    with pytest.raises(ValuesEditError, match="must be a string"):
        set_values("tag: 1\n", bad)


def test_read_values() -> None:
    text = (
        'image:\n  tag: "1.0"\n  n: 123\n  e:\n  t: ~\n  b: |\n    x\n'
        "shared: &s {tag: v1}\nother: *s\nlist: [a, 'b']\n---\nimage2:\n  tag: second\nonly2: z\n"
    )
    assert read_values(
        text,
        [
            "image.tag",
            "image.n",
            "image.e",
            "image.t",
            "image.b",
            "other.tag",
            "list[1]",
            "only2",
            "missing.key",
            "list[5]",
        ],
    ) == {
        "image.tag": "1.0",
        "image.n": "123",
        "image.e": "",
        "image.t": "~",
        "image.b": "x\n",
        "other.tag": "v1",
        "list[1]": "b",
        "only2": "z",
        "missing.key": None,
        "list[5]": None,
    }
    with pytest.raises(UnsafeEdit, match="not a scalar"):
        read_values(text, ["image"])


def test_many_edits_reuse_the_parser() -> None:
    text = HELM_CREATE
    for i in range(50):
        text = set_values(text, {"image.tag": f"1.0.{i}", "sidecars[1].tag": f"3.{i}"}).text
    assert read_values(text, ["image.tag", "sidecars[1].tag"]) == {"image.tag": "1.0.49", "sidecars[1].tag": "3.49"}
    assert touched(HELM_CREATE, text) == ([14, 54], 0)


TAGS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
STYLES = st.sampled_from(['"1.0"', "'1.0'", "v1.0", "123", '""', "", "~", "&a v0"])


@settings(max_examples=300, deadline=None, database=None)
@given(tag=TAGS, style=STYLES, eol=st.sampled_from(["\n", "\r\n"]))
def test_property_set_then_read(tag: str, style: str, eol: str) -> None:
    text = eol.join(["# values", "image:", "  repository: x  # r", f"  tag: {style}".rstrip(" ") + "  # t", "x: 1", ""])
    result = set_values(text, {"image.tag": tag})
    assert read_values(result.text, ["image.tag"]) == {"image.tag": tag}
    loaded = pyyaml.safe_load(result.text)
    assert loaded["image"]["tag"] == tag or (str(loaded["image"]["tag"]) == tag and style == "123")
    if result.changed:
        assert touched(text, result.text) == ([4], 0)
    else:
        assert result.text == text


# --- property: edits through merge keys change no resolved value but the targets --------------------------------

MERGE_KEYS = ("tag", "repo", "port")
Model = dict[str, list[tuple[str, Any]]]  # mapping name -> ("own" | "override", (key, value)) or ("merge", [names])


@st.composite
def merge_models(draw: st.DrawFn) -> Model:
    model: Model = {}
    for i in range(draw(st.integers(2, 5))):
        name = f"m{i}"
        keys = draw(st.lists(st.sampled_from(MERGE_KEYS), unique=True, max_size=3))
        entries: list[tuple[str, Any]] = [("own", (k, f"{name}-{k}")) for k in keys]
        if i and draw(st.booleans()):
            sources = draw(st.lists(st.sampled_from(sorted(model)), unique=True, min_size=1, max_size=2))
            entries.insert(draw(st.integers(0, len(entries))), ("merge", sources))
        if not entries:
            entries = [("own", ("tag", f"{name}-tag"))]
        model[name] = entries
    return model


def render_model(model: Model) -> str:
    lines = []
    for name, entries in model.items():
        lines.append(f"{name}: &{name}")
        for kind, item in entries:
            if kind == "own":
                lines.append(f"  {item[0]}: {item[1]}  # {name}")
            elif kind == "override":  # appended by create_missing, without a comment
                lines.append(f"  {item[0]}: {item[1]}")
            else:
                aliases = ", ".join(f"*{source}" for source in item)
                lines.append(f"  <<: {aliases}" if len(item) == 1 else f"  <<: [{aliases}]")
    return "\n".join(lines) + "\n"


def resolve_model(model: Model, name: str, go: bool) -> dict[str, str]:
    """YAML 1.1 (own keys win) or go-yaml v2 (pairs in order, a later `<<` wins); first merged mapping wins."""
    merged: dict[str, str] = {}
    own: dict[str, str] = {}
    for kind, item in model[name]:
        if kind == "merge":
            for source in reversed(item):
                merged.update(resolve_model(model, source, go))
                if go:
                    own.update(resolve_model(model, source, go))
        else:
            own[item[0]] = item[1]
    return own if go else {**merged, **own}


def load_yaml11(text: str) -> Any:
    """ruamel's constructor resolves `<<: [*a, *b]` as YAML 1.1 says (PyYAML 6.0.x lets the last mapping win)."""
    return YAML(typ="safe", pure=True).load(text)


def resolve_go(node: Any) -> Any:
    """go-yaml v2's reading of composed PyYAML nodes (independent of workers.values)."""
    if node.id == "scalar":
        return node.value
    if node.id == "sequence":
        return [resolve_go(n) for n in node.value]
    out: dict[str, Any] = {}
    for k, v in node.value:
        if k.tag == "tag:yaml.org,2002:merge":
            for source in reversed([v] if v.id == "mapping" else v.value):
                out.update(resolve_go(source))
        else:
            out[k.value] = resolve_go(v)
    return out


@settings(max_examples=400, deadline=None, database=None)
@given(model=merge_models(), data=st.data(), create=st.booleans())
def test_property_merge_key_edits_change_only_the_targets(model: Model, data: st.DataObject, create: bool) -> None:
    text = render_model(model)
    views = {go: {n: resolve_model(model, n, go) for n in model} for go in (False, True)}
    assert load_yaml11(text) == views[False]
    assert resolve_go(pyyaml.compose(text)) == views[True]
    paths = sorted((n, k) for n in model for k in views[False][n])
    targets = data.draw(st.lists(st.sampled_from(paths), unique=True, min_size=1, max_size=2))
    updates = {f"{n}.{k}": f"new{i}" for i, (n, k) in enumerate(targets)}

    # The expected edit on the model: an own key gets the value, an inherited one an override at the end.
    edited: Model = {n: list(entries) for n, entries in model.items()}
    inherited_without_create = False
    for (name, key), value in zip(targets, updates.values(), strict=True):
        entries = edited[name]
        own = [i for i, (kind, item) in enumerate(entries) if kind == "own" and item[0] == key]
        if own:
            entries[own[0]] = ("own", (key, value))
        else:
            inherited_without_create |= not create
            entries.append(("override", (key, value)))
    after = {go: {n: resolve_model(edited, n, go) for n in edited} for go in (False, True)}
    wanted = {(n, k): v for (n, k), v in zip(targets, updates.values(), strict=True)}
    safe = not inherited_without_create and all(
        after[go][n] == {k: wanted.get((n, k), v) for k, v in views[go][n].items()}
        for go in (False, True)
        for n in model
    )

    event("refused" if not safe else "overrides created" if len(render_model(edited)) > len(text) else "edited")
    if not safe:
        with pytest.raises(ValuesEditError):
            set_values(text, updates, create_missing=create)
        return
    result = set_values(text, updates, create_missing=create)
    assert load_yaml11(result.text) == after[False]
    assert resolve_go(pyyaml.compose(result.text)) == after[True]
    assert result.text == render_model(edited)  # every other byte kept, overrides appended to their mapping
