"""`gitops-bridge demo` end to end: it runs the whole flow green and prints the final table."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from workers.demo import run_demo


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


def test_demo_runs_green_and_prints_the_final_table(restore_logging: None) -> None:
    lines: list[str] = []

    code = run_demo(out=lines.append)

    output = "\n".join(lines)
    assert code == 0, output
    assert "Every deployment ended with the expected verdict." in output
    table = output.split("\nDeployments (", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert table[0].split() == ["BUILD", "ROUTE", "ENV", "TAG", "VERDICT", "COMMIT", "REASON"]
    rows = {(cells[0], cells[2]): cells[4] for cells in (line.split() for line in table[1:])}
    assert rows[("101", "dev")] == rows[("101", "staging")] == "succeeded"
    assert rows[("203", "dev")] == "superseded" and rows[("204", "dev")] == "succeeded"
    assert rows[("301", "dev")] == "failed"
    assert "#101: deployed-dev, deployed-staging" in output
    assert "Merge pull request #1" in output
