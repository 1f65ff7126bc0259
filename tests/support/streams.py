"""Command streams for end-to-end tests, and the state they must produce.

The expected database state is computed independently of Kafka and of the
worker: the same valid commands go straight into a fresh database through the
repository, per user in order, and its digest is the one to match.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from contracts import ErrorKind
from devkit.poison import poison_payloads
from devkit.synthetic import generate_lines
from worker.infrastructure.db import create_pool
from worker.infrastructure.repository import ArtifactRepository

Header = tuple[str, bytes]


@dataclass
class Stream:
    valid: list[str]
    """Valid command lines in publish order (generator retries and extra duplicates included)."""
    poison: list[tuple[ErrorKind, bytes]] = field(default_factory=list)
    poison_key: bytes = b""
    headers: list[Header] = field(default_factory=lambda: [("trace-id", b"t-1")])
    poison_headers: list[Header] = field(default_factory=lambda: [("trace-id", b"\xff\xfe raw")])

    def records(self) -> list[tuple[bytes | None, bytes | None, list[Header]]]:
        out: list[tuple[bytes | None, bytes | None, list[Header]]] = [
            (json.loads(line)["user_id"].encode(), line.encode(), self.headers)
            for line in self.valid
        ]
        # Poison after the valid commands: the conflict needs its original ingested first
        # (same key, so same partition, so ordered after it).
        out += [(self.poison_key, value, self.poison_headers) for _, value in self.poison]
        return out

    @property
    def valid_ids(self) -> set[str]:
        return {json.loads(line)["command_id"] for line in self.valid}

    def readable_poison(self) -> list[tuple[ErrorKind, bytes, str]]:
        """Poison whose command_id and user_id parse: each must also get a rejected result."""
        out = []
        for kind, value in self.poison:
            try:
                data = json.loads(value)
                uuid.UUID(str(data["command_id"]))
                uuid.UUID(str(data["user_id"]))
            except (ValueError, TypeError, KeyError):
                continue
            out.append((kind, value, str(data["command_id"])))
        return out


def make_stream(
    n: int, *, users: int = 8, seed: int = 11, duplicates: int = 0, poison: bool = False
) -> Stream:
    lines = list(generate_lines(n, users=users, seed=seed))
    rng = random.Random(seed)
    lines += rng.sample(lines, duplicates)
    stream = Stream(valid=lines)
    if poison:
        first = json.loads(lines[0])
        stream.poison = poison_payloads(first)
        stream.poison_key = first["user_id"].encode()
    return stream


async def reference_digest(database_url: str, lines: Sequence[str], chunk: int = 200) -> str:
    pool = await create_pool(database_url, max_size=2)
    try:
        repo = ArtifactRepository(pool)
        for start in range(0, len(lines), chunk):
            replies = await repo.ingest_batch(list(lines[start : start + chunk]))
            errors = [r for r in replies if not isinstance(r, dict)]
            assert not errors, errors
        return await repo.state_digest()
    finally:
        await pool.close()
