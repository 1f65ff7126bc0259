"""Free ports for the processes the devkit and the tests start: outside the kernel's range of
source ports, so that no outgoing connection takes one before its process binds it."""

from __future__ import annotations

import socket

from devkit.ports import ephemeral_range, free_port, free_port_range


def test_free_ports_lie_outside_the_ephemeral_range_and_can_be_bound() -> None:
    low, high = ephemeral_range()
    assert 0 < low <= high < 65536
    for _ in range(50):
        port = free_port()
        assert not low <= port <= high, port
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_range_is_free_throughout() -> None:
    low, high = ephemeral_range()
    base = free_port_range(10)
    assert not (low <= base + 9 and base <= high), base  # no port of it in the range
    sockets = [socket.socket() for _ in range(10)]
    try:
        for offset, s in enumerate(sockets):
            s.bind(("127.0.0.1", base + offset))
    finally:
        for s in sockets:
            s.close()
