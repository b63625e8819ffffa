"""`gitops-bridge demo` end to end: it runs the whole flow green, its summary agrees with what Azure DevOps shows,
and every command `--keep-running` prints works when pasted."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.demo import BUILDS, EXPLORE_BUILD, run_demo, tag_contradictions
from workers.fakes.azure_devops import FakeAzureDevOps


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The demo configures logging like the CLI does (a root handler on the current stderr); undo it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    uvicorn = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, (saved, propagate) in uvicorn.items():
        logging.getLogger(name).handlers[:] = saved
        logging.getLogger(name).propagate = propagate


def test_demo_runs_green_and_its_summary_matches_azure_devops(restore_logging: None) -> None:
    lines: list[str] = []
    ado = FakeAzureDevOps(pat="demo-pat")

    code = run_demo(out=lines.append, ado=ado)

    output = "\n".join(lines)
    assert code == 0, output
    assert "Every deployment ended with the expected verdict." in output
    table = output.split("\nDeployments (", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert table[0].split() == ["BUILD", "ROUTE", "ENV", "TAG", "VERDICT", "COMMIT", "REASON"]
    rows = {(cells[0], cells[2]): cells[4] for cells in (line.split() for line in table[1:])}
    assert rows[("101", "dev")] == rows[("101", "staging")] == "succeeded"
    assert rows[("203", "dev")] == "superseded" and rows[("204", "dev")] == "succeeded"
    assert rows[("301", "dev")] == "failed" and rows[("300", "dev")] == "succeeded"
    assert "rolled back to build 300" in output
    # #301 deployed through its pipeline's gated stage: the demo prints the stage's log as it arrived, and its end
    stage = [line for line in lines if line.startswith("  | #301 Deploy dev: ")]
    assert any("committed" in line and "helm/search/values-dev.yaml" in line for line in stage), stage
    assert any("output variable gitopsCommitSha = " in line for line in stage), stage
    assert any(re.search(r"verdict: failed — .*Degraded", line) for line in stage), stage
    assert stage[-1] == "  | #301 Deploy dev: TaskCompleted failed → the stage turns red, and run #301 with it"
    assert "Merge pull request #1" in output
    # The printed tags are the fake's, read after the demo ended: the summary waited for every final report.
    printed = dict(re.findall(r"^  #(\d+): (.*)$", output.split("(build tags):", 1)[1], re.M))
    assert {int(b): t for b, t in printed.items()} == {b: ", ".join(ado.tags(b)) or "-" for b in BUILDS}
    assert printed["101"] == "deployed-dev, deployed-staging" and printed["301"] == "deploy-failed-dev, rolled-back-dev"
    assert "--keep-running" in output  # the URLs are gone after exit: it says how to keep them


def test_tag_contradictions_are_named() -> None:
    items = [{"build_id": 301, "environment": "dev", "verdict": "failed"},
             {"build_id": 101, "environment": "dev", "verdict": "succeeded"}]
    assert tag_contradictions(items, {301: ["deploy-failed-dev"], 101: ["deployed-dev"]}) == []
    assert tag_contradictions(items, {301: ["deploying-dev"]}) == [
        "#301 shows deploying-dev, its verdicts say deploy-failed-dev"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_keep_running_hints_work_as_pasted(tmp_path: Path) -> None:
    """Run every command the demo prints, as a shell would; the build it offers gets deployed."""
    port = _free_port()
    script = Path(sys.executable).with_name("gitops-bridge")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    env["PATH"] = f"{script.parent}{os.pathsep}{env.get('PATH', '')}"
    log = tmp_path / "demo.log"
    with log.open("w") as fh:
        demo = subprocess.Popen([str(script), "demo", "--keep-running", "--port", str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "git --git-dir" not in log.read_text():
            assert demo.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        hints = [line.strip() for line in text.split("until Ctrl-C. Try:", 1)[1].splitlines()
                 if line.startswith("  ") and not line.strip().startswith("#")]
        assert any("curl" in h and "@" in h for h in hints), text
        ran = {}
        for hint in hints:
            proc = subprocess.run(["bash", "-c", hint], capture_output=True, text=True, env=env, timeout=30)
            assert proc.returncode == 0, (hint, proc.stdout, proc.stderr)
            ran[hint] = proc.stdout
        sent = next(out for hint, out in ran.items() if "/webhooks/azure-devops" in hint)
        assert json.loads(sent)["status"] == "queued"
        listing = next(h for h in hints if "deployments" in h and "--build-id" in h)
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(["bash", "-c", listing + " -o json"], capture_output=True, text=True, env=env,
                                 timeout=30).stdout
            items = json.loads(out)["items"]
            if items and items[0]["verdict"]:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.3)
        assert [(i["build_id"], i["environment"], i["verdict"]) for i in items] == [(EXPLORE_BUILD, "dev",
                                                                                       "succeeded")]
        assert shlex.split(listing)[0] in ("gitops-bridge", str(script))
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(timeout=10)
    assert demo.returncode == 0, log.read_text()
