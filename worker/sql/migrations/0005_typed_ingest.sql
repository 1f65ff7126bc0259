-- 0005: the typed, binary batch ingest beside the JSON one.
--
-- The worker has decoded and validated every command already, so it sends the batch as typed
-- arrays (uuid[], text[], vector[] in pgvector's binary form, float8[], timestamptz[]): no JSON
-- is parsed here and no embedding goes through text. Same semantics as one
-- ingest_with_signal(jsonb) per element, in order; ingest_with_signal stays the contract and the
-- reference (a differential test feeds both the same streams and compares results and digests).
--
-- No subtransaction per command in the common case: every reason to refuse a command (shape,
-- a command_id reused with another payload) is found BEFORE that command writes anything, and
-- a refused command comes back as an error element instead of raising; so the batch writes
-- without savepoints. Only a write that fails unexpectedly (a concurrent transaction claimed the
-- same command_id for another user, a constraint the checks did not foresee) aborts the call;
-- the caller then repeats it with isolate => true, where each command runs in its own
-- subtransaction as ingest_batch does. (100 savepoints that write per batch overflowed
-- PostgreSQL's 64-entry per-backend subtransaction cache and slowed every concurrent snapshot.)
--
-- What does not depend on the order of the commands is done for the whole batch in one
-- statement each: shape checks, canonical urls, payload hashes and the ledger lookup before the
-- loop, the ledger and signal rows after it. The loop keeps only what must follow the order (a
-- user's artifacts and subspaces, repeats and conflicts within the batch).
--
-- Security (the rule for every SECURITY DEFINER function from 0004 on): the entry point pins
-- search_path with pg_temp last, and every relation and function of ours is schema-qualified,
-- so that a caller's temp tables can never stand in for ours. Operators and types of pgvector
-- resolve through `extensions` (Supabase) or `public`. The work is in one function with its own
-- pinned path, called once per batch: no per-command function call (each call of a function
-- with a SET clause saves and restores the setting, and such a function is never inlined).

-- ---------------------------------------------------------------------------------------------
-- _typed_batch(cfg, arrays) -> jsonb array of results / error elements, the fast path of
-- ingest_typed (see the header): no subtransaction, raises only when a write fails. The caller
-- holds the users' locks and has checked the arrays' lengths. Not granted to anyone.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION capture._typed_batch(
    cfg capture.ingest_config,
    command_ids uuid[],
    user_ids uuid[],
    urls text[],
    titles text[],
    embeddings vector[],
    reading_depths double precision[],
    occurred_ats timestamptz[]
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
DECLARE
    v_n           integer := cardinality(command_ids);
    v_results     jsonb[] := '{}';
    v_result      jsonb;
    v_canonical   text[];
    v_problems    text[];
    v_hash        uuid[];
    v_levels      capture.engagement_level[];
    v_stored      uuid[];
    v_stored_res  jsonb[];
    v_seen        jsonb := '{}';  -- command_id -> index of the element that took it here
    v_j           integer;
    v_new         integer[] := '{}';  -- the elements applied here: their ledger and signal rows
    v_count       bigint;
    i             integer;
    -- One command's artifact and subspace (as in _ingest):
    p_command_id  uuid;
    p_user_id     uuid;
    p_embedding   vector;
    p_occurred    timestamptz;
    v_artifact_id uuid;
    v_signal_lvl  capture.engagement_level;
    v_created     boolean;
    v_prev        capture.engagement_level;
    v_level       capture.engagement_level;
    v_subspace_id uuid;
    v_sub_created boolean;
    v_margin      double precision;
    v_runner_up   uuid;
    v_cnt         integer;
    v_best_id     uuid;
    v_best        double precision;
    v_second_id   uuid;
    v_second      double precision;
    v_row         record;
BEGIN
    -- Order-free work for the whole batch at once (the users' locks are held: their ledger
    -- rows cannot change under us; another user's same command_id is caught when writing).
    -- The shape checks repeat _ingest's, in its order and with its messages, so that both
    -- paths name the same first problem: SQLSTATE (5 characters) then the message.
    SELECT array_agg(t.canonical ORDER BY t.ord),
           array_agg(CASE
               WHEN t.cid IS NULL THEN '23502command_id: required'
               WHEN t.uid IS NULL THEN '23502user_id: required'
               WHEN t.url IS NULL THEN '23502url: required'
               WHEN t.emb IS NULL THEN '23502embedding: required'
               WHEN t.depth IS NULL THEN '23502reading_depth: required'
               WHEN t.occ IS NULL THEN '23502occurred_at: required'
               WHEN cfg.embedding_dim IS NOT NULL AND vector_dims(t.emb) <> cfg.embedding_dim
                   THEN '22023' || format('embedding: expected %s dimensions, got %s',
                                          cfg.embedding_dim, vector_dims(t.emb))
               WHEN char_length(t.url) > 2048
                   THEN '22001' || format('url: at most 2048 characters, got %s',
                                          char_length(t.url))
               WHEN t.url !~* '^https?://' THEN '22023url: must be an http(s) URL'
               -- 0004's explicit set (contracts.commands.URL_FORBIDDEN), not the locale's.
               WHEN t.url ~ '[\x01-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]'
                   THEN '22023url: must not contain whitespace or control characters'
               WHEN t.canonical !~* '^https?://[^/?#:]' THEN '22023url: must have a host'
               WHEN char_length(t.title) > 512
                   THEN '22001' || format('title: at most 512 characters, got %s',
                                          char_length(t.title))
               WHEN vector_norm(t.emb) = 0 THEN '22023embedding: must not be all zero'
               WHEN NOT (t.depth >= 0 AND t.depth <= 1.5)
                   THEN '22003' || format('reading_depth: must be between 0.0 and 1.5, got %s',
                                          t.depth)
               END ORDER BY t.ord),
           -- The same payload hash as _ingest: the ledger of one path serves the other.
           array_agg(md5(
               convert_to(jsonb_build_array(t.cid, t.uid, t.url, t.title,
                                            extract(epoch FROM t.occ), 1)::text, 'UTF8')
               || float8send(t.depth) || vector_send(t.emb))::uuid ORDER BY t.ord),
           array_agg(CASE
               WHEN t.depth >= cfg.deep THEN 'deep'
               WHEN t.depth >= cfg.read THEN 'read'
               WHEN t.depth >= cfg.skimmed THEN 'skimmed'
               ELSE 'captured' END::capture.engagement_level ORDER BY t.ord),
           array_agg(l.payload_hash ORDER BY t.ord),
           array_agg(l.result ORDER BY t.ord)
    INTO v_canonical, v_problems, v_hash, v_levels, v_stored, v_stored_res
    FROM (SELECT u.*, capture.canonical_url(u.url) AS canonical
          FROM unnest(command_ids, user_ids, urls, titles, embeddings, reading_depths,
                      occurred_ats) WITH ORDINALITY AS u(cid, uid, url, title, emb, depth, occ, ord)
          OFFSET 0) t  -- OFFSET 0: canonical_url once per command, not once per use
    LEFT JOIN capture.command_ledger l ON l.command_id = t.cid;

    FOR i IN 1 .. v_n LOOP
        p_command_id := command_ids[i];
        IF v_problems[i] IS NOT NULL THEN
            v_results := array_append(v_results, capture._refusal(p_command_id, 'constraint',
                substr(v_problems[i], 6), left(v_problems[i], 5)));
            CONTINUE;
        END IF;
        v_j := (v_seen->>(p_command_id::text))::integer;
        IF v_j IS NOT NULL OR v_stored[i] IS NOT NULL THEN
            -- Processed before: earlier in this batch, or in the ledger.
            IF v_hash[i] = coalesce(v_hash[v_j], v_stored[i]) THEN
                v_result := coalesce(v_results[v_j], v_stored_res[i]);
            ELSE
                v_result := capture._refusal(p_command_id, 'conflict',
                    format('command_id %s: already processed with a different payload',
                           p_command_id),
                    'CW409');
            END IF;
        ELSE
            -- A new command: the artifact upsert and the subspace assignment of _ingest.
            p_user_id := user_ids[i];
            p_embedding := embeddings[i];
            p_occurred := occurred_ats[i];
            v_signal_lvl := v_levels[i];
            v_artifact_id := md5('artifact:' || p_user_id || ':' || v_canonical[i])::uuid;
            v_sub_created := false;
            SELECT a.engagement_level, a.subspace_id, a.assignment_margin, a.runner_up_subspace_id
            INTO v_prev, v_subspace_id, v_margin, v_runner_up
            FROM capture.artifacts a WHERE a.artifact_id = v_artifact_id;
            v_created := NOT FOUND;

            IF NOT v_created THEN
                v_level := greatest(v_prev, v_signal_lvl);
                UPDATE capture.artifacts SET
                    engagement_level = v_level,
                    signal_count = signal_count + 1,
                    title = coalesce(titles[i], title),
                    last_occurred_at = greatest(last_occurred_at, p_occurred)
                WHERE artifact_id = v_artifact_id;
            ELSE
                v_level := v_signal_lvl;
                v_cnt := 0;
                v_best_id := NULL; v_best := NULL; v_second_id := NULL; v_second := NULL;
                FOR v_row IN
                    SELECT s.subspace_id AS id,
                           coalesce(nullif(1 - (s.centroid_sum <=> p_embedding), 'NaN'::float8), 0)
                               AS sim
                    FROM capture.subspaces s WHERE s.user_id = p_user_id
                LOOP
                    v_cnt := v_cnt + 1;
                    IF v_best_id IS NULL OR v_row.sim > v_best
                       OR (v_row.sim = v_best AND v_row.id < v_best_id) THEN
                        v_second_id := v_best_id; v_second := v_best;
                        v_best_id := v_row.id; v_best := v_row.sim;
                    ELSIF v_second_id IS NULL OR v_row.sim > v_second
                          OR (v_row.sim = v_second AND v_row.id < v_second_id) THEN
                        v_second_id := v_row.id; v_second := v_row.sim;
                    END IF;
                END LOOP;

                IF v_cnt = 0 OR (v_best < cfg.join_threshold AND v_cnt < cfg.max_per_user) THEN
                    v_subspace_id := md5('subspace:' || v_artifact_id)::uuid;
                    v_sub_created := true;
                    INSERT INTO capture.subspaces (subspace_id, user_id, founding_artifact_id,
                                                   centroid_sum, member_count, created_at)
                    VALUES (v_subspace_id, p_user_id, v_artifact_id, p_embedding, 1, p_occurred);
                    v_margin := 1.0 - v_best;
                    v_runner_up := v_best_id;
                ELSE
                    v_subspace_id := v_best_id;
                    -- As _ingest (0004): the plain float32 addition while it cannot overflow,
                    -- otherwise _centroid_plus rescales (see subspaces.centroid_scale).
                    UPDATE capture.subspaces SET centroid_sum = centroid_sum + p_embedding,
                                                 member_count = member_count + 1
                    WHERE subspace_id = v_subspace_id AND centroid_scale = 0
                      AND vector_norm(centroid_sum) + vector_norm(p_embedding) < 1e38;
                    IF NOT FOUND THEN
                        UPDATE capture.subspaces s SET (centroid_sum, centroid_scale) =
                                (SELECT c.sum, c.new_scale
                                 FROM capture._centroid_plus(s.centroid_sum, s.centroid_scale,
                                                             p_embedding) c),
                            member_count = member_count + 1
                        WHERE s.subspace_id = v_subspace_id;
                    END IF;
                    v_margin := v_best - v_second;
                    v_runner_up := v_second_id;
                END IF;

                INSERT INTO capture.artifacts (artifact_id, user_id, canonical_url, url, title,
                                               embedding, engagement_level, signal_count,
                                               subspace_id, assignment_margin,
                                               runner_up_subspace_id, first_occurred_at,
                                               last_occurred_at)
                VALUES (v_artifact_id, p_user_id, v_canonical[i], urls[i], titles[i], p_embedding,
                        v_level, 1, v_subspace_id, v_margin, v_runner_up, p_occurred, p_occurred);
            END IF;

            v_result := jsonb_build_object(
                'event_id', md5('capture.result:' || p_command_id)::uuid,
                'command_id', p_command_id,
                'user_id', p_user_id,
                'status', 'ingested',
                'artifact_id', v_artifact_id,
                'artifact_created', v_created,
                'engagement_level', v_level,
                'previous_engagement_level', v_prev,
                'subspace_id', v_subspace_id,
                'subspace_created', v_sub_created,
                'assignment_margin', v_margin::numeric,
                'runner_up_subspace_id', v_runner_up,
                'processed_at', to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                        'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                'error', NULL,
                'schema_version', 1);
            v_new := array_append(v_new, i);
        END IF;
        IF v_j IS NULL AND v_result->'error' = 'null'::jsonb THEN
            v_seen := v_seen || jsonb_build_object(p_command_id::text, i);
        END IF;
        v_results := array_append(v_results, v_result);
    END LOOP;

    -- A concurrent transaction of another user may hold one of these command_ids uncommitted
    -- (the lookup could not see it): the one refusal found only while writing. Raising aborts
    -- the whole call; the caller repeats it isolated (see the header).
    INSERT INTO capture.command_ledger (command_id, user_id, payload_hash, result, processed_at)
    SELECT command_ids[k], user_ids[k], v_hash[k], v_results[k],
           (v_results[k]->>'processed_at')::timestamptz
    FROM unnest(v_new) AS n(k)
    ON CONFLICT (command_id) DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count <> cardinality(v_new) THEN
        RAISE EXCEPTION 'command_id: one of this batch was processed concurrently with a different payload'
            USING ERRCODE = 'CW409';
    END IF;
    INSERT INTO capture.signals (signal_id, artifact_id, user_id, reading_depth, engagement_level,
                                 occurred_at)
    SELECT command_ids[k], (v_results[k]->>'artifact_id')::uuid, user_ids[k], reading_depths[k],
           v_levels[k], occurred_ats[k]
    FROM unnest(v_new) AS n(k);

    RETURN to_jsonb(v_results);
END;
$$;

-- The error element of a refused command, as ingest_batch gives it.
CREATE FUNCTION capture._refusal(command_id uuid, kind text, message text, sqlstate text)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object('command_id', command_id,
                              'error', jsonb_build_object('kind', kind, 'message', message,
                                                          'sqlstate', sqlstate))
$$;

-- ---------------------------------------------------------------------------------------------
-- ingest_typed(arrays of equal length, isolate) -> jsonb array, same order, one element per
-- command, exactly as ingest_batch returns them (a CaptureResult, or an error element).
--
-- isolate => false (the common case): no subtransaction; a refused command is an error element
-- and wrote nothing, the others commit. An unexpected write failure raises (class 22/23 or
-- CW409) and nothing of the call is committed: call again with isolate => true.
-- isolate => true: each command in its own subtransaction (the same code, one command at a
-- time), like ingest_batch. Any other error (deadlock, lock timeout, lost connection) aborts
-- the call: retry it.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION capture.ingest_typed(
    command_ids uuid[],
    user_ids uuid[],
    urls text[],
    titles text[],
    embeddings vector[],
    reading_depths double precision[],
    occurred_ats timestamptz[],
    isolate boolean DEFAULT false
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
AS $$
DECLARE
    v_cfg     capture.ingest_config := capture._ingest_config();
    v_n       integer := coalesce(cardinality(command_ids), 0);
    v_key     bigint;
    v_results jsonb[] := '{}';
    v_result  jsonb;
    i         integer;
BEGIN
    PERFORM capture._require_read_committed('capture.ingest_typed');
    IF coalesce(cardinality(user_ids), 0) <> v_n OR coalesce(cardinality(urls), 0) <> v_n
       OR coalesce(cardinality(titles), 0) <> v_n OR coalesce(cardinality(embeddings), 0) <> v_n
       OR coalesce(cardinality(reading_depths), 0) <> v_n
       OR coalesce(cardinality(occurred_ats), 0) <> v_n THEN
        RAISE EXCEPTION 'ingest_typed: the arrays must all have % elements', v_n
            USING ERRCODE = '22023';
    END IF;
    IF v_n = 0 THEN
        RETURN '[]'::jsonb;
    END IF;

    -- All the batch's user locks up front, in one global order (as ingest_batch does).
    FOR v_key IN
        SELECT DISTINCT uuid_hash_extended(u, 0) FROM unnest(user_ids) AS t(u)
        WHERE u IS NOT NULL ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_key);
    END LOOP;

    IF NOT isolate THEN
        RETURN capture._typed_batch(v_cfg, command_ids, user_ids, urls, titles, embeddings,
                                    reading_depths, occurred_ats);
    END IF;
    FOR i IN 1 .. v_n LOOP
        BEGIN
            v_result := capture._typed_batch(v_cfg, ARRAY[command_ids[i]], ARRAY[user_ids[i]],
                ARRAY[urls[i]], ARRAY[titles[i]], ARRAY[embeddings[i]], ARRAY[reading_depths[i]],
                ARRAY[occurred_ats[i]])->0;
        EXCEPTION WHEN data_exception OR integrity_constraint_violation OR SQLSTATE 'CW409' THEN
            v_result := capture._refusal(command_ids[i],
                CASE WHEN SQLSTATE = 'CW409' THEN 'conflict' ELSE 'constraint' END,
                CASE WHEN SQLSTATE = 'CW409'
                     THEN format('command_id %s: already processed with a different payload',
                                 command_ids[i])
                     ELSE SQLERRM END,
                SQLSTATE);
        END;
        v_results := array_append(v_results, v_result);
    END LOOP;
    RETURN to_jsonb(v_results);
END;
$$;

-- Functions are executable by PUBLIC by default: only the worker gets the entry point.
REVOKE ALL ON FUNCTION
    capture._typed_batch(capture.ingest_config, uuid[], uuid[], text[], text[], vector[],
                         double precision[], timestamptz[]),
    capture._refusal(uuid, text, text, text),
    capture.ingest_typed(uuid[], uuid[], text[], text[], vector[], double precision[],
                         timestamptz[], boolean)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION capture.ingest_typed(uuid[], uuid[], text[], text[], vector[],
                                               double precision[], timestamptz[], boolean)
    TO capture_worker;
