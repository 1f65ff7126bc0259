"""asyncpg connection pool with the codecs every connection needs.

jsonb travels as text: a `str` argument is taken as already-serialised JSON and sent as is
(the worker passes the command's raw bytes decoded, no re-encoding), anything else is
serialised with orjson; jsonb results come back as Python objects (orjson again: decoding a
batch's results with json.loads was a twentieth of the worker's CPU). The pgvector codec is
registered for whichever schema holds the `vector` type (public, or extensions on Supabase).
"""

from __future__ import annotations

import struct
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import orjson
from pgvector import Vector

from worker.infrastructure.db_errors import translate_db_errors

_VECTOR_SCHEMA = """
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'vector'
"""


def _encode_json(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


_VECTOR_HEADER = struct.Struct(">HH")  # pgvector's binary form: dim, unused, then float4s


def vector_binary(embedding: bytes) -> bytes:
    """pgvector's binary form of big-endian float32 numbers: what to pass for a `vector`.

    Bytes, not a sequence of numbers: asyncpg takes any sized iterable inside a list parameter
    for one more array dimension, so a vector[] argument must hold opaque elements.
    """
    return _VECTOR_HEADER.pack(len(embedding) // 4, 0) + embedding


def encode_vector(value: Any) -> bytes:
    """The vector codec's encoder: bytes are pgvector's binary form already (vector_binary),
    anything else goes through pgvector's Vector (lists, numpy arrays)."""
    if isinstance(value, bytes):
        return value
    vector = value if isinstance(value, Vector) else Vector(value)
    binary: bytes = vector.to_binary()
    return binary


async def init_connection(conn: asyncpg.Connection) -> None:
    """Register the jsonb codec and, when pgvector is installed, the vector codec."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_json, decoder=orjson.loads, format="text"
    )
    schema = await conn.fetchval(_VECTOR_SCHEMA)
    if schema is not None:  # not migrated yet: nothing returns vectors then anyway
        # pgvector's own codec (pgvector.asyncpg.register_vector), with an encoder that also
        # takes the worker's float32 arrays without a detour through a list.
        await conn.set_type_codec(
            "vector",
            schema=schema,
            encoder=encode_vector,
            decoder=Vector.from_binary,
            format="binary",
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query (RESET ALL, UNLISTEN, advisory unlock) on release.

    Every statement through these pools is one function call in its own transaction that
    leaves no session state behind (advisory locks are transaction-scoped), and asyncpg still
    rolls back a transaction left open before calling this. The reset query was a second round
    trip per batch, a sixth of the worker's socket time at a steady rate.
    """


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float | None = 60.0,
    max_inactive_connection_lifetime: float = 300.0,
    application_name: str = "capture-worker",
    lock_timeout_ms: int | None = None,
    transaction_pooler: bool = False,
) -> asyncpg.Pool:
    """Open a pool; connection failures surface as TransientError.

    `lock_timeout_ms` bounds each wait for a lock (the per-user advisory lock, row locks):
    past it the statement fails with SQLSTATE 55P03, a TransientError, and is retried later.

    `transaction_pooler`: the DSN is a pooler in transaction mode (PgBouncer, Supavisor), which
    hands each transaction to any of its server connections. asyncpg's named prepared
    statements, cached per client connection, would then meet a server session that never
    prepared them ("prepared statement __asyncpg_stmt_1__ does not exist"), so the statement
    cache is off and each call prepares an unnamed statement. Such a pooler also refuses
    startup parameters it does not track (PgBouncer: "unsupported startup parameter:
    lock_timeout"), so lock_timeout is not sent: set it on the login role instead.
    """
    # The ingest functions require READ COMMITTED (SQLSTATE CW412 otherwise): a role or database
    # default of another level must not break the worker. A transaction pooler refuses startup
    # parameters other than its few (give them to the login with ALTER ROLE instead).
    server_settings = {"application_name": application_name}
    if not transaction_pooler:
        server_settings["default_transaction_isolation"] = "read committed"
    if lock_timeout_ms is not None and not transaction_pooler:
        server_settings["lock_timeout"] = f"{lock_timeout_ms}ms"
    with translate_db_errors("connect"):
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            max_inactive_connection_lifetime=max_inactive_connection_lifetime,
            init=init_connection,
            reset=_keep_session,
            server_settings=server_settings,
            statement_cache_size=0 if transaction_pooler else 100,
        )
    assert pool is not None  # asyncpg's stubs allow None only for the un-awaited form
    return pool


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server and credentials, another database (URL-form DSNs, as asyncpg takes)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("expected a postgresql:// URL")
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))
