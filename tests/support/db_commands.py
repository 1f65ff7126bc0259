"""Test helpers for the database suite: commands, deterministic ids, a numpy reference model."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import numpy.typing as npt

from worker.application.ports import IngestCommand

DIM = 384
LEVELS = ("captured", "skimmed", "read", "deep")
BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Vector = npt.NDArray[np.float32]

#: capture.ingest_typed with the seven arrays of `worker.infrastructure.repository.typed_arguments`.
TYPED_INGEST = "SELECT capture.ingest_typed($1, $2, $3, $4, $5, $6, $7, false)"


def new_id() -> str:
    return str(uuid.uuid4())


def command(
    *,
    user_id: str,
    url: str,
    embedding: Any,
    reading_depth: float = 0.5,
    occurred_at: datetime | str | None = None,
    command_id: str | None = None,
    title: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A valid CaptureArtifactCommand as a dict (fields can be overridden or added)."""
    when = occurred_at or BASE_TIME
    body: dict[str, Any] = {
        "command_id": command_id or new_id(),
        "user_id": user_id,
        "url": url,
        "embedding": [float(x) for x in embedding],
        "reading_depth": reading_depth,
        "occurred_at": when.isoformat() if isinstance(when, datetime) else when,
    }
    if title is not None:
        body["title"] = title
    body.update(extra)
    return body


def as_json(cmd: dict[str, Any]) -> str:
    return json.dumps(cmd)


def typed(c: dict[str, Any]) -> IngestCommand:
    """The typed form, straight from the dict: no Python validation, so SQL's checks run."""
    occurred = c["occurred_at"]
    return IngestCommand(
        command_id=uuid.UUID(c["command_id"]),
        user_id=uuid.UUID(c["user_id"]),
        url=c["url"],
        title=c.get("title"),
        embedding=struct.pack(f">{len(c['embedding'])}f", *c["embedding"]),
        reading_depth=float(c["reading_depth"]),
        occurred_at=datetime.fromisoformat(occurred) if isinstance(occurred, str) else occurred,
    )


def unit(rng: np.random.Generator, dim: int = DIM) -> Vector:
    v = rng.normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def clustered(
    rng: np.random.Generator, n: int, *, clusters: int, spread: float = 0.6, dim: int = DIM
) -> list[Vector]:
    """n embeddings around `clusters` random centres (cosine to the centre mostly 0.6-0.9)."""
    centres = [unit(rng, dim) for _ in range(clusters)]
    out = []
    for _ in range(n):
        c = centres[int(rng.integers(clusters))]
        v = c + spread * rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)
        out.append((v / np.linalg.norm(v)).astype(np.float32))
    return out


def stream(
    rng: np.random.Generator,
    *,
    users: list[str],
    per_user: int,
    clusters: int = 4,
    recapture: float = 0.25,
) -> list[dict[str, Any]]:
    """Per-user ordered commands (users one after the other) with re-captures."""
    commands: list[dict[str, Any]] = []
    for u, user in enumerate(users):
        embeddings = clustered(rng, per_user, clusters=clusters)
        urls: list[str] = []
        for i in range(per_user):
            if urls and rng.random() < recapture:
                url = urls[int(rng.integers(len(urls)))]
            else:
                url = f"https://example.com/u{u}/a{i}"
                urls.append(url)
            commands.append(
                command(
                    user_id=user,
                    url=url,
                    embedding=embeddings[i],
                    reading_depth=round(float(rng.uniform(0, 1.5)), 3),
                    occurred_at=BASE_TIME + timedelta(minutes=i),
                )
            )
    return commands


def md5_uuid(text: str) -> str:
    return str(uuid.UUID(hashlib.md5(text.encode()).hexdigest()))


def artifact_id(user_id: str, canonical_url: str) -> str:
    return md5_uuid(f"artifact:{user_id}:{canonical_url}")


def subspace_id(founding_artifact_id: str) -> str:
    return md5_uuid(f"subspace:{founding_artifact_id}")


def level_of(depth: float, thresholds: tuple[float, float, float] = (0.2, 0.6, 1.0)) -> str:
    skimmed, read, deep = thresholds
    if depth >= deep:
        return "deep"
    if depth >= read:
        return "read"
    if depth >= skimmed:
        return "skimmed"
    return "captured"


@dataclass
class RefSubspace:
    id: str
    total: npt.NDArray[np.float32]
    count: int


@dataclass
class Assignment:
    subspace_id: str
    created: bool
    margin: float | None
    runner_up: str | None


@dataclass
class SubspaceModel:
    """The assignment rule of SPEC §4.5, independently in numpy (float32 sums like pgvector)."""

    join_threshold: float = 0.45
    max_per_user: int = 32
    users: dict[str, list[RefSubspace]] = field(default_factory=dict)
    artifacts: dict[tuple[str, str], Assignment] = field(default_factory=dict)

    def ingest(self, user_id: str, canonical_url: str, embedding: Any) -> Assignment:
        key = (user_id, canonical_url)
        if key in self.artifacts:  # re-captures never move and never touch centroids
            return self.artifacts[key]
        emb = np.asarray(embedding, dtype=np.float32)
        spaces = self.users.setdefault(user_id, [])
        sims = sorted(
            ((float(_cosine(s.total, emb)), s.id, s) for s in spaces),
            key=lambda t: (-t[0], t[1]),
        )
        aid = artifact_id(user_id, canonical_url)
        if not sims or (sims[0][0] < self.join_threshold and len(spaces) < self.max_per_user):
            new = RefSubspace(subspace_id(aid), emb.copy(), 1)
            spaces.append(new)
            result = Assignment(
                new.id,
                True,
                1.0 - sims[0][0] if sims else None,
                sims[0][1] if sims else None,
            )
        else:
            best = sims[0][2]
            best.total = (best.total + emb).astype(np.float32)
            best.count += 1
            result = Assignment(
                best.id,
                False,
                sims[0][0] - sims[1][0] if len(sims) > 1 else None,
                sims[1][1] if len(sims) > 1 else None,
            )
        self.artifacts[key] = result
        return result


def _cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def strip_clock(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "processed_at"}


async def table_counts(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Rows per capture table: proves that a refused command wrote nothing."""
    counts = {}
    for table in ("artifacts", "signals", "subspaces", "command_ledger", "rejections"):
        counts[table] = await conn.fetchval(f"SELECT count(*) FROM capture.{table}")
    return counts


def interleave(commands: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """A random merge of the per-user sequences that keeps each user's order."""
    queues: dict[str, list[dict[str, Any]]] = {}
    for c in commands:
        queues.setdefault(c["user_id"], []).append(c)
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    while queues:
        user = rnd.choice(sorted(queues))
        out.append(queues[user].pop(0))
        if not queues[user]:
            del queues[user]
    return out


def as_user(url: str, user: str, password: str) -> str:
    """`url` with another login (user and password), same server and database."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))
