"""Deterministic ids computed outside the database.

Ids of accepted commands come from SQL. A rejected command never reaches the
database's ledger, so its event id is derived here, from the command id and a
hash of the exact payload bytes: a redelivery gets the same id, and a conflict
(same command id, other payload) never shares the id of the original result.
"""

from __future__ import annotations

import hashlib
from uuid import UUID


def payload_hash(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def rejection_event_id(command_id: UUID, payload: bytes) -> UUID:
    seed = f"capture.rejected:{command_id}:{payload_hash(payload)}"
    return UUID(hashlib.md5(seed.encode(), usedforsecurity=False).hexdigest())
