"""CaptureResult v1: one event per processed command (SPEC §5)."""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.commands import SCHEMA_VERSION


class ResultStatus(StrEnum):
    INGESTED = "ingested"
    REJECTED = "rejected"


class EngagementLevel(StrEnum):
    """Ordered: captured < skimmed < read < deep."""

    CAPTURED = "captured"
    SKIMMED = "skimmed"
    READ = "read"
    DEEP = "deep"


class ErrorKind(StrEnum):
    """Why a command was rejected; every kind is permanent (it goes to the DLQ)."""

    UNDECODABLE = "undecodable"
    """The bytes are not UTF-8 JSON."""
    INVALID = "invalid"
    """JSON that breaks the contract's shape (a field missing, out of range, ...)."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """A `schema_version` other than 1."""
    OVERSIZE = "oversize"
    """Larger than the message size limit."""
    CONFLICT = "conflict"
    """A `command_id` seen before with a different payload."""
    CONSTRAINT = "constraint"
    """Refused by the database (SQLSTATE class 22 or 23)."""
    INTERNAL = "internal"
    """The worker failed on this record CAPTURE_INTERNAL_ERROR_ATTEMPTS times (a bug)."""


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ErrorKind
    message: str


class CaptureResult(BaseModel):
    """The outcome of one command. `event_id` is deterministic; consumers dedupe by it."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "8d9f0c55-2b1e-3a44-9f61-6c0f1e2d3a4b",
                    "command_id": "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
                    "user_id": "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10",
                    "status": "ingested",
                    "artifact_id": "2f1b7c0e-9a55-4c1d-8e2a-7b6c5d4e3f21",
                    "artifact_created": True,
                    "engagement_level": "read",
                    "previous_engagement_level": None,
                    "subspace_id": "6a5b4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d",
                    "subspace_created": False,
                    "assignment_margin": 0.21,
                    "runner_up_subspace_id": "1a2b3c4d-5e6f-4a0b-9c8d-7e6f5a4b3c2e",
                    "processed_at": "2026-11-26T09:30:01.250000+00:00",
                    "error": None,
                    "schema_version": 1,
                }
            ]
        },
    )

    event_id: UUID = Field(
        description="From command_id when ingested; from command_id and the payload hash "
        "when rejected, so a conflict never shares the original result's id."
    )
    command_id: UUID | None = Field(description="Null only when the command was unreadable.")
    user_id: UUID | None = Field(description="Null only when the command was unreadable.")
    status: ResultStatus
    artifact_id: UUID | None = None
    artifact_created: bool | None = None
    engagement_level: EngagementLevel | None = None
    previous_engagement_level: EngagementLevel | None = Field(
        default=None, description="The stored level before this command; null for a new artifact."
    )
    subspace_id: UUID | None = None
    subspace_created: bool | None = None
    assignment_margin: float | None = Field(
        default=None, description="Best minus second-best similarity at assignment time."
    )
    runner_up_subspace_id: UUID | None = None
    processed_at: AwareDatetime = Field(description="First processing time (stored).")
    error: ErrorInfo | None = None
    schema_version: int = SCHEMA_VERSION
