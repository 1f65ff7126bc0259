"""The synthetic command generator and the poison payloads (no I/O)."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from contracts import CaptureArtifactCommand, ErrorKind
from devkit.poison import poison_payloads
from devkit.synthetic import format_unit_rows, generate_commands, generate_lines

N = 4000


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return list(generate_lines(N, users=15, seed=3))


@pytest.fixture(scope="module")
def commands(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def canonical(url: str) -> str:
    """The minimum canonical form of SPEC §3 (scheme and host lower-cased, no fragment)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, ""))


def first_occurrences(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    firsts = []
    for command in commands:
        if command["command_id"] not in seen:
            seen.add(command["command_id"])
            firsts.append(command)
    return firsts


def test_exactly_n_valid_commands(lines: list[str]) -> None:
    assert len(lines) == N
    for line in lines:
        command = CaptureArtifactCommand.model_validate_json(line)
        assert len(command.embedding) == 384
    assert all("\n" not in line for line in lines)


def test_embeddings_are_unit_vectors_of_the_requested_dimension() -> None:
    commands = list(generate_commands(300, users=4, seed=9, dim=32))
    vectors = np.array([c["embedding"] for c in commands])
    assert vectors.shape == (300, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for command in commands:
        CaptureArtifactCommand.model_validate_json(
            json.dumps(command), context={"embedding_dim": 32}
        )


def test_same_seed_same_bytes_other_seed_other_stream() -> None:
    first = list(generate_lines(500, users=5, seed=42))
    assert first == list(generate_lines(500, users=5, seed=42))
    other = list(generate_lines(500, users=5, seed=43))
    assert not set(first) & set(other)


def test_about_one_percent_are_byte_identical_producer_retries(lines: list[str]) -> None:
    by_id: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        by_id[json.loads(line)["command_id"]].add(line)
    assert all(len(variants) == 1 for variants in by_id.values()), "a retry must be byte-identical"
    retries = N - len(by_id)
    assert 0.004 * N <= retries <= 0.02 * N
    # A retry comes later than its original, not adjacent to it every time.
    positions: dict[str, list[int]] = defaultdict(list)
    for index, line in enumerate(lines):
        positions[line].append(index)
    gaps = [p[1] - p[0] for p in positions.values() if len(p) > 1]
    assert max(gaps) > 1


def test_reading_depth_increases_per_user_and_article(commands: list[dict[str, Any]]) -> None:
    depths: dict[tuple[str, str], list[float]] = defaultdict(list)
    for command in first_occurrences(commands):
        depths[command["user_id"], canonical(command["url"])].append(command["reading_depth"])
    recaptured = [d for d in depths.values() if len(d) > 1]
    assert len(recaptured) > N * 0.1
    for series in depths.values():
        assert all(b > a for a, b in pairwise(series)), series
        assert all(0.0 <= d <= 1.5 for d in series)
    all_depths = [d for series in depths.values() for d in series]
    assert any(d > 1.0 for d in all_depths), "re-reads above 1.0 expected"
    assert any(d == 1.5 for d in all_depths), "capped re-reads expected"
    assert any(d < 0.2 for d in all_depths)


def test_recaptures_sometimes_use_equivalent_url_variants(commands: list[dict[str, Any]]) -> None:
    urls = {c["url"] for c in commands}
    variants = {u for u in urls if u != canonical(u)}
    assert variants, "expected upper-case hosts or fragments"
    assert all(canonical(v) in urls for v in variants)
    assert all(
        re.match(r"^https://[a-z0-9.-]+\.example\.(com|org|net)/", u) for u in urls - variants
    )


def test_occurred_at_strictly_increases_per_user(commands: list[dict[str, Any]]) -> None:
    last: dict[str, datetime] = {}
    for command in first_occurrences(commands):
        at = datetime.fromisoformat(command["occurred_at"])
        assert at.tzinfo is not None
        if command["user_id"] in last:
            assert at > last[command["user_id"]]
        last[command["user_id"]] = at
    assert len(last) == 15
    assert min(last.values()) > datetime(2026, 1, 5, tzinfo=UTC)


def test_start_time_and_offset_are_honoured() -> None:
    start = datetime(2030, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    commands = list(generate_commands(50, users=3, seed=1, dim=8, start=start))
    for command in commands:
        at = datetime.fromisoformat(command["occurred_at"])
        assert at >= start
        assert command["occurred_at"].endswith("+02:00")


def test_same_article_same_embedding_and_topics_cluster(commands: list[dict[str, Any]]) -> None:
    by_url: dict[str, list[float]] = {}
    for command in commands:
        key = canonical(command["url"])
        if key in by_url:
            assert by_url[key] == command["embedding"], "an article's content does not change"
        by_url[key] = command["embedding"]
    users_per_article: dict[str, set[str]] = defaultdict(set)
    for command in commands:
        users_per_article[canonical(command["url"])].add(command["user_id"])
    assert any(len(u) > 1 for u in users_per_article.values()), "popular articles expected"

    hosts = [urlsplit(u).hostname or "" for u in by_url]
    vectors = np.array(list(by_url.values()))
    similarity = vectors @ vectors.T
    same_host = np.equal.outer(hosts, hosts) & ~np.eye(len(hosts), dtype=bool)
    # Articles of one topic are close, unrelated ones nearly orthogonal.
    assert np.median(similarity[same_host]) > 0.5
    assert abs(np.median(similarity[~np.equal.outer(hosts, hosts)])) < 0.35


def test_titles_are_optional_and_bounded(commands: list[dict[str, Any]]) -> None:
    titled = [c for c in commands if "title" in c]
    assert 0.8 * N < len(titled) < N
    assert all(0 < len(c["title"]) <= 512 for c in titled)


def test_twenty_thousand_commands_are_fast() -> None:
    started = time.perf_counter()
    count = sum(1 for _ in generate_lines(20_000, users=20, seed=1))
    elapsed = time.perf_counter() - started
    assert count == 20_000
    # "A few seconds" on a laptop; the bound is loose for loaded CI machines.
    assert elapsed < 30, f"{elapsed:.1f}s"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="users"):
        next(generate_lines(1, users=0))
    with pytest.raises(ValueError, match="aware"):
        next(generate_lines(1, start=datetime(2026, 1, 1)))
    assert list(generate_lines(0)) == []


@given(arrays(np.float64, (3, 5), elements=st.floats(-1.0, 1.0)))
def test_format_unit_rows_is_shortest_and_within_rounding(vectors: np.ndarray) -> None:
    rows = format_unit_rows(vectors)
    assert len(rows) == 3
    for row, text in zip(vectors, rows, strict=True):
        numbers = text.split(",")
        assert len(numbers) == 5
        for value, number in zip(row, numbers, strict=True):
            assert re.fullmatch(r"-?[01]\.(0|\d*[1-9])", number), number
            assert abs(float(number) - value) <= 5e-8 + 1e-15
            assert not number.startswith("-") or float(number) != 0.0


def test_format_unit_rows_refuses_non_unit_values() -> None:
    with pytest.raises(ValueError):
        format_unit_rows(np.array([[1.5, 0.0]]))


# -- poison --------------------------------------------------------------------------------


def test_poison_covers_every_error_kind_and_each_fails_as_labelled() -> None:
    valid = next(generate_commands(1, users=1, seed=5, dim=16))
    payloads = poison_payloads(valid, max_message_bytes=4096)
    # `internal` is the worker's own failure: no input is meant to cause it.
    assert {kind for kind, _ in payloads} == set(ErrorKind) - {ErrorKind.INTERNAL}
    for kind, value in payloads:
        if kind is ErrorKind.UNDECODABLE:
            with pytest.raises((UnicodeDecodeError, json.JSONDecodeError)):
                json.loads(value.decode("utf-8"))
        elif kind is ErrorKind.OVERSIZE:
            assert len(value) == 4097
            CaptureArtifactCommand.model_validate_json(value, context={"embedding_dim": 16})
        elif kind in (ErrorKind.INVALID, ErrorKind.UNSUPPORTED_VERSION):
            with pytest.raises(ValidationError) as info:
                CaptureArtifactCommand.model_validate_json(value, context={"embedding_dim": 16})
            if kind is ErrorKind.UNSUPPORTED_VERSION:
                assert info.value.errors()[0]["loc"] == ("schema_version",)
        else:  # contract-valid; the database refuses CONSTRAINT, the ledger CONFLICT
            command = CaptureArtifactCommand.model_validate_json(
                value, context={"embedding_dim": 16}
            )
            assert str(command.user_id) == valid["user_id"]
            if kind is ErrorKind.CONFLICT:
                assert str(command.command_id) == valid["command_id"]
                assert command.reading_depth != valid["reading_depth"]
            else:
                assert "\x00" in (command.title or "")


def test_poison_is_deterministic_and_uses_fresh_command_ids() -> None:
    valid = next(generate_commands(1, users=1, seed=5, dim=16))
    assert poison_payloads(valid) == poison_payloads(valid)
    assert poison_payloads(dim=16) == poison_payloads(dim=16)
    conflict = dict(poison_payloads(dim=16))[ErrorKind.CONFLICT]
    assert len(json.loads(conflict)["embedding"]) == 16
    ids = []
    for kind, value in poison_payloads(valid):
        if kind in (ErrorKind.INVALID, ErrorKind.UNSUPPORTED_VERSION, ErrorKind.CONSTRAINT):
            parsed = json.loads(value)
            if isinstance(parsed, dict):
                ids.append(parsed["command_id"])
    assert len(ids) == len(set(ids))
    assert valid["command_id"] not in ids
