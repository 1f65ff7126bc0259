-- 0004: definer-rights code that no caller can redirect, and the smaller holes found with it.
--
-- 1. Every function is redefined with
--        SET search_path = pg_catalog, capture, extensions, public, pg_temp
--    and names every relation and every function of ours with its schema. Before, pg_temp was
--    not listed, and PostgreSQL then searches it FIRST: a capture_worker login (TEMP comes
--    through PUBLIC) could `CREATE TEMP TABLE command_ledger (...)` and ingest_with_signal,
--    running with its owner's rights, read and wrote that table instead of the ledger.
--    The order (PostgreSQL manual, "Writing SECURITY DEFINER Functions Safely"):
--      pg_catalog  first, so built-ins cannot be shadowed;
--      capture     our own types (engagement_level, ingest_config);
--      extensions  pgvector on Supabase: ahead of public, where many roles may create objects,
--                  so nothing created in public can shadow its type or operators there;
--      public      pgvector everywhere else (CREATE EXTENSION puts it there); when vector lives
--                  in public, public is the only schema holding it, so nothing can shadow it
--                  from an earlier schema (pg_catalog and capture accept no caller objects);
--      pg_temp     last: a temporary object can then only be found where nothing else matches,
--                  and every relation below is schema-qualified, so none ever is.
--    Every function added later must pin the same path (tests/integration/db/test_definer.py
--    checks pg_proc.proconfig of every function in schema capture).
-- 2. The ingest functions refuse to run outside READ COMMITTED (SQLSTATE CW412): their
--    per-user advisory lock relies on each statement taking a new snapshot; under REPEATABLE
--    READ a valid command then failed with 23505 and was dead-lettered.
-- 3. Shape rules agree with the worker's (contracts/commands.py), so a refused command gets the
--    right error kind: url characters are one explicit set (control characters, whitespace as
--    Python's str.isspace sees it), no longer the locale-dependent [[:space:][:cntrl:]];
--    schema_version null is refused (only an absent field defaults to 1).
-- 4. A subspace's running sum can no longer overflow float32 (22003 dead-lettered a valid
--    command, depending on earlier ones): the sum is kept as centroid_sum * 2^centroid_scale,
--    and centroid_scale only grows when an addition would overflow. Cosine similarity does not
--    depend on the scale, and for every history that never came near float32's limit the
--    stored values, assignments and the state digest are exactly those of before.
--
-- Functions keep their owner, signature and grants (CREATE OR REPLACE).

ALTER TABLE capture.subspaces
    ADD COLUMN centroid_scale integer NOT NULL DEFAULT 0 CHECK (centroid_scale >= 0);
COMMENT ON COLUMN capture.subspaces.centroid_scale IS
    'the running sum of the members'' embeddings is centroid_sum * 2^centroid_scale';

-- Raises CW412 unless the transaction is READ COMMITTED (see 2. above).
CREATE FUNCTION capture._require_read_committed(caller text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '% must run in READ COMMITTED, not %', caller,
            upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'CW412',
                  HINT = 'the per-user lock needs a new snapshot per statement; '
                         'do not change default_transaction_isolation for this role';
    END IF;
END;
$$;

-- v * f, element-wise, for a power of two f (exact, short of float32 underflow).
CREATE FUNCTION capture._vector_times(v vector, f double precision) RETURNS vector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$ SELECT v * array_fill(f::real, ARRAY[vector_dims(v)])::vector $$;

-- The running sum s * 2^scale plus x, as (sum, scale). The scale grows by one when s + x could
-- overflow float32: halving both terms keeps every element within float32's range. Norms are
-- computed in double precision; 1e38 leaves room below float32's 3.4e38.
CREATE FUNCTION capture._centroid_plus(s vector, scale integer, x vector,
                                       OUT sum vector, OUT new_scale integer)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
DECLARE
    x_scaled vector := CASE WHEN scale = 0 THEN x ELSE capture._vector_times(x, 2.0 ^ (-scale)) END;
BEGIN
    IF vector_norm(s) + vector_norm(x_scaled) < 1e38 THEN
        sum := s + x_scaled;
        new_scale := scale;
    ELSE
        sum := capture._vector_times(s, 0.5) + capture._vector_times(x, 2.0 ^ (-scale - 1));
        new_scale := scale + 1;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION capture.canonical_url(url text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
DECLARE
    upper_az  CONSTANT text := 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
    lower_az  CONSTANT text := 'abcdefghijklmnopqrstuvwxyz';
    sep       integer := strpos(url, '://');
    scheme    text;
    rest      text;
    authority text;
    tail      text;
    host      text;
    port      text;
    digits    text;
    i         integer;
BEGIN
    IF sep < 2 THEN
        RETURN url;
    END IF;
    scheme := translate(left(url, sep - 1), upper_az, lower_az);
    rest := substr(url, sep + 3);
    -- The authority runs up to the first '/', '?' or '#'; path and query follow.
    authority := split_part(split_part(split_part(rest, '/', 1), '?', 1), '#', 1);
    tail := substr(rest, length(authority) + 1);
    i := strpos(tail, '#');
    IF i > 0 THEN
        tail := left(tail, i - 1);
    END IF;
    -- Userinfo ends at the authority's last '@'.
    i := strpos(reverse(authority), '@');
    IF i > 0 THEN
        authority := right(authority, i - 1);
    END IF;
    IF left(authority, 1) = '[' AND strpos(authority, ']') > 0 THEN  -- IPv6 literal
        i := strpos(authority, ']');
        host := left(authority, i);
        port := substr(authority, i + 1);
    ELSE
        i := strpos(authority, ':');
        host := CASE WHEN i > 0 THEN left(authority, i - 1) ELSE authority END;
        port := CASE WHEN i > 0 THEN substr(authority, i) ELSE '' END;
    END IF;
    digits := substr(port, 2);
    IF left(port, 1) = ':' AND translate(digits, '0123456789', '') = '' THEN
        IF digits = '' THEN
            port := '';
        ELSE
            digits := coalesce(nullif(ltrim(digits, '0'), ''), '0');
            port := CASE WHEN (scheme = 'http' AND digits = '80')
                           OR (scheme = 'https' AND digits = '443') THEN ''
                         ELSE ':' || digits END;
        END IF;
    END IF;
    RETURN scheme || '://' || translate(host, upper_az, lower_az) || port
        || CASE WHEN tail = '' OR left(tail, 1) = '?' THEN '/' ELSE '' END || tail;
END;
$$;

-- Raises the shape error for a field that is missing/null (23502) or of the wrong JSON type
-- (22023). Only ever called on the error path.
CREATE OR REPLACE FUNCTION capture._shape_error(field text, value jsonb, expected text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
BEGIN
    IF value IS NULL OR jsonb_typeof(value) = 'null' THEN
        RAISE EXCEPTION '%: required', field USING ERRCODE = '23502';
    END IF;
    RAISE EXCEPTION '%: expected %, got %', field, expected, jsonb_typeof(value)
        USING ERRCODE = '22023';
END;
$$;

-- Timestamps in results and state: RFC 3339 in UTC, independent of the session's TimeZone.
CREATE OR REPLACE FUNCTION capture._utc(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') $$;

-- The settings ingest reads from system_config, each with its default: a missing or malformed
-- value falls back instead of failing commands (a bad config must never dead-letter messages).

CREATE OR REPLACE FUNCTION capture._ingest_config() RETURNS capture.ingest_config
LANGUAGE sql STABLE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
    SELECT ROW(
        CASE WHEN jsonb_typeof(c->'engagement.thresholds'->'skimmed') = 'number'
             THEN (c->'engagement.thresholds'->>'skimmed')::float8 ELSE 0.2 END,
        CASE WHEN jsonb_typeof(c->'engagement.thresholds'->'read') = 'number'
             THEN (c->'engagement.thresholds'->>'read')::float8 ELSE 0.6 END,
        CASE WHEN jsonb_typeof(c->'engagement.thresholds'->'deep') = 'number'
             THEN (c->'engagement.thresholds'->>'deep')::float8 ELSE 1.0 END,
        CASE WHEN jsonb_typeof(c->'subspace.join_threshold') = 'number'
             THEN (c->>'subspace.join_threshold')::float8 ELSE 0.45 END,
        CASE WHEN jsonb_typeof(c->'subspace.max_per_user') = 'number'
             THEN floor((c->>'subspace.max_per_user')::numeric)::integer ELSE 32 END,
        CASE WHEN jsonb_typeof(c->'embedding.dim') = 'number'
             THEN (c->>'embedding.dim')::integer END
    )::capture.ingest_config
    FROM (SELECT jsonb_object_agg(key, value) AS c FROM capture.system_config) cfg
$$;

-- ---------------------------------------------------------------------------------------------
-- _ingest(command, config): the body of ingest_with_signal (SPEC §4, §5), with the settings
-- passed in so that ingest_batch reads them once per call. Runs in the caller's transaction,
-- which must be READ COMMITTED (the default): the per-user advisory lock then gives every
-- later statement a snapshot that includes the previous holder's commit.
--
-- Errors (nothing is written; the caller's transaction or subtransaction is aborted):
--   22xxx / 23502   shape: the message starts with the field name ("embedding: ...")
--   CW409           the command_id was processed before with a different payload
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION capture._ingest(command jsonb, cfg capture.ingest_config) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
DECLARE
    v_command_id  uuid;
    v_user_id     uuid;
    v_url         text;
    v_title       text;
    v_embedding   vector;
    v_depth       double precision;
    v_occurred    timestamptz;
    v_item        jsonb;
    v_field       text;
    v_hash        uuid;
    v_canonical   text;
    v_artifact_id uuid;
    v_created     boolean;
    v_signal_lvl  capture.engagement_level;
    v_prev        capture.engagement_level;
    v_level       capture.engagement_level;
    v_subspace_id uuid;
    v_sub_created boolean := false;
    v_margin      double precision;
    v_runner_up   uuid;
    v_n           integer := 0;
    v_best_id     uuid;
    v_best        double precision;
    v_second_id   uuid;
    v_second      double precision;
    v_row         record;
    v_stored_hash uuid;
    v_result      jsonb;
    v_now         timestamptz;
BEGIN
    -- 7. Shape, repeated from the worker (defence in depth). JSON types first ...
    IF jsonb_typeof(command) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'command: expected a JSON object, got %', coalesce(jsonb_typeof(command), 'null')
            USING ERRCODE = '22023';
    END IF;
    IF jsonb_typeof(command->'command_id') IS DISTINCT FROM 'string' THEN
        PERFORM capture._shape_error('command_id', command->'command_id', 'a UUID string');
    END IF;
    IF jsonb_typeof(command->'user_id') IS DISTINCT FROM 'string' THEN
        PERFORM capture._shape_error('user_id', command->'user_id', 'a UUID string');
    END IF;
    IF jsonb_typeof(command->'url') IS DISTINCT FROM 'string' THEN
        PERFORM capture._shape_error('url', command->'url', 'a string');
    END IF;
    v_item := command->'title';
    IF v_item IS NOT NULL AND jsonb_typeof(v_item) NOT IN ('string', 'null') THEN
        PERFORM capture._shape_error('title', v_item, 'a string or null');
    END IF;
    IF jsonb_typeof(command->'embedding') IS DISTINCT FROM 'array' THEN
        PERFORM capture._shape_error('embedding', command->'embedding', 'an array of numbers');
    END IF;
    IF jsonb_typeof(command->'reading_depth') IS DISTINCT FROM 'number' THEN
        PERFORM capture._shape_error('reading_depth', command->'reading_depth', 'a number');
    END IF;
    IF jsonb_typeof(command->'occurred_at') IS DISTINCT FROM 'string' THEN
        PERFORM capture._shape_error('occurred_at', command->'occurred_at', 'an RFC 3339 timestamp string');
    END IF;
    v_item := command->'schema_version';
    -- Absent means 1; null is a value, and not 1. A number equal to 1 (1.0, 1e0) is 1.
    IF v_item IS NOT NULL AND v_item IS DISTINCT FROM '1'::jsonb THEN
        RAISE EXCEPTION 'schema_version: unsupported %, only 1 is accepted', v_item
            USING ERRCODE = '22023';
    END IF;

    -- ... then values. One block names the field of any cast that fails, keeping PostgreSQL's
    -- own SQLSTATE (22P02 bad uuid or vector, 22003 out of range, 22007/22008 bad timestamp).
    v_url := command->>'url';
    v_title := command->>'title';
    v_item := command->'embedding';
    IF cfg.embedding_dim IS NOT NULL AND jsonb_array_length(v_item) <> cfg.embedding_dim THEN
        RAISE EXCEPTION 'embedding: expected % dimensions, got %', cfg.embedding_dim, jsonb_array_length(v_item)
            USING ERRCODE = '22023';
    END IF;
    -- PostgreSQL would read a timestamp without offset in the session's time zone: refuse it.
    IF (command->>'occurred_at') !~* '[0-9]:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)? *(z|[+-][0-9]{2}(:?[0-9]{2})?)$' THEN
        RAISE EXCEPTION 'occurred_at: % is not a timestamp with a UTC offset', command->'occurred_at'
            USING ERRCODE = '22007';
    END IF;
    BEGIN
        v_field := 'command_id';
        v_command_id := (command->>'command_id')::uuid;
        v_field := 'user_id';
        v_user_id := (command->>'user_id')::uuid;
        v_field := 'embedding';
        v_embedding := v_item::text::vector;  -- rejects "NaN"/"Infinity" strings and overflow
        v_field := 'reading_depth';
        v_depth := (command->>'reading_depth')::float8;
        v_field := 'occurred_at';
        v_occurred := (command->>'occurred_at')::timestamptz;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION '%: %', v_field, SQLERRM USING ERRCODE = SQLSTATE;
    END;
    IF char_length(v_url) > 2048 THEN
        RAISE EXCEPTION 'url: at most 2048 characters, got %', char_length(v_url) USING ERRCODE = '22001';
    END IF;
    IF v_url !~* '^https?://' THEN
        RAISE EXCEPTION 'url: must be an http(s) URL' USING ERRCODE = '22023';
    END IF;
    -- The same set as contracts.commands.URL_FORBIDDEN: C0 and C1 controls, DEL, and what
    -- Python's str.isspace calls whitespace. Explicit, so the database's locale plays no part.
    IF v_url ~ '[\x01-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]' THEN
        RAISE EXCEPTION 'url: must not contain whitespace or control characters' USING ERRCODE = '22023';
    END IF;
    v_canonical := capture.canonical_url(v_url);
    IF v_canonical !~* '^https?://[^/?#:]' THEN
        RAISE EXCEPTION 'url: must have a host' USING ERRCODE = '22023';
    END IF;
    IF char_length(v_title) > 512 THEN
        RAISE EXCEPTION 'title: at most 512 characters, got %', char_length(v_title) USING ERRCODE = '22001';
    END IF;
    IF vector_norm(v_embedding) = 0 THEN
        RAISE EXCEPTION 'embedding: must not be all zero' USING ERRCODE = '22023';
    END IF;
    IF NOT (v_depth >= 0 AND v_depth <= 1.5) THEN
        RAISE EXCEPTION 'reading_depth: must be between 0.0 and 1.5, got %', command->'reading_depth'
            USING ERRCODE = '22003';
    END IF;

    -- Hash of the normalised payload: uuids as canonical text, floats in binary (so neither a
    -- JSON re-serialisation nor the session's float settings change it), time as UTC epoch.
    -- Unknown fields take no part.
    v_hash := md5(
        convert_to(jsonb_build_array(v_command_id, v_user_id, v_url, v_title,
                                     extract(epoch FROM v_occurred), 1)::text, 'UTF8')
        || float8send(v_depth) || vector_send(v_embedding))::uuid;

    -- 6. Serialise per user: everything below reads and writes only this user's rows.
    PERFORM pg_advisory_xact_lock(uuid_hash_extended(v_user_id, 0));

    -- 1. Idempotency.
    SELECT payload_hash, result INTO v_stored_hash, v_result
    FROM capture.command_ledger WHERE command_id = v_command_id;
    IF FOUND THEN
        IF v_stored_hash = v_hash THEN
            RETURN v_result;
        END IF;
        RAISE EXCEPTION 'command_id %: already processed with a different payload', v_command_id
            USING ERRCODE = 'CW409';
    END IF;

    -- 4. The level this signal reaches, with the thresholds of this moment.
    v_signal_lvl := CASE
        WHEN v_depth >= cfg.deep THEN 'deep'
        WHEN v_depth >= cfg.read THEN 'read'
        WHEN v_depth >= cfg.skimmed THEN 'skimmed'
        ELSE 'captured' END;

    -- 2. Artifact upsert.
    v_artifact_id := md5('artifact:' || v_user_id || ':' || v_canonical)::uuid;
    SELECT engagement_level, subspace_id, assignment_margin, runner_up_subspace_id
    INTO v_prev, v_subspace_id, v_margin, v_runner_up
    FROM capture.artifacts WHERE artifact_id = v_artifact_id;
    v_created := NOT FOUND;

    IF NOT v_created THEN
        -- A re-capture: the level only rises; the assignment and the first embedding stay.
        v_level := greatest(v_prev, v_signal_lvl);
        UPDATE capture.artifacts SET
            engagement_level = v_level,
            signal_count = signal_count + 1,
            title = coalesce(v_title, title),
            last_occurred_at = greatest(last_occurred_at, v_occurred)
        WHERE artifact_id = v_artifact_id;
    ELSE
        v_level := v_signal_lvl;
        -- 5. Subspace assignment, against the centroids as they are before this artifact.
        -- The two best by similarity (ties by id, for determinism) and how many there are.
        -- A zero-length centroid sum gives NaN similarity; it counts as 0.
        FOR v_row IN
            SELECT subspace_id AS id,
                   coalesce(nullif(1 - (centroid_sum <=> v_embedding), 'NaN'::float8), 0) AS sim
            FROM capture.subspaces WHERE user_id = v_user_id
        LOOP
            v_n := v_n + 1;
            IF v_best_id IS NULL OR v_row.sim > v_best OR (v_row.sim = v_best AND v_row.id < v_best_id) THEN
                v_second_id := v_best_id; v_second := v_best;
                v_best_id := v_row.id; v_best := v_row.sim;
            ELSIF v_second_id IS NULL OR v_row.sim > v_second OR (v_row.sim = v_second AND v_row.id < v_second_id) THEN
                v_second_id := v_row.id; v_second := v_row.sim;
            END IF;
        END LOOP;

        IF v_n = 0 OR (v_best < cfg.join_threshold AND v_n < cfg.max_per_user) THEN
            -- A new subspace, founded by this artifact: similarity 1.0, ahead of the best one.
            v_subspace_id := md5('subspace:' || v_artifact_id)::uuid;
            v_sub_created := true;
            INSERT INTO capture.subspaces (subspace_id, user_id, founding_artifact_id, centroid_sum,
                                   member_count, created_at)
            VALUES (v_subspace_id, v_user_id, v_artifact_id, v_embedding, 1, v_occurred);
            v_margin := 1.0 - v_best;  -- null when the user had none
            v_runner_up := v_best_id;
        ELSE
            v_subspace_id := v_best_id;
            -- The plain float32 addition while it cannot overflow (every realistic history);
            -- otherwise _centroid_plus rescales (see centroid_scale).
            UPDATE capture.subspaces SET centroid_sum = centroid_sum + v_embedding,
                                         member_count = member_count + 1
            WHERE subspace_id = v_subspace_id AND centroid_scale = 0
              AND vector_norm(centroid_sum) + vector_norm(v_embedding) < 1e38;
            IF NOT FOUND THEN
                UPDATE capture.subspaces s SET (centroid_sum, centroid_scale) =
                        (SELECT p.sum, p.new_scale
                         FROM capture._centroid_plus(s.centroid_sum, s.centroid_scale, v_embedding) p),
                    member_count = member_count + 1
                WHERE s.subspace_id = v_subspace_id;
            END IF;
            v_margin := v_best - v_second;  -- null when it was the only one
            v_runner_up := v_second_id;
        END IF;

        INSERT INTO capture.artifacts (artifact_id, user_id, canonical_url, url, title, embedding,
                               engagement_level, signal_count, subspace_id, assignment_margin,
                               runner_up_subspace_id, first_occurred_at, last_occurred_at)
        VALUES (v_artifact_id, v_user_id, v_canonical, v_url, v_title, v_embedding,
                v_level, 1, v_subspace_id, v_margin, v_runner_up, v_occurred, v_occurred);
    END IF;

    v_now := clock_timestamp();
    v_result := jsonb_build_object(
        'event_id', md5('capture.result:' || v_command_id)::uuid,
        'command_id', v_command_id,
        'user_id', v_user_id,
        'status', 'ingested',
        'artifact_id', v_artifact_id,
        'artifact_created', v_created,
        'engagement_level', v_level,
        'previous_engagement_level', v_prev,
        'subspace_id', v_subspace_id,
        'subspace_created', v_sub_created,
        'assignment_margin', v_margin::numeric,  -- numeric: text form independent of the session
        'runner_up_subspace_id', v_runner_up,
        'processed_at', to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        'error', NULL,
        'schema_version', 1);

    -- Claim the command_id before the signal row uses it as its key. The user lock already
    -- ruled out this user; a concurrent holder can only be another user with the same id
    -- (so another payload): wait for it, and if it committed, this is a conflict.
    INSERT INTO capture.command_ledger (command_id, user_id, payload_hash, result, processed_at)
    VALUES (v_command_id, v_user_id, v_hash, v_result, v_now)
    ON CONFLICT (command_id) DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'command_id %: already processed with a different payload', v_command_id
            USING ERRCODE = 'CW409';
    END IF;

    -- 3. The signal.
    INSERT INTO capture.signals (signal_id, artifact_id, user_id, reading_depth, engagement_level, occurred_at)
    VALUES (v_command_id, v_artifact_id, v_user_id, v_depth, v_signal_lvl, v_occurred);

    RETURN v_result;
END;
$$;

-- ingest_with_signal(command jsonb) -> the CaptureResult object. See _ingest for the errors.
CREATE OR REPLACE FUNCTION capture.ingest_with_signal(command jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
BEGIN
    PERFORM capture._require_read_committed('capture.ingest_with_signal');
    RETURN capture._ingest(command, capture._ingest_config());
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- ingest_batch(commands jsonb array) -> jsonb array, same order, one element per command:
-- the CaptureResult, or {"command_id", "error": {"kind", "message", "sqlstate"}} when that
-- command was refused (class 22/23 -> "constraint", CW409 -> "conflict"); each command runs in
-- its own subtransaction, so a refused one leaves no trace while the others commit. Any other
-- error (deadlock, serialization failure, lost connection, ...) aborts the whole call: retry it.
-- Same semantics as one ingest_with_signal per element, in order; the settings are read once.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION capture.ingest_batch(commands jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
DECLARE
    v_cfg     capture.ingest_config := capture._ingest_config();
    v_key     bigint;
    v_command jsonb;
    v_results jsonb[] := '{}';
BEGIN
    PERFORM capture._require_read_committed('capture.ingest_batch');
    IF jsonb_typeof(commands) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'commands: expected a JSON array, got %', coalesce(jsonb_typeof(commands), 'null')
            USING ERRCODE = '22023';
    END IF;

    -- Take all the batch's user locks up front, in one global order, so that two batches
    -- sharing users cannot deadlock; each command re-takes its own lock (a no-op then).
    -- Only ids the uuid cast accepts are locked here; the others fail in their own element.
    FOR v_key IN
        SELECT DISTINCT uuid_hash_extended((c->>'user_id')::uuid, 0)
        FROM jsonb_array_elements(commands) AS e(c)
        WHERE jsonb_typeof(c->'user_id') = 'string'
          AND (c->>'user_id') ~* '^([0-9a-f]{4}(-?[0-9a-f]{4}){7}|[{][0-9a-f]{4}(-?[0-9a-f]{4}){7}[}])$'
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    FOR v_command IN SELECT c FROM jsonb_array_elements(commands) AS e(c) LOOP
        BEGIN
            v_results := array_append(v_results, capture._ingest(v_command, v_cfg));
        EXCEPTION WHEN data_exception OR integrity_constraint_violation OR SQLSTATE 'CW409' THEN
            v_results := array_append(v_results, jsonb_build_object(
                'command_id', v_command->'command_id',
                'error', jsonb_build_object(
                    'kind', CASE WHEN SQLSTATE = 'CW409' THEN 'conflict' ELSE 'constraint' END,
                    'message', SQLERRM,
                    'sqlstate', SQLSTATE)));
        END;
    END LOOP;
    RETURN to_jsonb(v_results);
END;
$$;

-- record_rejections(results jsonb array) -> jsonb array, same order: stores each rejected
-- result under its event_id unless one is stored already, and returns the stored (first)
-- versions, so a poison message delivered twice gives byte-identical result events.
CREATE OR REPLACE FUNCTION capture.record_rejections(results jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
BEGIN
    IF jsonb_typeof(results) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'results: expected a JSON array, got %', coalesce(jsonb_typeof(results), 'null')
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(results) AS e(r)
               WHERE jsonb_typeof(r->'event_id') IS DISTINCT FROM 'string') THEN
        RAISE EXCEPTION 'results: every element needs an event_id string' USING ERRCODE = '23502';
    END IF;
    INSERT INTO capture.rejections (event_id, result, recorded_at)
    SELECT (r->>'event_id')::uuid, r, clock_timestamp()
    FROM jsonb_array_elements(results) AS e(r)
    ON CONFLICT (event_id) DO NOTHING;
    RETURN (SELECT coalesce(jsonb_agg(j.result ORDER BY e.ord), '[]')
            FROM jsonb_array_elements(results) WITH ORDINALITY AS e(r, ord)
            JOIN capture.rejections j ON j.event_id = (e.r->>'event_id')::uuid);
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- Read side.
-- ---------------------------------------------------------------------------------------------

-- One artifact as the CLI and the tests see it (helper; not granted).
CREATE OR REPLACE FUNCTION capture._artifact_json(a capture.artifacts) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
    SELECT jsonb_build_object(
        'artifact_id', a.artifact_id,
        'user_id', a.user_id,
        'url', a.url,
        'canonical_url', a.canonical_url,
        'title', a.title,
        'engagement_level', a.engagement_level,
        'signal_count', a.signal_count,
        'subspace_id', a.subspace_id,
        'assignment_margin', a.assignment_margin::numeric,
        'runner_up_subspace_id', a.runner_up_subspace_id,
        'first_occurred_at', capture._utc(a.first_occurred_at),
        'last_occurred_at', capture._utc(a.last_occurred_at))
$$;

-- The artifact the user captured at this url (any spelling of it), or null.
CREATE OR REPLACE FUNCTION capture.capture_artifact_state(user_id uuid, url text) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
    SELECT capture._artifact_json(a) FROM capture.artifacts a
    WHERE a.artifact_id = md5('artifact:' || $1 || ':' || capture.canonical_url($2))::uuid
$$;

-- All of a user's artifacts, oldest first, as a JSON array ([] when none).
CREATE OR REPLACE FUNCTION capture.user_artifacts(user_id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(capture._artifact_json(a) ORDER BY a.first_occurred_at, a.artifact_id), '[]')
    FROM capture.artifacts a WHERE a.user_id = $1
$$;

-- system_config as one object, for the worker's fail-soft cache.
CREATE OR REPLACE FUNCTION capture.get_config() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$ SELECT coalesce(jsonb_object_agg(key, value), '{}') FROM capture.system_config $$;

-- A deterministic hash of the whole business state: subspaces, artifacts, signals and the
-- ledger's payload hashes and results, minus wall-clock bookkeeping (processed_at). Replaying
-- the same commands, in any interleaving that keeps each user's order, gives the same digest.
-- The SET clauses make the text forms independent of the calling session.
CREATE OR REPLACE FUNCTION capture.capture_state_digest() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
AS $$
    SELECT encode(sha256(convert_to(concat_ws(E'\n',
        'capture-state-v1',
        (SELECT coalesce(string_agg(md5(ROW(s.subspace_id, s.user_id, s.founding_artifact_id,
                 s.centroid_sum, s.member_count, s.created_at)::text
                 -- only a rescaled sum adds to the text: digests of before 0004 stay valid
                 || CASE WHEN s.centroid_scale = 0 THEN '' ELSE ' scale ' || s.centroid_scale END),
                 '' ORDER BY s.subspace_id), '')
         FROM capture.subspaces s),
        (SELECT coalesce(string_agg(md5(ROW(a.artifact_id, a.user_id, a.canonical_url, a.url,
                 a.title, a.embedding, a.engagement_level, a.signal_count, a.subspace_id,
                 a.assignment_margin, a.runner_up_subspace_id, a.first_occurred_at,
                 a.last_occurred_at)::text), '' ORDER BY a.artifact_id), '')
         FROM capture.artifacts a),
        (SELECT coalesce(string_agg(md5(ROW(g.signal_id, g.artifact_id, g.user_id,
                 g.reading_depth, g.engagement_level, g.occurred_at)::text), '' ORDER BY g.signal_id), '')
         FROM capture.signals g),
        (SELECT coalesce(string_agg(md5(ROW(l.command_id, l.user_id, l.payload_hash,
                 l.result - 'processed_at')::text), '' ORDER BY l.command_id), '')
         FROM capture.command_ledger l)
    ), 'UTF8')), 'hex')
$$;

-- ---------------------------------------------------------------------------------------------
-- Admin only (not granted to the worker role).
-- ---------------------------------------------------------------------------------------------

-- Empties the business state, the ledger and the stored rejections (for `replay --reset`);
-- keeps system_config.
CREATE OR REPLACE FUNCTION capture.reset_state() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
BEGIN
    TRUNCATE capture.signals, capture.artifacts, capture.subspaces, capture.command_ledger,
             capture.rejections;
END;
$$;

-- Bulk replays go faster without maintaining the HNSW index per row: drop, replay, recreate.
CREATE OR REPLACE FUNCTION capture.drop_embedding_index() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
BEGIN
    DROP INDEX IF EXISTS capture.artifacts_embedding_hnsw;
END;
$$;

CREATE OR REPLACE FUNCTION capture.create_embedding_index() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
BEGIN
    CREATE INDEX IF NOT EXISTS artifacts_embedding_hnsw ON capture.artifacts
        USING hnsw (embedding vector_cosine_ops);
END;
$$;

-- The helpers created above are executable by PUBLIC by default; they are internal.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA capture FROM PUBLIC;
