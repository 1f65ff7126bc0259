"""CaptureArtifactCommand v1: a user captured an artifact (SPEC §3)."""

from __future__ import annotations

import functools
import re
import struct
from typing import Annotated
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import SchemaValidator, core_schema

SCHEMA_VERSION = 1
DEFAULT_EMBEDDING_DIM = 384
MAX_URL_LENGTH = 2048
MAX_TITLE_LENGTH = 512
MAX_READING_DEPTH = 1.5
#: Arrays and objects may nest at most this deep inside a command, unknown fields included
#: (the JSON parser's limit). A deeper document is `invalid`, whatever its fields.
MAX_NESTING_DEPTH = 200

# Characters a url must not contain: C0 and C1 controls, DEL, and every character str.isspace
# calls whitespace. The database checks the very same set (migration 0004), spelled out rather
# than a locale's [[:space:][:cntrl:]], so both sides give one verdict.
URL_FORBIDDEN = "\x00-\x20\x7f-\x9f\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_FORBIDDEN = re.compile(f"[{URL_FORBIDDEN}]")
# URLs the full check below would accept, recognised in one C-level match: scheme, a plain
# ASCII host (never empty), an optional port, then anything without a forbidden character.
# urlsplit and its hostname parsing were half of a valid command's validation time.
_PLAIN_HTTP_URL = re.compile(
    f"[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(?::[0-9]*)?(?:[/?#][^{URL_FORBIDDEN}]*)?"
)
# The spellings of a UUID PostgreSQL's uuid type reads (and so the database's checks):
# any case, a hyphen after any group of four hex digits, optionally in braces. Not "urn:uuid:".
_UUID_TEXT = re.compile(
    r"(?:[0-9A-Fa-f]{4}(?:-?[0-9A-Fa-f]{4}){7}|\{[0-9A-Fa-f]{4}(?:-?[0-9A-Fa-f]{4}){7}\})"
)
# pydantic-core's UUID parser, for the usual 8-4-4-4-12 spelling only: there it accepts exactly
# what the pattern above does (hex digits of any case), in a fifth of the time the pattern and
# uuid.UUID() take (1 vs 5 µs; with two ids per command, 8 % of the worker's CPU). It also takes
# spellings PostgreSQL refuses ("urn:uuid:..."), hence never anything else.
_HYPHENATED_UUID = SchemaValidator(core_schema.uuid_schema())
# float32 (pgvector's element type): a number of at least this magnitude rounds to infinity,
# one of at most FLOAT32_ZERO rounds to zero.
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103
FLOAT32_ZERO = 2.0**-150


class Embedding(list[float]):
    """A validated embedding: the numbers, and as `float32` the big-endian float4s they round
    to (what pgvector stores), packed once while validating so nothing packs them again."""

    __slots__ = ("float32",)

    def __init__(self, numbers: list[float], float32: bytes) -> None:
        super().__init__(numbers)
        self.float32 = float32


@functools.lru_cache(maxsize=8)
def _float32_be(dim: int) -> tuple[struct.Struct, int]:
    """The packer of `dim` float32s, and the mask of every number's bits but the sign."""
    return struct.Struct(f">{dim}f"), int.from_bytes(b"\x7f\xff\xff\xff" * dim, "big")


def pack_float32(numbers: list[float]) -> bytes:
    """Big-endian float32s; OverflowError for a number that rounds to infinity."""
    return _float32_be(len(numbers))[0].pack(*numbers)


def float32_embedding(numbers: list[float]) -> Embedding:
    """`numbers` with their float32 form; ValueError when one overflows float32 or all are zero.

    struct refuses exactly the numbers that round to infinity in float32 (magnitude from
    FLOAT32_OVERFLOW on); "all zero" is judged on the float32s (magnitude at most FLOAT32_ZERO
    rounds to zero). ±0.0 is made of the bytes 00 and 80 only, so any other byte at either end
    of the packed form settles it at once; otherwise one big-integer AND, not a pass over
    Python floats, masks every sign bit.
    """
    try:
        packed = pack_float32(numbers)
    except OverflowError:
        raise ValueError("numbers must fit in float32 (magnitude below 3.4028235e38)") from None
    if not packed.strip(b"\x00\x80") and not (
        int.from_bytes(packed, "big") & _float32_be(len(numbers))[1]
    ):
        raise ValueError("must not be all zero (as float32)")
    return Embedding(numbers, packed)


def parse_uuid(value: object) -> UUID:
    """A UUID from any spelling PostgreSQL accepts; ValueError otherwise."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        if len(value) == 36 and value[8] == value[13] == value[18] == value[23] == "-":
            try:
                parsed: UUID = _HYPHENATED_UUID.validate_python(value)
                return parsed
            except ValidationError:
                pass  # not hex: refused below, with the one message
        if _UUID_TEXT.fullmatch(value):
            return UUID(hex=value.strip("{}").replace("-", ""))
    raise ValueError("must be a UUID: 32 hex digits, hyphens and braces optional")


def url_problem(value: str) -> str | None:
    """Why `value` is not an http(s) URL with a host and no whitespace; None when it is."""
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http(s) URL"
    if _FORBIDDEN.search(value):
        return "must not contain whitespace or control characters"
    if not parts.hostname:
        return "must have a host"
    return None


class CaptureArtifactCommand(BaseModel):
    """Capture an artifact for a user; `command_id` is the idempotency key.

    Validate with `model_validate_json(raw, context={"embedding_dim": D})` when the
    deployment's dimension is not the default 384. Unknown fields are ignored (never
    validated, never sent on), as long as nothing nests deeper than MAX_NESTING_DEPTH.
    The example's embedding is shortened to 3 numbers for reading.
    """

    model_config = ConfigDict(
        frozen=True,
        strict=True,
        extra="ignore",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "command_id": "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
                    "user_id": "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10",
                    "url": "https://example.com/articles/kafka-exactly-once",
                    "title": "Exactly-once effects on at-least-once delivery",
                    "embedding": [0.12, -0.03, 0.4],
                    "reading_depth": 0.75,
                    "occurred_at": "2026-11-26T09:30:00+00:00",
                    "schema_version": 1,
                }
            ]
        },
    )

    command_id: UUID = Field(
        description="Idempotency key; a producer retry reuses it with the same payload."
    )
    user_id: UUID = Field(description="The capturing user; equals the Kafka record key.")
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH)] = Field(
        description="http(s) URL of the artifact; identity is (user_id, canonical url).",
        # Documents the scheme rule for non-Python producers; `_http_url` enforces it.
        json_schema_extra={"format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"},
    )
    title: Annotated[str, Field(max_length=MAX_TITLE_LENGTH)] | None = Field(
        default=None, description="Optional title."
    )
    embedding: list[float] = Field(
        description=(
            f"Content embedding: exactly EMBEDDING_DIM finite numbers (default "
            f"{DEFAULT_EMBEDDING_DIM}; the deployment's CAPTURE_EMBEDDING_DIM), not all zero."
        ),
        min_length=1,
    )
    reading_depth: float = Field(
        ge=0.0,
        le=MAX_READING_DEPTH,
        description="How deeply it was read; above 1.0 means re-reading.",
    )
    occurred_at: AwareDatetime = Field(
        description="RFC 3339 time of the capture, with offset; the database's clock for state."
    )
    schema_version: int = Field(
        default=SCHEMA_VERSION,
        description="Contract version; only 1 is accepted.",
        json_schema_extra={"const": SCHEMA_VERSION},
    )

    @field_validator("command_id", "user_id", mode="before")
    @classmethod
    def _uuid_text(cls, value: object) -> UUID:
        return parse_uuid(value)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if _PLAIN_HTTP_URL.fullmatch(value):
            return value
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("embedding")
    @classmethod
    def _embedding_shape(cls, value: list[float], info: ValidationInfo) -> list[float]:
        context = info.context if isinstance(info.context, dict) else {}
        dim = int(context.get("embedding_dim", DEFAULT_EMBEDDING_DIM))
        if len(value) != dim:
            raise ValueError(f"must have exactly {dim} numbers, got {len(value)}")
        # NaN, Infinity and 1e999 were refused item by item (`allow_inf_nan=False`). What is
        # left is float32's range, as the database stores the numbers.
        return float32_embedding(value)

    @field_validator("schema_version", mode="before")
    @classmethod
    def _version_number(cls, value: object) -> object:
        # A JSON number equal to 1 is 1 (1.0, 1e0), as for the database; null is not absent.
        if value is None:
            raise ValueError("unsupported schema_version null; this worker reads 1")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("schema_version")
    @classmethod
    def _supported_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported schema_version {value}; this worker reads {SCHEMA_VERSION}"
            )
        return value
