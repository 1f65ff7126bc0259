"""Python and SQL give one verdict on a command's shape, so its error kind is right: the worker
calls `invalid` exactly what the database would refuse with SQLSTATE class 22 or 23 (SPEC §3,
§4.7). Commands are generated around the rules where the two sides used to differ: control
characters and Unicode spaces in a url, magnitudes beyond float32, schema_version null or 1.0,
the spellings of a UUID.

Not generated: U+0000 inside a title. It is valid to the contract (a JSON string) and refused
by PostgreSQL's text type (22P05), the one deliberate `constraint` case (devkit/poison.py)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import CaptureArtifactCommand
from tests.support.db_commands import DIM
from tests.support.examples import examples

EXAMPLES = 400
BASE: dict[str, Any] = {
    "command_id": "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
    "user_id": "0d7c3f2a-8e55-4c55-b2a4-1f4a7c0e9b10",
    "url": "https://example.com/a",
    "title": "a title",
    "embedding": [0.01] * DIM,
    "reading_depth": 0.5,
    "occurred_at": "2026-11-26T09:30:00+00:00",
}
MISSING = object()

UUIDS = st.sampled_from(
    [
        "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
        "5B0F6C9E-2F6F-4D43-9D0E-6F1B8C1F7A11",
        "{5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11}",
        "5b0f6c9e2f6f4d439d0e6f1b8c1f7a11",
        "5b0f-6c9e-2f6f-4d43-9d0e-6f1b-8c1f-7a11",
        "urn:uuid:5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
        "{5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a11",
        "5b0f6c9e-2f6f-4d43-9d0e-6f1b8c1f7a1",
        "not-a-uuid",
        "",
        123,
        None,
    ]
)
# Path characters: plain ones, and every class the two sides must agree on.
TRICKY = st.sampled_from(
    ["\x01", "\x1f", " ", "\t", "\n", "\x7f", "\x85", "\x9f", "\xa0", "\u1680", "\u2007",
     "\u2028", "\u202f", "\u3000", "\u200b", "é", "€", "%20", "?", "#", "/", ":"]
)  # fmt: skip
PATH = st.lists(st.one_of(st.sampled_from("abcxyz019-._~"), TRICKY), max_size=6).map("".join)
URLS = st.one_of(
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(["https", "http", "HTTP", "ftp"]),
        st.sampled_from(["example.com", "EXAMPLE.com:8080", "", ":80", "a b.com", "x.org:"]),
        PATH,
    ),
    st.sampled_from(["", "example.com/a", "https://" + "a" * 2048, 7, None]),
)
MAGNITUDES = st.sampled_from(
    [3.4028234e38, 3.4028235e38, 3.4028236e38, 3.5e38, 1e39, 1e300, 1e-44, 1e-46, 1e-50, 0.0]
)
EMBEDDINGS = st.one_of(
    st.builds(
        lambda at, x, sign: [*BASE["embedding"][:at], sign * x, *BASE["embedding"][at + 1 :]],
        st.integers(0, DIM - 1),
        st.one_of(MAGNITUDES, st.floats(allow_nan=False, allow_infinity=False, width=64)),
        st.sampled_from([1.0, -1.0]),
    ),
    st.builds(lambda x: [x] * DIM, MAGNITUDES),  # all of one tiny or huge magnitude
    st.sampled_from([[0.01] * (DIM - 1), [], [1, "2"] * (DIM // 2), "[1]"]),
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "command_id": UUIDS,
    "user_id": UUIDS,
    "url": URLS,
    "title": st.sampled_from([None, "", "x" * 512, "x" * 513, "tab\there", 5, MISSING]),
    "embedding": EMBEDDINGS,
    "reading_depth": st.sampled_from(
        [0, -0.0, 1.5, 1.5000001, -1e-300, 1e-300, 2, "0.5", None, True, MISSING]
    ),
    "occurred_at": st.sampled_from(
        ["2026-11-26T09:30:00Z", "2026-11-26T09:30:00", "2026-13-01T00:00:00Z", "soon", 17]
    ),
    "schema_version": st.sampled_from([1, 1.0, 2, 0, -1, 1.5, "1", True, None, MISSING]),
}


@st.composite
def commands(draw: st.DrawFn) -> str:
    body = dict(BASE)
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=2)):
        value = draw(FIELDS[name])
        if value is MISSING:
            body.pop(name, None)
        else:
            body[name] = value
    return json.dumps(body)


def generate() -> list[str]:
    return examples(commands(), EXAMPLES)


def python_refuses(raw: str) -> bool:
    try:
        CaptureArtifactCommand.model_validate_json(raw, context={"embedding_dim": DIM})
    except ValidationError:
        return True
    return False


async def sql_refuses(conn: asyncpg.Connection, raw: str) -> bool:
    """True for class 22/23; any other error fails the test. Nothing is kept."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.fetchval("SELECT capture.ingest_with_signal($1::jsonb)", raw)
    except asyncpg.PostgresError as exc:
        if (exc.sqlstate or "")[:2] in ("22", "23"):
            return True
        raise
    finally:
        await tx.rollback()
    return False


async def test_python_invalid_iff_sql_class_22_or_23(db_url: str) -> None:
    examples = generate()
    conn = await asyncpg.connect(db_url)
    try:
        verdicts = [(raw, python_refuses(raw), await sql_refuses(conn, raw)) for raw in examples]
    finally:
        await conn.close()
    disagreements = [
        f"python {'refuses' if py else 'accepts'}, sql {'refuses' if sql else 'accepts'}: "
        + raw.replace(json.dumps(BASE["embedding"])[1:-1], "…")[:300]
        for raw, py, sql in verdicts
        if py != sql
    ]
    assert disagreements == []
    # The generator reached both verdicts, and in numbers.
    refused = sum(py for _, py, _ in verdicts)
    assert 0.2 * len(verdicts) < refused < 0.95 * len(verdicts)
