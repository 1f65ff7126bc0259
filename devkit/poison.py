"""Poison messages of every SPEC §6 kind, for tests and demos (pure, no I/O).

Each payload is derived from one valid command (its `user_id` is kept, so the
record key is meaningful, and a rejected result can name the user). The CONFLICT
payload reuses the valid command's `command_id` with another `reading_depth`: it
is poison only after the valid command itself has been ingested.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from typing import Any

from contracts import DEFAULT_EMBEDDING_DIM, ErrorKind
from devkit.synthetic import generate_commands


def poison_payloads(
    valid_command: Mapping[str, Any] | None = None,
    *,
    dim: int = DEFAULT_EMBEDDING_DIM,
    max_message_bytes: int = 1024 * 1024,
    seed: int = 7,
) -> list[tuple[ErrorKind, bytes]]:
    """(expected error kind, record value) pairs; several per kind, fresh command ids.

    Without `valid_command`, one is generated (of `dim` dimensions) from `seed`.
    """
    rnd = random.Random(seed)
    if valid_command is None:
        valid_command = next(generate_commands(1, users=1, seed=seed, dim=dim))

    def variant(**changes: Any) -> dict[str, Any]:
        command = {
            **valid_command,
            "command_id": str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
        }
        command.update(changes)
        return command

    def encode(command: Mapping[str, Any]) -> bytes:
        # allow_nan keeps Python's NaN literal: a producer bug we must survive.
        return json.dumps(command, separators=(",", ":"), allow_nan=True).encode()

    missing_url = variant()
    del missing_url["url"]
    embedding = list(valid_command["embedding"])
    base = encode(variant())
    # Padding in an unknown field keeps the JSON valid: only the size is wrong.
    oversize = variant(padding="")
    oversize["padding"] = "x" * (max_message_bytes + 1 - len(encode(oversize)))

    return [
        (ErrorKind.UNDECODABLE, b"\xff\xfe\x00 not utf-8 \xc3\x28"),
        (ErrorKind.UNDECODABLE, base[: len(base) // 2]),  # truncated JSON
        (ErrorKind.UNDECODABLE, b""),
        (ErrorKind.INVALID, b'["a JSON array, not an object"]'),
        (ErrorKind.INVALID, encode(missing_url)),
        (ErrorKind.INVALID, encode(variant(embedding=embedding[:-1]))),
        (ErrorKind.INVALID, encode(variant(embedding=[float("nan"), *embedding[1:]]))),
        (ErrorKind.INVALID, encode(variant(embedding=[0.0] * len(embedding)))),
        (ErrorKind.INVALID, encode(variant(reading_depth=1.7))),
        (ErrorKind.INVALID, encode(variant(occurred_at="2026-01-05T08:00:00"))),
        (ErrorKind.INVALID, encode(variant(url="ftp://files.example.com/a.txt"))),
        (ErrorKind.INVALID, encode(variant(user_id="not-a-uuid"))),
        (ErrorKind.UNSUPPORTED_VERSION, encode(variant(schema_version=2))),
        (ErrorKind.OVERSIZE, encode(oversize)),
        # Valid to the contract, refused by PostgreSQL: jsonb/text cannot hold NUL (22P05).
        (ErrorKind.CONSTRAINT, encode(variant(title="nul \u0000 inside"))),
        (
            ErrorKind.CONFLICT,
            encode({**valid_command, "reading_depth": _other_depth(valid_command)}),
        ),
    ]


def _other_depth(command: Mapping[str, Any]) -> float:
    depth = float(command["reading_depth"])
    return round(depth + 0.1 if depth <= 1.4 else depth - 0.1, 3)
