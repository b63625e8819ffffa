"""The harness itself: a free port that someone else takes before the bridge binds it is not a failed test."""

from __future__ import annotations

import socket

import pytest

from . import conftest as harness
from .conftest import StackFactory


def test_a_taken_port_is_replaced_and_leaves_nothing_half_run(stack: StackFactory,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy])
        original = harness.free_port
        monkeypatch.setattr(harness, "free_port", lambda: next(ports, None) or original())
        s = stack()
    assert s.port != busy  # the bridge failed to bind the taken port and moved to another
    assert s.http.get(f"{s.url}/readyz").status_code == 200
