-- 0001: extension, schema, tables, seed configuration.
--
-- Plain SQL, runnable by psql:  psql -v ON_ERROR_STOP=1 -v embedding_dim=384 -1 -f 0001_schema.sql
-- `capture-worker migrate` substitutes :embedding_dim the same way (outside quotes only) and
-- records the file's checksum; never edit this file once applied, add a new migration.
--
-- The embedding dimension is fixed here, at migration time: the vector columns are typed
-- vector(:embedding_dim) and the value is recorded as system_config 'embedding.dim', which the
-- migration runner compares against before touching an existing database.

-- Supabase keeps extensions in the `extensions` schema and has vector there already; elsewhere
-- this installs it into the first schema of the search_path (normally public).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE SCHEMA IF NOT EXISTS capture;
REVOKE ALL ON SCHEMA capture FROM PUBLIC;

-- Enum order is the level order, so greatest(old, new) keeps the level monotonic.
CREATE TYPE capture.engagement_level AS ENUM ('captured', 'skimmed', 'read', 'deep');

CREATE TABLE capture.system_config (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO capture.system_config (key, value) VALUES
    ('engagement.thresholds', '{"skimmed": 0.2, "read": 0.6, "deep": 1.0}'),
    ('subspace.join_threshold', '0.45'),
    ('subspace.max_per_user', '32'),
    ('embedding.dim', to_jsonb(:embedding_dim));

-- An interest cluster. The centroid is kept as the running SUM of its members' embeddings
-- plus the member count: cosine similarity to the sum equals cosine similarity to the mean,
-- and adding a member is one vector addition (no re-averaging, no drift).
CREATE TABLE capture.subspaces (
    subspace_id         uuid PRIMARY KEY,
    user_id             uuid NOT NULL,
    founding_artifact_id uuid NOT NULL,
    centroid_sum        vector(:embedding_dim) NOT NULL,
    member_count        integer NOT NULL CHECK (member_count >= 1),
    created_at          timestamptz NOT NULL  -- occurred_at of the founding capture
) WITH (fillfactor = 50);
-- Half-empty pages: every new member rewrites the ~1.6 kB row, and the spare room lets that be
-- a HOT update (no index maintenance, page-local pruning).
CREATE INDEX subspaces_user_idx ON capture.subspaces (user_id);

-- One artifact per (user, canonical url); artifact_id = md5('artifact:'||user_id||':'||canonical_url).
CREATE TABLE capture.artifacts (
    artifact_id           uuid PRIMARY KEY,
    user_id               uuid NOT NULL,
    canonical_url         text NOT NULL,
    url                   text NOT NULL,      -- the raw url of the first capture
    title                 text,               -- latest non-null title
    embedding             vector(:embedding_dim) NOT NULL,  -- first capture's; never moves
    engagement_level      capture.engagement_level NOT NULL,
    signal_count          integer NOT NULL CHECK (signal_count >= 1),
    subspace_id           uuid NOT NULL REFERENCES capture.subspaces,
    assignment_margin     double precision,
    runner_up_subspace_id uuid,
    first_occurred_at     timestamptz NOT NULL,
    last_occurred_at      timestamptz NOT NULL,
    UNIQUE (user_id, canonical_url)
) WITH (fillfactor = 50);
-- Half-empty pages so that a re-capture (level, count, title, time: no indexed column) is a HOT
-- update: otherwise each one would add entries to every index, the HNSW index included.
CREATE INDEX artifacts_subspace_idx ON capture.artifacts (subspace_id);

-- Similarity search over captured artifacts. Named, so bulk replays can drop and recreate it
-- (capture.drop_embedding_index() / capture.create_embedding_index()).
CREATE INDEX artifacts_embedding_hnsw ON capture.artifacts
    USING hnsw (embedding vector_cosine_ops);

-- Every accepted command appends one signal; signal_id = command_id.
CREATE TABLE capture.signals (
    signal_id        uuid PRIMARY KEY,
    artifact_id      uuid NOT NULL REFERENCES capture.artifacts,
    user_id          uuid NOT NULL,
    reading_depth    double precision NOT NULL CHECK (reading_depth >= 0 AND reading_depth <= 1.5),
    engagement_level capture.engagement_level NOT NULL,  -- the level this signal alone reaches
    occurred_at      timestamptz NOT NULL
);
CREATE INDEX signals_artifact_idx ON capture.signals (artifact_id);

-- The idempotency ledger: one row per accepted command, with the hash of its normalised
-- payload and the exact result returned the first time (returned again on redelivery).
CREATE TABLE capture.command_ledger (
    command_id   uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    payload_hash uuid NOT NULL,
    result       jsonb NOT NULL,
    processed_at timestamptz NOT NULL  -- wall clock: excluded from the state digest
);

-- Results of rejected commands (status 'rejected'), keyed by their event_id, which the worker
-- derives from command_id and the payload: the first version is kept, so a redelivered poison
-- message yields the identical result event. Bookkeeping, not business state: not in the digest.
CREATE TABLE capture.rejections (
    event_id    uuid PRIMARY KEY,
    result      jsonb NOT NULL,
    recorded_at timestamptz NOT NULL
);
