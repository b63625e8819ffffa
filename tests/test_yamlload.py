from __future__ import annotations

import math
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from bridge.yamlload import YAMLError, safe_load

ROOT = Path(__file__).resolve().parent.parent

SCALARS = [
    "yes", "no", "on", "off", "y", "n", "True", "TRUE", "false", "tRue", "010", "08", "0o10", "0x1F", "0b101",
    "1_000", "+12", "-0", "-17", "1:30", "1e3", "1e+3", "1.5", "1.", ".5", "+.5", "0.", "12e", ".inf", "-.INF",
    ".nan", "~", "", "null", "Null", "NULL", "nil", "2024-01-02", "2024-1-2", "'010'", '"yes"', "!!str 12", "0o", "0x",
    "2024-01-02 03:04:05", "v1.2.3", "1.2.3", "refs/heads/*", "'{app}-{build_id}'", "{app}-{build_id}",
    "[1, two, 'three']", "{a: 1}",
]


def ruamel(text: str) -> object:
    return YAML(typ="safe").load(text)


@pytest.mark.parametrize("scalar", SCALARS)
def test_scalars_mean_what_ruamel_makes_of_them(scalar: str) -> None:
    try:
        want = ruamel(f"a: {scalar}\n")
    except Exception:  # noqa: BLE001 - ruamel's own error types
        with pytest.raises(YAMLError):
            safe_load(f"a: {scalar}\n")
        return
    got = safe_load(f"a: {scalar}\n")
    assert isinstance(want, dict) and isinstance(got, dict)
    if isinstance(want["a"], float) and math.isnan(want["a"]):
        assert math.isnan(got["a"])
    else:
        assert got == want and type(got["a"]) is type(want["a"])


def test_the_example_routing_file_loads_the_same() -> None:
    text = (ROOT / "examples" / "bridge.yaml").read_text()
    assert safe_load(text) == ruamel(text)


def test_merge_keys_anchors_and_timestamps() -> None:
    text = "base: &b {x: 1, y: 2}\nover:\n  <<: *b\n  y: 3\nwhen: 2024-01-02T03:04:05Z\n"
    got = safe_load(text)
    assert got["over"] == {"x": 1, "y": 3}
    assert got["when"].isoformat() == "2024-01-02T03:04:05+00:00"


@pytest.mark.parametrize("text", [
    "a: &a {x: 1, y: 2}\nb: &b {y: 20, z: 30}\nc:\n  w: 0\n  <<: [*a, *b]\n  x: 10\n",  # earlier merge wins
    "a: &s hello\nb: *s\nl: &l [1, 2]\nm: {k: *l}\n",
    "a: !!int '12'\nb: !!str 12\nc: !!float '1'\nd: !!bool 'true'\ne: !!null ''\n",
    "'on': 1\n? complex\n: key\n",
    "",
    "# only a comment\n",
    "- 1\n- [a, {b: c}]\n",
])
def test_structures_are_built_like_ruamel_builds_them(text: str) -> None:
    try:
        want = ruamel(text)
    except Exception:  # noqa: BLE001 - ruamel's own error types
        with pytest.raises(YAMLError):
            safe_load(text)
        return
    assert safe_load(text) == want


def test_a_generated_routing_file_loads_like_pyyaml_c_loader() -> None:
    import yaml

    route = ("  - name: svc-{i}\n    match: {{project: p, definition: 'svc-{i}', branches: [refs/heads/main]}}\n"
             "    environments:\n      - {{name: dev, repository: r, file: 'a/{i}.yaml', keys: [image.tag]}}\n")
    text = "repositories:\n  r: {url: 'https://x.invalid/r.git'}\nroutes:\n" + "".join(
        route.format(i=i) for i in range(300))
    assert safe_load(text) == yaml.load(text, Loader=yaml.CSafeLoader)  # noqa: S506 - the safe C loader


@pytest.mark.parametrize(("text", "problem"), [
    ("a: *nowhere\n", "undefined alias"),
    ("a: !!python/object:os.system x\n", "could not determine a constructor"),
    ("a: !custom x\n", "could not determine a constructor"),
    ("a: 1\n<<: [1, 2]\n", "expected a mapping or list of mappings"),
    ("a: !!int x\n", "cannot read 'x' as int"),
    ("? [1, 2]\n: a sequence as a key\n", "unhashable key"),  # ruamel makes a tuple of it; nobody needs that
    ("a: " + "{a: " * 600 + "1" + "}" * 600 + "\n", "nested too deeply"),
])
def test_what_cannot_be_built_is_an_error(text: str, problem: str) -> None:
    with pytest.raises(YAMLError) as caught:
        safe_load(text)
    assert problem in str(caught.value)


@pytest.mark.parametrize(("text", "line", "column", "problem"), [
    ("routes:\n  - name: a\n    name: b\n", 3, 5, "duplicate key 'name'"),
    ("routes:\n  - name: [a\n", 3, 1, "expected ','"),
    ("a: 1\n b: 2\n", 2, 3, "mapping values are not allowed"),
    ("a: 1\n---\nb: 2\n", 2, 1, "but found another document"),
])
def test_errors_carry_the_line_and_column(text: str, line: int, column: int, problem: str) -> None:
    with pytest.raises(YAMLError) as caught:
        safe_load(text)
    mark = caught.value.problem_mark  # type: ignore[attr-defined]
    assert (mark.line + 1, mark.column + 1) == (line, column)
    assert problem in str(caught.value.problem)  # type: ignore[attr-defined]
