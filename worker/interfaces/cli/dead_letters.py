"""Dead letters as the `dlq` commands see them, and how one is sent back (pure, no I/O)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts import headers as H

Header = tuple[str, bytes]


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the DLQ topic."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    def header(self, name: str) -> str | None:
        """The last value of a header (the worker's, when a producer used the same name)."""
        found = None
        for key, raw in self.headers:
            if key == name:
                found = _text(raw)
        return found

    @property
    def where(self) -> str:
        return f"{self.partition}@{self.offset}"

    @property
    def kind(self) -> str:
        return self.header(H.ERROR_KIND) or "unknown"

    @property
    def source_topic(self) -> str | None:
        return self.header(H.SOURCE_TOPIC)

    @property
    def source_partition(self) -> int | None:
        text = self.header(H.SOURCE_PARTITION)
        return int(text) if text is not None and text.isdigit() else None

    @property
    def failed_at(self) -> datetime | None:
        text = self.header(H.FAILED_AT)
        try:
            return datetime.fromisoformat(text) if text else None
        except ValueError:
            return None

    @property
    def redrive_count(self) -> int:
        text = self.header(H.REDRIVE_COUNT)
        return int(text) if text is not None and text.isdigit() else 0

    @property
    def value_dropped(self) -> bool:
        return self.header(H.VALUE_DROPPED) is not None

    @property
    def user(self) -> str:
        # The key is the producer's: the user id of a command (SPEC: keyed by user_id).
        return _text(self.key)

    def original_headers(self) -> list[Header]:
        """The producer's headers, in their order: without anything capture-worker added."""
        return [(k, v) for k, v in self.headers if k not in H.ADDED_BY_WORKER]

    def redrive_headers(self, now: datetime) -> list[Header]:
        return [
            *self.original_headers(),
            (H.REDRIVE_COUNT, str(self.redrive_count + 1).encode()),
            (H.REDRIVE_AT, now.astimezone(UTC).isoformat().encode()),
            (H.REDRIVE_FROM, self.where.encode()),
        ]


def parse_where(text: str) -> tuple[int | None, int]:
    """`--offset` values: `OFFSET` (any partition) or `PARTITION@OFFSET`."""
    partition, _, offset = text.rpartition("@")
    try:
        return (int(partition) if partition else None), int(offset)
    except ValueError as exc:
        raise ValueError(f"{text!r}: expected OFFSET or PARTITION@OFFSET") from exc


@dataclass(frozen=True, slots=True)
class Selection:
    """The `--kind`, `--user`, `--since`, `--offset` filters; all given ones must match."""

    kinds: frozenset[str] = frozenset()
    user: str | None = None
    since: datetime | None = None
    offsets: frozenset[tuple[int | None, int]] = frozenset()

    def accept(self, letter: DeadLetter) -> bool:
        if self.kinds and letter.kind not in self.kinds:
            return False
        if self.user is not None and letter.user.lower() != self.user.lower():
            return False
        if self.since is not None:
            failed = letter.failed_at
            if failed is None or failed < self.since:
                return False
        if self.offsets:
            return (letter.partition, letter.offset) in self.offsets or (
                None,
                letter.offset,
            ) in self.offsets
        return True


@dataclass
class KindStats:
    count: int = 0
    source_partitions: Counter[int] = field(default_factory=Counter)
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None

    def add(self, letter: DeadLetter) -> None:
        self.count += 1
        source = letter.source_partition
        if source is not None:
            self.source_partitions[source] += 1
        failed = letter.failed_at
        if failed is not None:
            if self.first_failed_at is None or failed < self.first_failed_at:
                self.first_failed_at = failed
            if self.last_failed_at is None or failed > self.last_failed_at:
                self.last_failed_at = failed

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "source_partitions": {str(p): n for p, n in sorted(self.source_partitions.items())},
            "first_failed_at": self.first_failed_at.isoformat() if self.first_failed_at else None,
            "last_failed_at": self.last_failed_at.isoformat() if self.last_failed_at else None,
        }


def histogram(letters: Iterable[DeadLetter]) -> dict[str, KindStats]:
    """Per `capture.error.kind`, sorted by kind."""
    stats: dict[str, KindStats] = {}
    for letter in letters:
        stats.setdefault(letter.kind, KindStats()).add(letter)
    return dict(sorted(stats.items()))


def partitions_text(counts: Counter[int]) -> str:
    return " ".join(f"{p}:{n}" for p, n in sorted(counts.items()))


@dataclass
class RedrivePlan:
    """What one pass over the DLQ decided, record by record."""

    examined: int = 0
    send: list[DeadLetter] = field(default_factory=list)
    over_limit: list[DeadLetter] = field(default_factory=list)
    """The loop guard: already redriven --max-redrives times."""
    unsendable: list[tuple[DeadLetter, str]] = field(default_factory=list)

    def consider(self, letter: DeadLetter, selection: Selection, max_redrives: int) -> bool:
        """True when the record is to be sent."""
        self.examined += 1
        if not selection.accept(letter):
            return False
        if letter.redrive_count >= max_redrives:
            self.over_limit.append(letter)
            return False
        reason = unsendable_reason(letter)
        if reason is not None:
            self.unsendable.append((letter, reason))
            return False
        self.send.append(letter)
        return True


def unsendable_reason(letter: DeadLetter) -> str | None:
    if letter.value_dropped:
        return "its value was too large for the DLQ and was dropped"
    if not letter.source_topic:
        return f"no {H.SOURCE_TOPIC} header"
    return None


def target_partition(letter: DeadLetter, partitions: Sequence[int]) -> int | None:
    """The partition it came from, when the topic still has it (keeps the user's order)."""
    source = letter.source_partition
    return source if source is not None and source in partitions else None
