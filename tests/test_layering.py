"""The web process never loads the worker side: no `workers.*`, GitPython or PyGithub in `gitops-bridge web`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_web_app_and_cli_import_no_worker_code() -> None:
    code = (
        "import sys, bridge.cli, bridge.app; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('workers', 'git', 'github')); print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bridge_reaches_workers_only_lazily_from_cli_commands() -> None:
    """Module-level imports in bridge/ never name workers/; the CLI's worker-side commands import inside functions."""
    offenders = []
    for path in sorted((ROOT / "bridge").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("workers", "git", "github")]
    assert offenders == []


def test_nothing_imports_the_cli() -> None:
    """The CLI is the composition root of both processes: it imports them, nothing imports it back (the demo used
    to import `format_table` and `serve` from it)."""
    offenders = []
    for path in sorted([*(ROOT / "bridge").glob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "bridge.cli"]
    assert offenders == []
