"""The wire contract: checked-in schemas match the models; the command model's rules."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import DEFAULT_EMBEDDING_DIM, CaptureArtifactCommand, CaptureResult
from contracts import commands as commands_module
from contracts.commands import FLOAT32_ZERO, url_problem
from contracts.export_schemas import SCHEMA_DIR, rendered_schemas, stale_files


def valid(**overrides: Any) -> dict[str, Any]:
    """A valid 384-dim command as a JSON-ready dict."""
    command: dict[str, Any] = {
        "command_id": "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
        "user_id": "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10",
        "url": "https://example.com/articles/kafka-exactly-once",
        "title": "Exactly-once effects on at-least-once delivery",
        "embedding": [0.05] * DEFAULT_EMBEDDING_DIM,
        "reading_depth": 0.75,
        "occurred_at": "2026-11-26T09:30:00+00:00",
        "schema_version": 1,
    }
    command.update(overrides)
    return command


def parse(
    command: dict[str, Any] | str, dim: int = DEFAULT_EMBEDDING_DIM
) -> CaptureArtifactCommand:
    raw = command if isinstance(command, str) else json.dumps(command)
    return CaptureArtifactCommand.model_validate_json(raw, context={"embedding_dim": dim})


def error_fields(exc: ValidationError) -> set[str]:
    return {str(err["loc"][0]) for err in exc.errors()}


# -- schema files --------------------------------------------------------------------------


def test_checked_in_schemas_match_the_models() -> None:
    stale = stale_files()
    assert not stale, f"contracts/schemas is stale for {stale}: run `make schemas` and commit"


def test_schema_files_are_the_only_ones_and_are_stable_text() -> None:
    on_disk = sorted(p.name for p in SCHEMA_DIR.glob("*.json"))
    assert on_disk == sorted(rendered_schemas())
    for name, text in rendered_schemas().items():
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", name


def test_command_schema_documents_the_rules() -> None:
    schema = json.loads((SCHEMA_DIR / "capture_artifact_command.v1.json").read_text())
    props = schema["properties"]
    assert "384" in props["embedding"]["description"]
    assert props["url"]["maxLength"] == 2048
    assert props["reading_depth"]["minimum"] == 0.0
    assert props["reading_depth"]["maximum"] == 1.5
    assert props["schema_version"]["const"] == 1
    assert set(schema["required"]) == {
        "command_id",
        "user_id",
        "url",
        "embedding",
        "reading_depth",
        "occurred_at",
    }
    # Forward compatibility: extra fields must not be forbidden by the schema.
    assert schema.get("additionalProperties", True) is not False


def test_result_schema_names_every_spec_field() -> None:
    schema = json.loads((SCHEMA_DIR / "capture_result.v1.json").read_text())
    assert set(schema["properties"]) == {
        "event_id",
        "command_id",
        "user_id",
        "status",
        "artifact_id",
        "artifact_created",
        "engagement_level",
        "previous_engagement_level",
        "subspace_id",
        "subspace_created",
        "assignment_margin",
        "runner_up_subspace_id",
        "processed_at",
        "error",
        "schema_version",
    }


# -- the command model ---------------------------------------------------------------------


def test_accepts_the_spec_example() -> None:
    example = CaptureArtifactCommand.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
    command = parse(example, dim=3)
    assert command.user_id == UUID("0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10")
    assert command.occurred_at == datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


def test_accepts_a_full_size_command_and_defaults() -> None:
    raw = valid()
    del raw["title"], raw["schema_version"]
    command = parse(raw)
    assert command.title is None
    assert command.schema_version == 1
    assert len(command.embedding) == 384


def test_accepts_offsets_other_than_utc() -> None:
    command = parse(valid(occurred_at="2026-11-26T10:30:00+01:00"))
    assert command.occurred_at.utcoffset() == timedelta(hours=1)


def test_ignores_unknown_fields() -> None:
    command = parse(valid(source="browser-extension", extra={"nested": [1, 2]}))
    assert "source" not in command.model_dump()
    assert command.url.startswith("https://")


def without(field: str) -> dict[str, Any]:
    command = valid()
    del command[field]
    return command


BAD_SHAPES: list[tuple[str, dict[str, Any] | str, str]] = [
    ("wrong dimension", valid(embedding=[0.1] * 383), "embedding"),
    ("too many dimensions", valid(embedding=[0.1] * 385), "embedding"),
    # Python's json writes NaN / Infinity literals; the model must refuse them.
    ("NaN", json.dumps(valid(embedding=[math.nan] + [0.1] * 383)), "embedding"),
    ("Infinity", json.dumps(valid(embedding=[0.1] * 383 + [math.inf])), "embedding"),
    # A number too large for a float parses as infinity: refused like the literals.
    ("overflow", json.dumps(valid(embedding=[0.5] * 384)).replace("0.5]", "1e999]"), "embedding"),
    ("space in url", valid(url="https://example.com/a b"), "url"),
    ("all-zero embedding", valid(embedding=[0.0] * 384), "embedding"),
    ("string in embedding", valid(embedding=["0.1"] * 384), "embedding"),
    ("depth 1.7", valid(reading_depth=1.7), "reading_depth"),
    ("depth -0.1", valid(reading_depth=-0.1), "reading_depth"),
    ("depth as string", valid(reading_depth="0.5"), "reading_depth"),
    ("missing command_id", without("command_id"), "command_id"),
    ("missing user_id", without("user_id"), "user_id"),
    ("missing url", without("url"), "url"),
    ("missing embedding", without("embedding"), "embedding"),
    ("missing reading_depth", without("reading_depth"), "reading_depth"),
    ("missing occurred_at", without("occurred_at"), "occurred_at"),
    ("bad command uuid", valid(command_id="not-a-uuid"), "command_id"),
    ("bad user uuid", valid(user_id="0d7c3f2a-8e55-4c55-b2a4"), "user_id"),
    ("naive timestamp", valid(occurred_at="2026-11-26T09:30:00"), "occurred_at"),
    ("not a timestamp", valid(occurred_at="yesterday"), "occurred_at"),
    ("ftp url", valid(url="ftp://example.com/file.txt"), "url"),
    ("url without host", valid(url="https:///path"), "url"),
    ("url with whitespace", valid(url="https://example.com/a b"), "url"),
    ("url over 2048", valid(url="https://example.com/" + "a" * 2029), "url"),
    ("empty url", valid(url=""), "url"),
    ("schema_version 2", valid(schema_version=2), "schema_version"),
    ("title over 512", valid(title="t" * 513), "title"),
]


@pytest.mark.parametrize(("case", "payload", "field"), BAD_SHAPES, ids=[c[0] for c in BAD_SHAPES])
def test_rejects_bad_shape_naming_the_field(
    case: str, payload: dict[str, Any] | str, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        parse(payload)
    assert error_fields(info.value) == {field}, case


def test_length_limits_are_inclusive() -> None:
    url = "https://example.com/" + "a" * (2048 - len("https://example.com/"))
    assert len(parse(valid(url=url, title="t" * 512)).url) == 2048
    assert parse(valid(reading_depth=1.5)).reading_depth == 1.5
    assert parse(valid(reading_depth=0)).reading_depth == 0.0


def test_dimension_comes_from_the_context() -> None:
    assert len(parse(valid(embedding=[0.5] * 8), dim=8).embedding) == 8
    with pytest.raises(ValidationError, match="exactly 8 numbers, got 384"):
        parse(valid(), dim=8)


# -- round trip ----------------------------------------------------------------------------

DIM = 16
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
aware_times = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}\.(com|org|io)", fullmatch=True)
paths = st.from_regex(r"(/[A-Za-z0-9._~-]{1,20}){0,4}", fullmatch=True)
commands = st.fixed_dictionaries(
    {
        "command_id": st.uuids().map(str),
        "user_id": st.uuids().map(str),
        "url": st.builds(
            lambda s, h, p: f"{s}://{h}{p}",
            st.sampled_from(["http", "https", "HTTPS"]),
            hosts,
            paths,
        ),
        # not all zero once stored as float32 (what the database keeps)
        "embedding": st.lists(finite, min_size=DIM, max_size=DIM).filter(
            lambda v: any(abs(x) > FLOAT32_ZERO for x in v)
        ),
        "reading_depth": st.floats(min_value=0.0, max_value=1.5),
        "occurred_at": aware_times.map(lambda t: t.isoformat()),
    },
    optional={
        "title": st.text(max_size=512) | st.none(),
        "schema_version": st.just(1),
    },
)


@settings(max_examples=200, deadline=None)
@given(commands)
def test_valid_commands_round_trip_through_json(raw: dict[str, Any]) -> None:
    command = parse(raw, dim=DIM)
    assert str(command.command_id) == raw["command_id"]
    assert command.embedding == raw["embedding"]
    again = parse(command.model_dump_json(), dim=DIM)
    assert again == command


def test_result_example_round_trips() -> None:
    example = CaptureResult.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index]
    result = CaptureResult.model_validate_json(json.dumps(example))
    assert CaptureResult.model_validate_json(result.model_dump_json()) == result


@settings(max_examples=500, deadline=None)
@given(st.from_regex(commands_module._PLAIN_HTTP_URL, fullmatch=True))
def test_the_url_fast_path_accepts_only_what_the_full_check_accepts(url: str) -> None:
    assert url_problem(url) is None


# Strings in the shape of the 8-4-4-4-12 spelling, with characters PostgreSQL's uuid type
# refuses mixed in: the fast path must give the pattern's verdict on every one.
_UUID_LIKE = st.lists(
    st.one_of(
        st.sampled_from("0123456789abcdefABCDEF"),
        st.sampled_from("-{}g:xX+ _\u0660\uff10\u00e9\x00"),
    ),
    min_size=32,
    max_size=38,
).map("".join)


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.uuids().map(lambda u: "{" + str(u) + "}"),
        st.uuids().map(lambda u: u.hex),
        st.uuids().map(lambda u: f"urn:uuid:{u}"),
        _UUID_LIKE,
        st.builds(
            lambda u, i, c: str(u)[:i] + c + str(u)[i + 1 :],
            st.uuids(),
            st.integers(0, 35),
            st.sampled_from("-gG:{}+ \u0660\uff10\u00e9\x00"),
        ),
    )
)
def test_the_uuid_fast_path_gives_the_patterns_verdict(text: str) -> None:
    """parse_uuid reads 8-4-4-4-12 with pydantic-core: same verdict and value as the rule
    PostgreSQL's uuid type follows (the pattern, then uuid.UUID)."""
    if commands_module._UUID_TEXT.fullmatch(text):
        assert commands_module.parse_uuid(text) == UUID(hex=text.strip("{}").replace("-", ""))
    else:
        with pytest.raises(ValueError, match="must be a UUID"):
            commands_module.parse_uuid(text)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/",  # unbalanced IPv6 bracket: urlsplit refuses it
        "https://user@/path",  # a netloc without a host
        "https://ex\u0430mple.com/",  # non-ASCII host: the full check decides
        "https://example.com\\a b",
    ],
)
def test_urls_off_the_fast_path_get_the_full_check(url: str) -> None:
    assert commands_module._PLAIN_HTTP_URL.fullmatch(url) is None
    problem = url_problem(url)
    if problem is None:
        assert parse(valid(url=url)).url == url
    else:
        with pytest.raises(ValidationError, match="url"):
            parse(valid(url=url))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=DIM, max_size=DIM))
def test_the_float32_form_is_what_struct_packs_and_the_verdict_is_the_float32_one(
    numbers: list[float],
) -> None:
    """Validation packs the embedding once; its verdicts are those of the float32 numbers."""
    try:
        expected: bytes | None = struct.pack(f">{DIM}f", *numbers)
    except OverflowError:
        expected = None
    raw = valid(embedding=numbers)
    if expected is None:
        with pytest.raises(ValidationError, match="must fit in float32"):
            parse(raw, dim=DIM)
    elif all(abs(x) == 0.0 for x in struct.unpack(f">{DIM}f", expected)):
        with pytest.raises(ValidationError, match="must not be all zero"):
            parse(raw, dim=DIM)
    else:
        command = parse(raw, dim=DIM)
        assert isinstance(command.embedding, commands_module.Embedding)
        assert command.embedding.float32 == expected
        assert command.embedding == numbers


@pytest.mark.parametrize(
    ("number", "verdict"),
    [
        (FLOAT32_ZERO, "must not be all zero"),  # rounds to 0 (ties to even)
        (-FLOAT32_ZERO, "must not be all zero"),
        (2.0**-149, None),  # the smallest float32 subnormal
        (2.0**-126, None),  # 00 80 00 00: only bytes that ±0.0 is made of, yet not zero
        (-(2.0**-126), None),  # 80 80 00 00
        (commands_module.FLOAT32_OVERFLOW, "must fit in float32"),
        (-commands_module.FLOAT32_OVERFLOW, "must fit in float32"),
        (math.nextafter(commands_module.FLOAT32_OVERFLOW, 0.0), None),  # rounds to float32 max
    ],
)
def test_float32_boundaries(number: float, verdict: str | None) -> None:
    raw = valid(embedding=[number] + [0.0] * (DIM - 1))
    if verdict is None:
        assert parse(raw, dim=DIM).embedding[0] == number
    else:
        with pytest.raises(ValidationError, match=verdict):
            parse(raw, dim=DIM)
