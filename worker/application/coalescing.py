"""Lanes' database chunks gathered into fewer ingest calls while the database is busy.

Every lane calls the database as soon as it has records, so at a steady rate six lanes make
six small calls at once, and each call costs the database a fixed price (its functions'
statements started, its locks, its commit) that hardly depends on how many commands it
carries. `CoalescingStore` lets at most `max_calls` ingest calls run at once; a chunk that
comes while they run waits, and the next call carries every chunk waiting by then (up to
`max_commands`), in the order they came. A chunk waits only while `max_calls` calls run,
and one that finds a call free goes at once, alone. Nor does a call that waiting could not
make larger wait: commands that fill one (a drain's full chunks, or small ones adding up) go
at once beside the running calls, so the limit binds only while the calls are small, and a
drain calls the database as often as it would without it. With `max_wait` a chunk waits at
most that long: then it goes beside the running calls, with the chunks waiting behind it, so
a call that runs long (its index inserts, a user's locked rows up to the lock timeout) holds
the small chunks behind it that long at most.

A lane has one chunk in flight at a time, so a partition's commands still reach the database
in order; chunks of different partitions have no order between them. Each chunk gets exactly
what a call of its own would have returned: when a call of several chunks fails as a whole
(a user's rows locked too long, a value refused, a bug), each of its chunks is sent again on
its own, so one partition's locked rows or unbindable text never stalls another's (and the
locked users' chunks go alone until they pass); when the database is away, every chunk of the
call gets that error at once, as alone it would have.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from worker.application.ports import CaptureStore, IngestCommand, ResultObject
from worker.core import metrics
from worker.domain.errors import PermanentError, TransientError

Reply = list[ResultObject | PermanentError]


# Compared by identity: finding a chunk in the queue never compares commands.
@dataclass(slots=True, eq=False)
class _Chunk:
    commands: Sequence[IngestCommand]
    users: frozenset[UUID]
    reply: asyncio.Future[Reply] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    deadline: asyncio.TimerHandle | None = None


class CoalescingStore:
    """A CaptureStore that runs at most `max_calls` small ingest calls at once, a chunk
    waiting `max_wait` at most for them (see the module)."""

    def __init__(
        self,
        inner: CaptureStore,
        *,
        max_calls: int,
        max_commands: int | Callable[[], int],
        max_wait: float | None = None,
    ) -> None:
        self._inner = inner
        self._max_calls = max(1, max_calls)
        self._max_wait = max_wait
        # A number, or how to read it when a call is made (a setting that may change).
        self._max_commands = max_commands if callable(max_commands) else lambda: max_commands
        self._waiting: deque[_Chunk] = deque()
        self._running: set[asyncio.Task[None]] = set()
        # Users whose rows were locked past lock_timeout when their chunk last went alone: a
        # chunk of theirs goes alone again until it passes, so that its retries never hold
        # other partitions' chunks in a call waiting for the same lock.
        self._contended: set[UUID] = set()

    async def ingest_commands(self, commands: Sequence[IngestCommand]) -> Reply:
        if not commands:
            return []
        chunk = _Chunk(commands, frozenset(c.user_id for c in commands))
        self._waiting.append(chunk)
        self._start()
        if self._max_wait is not None and chunk in self._waiting:
            chunk.deadline = asyncio.get_running_loop().call_later(
                self._max_wait, self._overdue, chunk
            )
        # Cancelled while waiting: the chunk is dropped when its turn comes. Cancelled while
        # its call runs: the call goes on for the others; its effects are committed or not,
        # and the records come again either way (the ledger answers a repeat).
        return await chunk.reply

    async def record_rejections(self, results: Sequence[ResultObject]) -> list[ResultObject]:
        return await self._inner.record_rejections(results)

    async def system_config(self) -> Mapping[str, Any]:
        return await self._inner.system_config()

    def _start(self) -> None:
        while self._launch(self._take(full_only=len(self._running) >= self._max_calls)):
            pass

    def _overdue(self, chunk: _Chunk) -> None:
        """The chunk waited max_wait: it goes now, whatever runs (with the chunks behind it
        that fit; those before it went when theirs passed)."""
        if chunk.reply.done():  # its lane was cancelled: nothing to hurry
            return
        metrics.DB_OVERDUE_CHUNKS.inc()
        while chunk in self._waiting and self._launch(self._take(full_only=False)):
            pass

    def _launch(self, chunks: list[_Chunk]) -> bool:
        if not chunks:
            return False
        task = asyncio.create_task(self._call(chunks))
        self._running.add(task)
        task.add_done_callback(self._ended)
        return True

    def _take(self, *, full_only: bool) -> list[_Chunk]:
        """The waiting chunks, oldest first, up to max_commands (but at least one); a chunk
        of a contended user only alone. With every call slot busy, only a full call: waiting
        could not make it larger, so a drain's full chunks never queue behind the limit."""
        taken: list[_Chunk] = []
        size = 0
        most = max(1, self._max_commands())
        for chunk in list(self._waiting):
            if chunk.reply.done():  # its lane was cancelled
                self._dequeue(chunk)
                continue
            if not self._contended.isdisjoint(chunk.users):
                if taken:
                    continue  # it waits for a call of its own
                taken, size = [chunk], len(chunk.commands)
                break
            if taken and size + len(chunk.commands) > most:
                size = most  # more waits than one call holds: this one is full
                break
            taken.append(chunk)
            size += len(chunk.commands)
        if full_only and size < most:
            return []
        for chunk in taken:
            self._dequeue(chunk)
        return taken

    def _dequeue(self, chunk: _Chunk) -> None:
        self._waiting.remove(chunk)
        if chunk.deadline is not None:
            chunk.deadline.cancel()

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _call(self, chunks: list[_Chunk]) -> None:
        try:
            metrics.DB_CHUNKS_PER_CALL.observe(len(chunks))
            if len(chunks) == 1:
                await self._alone(chunks[0])
                return
            commands = [c for chunk in chunks for c in chunk.commands]
            try:
                replies = await self._inner.ingest_commands(commands)
            except TransientError as exc:
                if exc.contention:
                    await self._each_alone(chunks)
                else:  # the database is away: alone, each would fail the same way
                    for chunk in chunks:
                        _fail(chunk, exc)
                return
            except Exception:
                await self._each_alone(chunks)
                return
            start = 0
            for chunk in chunks:
                end = start + len(chunk.commands)
                _settle(chunk, replies[start:end])
                start = end
        except BaseException:
            for chunk in chunks:
                if not chunk.reply.done():
                    chunk.reply.cancel()
            raise

    async def _each_alone(self, chunks: list[_Chunk]) -> None:
        """After a shared call failed as a whole (nothing of it committed; or, when the
        connection was lost at the commit, all of it, and the ledger answers the repeat):
        each chunk again on its own, so that only the one a user's locked rows or a refused
        value belong to gets the failure."""
        for chunk in chunks:
            await self._alone(chunk)

    async def _alone(self, chunk: _Chunk) -> None:
        if chunk.reply.done():
            return
        try:
            replies = await self._inner.ingest_commands(chunk.commands)
        except Exception as exc:
            if isinstance(exc, TransientError) and exc.contention:
                self._contended |= chunk.users
            _fail(chunk, exc)
            return
        self._contended -= chunk.users
        _settle(chunk, replies)


def _settle(chunk: _Chunk, replies: Reply) -> None:
    if not chunk.reply.done():
        chunk.reply.set_result(replies)


def _fail(chunk: _Chunk, exc: Exception) -> None:
    if not chunk.reply.done():
        chunk.reply.set_exception(exc)
