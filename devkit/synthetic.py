"""Synthetic, realistic capture commands for `capture-worker publish --generate` (pure, no I/O).

The stream imitates people reading articles:

- Twelve topics in four fields; each topic has a random unit centre vector, and
  sibling topics of one field share a component (cosine ~0.3), so subspace
  assignment margins are not all trivially large.
- Each user follows two to four topics with their own weights and is more or
  less active (log-normal). Articles belong to a topic; an article's embedding is
  its topic centre plus a little noise, normalised, so its cosine to the centre is
  mostly 0.7-0.9, and a few outliers (~0.45) make users open new subspaces.
- Popular articles are read by several users (same url, same embedding).
- A user re-captures an article read before with a deeper `reading_depth`
  (strictly increasing per (user, article), capped at 1.5 = re-reading), now and
  then through a url variant that canonicalises to the same artifact
  (upper-case host, a `#fragment`).
- `occurred_at` strictly increases per user (millisecond precision).
- About 1% of the lines are producer retries: an earlier line emitted again,
  byte for byte (same `command_id`), a little later in the stream.

Deterministic: one seed gives byte-identical lines on every run and machine
(seeded `random.Random` and numpy `Generator`; uuids drawn from the seeded rng).
Fast: embeddings are built and formatted in numpy blocks; 20,000 commands of 384
dimensions take a few seconds.
"""

from __future__ import annotations

import heapq
import json
import random
import uuid
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from contracts import DEFAULT_EMBEDDING_DIM, SCHEMA_VERSION

DEFAULT_START: Final = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
RETRY_PROBABILITY: Final = 0.01
RECAPTURE_PROBABILITY: Final = 0.3
POPULAR_PROBABILITY: Final = 0.3
URL_VARIANT_PROBABILITY: Final = 0.08
UNTITLED_PROBABILITY: Final = 0.1
MAX_DEPTH: Final = 1.5
_BLOCK: Final = 1024  # events planned, then embedded and formatted, per numpy block
_DECIMALS: Final = 7  # ~6 significant digits at a unit vector's typical 1/sqrt(384) ≈ 0.05

Vector = npt.NDArray[np.float64]

# field, topic, hosts, vocabulary. Hosts use reserved example domains (RFC 2606).
_TOPIC_TABLE: Final = """
data    databases             dbweekly.example.com pg.example.org
        postgres index vacuum planner replication wal btree jsonb partitioning locks mvcc query
data    data-engineering      pipelines.example.net dataops.example.com
        etl batch lakehouse parquet schema backfill dbt orchestration lineage warehouse cdc quality
data    analytics             metrics.example.org dashboards.example.com
        cohort funnel retention sql window percentile ab-testing attribution sampling olap kpi
systems distributed-systems   distsys.example.org papers.example.net
        consensus raft paxos clocks quorum partition gossip linearizability leases replicas crdt
systems streaming             streams.example.com kafka-notes.example.org
        kafka exactly-once offsets consumer rebalance backpressure windowing idempotence lag
systems cloud                 infra.example.net ops.example.com
        kubernetes autoscaling terraform latency observability sre incident cost regions slo
ml      machine-learning      ml.example.org gradients.example.com
        training overfitting regularization boosting features validation gradient loss drift
ml      nlp                   language.example.net tokens.example.org
        embeddings transformers tokenizer retrieval attention fine-tuning rag prompting llm
ml      vision                pixels.example.com cv.example.org
        convolution segmentation detection diffusion augmentation resnet images labels ocr
craft   programming-languages lang.example.org compilers.example.net
        python rust types generics async compiler borrowing macros gc closures traits
craft   security              sec.example.com appsec.example.org
        tls oauth secrets sandbox cve fuzzing supply-chain xss auth keys audit threat-model
craft   software-design       design.example.net architecture.example.com
        ddd modules coupling refactoring testing interfaces layers events monolith boundaries
"""


def _parse_topics() -> tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...]:
    rows = [line.split() for line in _TOPIC_TABLE.strip().splitlines()]
    return tuple(
        (head[0], head[1], tuple(head[2:]), tuple(words))
        for head, words in zip(rows[::2], rows[1::2], strict=True)
    )


_TOPICS: Final = _parse_topics()
_TITLE_OPENERS: Final = (
    "A practical guide to",
    "Notes on",
    "What we learned about",
    "Understanding",
    "The trouble with",
    "Ten lessons on",
    "Deep dive:",
    "Rethinking",
    "Benchmarking",
    "Why we moved to",
    "Debugging",
    "An introduction to",
)


@dataclass(slots=True)
class _Article:
    number: int
    topic: int
    url: str
    title: str
    spread: float  # norm of the noise added to the unit centre


@dataclass(slots=True)
class _User:
    user_id: str
    topics: list[int]
    topic_cum_weights: list[float]
    clock_ms: int
    depth: dict[int, float] = field(default_factory=dict)  # article number -> deepest read
    open_reads: list[int] = field(default_factory=list)  # re-read candidates, oldest first


@dataclass(slots=True)
class _Event:
    user: _User
    article: _Article
    url: str
    depth: float
    occurred_ms: int
    command_id: str


def generate_lines(
    n: int,
    *,
    users: int = 20,
    seed: int = 1,
    dim: int = DEFAULT_EMBEDDING_DIM,
    start: datetime = DEFAULT_START,
) -> Iterator[str]:
    """`n` compact JSON lines (no newline), each a valid `CaptureArtifactCommand`."""
    if n < 0 or users < 1 or dim < 2:
        raise ValueError("need n >= 0, users >= 1, dim >= 2")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    yield from _Simulation(users=users, seed=seed, dim=dim, start=start).lines(n)


def generate_commands(
    n: int,
    *,
    users: int = 20,
    seed: int = 1,
    dim: int = DEFAULT_EMBEDDING_DIM,
    start: datetime = DEFAULT_START,
) -> Iterator[dict[str, Any]]:
    """The same commands as `generate_lines`, parsed, so both views agree exactly."""
    for line in generate_lines(n, users=users, seed=seed, dim=dim, start=start):
        yield json.loads(line)


class _Simulation:
    def __init__(self, *, users: int, seed: int, dim: int, start: datetime) -> None:
        self._seed = seed
        self._dim = dim
        self._rnd = random.Random(seed)
        self._start_ms = int(start.timestamp() * 1000)
        self._tz = start.tzinfo
        self._centres = _topic_centres(np.random.default_rng([seed, 0]), dim)
        self._articles: list[_Article] = []
        self._by_topic: list[list[int]] = [[] for _ in _TOPICS]
        self._users = [self._new_user() for _ in range(users)]
        self._user_cum = list(accumulate(self._rnd.lognormvariate(0.0, 0.6) for _ in self._users))

    # -- planning (plain Python, cheap) -------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rnd.getrandbits(128), version=4))

    def _new_user(self) -> _User:
        rnd = self._rnd
        topics = rnd.sample(range(len(_TOPICS)), rnd.randint(2, 4))
        weights = [0.2 + rnd.random() for _ in topics]
        return _User(
            user_id=self._uuid(),
            topics=topics,
            topic_cum_weights=list(accumulate(weights)),
            clock_ms=self._start_ms + rnd.randrange(6 * 3600 * 1000),
        )

    def _new_article(self, topic: int) -> _Article:
        rnd = self._rnd
        _, _, hosts, vocabulary = _TOPICS[topic]
        words = rnd.sample(vocabulary, rnd.randint(2, 4))
        title = f"{rnd.choice(_TITLE_OPENERS)} {' and '.join(words[:2])}" + "".join(
            f", {w}" for w in words[2:]
        )
        slug = "-".join(words) + f"-{rnd.getrandbits(16):04x}"
        url = f"https://{rnd.choice(hosts)}/{2020 + rnd.randrange(7)}/{slug}"
        # Mostly close to the topic centre; ~5% outliers far enough to found a subspace.
        spread = 1.9 + 0.4 * rnd.random() if rnd.random() < 0.05 else 0.45 + 0.5 * rnd.random()
        article = _Article(len(self._articles), topic, url, title, spread)
        self._articles.append(article)
        self._by_topic[topic].append(article.number)
        return article

    def _first_depth(self) -> float:
        r = self._rnd.random()
        if r < 0.25:
            return self._rnd.uniform(0.0, 0.2)  # captured, barely opened
        if r < 0.6:
            return self._rnd.uniform(0.2, 0.6)  # skimmed
        if r < 0.9:
            return self._rnd.uniform(0.6, 1.0)  # read
        return self._rnd.uniform(1.0, 1.2)  # read to the end and back again

    def _variant(self, url: str) -> str:
        """A url that canonicalises to the same artifact (host case, fragment)."""
        if self._rnd.random() < 0.5:
            scheme, rest = url.split("://", 1)
            host, path = rest.split("/", 1)
            return f"{scheme.upper()}://{host.upper()}/{path}"
        return f"{url}#{self._rnd.choice(('comments', 'section-2', 'conclusion', 'top'))}"

    def _next_event(self) -> _Event:
        rnd = self._rnd
        user = self._users[bisect(self._user_cum, rnd.random() * self._user_cum[-1])]
        user.clock_ms += 1 + int(rnd.expovariate(1 / 2_400_000))  # ~40 min between captures
        if rnd.random() < 0.02:
            user.clock_ms += rnd.randrange(86_400_000, 3 * 86_400_000)  # away for a day or two
        if user.open_reads and rnd.random() < RECAPTURE_PROBABILITY:
            # Re-reads favour what was read recently.
            index = len(user.open_reads) - 1 - rnd.randrange(min(20, len(user.open_reads)))
            article = self._articles[user.open_reads[index]]
            depth = min(MAX_DEPTH, round(user.depth[article.number] + rnd.uniform(0.05, 0.6), 3))
            if depth >= MAX_DEPTH:
                del user.open_reads[index]
            url = (
                self._variant(article.url)
                if rnd.random() < URL_VARIANT_PROBABILITY
                else article.url
            )
        else:
            topic = user.topics[
                bisect(user.topic_cum_weights, rnd.random() * user.topic_cum_weights[-1])
            ]
            pool = self._by_topic[topic]
            article = self._articles[rnd.choice(pool)] if pool else self._new_article(topic)
            if rnd.random() >= POPULAR_PROBABILITY or article.number in user.depth:
                article = self._new_article(topic)
            depth = round(self._first_depth(), 3)
            user.open_reads.append(article.number)
            if len(user.open_reads) > 200:  # forgotten: old reads are not re-read
                del user.open_reads[0]
            url = article.url
        user.depth[article.number] = depth
        return _Event(user, article, url, depth, user.clock_ms, self._uuid())

    # -- output -------------------------------------------------------------------------

    def lines(self, n: int) -> Iterator[str]:
        retries: list[tuple[int, int, str]] = []  # (due step, tie-break, line)
        step = 0
        while step < n:
            block: list[_Event | str] = []
            fresh: list[int] = []
            while step < n and len(block) < _BLOCK:
                # A due retry goes out first; at the end, pending retries fill the last slots
                # so that exactly n lines come out.
                if retries and (retries[0][0] <= step or n - step <= len(retries)):
                    block.append(heapq.heappop(retries)[2])
                else:
                    fresh.append(len(block))
                    block.append(self._next_event())
                step += 1
            events = [e for e in block if isinstance(e, _Event)]
            embeddings = iter(self._embeddings_json([e.article for e in events]))
            for item in block:
                if isinstance(item, str):
                    yield item
                    continue
                line = self._line(item, next(embeddings))
                if self._rnd.random() < RETRY_PROBABILITY:
                    due = step + self._rnd.randint(1, 300)
                    heapq.heappush(retries, (due, self._rnd.getrandbits(32), line))
                yield line

    def _line(self, event: _Event, embedding: str) -> str:
        occurred = datetime.fromtimestamp(event.occurred_ms / 1000, tz=UTC).astimezone(self._tz)
        title = (
            ""
            if self._rnd.random() < UNTITLED_PROBABILITY
            else f',"title":{json.dumps(event.article.title)}'
        )
        return (
            f'{{"command_id":"{event.command_id}","user_id":"{event.user.user_id}",'
            f'"url":{json.dumps(event.url)}{title},"embedding":[{embedding}],'
            f'"reading_depth":{event.depth!r},'
            f'"occurred_at":"{occurred.isoformat(timespec="milliseconds")}",'
            f'"schema_version":{SCHEMA_VERSION}}}'
        )

    def _embeddings_json(self, articles: list[_Article]) -> list[str]:
        if not articles:
            return []
        # Per-article noise from its own seeded stream: an article keeps its embedding across
        # users and re-captures without the generator holding every vector in memory.
        noise = np.stack(
            [
                np.random.default_rng([self._seed, 1, a.number]).standard_normal(self._dim)
                for a in articles
            ]
        )
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        spread = np.array([a.spread for a in articles])[:, None]
        vectors = self._centres[[a.topic for a in articles]] + spread * noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return format_unit_rows(vectors)


def _topic_centres(rng: np.random.Generator, dim: int) -> Vector:
    fields = sorted({f for f, *_ in _TOPICS})
    field_vectors = _unit(rng.standard_normal((len(fields), dim)))
    own = _unit(rng.standard_normal((len(_TOPICS), dim)))
    shared = field_vectors[[fields.index(f) for f, *_ in _TOPICS]]
    return _unit(0.55 * shared + 0.835 * own)


def _unit(vectors: Vector) -> Vector:
    result: Vector = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    return result


def format_unit_rows(vectors: Vector) -> list[str]:
    """Each row as comma-separated JSON numbers, rounded to 7 decimals, shortest form.

    Python's float repr (via json.dumps) costs ~0.5 µs a number, too slow for millions
    of numbers, so the digits are written with numpy into one byte buffer: per number
    a sign, one integer digit, '.', seven digits and a separator, then the '+' sign
    slot and trailing zeros are masked away. Values must lie in [-1, 1] (unit vectors).
    """
    if vectors.ndim != 2 or not np.all(np.abs(vectors) <= 1.0 + 1e-9):
        raise ValueError("expected a 2-d array of values in [-1, 1]")
    rows, dim = vectors.shape
    scaled = np.rint(np.abs(vectors) * 10**_DECIMALS).astype(np.uint32)
    width = _DECIMALS + 4  # sign, integer digit, '.', decimals, separator
    buf = np.empty((rows, dim, width), dtype=np.uint8)
    rest = scaled
    trailing = np.zeros(scaled.shape, dtype=np.uint8)  # trailing zero decimals
    still_zero = np.ones(scaled.shape, dtype=bool)
    for position in range(_DECIMALS + 2, 2, -1):  # decimals, least significant first
        quotient = rest // 10
        digit = (rest - quotient * 10).astype(np.uint8)
        buf[..., position] = digit + ord("0")
        still_zero &= digit == 0
        trailing += still_zero
        rest = quotient
    buf[..., 0] = ord("-")
    buf[..., 1] = rest.astype(np.uint8) + ord("0")
    buf[..., 2] = ord(".")
    buf[..., -1] = ord(",")
    buf[:, -1, -1] = ord("\n")
    keep = np.ones(buf.shape, dtype=bool)
    keep[..., 0] = (vectors < 0) & (scaled > 0)  # no "-0.0"
    # Keep at least one decimal: "0.0", never "0.".
    kept_decimals = _DECIMALS - np.minimum(trailing, _DECIMALS - 1)
    keep[..., 3 : 3 + _DECIMALS] = np.arange(_DECIMALS) < kept_decimals[..., None]
    text = buf[keep].tobytes().decode("ascii")
    return text.split("\n")[:rows]


def publish_lines(n: int, users: int, seed: int, dim: int) -> Iterator[str]:
    """`publish --generate`'s source (entry point `capture_worker.generators`, name `synthetic`):
    loading it imports numpy, so without the extra the worker says which one to install."""
    return generate_lines(n, users=users, seed=seed, dim=dim)
