"""CoalescingStore: at most max_calls ingest calls at once; the chunks that wait go together,
each gets what a call of its own would have returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from contracts import ErrorKind
from tests.support.db_commands import typed
from tests.support.fakes import OTHER_USER, USER, FakeStore, command
from worker.application.coalescing import CoalescingStore, Reply
from worker.application.ports import IngestCommand, ResultObject
from worker.core import metrics
from worker.domain.errors import PermanentError, TransientError


class GatedStore(FakeStore):
    """A FakeStore whose calls wait until the test opens their gate, one gate per call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gates: list[asyncio.Event] = []
        self.started: list[list[IngestCommand]] = []  # each call's commands, as it starts
        self.running = 0
        self.most_running = 0
        self.down = False  # every call fails as when the database cannot be reached

    async def ingest_commands(
        self, commands: Sequence[IngestCommand]
    ) -> list[ResultObject | PermanentError]:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.append(list(commands))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await gate.wait()
            if self.down:
                raise TransientError("connection refused")
            return await super().ingest_commands(commands)
        finally:
            self.running -= 1

    async def let_through(
        self, replies: Sequence[asyncio.Future[Any]], first_gate: int, timeout_s: float = 10.0
    ) -> None:
        """Open each call's gate in turn, from `first_gate`, until every reply has come."""

        async def open_gates() -> None:
            opened = first_gate
            while not all(r.done() for r in replies):
                if opened < len(self.gates):
                    self.gates[opened].set()
                    opened += 1
                await asyncio.sleep(0)

        await asyncio.wait_for(open_gates(), timeout_s)


def chunk(n: int, *, user: str = USER, url: str = "https://example.com/a") -> list[IngestCommand]:
    return [typed(command(user_id=user, url=url)) for _ in range(n)]


def ids(commands: Sequence[IngestCommand]) -> list[str]:
    return [str(c.command_id) for c in commands]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout_s)


async def one_call_running(
    max_commands: int | Callable[[], int] = 100,
    max_wait: float | None = None,
    **inner_options: Any,
) -> tuple[GatedStore, CoalescingStore, asyncio.Future[Reply]]:
    """A store of one call at a time (over a GatedStore with `inner_options`), with a call of
    one command held open."""
    inner = GatedStore(**inner_options)
    store = CoalescingStore(inner, max_calls=1, max_commands=max_commands, max_wait=max_wait)
    busy = asyncio.ensure_future(store.ingest_commands(chunk(1)))
    await until(lambda: len(inner.gates) == 1)
    return inner, store, busy


def overdue_chunks() -> float:
    return metrics.REGISTRY.get_sample_value("capture_db_overdue_chunks_total") or 0.0


def chunks_per_call() -> tuple[float, float]:
    """(calls, chunks) observed so far by capture_db_chunks_per_call."""
    calls = metrics.REGISTRY.get_sample_value("capture_db_chunks_per_call_count")
    chunks = metrics.REGISTRY.get_sample_value("capture_db_chunks_per_call_sum")
    return calls or 0.0, chunks or 0.0


async def test_an_idle_store_sends_a_chunk_at_once_alone() -> None:
    inner = GatedStore()
    store = CoalescingStore(inner, max_calls=2, max_commands=100)
    first = chunk(3)
    reply = asyncio.ensure_future(store.ingest_commands(first))
    await until(lambda: len(inner.gates) == 1)
    inner.gates[0].set()
    assert [r["command_id"] for r in await reply] == ids(first)
    assert inner.started == [first]
    assert await store.ingest_commands([]) == []
    assert len(inner.started) == 1


async def test_chunks_that_wait_go_together_in_the_order_they_came() -> None:
    inner = GatedStore()
    store = CoalescingStore(inner, max_calls=1, max_commands=100)
    calls_before, chunks_before = chunks_per_call()
    first, second, third = chunk(2), chunk(3, user=OTHER_USER), chunk(1)
    a = asyncio.ensure_future(store.ingest_commands(first))
    await until(lambda: len(inner.gates) == 1)
    b = asyncio.ensure_future(store.ingest_commands(second))
    c = asyncio.ensure_future(store.ingest_commands(third))
    await asyncio.sleep(0.01)
    assert len(inner.gates) == 1, "a second call started while max_calls were running"
    inner.gates[0].set()
    await until(lambda: len(inner.gates) == 2)
    assert inner.started[0] == first
    inner.gates[1].set()
    replies = await asyncio.gather(a, b, c)
    assert inner.started[1] == second + third
    for commands, reply in zip((first, second, third), replies, strict=True):
        assert [r["command_id"] for r in reply] == ids(commands)
    assert inner.most_running == 1
    calls, chunks = chunks_per_call()
    assert (calls - calls_before, chunks - chunks_before) == (2, 3)


async def test_max_calls_run_at_once_and_no_more() -> None:
    inner = GatedStore()
    store = CoalescingStore(inner, max_calls=2, max_commands=100)
    replies = [asyncio.ensure_future(store.ingest_commands(chunk(1))) for _ in range(5)]
    await until(lambda: len(inner.gates) == 2)
    await asyncio.sleep(0.01)
    assert len(inner.gates) == 2
    inner.gates[0].set()
    await until(lambda: len(inner.gates) == 3)
    assert len(inner.started[2]) == 3  # the three waiting, in one call
    for gate in inner.gates:
        gate.set()
    assert all(len(r) == 1 for r in await asyncio.gather(*replies))
    assert inner.most_running == 2
    assert sorted(len(c) for c in inner.started) == [1, 1, 3]


async def test_a_call_carries_at_most_max_commands_but_a_larger_chunk_goes_alone() -> None:
    inner, store, busy = await one_call_running(5)
    replies = [asyncio.ensure_future(store.ingest_commands(chunk(n))) for n in (3, 1, 2, 7)]
    await inner.let_through([busy, *replies], 0)
    # 3 + 1 fit in one call, the 2 would not; the 7 goes alone.
    assert [len(c) for c in inner.started] == [1, 3 + 1, 2, 7]
    assert [len(r.result()) for r in replies] == [3, 1, 2, 7]


async def test_commands_that_fill_a_call_go_at_once_whatever_runs() -> None:
    inner, store, busy = await one_call_running(5)
    small = asyncio.ensure_future(store.ingest_commands(chunk(3)))
    await asyncio.sleep(0.01)
    assert len(inner.gates) == 1, "a call that could still grow did not wait"
    # Two more fill a call with the 3: it goes beside the busy one.
    filling = asyncio.ensure_future(store.ingest_commands(chunk(2)))
    await until(lambda: len(inner.gates) == 2)
    # A full chunk goes at once, as a drain's do; so does one larger than a call.
    full = [asyncio.ensure_future(store.ingest_commands(chunk(n))) for n in (5, 6)]
    await until(lambda: len(inner.gates) == 4)
    # A chunk waiting when the next in line would not fit with it cannot grow: it goes too.
    head = asyncio.ensure_future(store.ingest_commands(chunk(4)))
    await asyncio.sleep(0.01)
    assert len(inner.gates) == 4
    after = asyncio.ensure_future(store.ingest_commands(chunk(2)))
    await until(lambda: len(inner.gates) == 5)
    assert [len(c) for c in inner.started] == [1, 3 + 2, 5, 6, 4]
    replies = [busy, small, filling, *full, head, after]
    await inner.let_through(replies, 0)
    assert [len(r.result()) for r in replies] == [1, 3, 2, 5, 6, 4, 2]
    assert inner.most_running == 5


async def test_a_chunk_waits_at_most_max_wait_then_goes_with_those_behind_it() -> None:
    """A call that runs long (an index's inserts) holds the small chunks behind it that long
    at most."""
    inner, store, busy = await one_call_running(max_wait=0.2)
    overdue_before = overdue_chunks()
    loop = asyncio.get_running_loop()
    sent = loop.time()
    overdue = asyncio.ensure_future(store.ingest_commands(chunk(2)))
    behind = asyncio.ensure_future(store.ingest_commands(chunk(1, user=OTHER_USER)))
    await until(lambda: len(inner.gates) == 2)
    # asyncio may fire a timer up to its clock's resolution early.
    assert loop.time() - sent >= 0.19, "a chunk went before its wait while the limit's call ran"
    assert [len(c) for c in inner.started] == [1, 2 + 1]
    assert inner.running == 2, "the overdue chunk waited for the running call after all"
    assert overdue_chunks() - overdue_before == 1  # the one behind it was not overdue
    await inner.let_through([busy, overdue, behind], 0)
    assert [len(r.result()) for r in (overdue, behind)] == [2, 1]

    # A chunk that a call took before its wait was over goes once, not again when it ends.
    running = asyncio.ensure_future(store.ingest_commands(chunk(1)))
    await until(lambda: len(inner.gates) == 3)
    taken = asyncio.ensure_future(store.ingest_commands(chunk(3)))
    inner.gates[2].set()
    await until(lambda: len(inner.gates) == 4)
    inner.gates[3].set()
    await asyncio.gather(running, taken)
    await asyncio.sleep(0.3)
    assert [len(c) for c in inner.started] == [1, 3, 1, 3]
    assert overdue_chunks() - overdue_before == 1


LOCKED = "9a1d1f4e-1c2b-4f6a-8d3e-0b5c7a9e2f31"


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        # the user's rows locked past lock_timeout
        ({"user": LOCKED}, TransientError),
        # refused as a whole, e.g. a text PostgreSQL cannot bind
        ({"url": "https://example.com/bug"}, PermanentError),
    ],
    ids=["transient", "refused-as-a-whole"],
)
async def test_a_call_of_several_chunks_that_fails_sends_each_again_alone(
    failure: dict[str, str], expected: type[Exception]
) -> None:
    """One partition's locked user (or unbindable text) must not stall or refuse another's."""
    refusal = PermanentError(ErrorKind.CONSTRAINT, "invalid byte sequence", sqlstate="22021")
    inner, store, busy = await one_call_running(locked={LOCKED}, bug=refusal)
    first = inner.started[0]
    good = chunk(2, user=OTHER_USER)
    bad = chunk(1, **failure)
    also_good = chunk(1)
    replies = [asyncio.ensure_future(store.ingest_commands(c)) for c in (good, bad, also_good)]
    await asyncio.sleep(0)
    await inner.let_through([busy, *replies], 0)
    await busy
    outcomes = await asyncio.gather(*replies, return_exceptions=True)
    # The merged call, then each chunk alone, in the order they came.
    assert inner.started[1] == good + bad + also_good
    assert inner.started[2:] == [good, bad, also_good]
    assert [r["command_id"] for r in outcomes[0]] == ids(good)
    assert isinstance(outcomes[1], expected)
    assert [r["command_id"] for r in outcomes[2]] == ids(also_good)
    assert inner.ingested == ids(first) + ids(good) + ids(also_good)


async def test_a_lane_cancelled_while_waiting_sends_nothing() -> None:
    inner, store, busy = await one_call_running()
    dropped = asyncio.ensure_future(store.ingest_commands(chunk(2)))
    kept = chunk(1)
    after = asyncio.ensure_future(store.ingest_commands(kept))
    await asyncio.sleep(0)
    dropped.cancel()
    inner.gates[0].set()
    await until(lambda: len(inner.gates) == 2)
    inner.gates[1].set()
    await asyncio.gather(busy, after)
    assert dropped.cancelled()
    assert inner.started[1] == kept


async def test_a_lane_cancelled_while_its_call_runs_leaves_the_others_their_replies() -> None:
    inner, store, busy = await one_call_running()
    first, second = chunk(1), chunk(2)
    cancelled = asyncio.ensure_future(store.ingest_commands(first))
    other = asyncio.ensure_future(store.ingest_commands(second))
    inner.gates[0].set()
    await until(lambda: len(inner.gates) == 2)
    cancelled.cancel()
    inner.gates[1].set()
    await busy
    assert [r["command_id"] for r in await other] == ids(second)
    assert inner.started[1] == first + second
    # The next chunk is not held up by the abandoned one.
    inner.gates.clear()
    late = asyncio.ensure_future(store.ingest_commands(chunk(1)))
    await until(lambda: len(inner.gates) == 1)
    inner.gates[0].set()
    assert len(await late) == 1


async def test_when_the_database_is_away_every_chunk_of_a_shared_call_fails_at_once() -> None:
    """Sent again alone, each would only fail the same way, one after the other."""
    inner, store, busy = await one_call_running()
    waiting = [asyncio.ensure_future(store.ingest_commands(chunk(2))) for _ in range(3)]
    await asyncio.sleep(0)
    inner.gates[0].set()
    await busy
    await until(lambda: len(inner.gates) == 2)
    inner.down = True
    inner.gates[1].set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, TransientError) for o in outcomes)
    assert len(inner.started) == 2  # the shared call only


async def test_a_user_whose_rows_were_locked_goes_alone_until_its_chunk_passes() -> None:
    """Its retries must not hold other partitions' chunks in a call that waits for the lock."""
    inner = GatedStore(locked={LOCKED})
    store = CoalescingStore(inner, max_calls=1, max_commands=100)

    async def shared_call(*chunks: list[IngestCommand]) -> list[object]:
        """Hold a call open, queue `chunks` behind it, then let every call through."""
        gates = len(inner.gates)
        busy = asyncio.ensure_future(store.ingest_commands(chunk(1)))
        await until(lambda: len(inner.gates) == gates + 1)
        replies = [asyncio.ensure_future(store.ingest_commands(c)) for c in chunks]
        await asyncio.sleep(0)
        await inner.let_through(replies, gates)
        await busy
        return list(await asyncio.gather(*replies, return_exceptions=True))

    locked, other = chunk(1, user=LOCKED), chunk(2, user=OTHER_USER)
    first = await shared_call(locked, other)
    assert isinstance(first[0], TransientError) and isinstance(first[1], list)
    assert inner.started[1:] == [locked + other, locked, other]  # shared, then each alone

    # Its retry goes alone, ahead of the others, which share a call of their own.
    again, one, two = chunk(1, user=LOCKED), chunk(1), chunk(1, user=OTHER_USER)
    start = len(inner.started)
    second = await shared_call(again, one, two)
    assert isinstance(second[0], TransientError)
    assert inner.started[start + 1 :] == [again, one + two]

    # Once its chunk passes, the user shares calls again.
    inner.locked = set()
    third = await shared_call(chunk(1, user=LOCKED))
    assert isinstance(third[0], list)
    last, more = chunk(1, user=LOCKED), chunk(1)
    start = len(inner.started)
    fourth = await shared_call(last, more)
    assert all(isinstance(r, list) for r in fourth)
    assert inner.started[start + 1 :] == [last + more]


@pytest.mark.parametrize(("most", "calls"), [(6, [[3, 3]]), (5, [[3], [3]])])
async def test_the_most_commands_a_call_carries_is_read_when_the_call_is_made(
    most: int, calls: list[list[int]]
) -> None:
    """`worker.db_batch_size` may change at run time: the size of the moment counts."""
    limit = [100]
    inner, store, busy = await one_call_running(lambda: limit[0])
    waiting = [asyncio.ensure_future(store.ingest_commands(chunk(3))) for _ in range(2)]
    await asyncio.sleep(0)
    limit[0] = most
    await inner.let_through(waiting, 0)
    await busy
    assert [len(c) for c in inner.started[1:]] == [sum(sizes) for sizes in calls]
