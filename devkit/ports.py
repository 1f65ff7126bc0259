"""Free local ports for the processes the devkit and the tests start.

Taken below (or above) the kernel's ephemeral range: a process binds its port a moment or
seconds after it was found free (a JVM much later), and meanwhile any outgoing connection on
the machine may be given a port inside that range as its source port. A Kafka node of the
tests' cluster once failed so ("Address already in use").
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Below: well-known services, and the local stack's own ports (PostgreSQL 15432, the PG 16
# suite's 15433, Kafka 19092-19097), which a restart frees for a while.
_LOWEST = 20000


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; a default else)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port_range(span: int = 1) -> int:
    """A base port with `span` consecutive free ports from it (bound, then released)."""
    low, high = ephemeral_range()
    spans = [(lo, hi) for lo, hi in ((_LOWEST, low), (high + 1, 65536)) if hi - lo > span]
    rng = random.Random()
    for _ in range(200):
        start, end = rng.choice(spans) if spans else (1024, 65536)
        base = rng.randrange(start, end - span + 1)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + span):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no range of free ports found")


def free_port() -> int:
    return free_port_range(1)
