"""Scenario 6: bad input at scale. Hypothesis generates the payloads: random bytes, random JSON,
near-valid commands with one field broken, and valid commands with unusual but legal values;
a few boundaries are added by hand (1 MiB exactly and 1 MiB + 1 byte, 3 MiB, no value at all,
JSON nested deeper than the contract's limit, and at it).

Every payload is sent keyed by a user whose valid commands follow it in the same partition, so
a payload that blocked its partition would leave those behind it unprocessed. The worker must
never crash or loop on one: each gets its DLQ record with an acceptable kind (or, when valid,
is ingested), and the valid commands all take effect exactly once.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import strategies as st

from contracts import ErrorKind
from contracts import headers as H
from contracts.commands import MAX_NESTING_DEPTH
from tests.fixtures.workers import WorkerSetup
from tests.support.examples import examples
from tests.support.kafka_io import feed, read
from tests.support.scenario import (
    POISON_HEADERS,
    VALID_HEADERS,
    Scenario,
    assert_alive,
    ready,
    topics_of,
    wait_done,
)
from tests.support.streams import make_stream
from tests.support.tally import Sent

pytestmark = pytest.mark.reliability

SEED = 6611
MIB = 1024 * 1024
BATCHES = 6  # hypothesis examples; each one is a batch of payloads
FIELDS = ("command_id", "user_id", "url", "embedding", "reading_depth", "occurred_at")

UNDECODABLE = ErrorKind.UNDECODABLE.value
INVALID = ErrorKind.INVALID.value
VERSION = ErrorKind.UNSUPPORTED_VERSION.value
OVERSIZE = ErrorKind.OVERSIZE.value
CONSTRAINT = ErrorKind.CONSTRAINT.value

#: One generated payload: whose partition it goes to, its bytes, and the kinds it may be
#: dead-lettered with (None: it is a valid command and must be ingested).
Case = tuple[int, bytes | None, frozenset[str] | None, list[tuple[str, bytes]]]


def encode(command: dict[str, Any]) -> bytes:
    # allow_nan: NaN and Infinity literals are what a careless producer sends.
    return json.dumps(command, separators=(",", ":"), allow_nan=True).encode()


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    )
    return st.recursive(
        scalars | text,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4)
        ),
        max_leaves=12,
    )


any_text = st.text(max_size=20)
#: PostgreSQL's text cannot hold U+0000: in the title, such a command is refused by the database
#: (constraint). In an unknown field it is legal (SPEC §3: unknown fields are ignored, and only
#: the contract's fields reach PostgreSQL).
no_nul_text = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
    max_size=20,
)
not_a_uuid = st.one_of(
    st.integers(), st.none(), st.booleans(), st.text(max_size=12), st.lists(st.integers())
)
#: Legal in a URL path or query, SQL and shell metacharacters included; no whitespace.
url_chars = st.text(alphabet="abcxyzABC019-._~!$&'()*+,;=:@/%?\"`|<>{}\\^", min_size=0, max_size=60)

# field -> strategy of the broken value -> the kinds it may be refused with.
BREAKAGES: list[tuple[str, st.SearchStrategy[Any], frozenset[str]]] = [
    ("command_id", not_a_uuid, frozenset({INVALID})),
    ("user_id", not_a_uuid, frozenset({INVALID})),
    ("user_id", st.uuids().map(str), frozenset({INVALID})),  # not the record key
    (
        "url",
        st.sampled_from(
            ["ftp://files.example.com/a", "javascript:alert(1)", "file:///etc/passwd", "", "//x"]
        )
        | url_chars.map(lambda s: "https://host.example.com/a b" + s)  # whitespace
        | st.integers(2049 - 26, 2300).map(lambda n: "https://long.example.com/" + "a" * n)
        | not_a_uuid.filter(lambda v: not isinstance(v, str)),
        frozenset({INVALID}),
    ),
    ("title", st.text(min_size=513, max_size=600), frozenset({INVALID})),
    ("title", st.integers() | st.lists(st.text(), max_size=2), frozenset({INVALID})),
    ("title", st.text(max_size=20).map(lambda s: s + "\x00"), frozenset({CONSTRAINT})),
    (
        "embedding",
        st.lists(st.floats(-1, 1), max_size=383) | st.lists(st.floats(-1, 1), min_size=385),
        frozenset({INVALID}),
    ),
    ("embedding", st.just([0.0] * 384), frozenset({INVALID})),
    (
        "embedding",
        st.tuples(st.integers(0, 383), st.sampled_from([math.nan, math.inf, -math.inf])),
        frozenset({INVALID}),
    ),
    ("embedding", st.text(max_size=10) | st.none(), frozenset({INVALID})),
    (
        "reading_depth",
        st.floats(min_value=1.5, exclude_min=True, allow_infinity=False)
        | st.floats(max_value=-1e-9, allow_infinity=False)  # -0.0 would be valid
        | st.sampled_from([math.nan, math.inf, "0.5", None]),
        frozenset({INVALID}),
    ),
    (
        "occurred_at",
        st.sampled_from(["2026-01-05T08:00:00", "yesterday", "2026-13-40T99:00:00Z", ""])
        | st.integers()
        | st.none(),
        frozenset({INVALID}),
    ),
    ("schema_version", st.integers().filter(lambda v: v != 1), frozenset({VERSION})),
    # A number equal to an integer is that version (1.0 is 1, as in SQL); null is not absent.
    ("schema_version", st.integers().map(float).filter(lambda v: v != 1), frozenset({VERSION})),
    ("schema_version", st.none(), frozenset({VERSION})),
    (
        "schema_version",
        st.text(max_size=3) | st.floats().filter(lambda v: not v.is_integer()),
        frozenset({INVALID}),
    ),
]
KNOWN = {*FIELDS, "title", "schema_version"}


@st.composite
def near_valid(draw: st.DrawFn, base: dict[str, Any]) -> tuple[bytes, frozenset[str]]:
    """The base command with a fresh id and exactly one field broken (or missing)."""
    command = {**base, "command_id": str(draw(st.uuids()))}
    if draw(st.integers(0, 9)) == 0:
        field = draw(st.sampled_from(FIELDS))
        del command[field]
        return encode(command), frozenset({INVALID})
    field, values, kinds = draw(st.sampled_from(BREAKAGES))
    value = draw(values)
    if field == "embedding" and isinstance(value, tuple):  # one non-finite number
        index, bad = value
        value = list(base["embedding"])
        value[index] = bad
    command[field] = value
    return encode(command), kinds


@st.composite
def legal(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """A valid command with unusual values: it must be ingested like any other."""
    command = {**base, "command_id": str(draw(st.uuids()))}
    choice = draw(st.integers(0, 5))
    if choice == 0:
        extra = any_text.filter(lambda k: k not in KNOWN)
        command.update(draw(st.dictionaries(extra, json_values(any_text), max_size=4)))
    elif choice == 5:  # an unknown field PostgreSQL could not hold, nested within the limit
        command["extension"] = "\x00" + draw(any_text)
        command["nested"] = [[[{"a": [None]}]]] * draw(st.integers(1, 3))
    elif choice == 1:
        command["title"] = draw(no_nul_text.map(lambda t: (t * 30)[:512]))
    elif choice == 2:
        host = draw(st.sampled_from(["Example.COM", "news.example.org:8443", "x.example.net:443"]))
        command["url"] = f"https://{host}/{draw(url_chars)}#{draw(url_chars)}"
    elif choice == 3:
        command["reading_depth"] = draw(st.sampled_from([0.0, 1.5, 1e-300, 0.6]))
        command.pop("title", None)
        command.pop("schema_version", None)
    else:
        offset = draw(st.sampled_from(["+05:30", "-11:00", "Z", "+00:00"]))
        command["occurred_at"] = base["occurred_at"][:19] + offset
    return encode(command)


def cases(bases: list[dict[str, Any]]) -> st.SearchStrategy[Case]:
    users = st.integers(0, len(bases) - 1)
    headers = st.lists(
        st.tuples(st.text(max_size=8), st.binary(max_size=16)), max_size=2
    ) | st.just(POISON_HEADERS)

    @st.composite
    def case(draw: st.DrawFn) -> Case:
        user = draw(users)
        kind = draw(st.sampled_from(["bytes", "json", "near", "near", "near", "legal"]))
        if kind == "bytes":
            value, kinds = draw(st.binary(max_size=300)), frozenset({UNDECODABLE, INVALID})
        elif kind == "json":
            value = json.dumps(draw(json_values(any_text))).encode()
            kinds = frozenset({INVALID})
        elif kind == "near":
            value, kinds = draw(near_valid(bases[user]))
        else:
            return user, draw(legal(bases[user])), None, VALID_HEADERS
        return user, value, kinds, draw(headers)

    return case()


def generate(bases: list[dict[str, Any]]) -> list[list[Case]]:
    """BATCHES batches of cases, the same on every run (derandomized, no example database)."""
    return examples(st.lists(cases(bases), min_size=15, max_size=30), BATCHES)


def padded(base: dict[str, Any], size: int) -> bytes:
    """A valid command of exactly `size` bytes (the padding is an unknown field)."""
    command = {**base, "command_id": str(uuid.uuid4()), "padding": ""}
    command["padding"] = "x" * (size - len(encode(command)))
    value = encode(command)
    assert len(value) == size
    return value


def boundaries(bases: list[dict[str, Any]]) -> list[Case]:
    base = bases[0]
    deep = b"[" * 5000 + b"]" * 5000
    deep_with_ids = json.dumps({**base, "command_id": str(uuid.uuid4()), "x": 0}).encode()
    deep_with_ids = deep_with_ids.replace(b'"x":0', b'"x":' + deep)
    limit = MAX_NESTING_DEPTH
    at_limit = json.dumps({**base, "command_id": str(uuid.uuid4()), "x": 0}).encode()
    at_limit = at_limit.replace(b'"x":0', b'"x":' + b"[" * limit + b"]" * limit)
    return [
        (0, padded(base, MIB), None, VALID_HEADERS),  # the limit itself is allowed
        (0, padded(base, MIB + 1), frozenset({OVERSIZE}), POISON_HEADERS),
        # Too big even for the worker's producer: the DLQ record keeps headers, not the value.
        (0, padded(base, 3 * MIB), frozenset({OVERSIZE}), POISON_HEADERS),
        (1, None, frozenset({UNDECODABLE}), POISON_HEADERS),
        (1, deep, frozenset({INVALID}), POISON_HEADERS),
        # Deeper than the documented limit: invalid, and its result carries its ids (tally).
        (2, deep_with_ids, frozenset({INVALID}), POISON_HEADERS),
        (2, at_limit, None, VALID_HEADERS),  # at the limit, in an unknown field: ingested
        # One of each kind whatever the generator drew, so the kinds asserted below are there.
        (
            3,
            encode({**bases[3], "command_id": str(uuid.uuid4()), "schema_version": 2}),
            frozenset({VERSION}),
            POISON_HEADERS,
        ),
        (
            3,
            encode({**bases[3], "command_id": str(uuid.uuid4()), "title": "nul \x00"}),
            frozenset({CONSTRAINT}),
            POISON_HEADERS,
        ),
        # U+0000 in an unknown field: ignored like the field itself (SPEC §3), so ingested.
        (
            3,
            encode({**bases[3], "command_id": str(uuid.uuid4()), "note": "nul \x00"}),
            None,
            VALID_HEADERS,
        ),
    ]


async def test_generated_bad_input_is_classified_and_blocks_nothing(
    worker_setup: WorkerSetup,
    fresh_database: Callable[[], Awaitable[str]],
    scenario: Scenario,
) -> None:
    rng = random.Random(SEED)
    lines = make_stream(800, users=6, seed=SEED).valid
    first_of: dict[str, dict[str, Any]] = {}
    for line in lines:
        command = json.loads(line)
        first_of.setdefault(command["user_id"], command)
    bases = list(first_of.values())
    all_cases = [c for batch in generate(bases) for c in batch] + boundaries(bases)

    # Each case goes right before a valid command of its user (same key, same partition),
    # at a seeded place after that user's first command.
    slots: dict[int, list[Case]] = {}
    lines_of = {
        u: [i for i, ln in enumerate(lines) if json.loads(ln)["user_id"] == u] for u in first_of
    }
    for case in all_cases:
        user_id = bases[case[0]]["user_id"]
        slots.setdefault(rng.choice(lines_of[user_id][1:]), []).append(case)
    sent = Sent()
    for index, line in enumerate(lines):
        for user, value, kinds, headers in slots.get(index, []):
            if kinds is None:
                assert value is not None
                sent.add_valid([value.decode()], headers)
            else:
                key = bases[user]["user_id"].encode()
                sent.add_poison(value, kinds, key=key, headers=headers)
        sent.add_valid([line], VALID_HEADERS)
    assert sent.poison_count > 60

    topics = topics_of(worker_setup)
    worker = worker_setup.start()
    await ready(worker)
    await feed(topics, sent.items)
    await wait_done(topics, sent, worker_setup.database_url, workers=(worker,), timeout_s=90)
    assert_alive(worker)
    assert worker.terminate() == 0, worker.tail_log()
    log = worker.log_path.read_text(errors="replace")
    assert "unexpected error" not in log, "a payload made the handler fail"
    dead = [dict(r.headers) for r in await read(topics, topics.dlq)]
    kinds = Counter(h[H.ERROR_KIND].decode() for h in dead)
    assert set(kinds) == {UNDECODABLE, INVALID, VERSION, OVERSIZE, CONSTRAINT}, kinds
    assert sum("capture.value.dropped" in h for h in dead) == 1  # the 3 MiB one

    summary = await scenario.conclude(
        "bad input: generated payloads",
        sent,
        topics,
        database_url=worker_setup.database_url,
        fresh_database=fresh_database,
        faults=0,
    )
    assert summary.redelivered == 0  # no fault, so nothing may have been handled twice
