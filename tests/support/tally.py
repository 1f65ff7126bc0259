"""Counting what became of every record sent, against an expectation the worker had no part in.

A scenario records what it put on the command topic (`Sent`): valid command lines, and poison
with the error kinds it may be classified as. `tally` then reads everything back, from Kafka and
from the database, and counts:

    applied   valid command ids with their effect in the database (one signal row each)
    lost      valid command ids with no effect
    doubled   effects beyond one per valid command id: extra signal or ledger rows, artifact
              counters above their signal rows
    dlq       poison records dead-lettered (distinct source offsets)
    redelivered  result events and DLQ records published again for a record already
              handled: at-least-once delivery after a fault; identical copies, so harmless

and checks what the counts cannot show: the state digest equals the digest of the valid commands
ingested straight into an empty database (`reference_digest`), every valid command id has at
least one result and all its `ingested` results are byte-identical, every poison record has a
DLQ record with its original key and value and an acceptable kind, and nothing else was
dead-lettered.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from contracts import headers as H
from tests.support.kafka import Record
from tests.support.kafka_io import Header, Item, Topics, read
from tests.support.streams import reference_digest


def key_of(line: str) -> bytes:
    return str(json.loads(line)["user_id"]).encode()


def readable_command_id(value: bytes | None) -> str | None:
    """The command id a rejected result must carry: SPEC §6, "when command_id and user_id can
    be read" (JSON with both parsing as UUIDs); None when no result is due."""
    if value is None:
        return None
    try:
        data = _loads_deep(value)
        uuid.UUID(str(data["user_id"]))
        return str(uuid.UUID(str(data["command_id"])))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


#: The fields of CaptureArtifactCommand v1 (SPEC §3); everything else is ignored.
CONTRACT_FIELDS = (
    "command_id",
    "user_id",
    "url",
    "title",
    "embedding",
    "reading_depth",
    "occurred_at",
    "schema_version",
)


def contract_only(line: str) -> str:
    """The command without its unknown fields, which never reach PostgreSQL (SPEC §3)."""
    data = json.loads(line)
    return json.dumps({k: data[k] for k in CONTRACT_FIELDS if k in data})


def _loads_deep(value: bytes) -> Any:
    """json.loads with room for the deeply nested poison of the bad-input scenario."""
    try:
        return json.loads(value)
    except RecursionError:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20_000))
        try:
            return json.loads(value)
        finally:
            sys.setrecursionlimit(limit)


@dataclass
class Sent:
    """Everything a scenario put on the command topic, in publish order."""

    items: list[Item] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    """Valid command lines in publish order (repeats included): the reference input."""
    poison_kinds: dict[bytes | None, set[str]] = field(default_factory=dict)
    """Poison value -> the error kinds it may be dead-lettered with."""

    def add_valid(self, lines: Iterable[str], headers: Sequence[Header] = ()) -> list[Item]:
        added: list[Item] = []
        for line in lines:
            self.valid.append(line)
            added.append((key_of(line), line.encode(), list(headers)))
        self.items += added
        return added

    def add_poison(
        self,
        value: bytes | None,
        kinds: Iterable[str],
        *,
        key: bytes | None,
        headers: Sequence[Header] = (),
    ) -> Item:
        self.poison_kinds.setdefault(value, set()).update(kinds)
        item: Item = (key, value, list(headers))
        self.items.append(item)
        return item

    @property
    def valid_ids(self) -> set[str]:
        return {str(uuid.UUID(json.loads(line)["command_id"])) for line in self.valid}

    @property
    def poison_count(self) -> int:
        return len(self.items) - len(self.valid)


@dataclass(frozen=True)
class Summary:
    sent: int
    applied: int
    lost: int
    doubled: int
    dlq: int
    faults: int
    redelivered: int
    problems: tuple[str, ...] = ()

    def line(self) -> str:
        return (
            f"sent={self.sent} applied={self.applied} lost={self.lost} doubled={self.doubled} "
            f"dlq={self.dlq} faults={self.faults} redelivered={self.redelivered}"
        )

    def expected_line(self, sent: Sent, faults: int) -> str:
        """The line a correct run prints (redelivered may be anything: it is not a defect)."""
        return (
            f"sent={len(sent.items)} applied={len(sent.valid_ids)} lost=0 doubled=0 "
            f"dlq={sent.poison_count} faults={faults} redelivered={self.redelivered}"
        )


async def db_counts(database_url: str) -> tuple[set[str], int, int]:
    """Signal ids (SQL uses the command id), ledger rows, and the sum of artifact counters."""
    conn = await asyncpg.connect(database_url)
    try:
        signal_ids = {str(r[0]) for r in await conn.fetch("SELECT signal_id FROM capture.signals")}
        ledger = int(await conn.fetchval("SELECT count(*) FROM capture.command_ledger"))
        counters = int(
            await conn.fetchval("SELECT coalesce(sum(signal_count), 0) FROM capture.artifacts")
        )
        return signal_ids, ledger, counters
    finally:
        await conn.close()


async def digest_of(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval("SELECT capture.capture_state_digest()"))
    finally:
        await conn.close()


async def tally(
    sent: Sent,
    topics: Topics,
    *,
    database_url: str,
    reference_url: str,
    faults: int,
) -> Summary:
    """Read everything back and count (see the module docstring). `database_url` must be able to
    read the tables (a superuser DSN), `reference_url` an empty migrated database."""
    problems: list[str] = []
    commands = await read(topics, topics.commands)
    results = await read(topics, topics.results)
    dlq = await read(topics, topics.dlq)

    # The command topic holds exactly what the scenario sent (guards the test itself).
    if Counter(r.value for r in commands) != Counter(v for _, v, _ in sent.items):
        problems.append(f"command topic holds {len(commands)} records, sent {len(sent.items)}")

    valid_values = {line.encode() for line in sent.valid}
    poison_at: dict[tuple[int, int], Record] = {
        (r.partition, r.offset): r for r in commands if r.value not in valid_values
    }
    position = {(r.partition, r.offset): r for r in commands}

    # -- dead letters: one per poison record, original bytes, an acceptable kind ---------------
    copies: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for record in dlq:
        headers = dict(record.headers)
        try:
            source = (int(headers[H.SOURCE_PARTITION]), int(headers[H.SOURCE_OFFSET]))
        except (KeyError, ValueError):
            problems.append(f"DLQ record without source coordinates: {record.headers!r:.200}")
            continue
        copies[source].append(record)
        original = position.get(source)
        if original is None or source not in poison_at:
            problems.append(f"a valid command was dead-lettered: {source} {headers}")
            continue
        kind = headers.get(H.ERROR_KIND, b"").decode()
        if kind not in sent.poison_kinds.get(original.value, set()):
            problems.append(
                f"{source}: kind {kind!r}, expected one of "
                f"{sorted(sent.poison_kinds.get(original.value, set()))}: "
                f"{headers.get(H.ERROR_MESSAGE, b'')!r:.200} value {original.value!r:.120}"
            )
        dropped = any(k == "capture.value.dropped" for k, _ in record.headers)
        if record.key != original.key or (record.value != original.value and not dropped):
            problems.append(f"{source}: DLQ record does not carry the original key and value")
        if record.headers[: len(original.headers)] != original.headers:
            problems.append(f"{source}: original headers not kept first")
    missing = sorted(set(poison_at) - set(copies))
    if missing:
        problems.append(f"{len(missing)} poison records never dead-lettered, e.g. {missing[:5]}")
    for source, recs in copies.items():
        # A copy after a redelivery differs only in capture.failed_at.
        shapes = {
            (r.key, r.value, tuple(h for h in r.headers if h[0] != H.FAILED_AT)) for r in recs
        }
        if len(shapes) > 1:
            problems.append(f"{source}: {len(recs)} DLQ records that differ")
    dlq_redelivered = sum(len(recs) - 1 for recs in copies.values())

    # -- results: at least one per delivered record, identical per command id -------------------
    due: Counter[str] = Counter()
    for r in commands:
        cid = readable_command_id(r.value)
        if cid is not None:
            due[cid] += 1
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    raw_by_id: dict[str, set[bytes]] = defaultdict(set)
    for r in results:
        assert r.value is not None
        result = json.loads(r.value)
        by_id[result["command_id"]].append(result)
        if result["status"] == "ingested":
            raw_by_id[result["command_id"]].add(r.value)
    valid_ids = sent.valid_ids
    no_result = [cid for cid in valid_ids if not raw_by_id.get(cid)]
    if no_result:
        problems.append(f"{len(no_result)} valid commands without an ingested result")
    differing = [cid for cid, values in raw_by_id.items() if len(values) > 1]
    if differing:
        problems.append(f"{len(differing)} commands with differing results, e.g. {differing[0]}")
    unexpected = set(by_id) - set(due)
    if unexpected:
        problems.append(f"results for {len(unexpected)} command ids never sent")
    short = {cid: n for cid, n in due.items() if len(by_id.get(cid, ())) < n}
    if short:
        problems.append(f"{len(short)} command ids with fewer results than deliveries")
    results_redelivered = max(0, len(results) - sum(due.values()))

    # -- the database: one effect per valid command id, the same state as the reference ---------
    signal_ids, ledger, counters = await db_counts(database_url)
    applied = len(valid_ids & signal_ids)
    lost = len(valid_ids - signal_ids)
    doubled = (
        (len(signal_ids) - applied) + max(0, ledger - applied) + max(0, counters - len(signal_ids))
    )
    expected_digest = await reference_digest(reference_url, [contract_only(v) for v in sent.valid])
    if await digest_of(database_url) != expected_digest:
        problems.append("state digest differs from the reference (valid commands ingested alone)")

    return Summary(
        sent=len(sent.items),
        applied=applied,
        lost=lost,
        doubled=doubled,
        dlq=len(copies.keys() & poison_at.keys()),
        faults=faults,
        redelivered=results_redelivered + dlq_redelivered,
        problems=tuple(problems),
    )
