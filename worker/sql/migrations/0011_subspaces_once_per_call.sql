-- 0011: the typed batch reads the subspaces of its users once per call, not once per new
-- artifact, and writes each one back once.
--
-- Each new artifact compares itself with its user's subspaces and joins the nearest (or founds
-- one). 0006-0010 read the user's subspaces for every new artifact and updated the joined one
-- at once: a new version of a ~1.6 kB row per new artifact, and a lookup that met the dead
-- versions the previous ones left (marking their index entries, pruning their pages). After
-- 0010 that was still 42 % of the server's CPU with six concurrent streams (`perf`: the
-- lookups 25 %, the updates and inserts most of the rest).
--
-- Here one statement reads the subspaces of every user with a new artifact in the call; the
-- assignments run in order against these values, each addition exactly as before (the same
-- float32 sum, _centroid_plus when it would overflow), and each subspace changed is written
-- once at the end: the same rows, the same results, the same digest. The users' advisory locks
-- (taken by ingest_typed before this runs) keep every other transaction off these rows
-- meanwhile.
--
-- Measured: six streams of 60,000 commands (50 users, a partition's ~8 per batch) into a new
-- database, two passes: server CPU per command 110-113 -> 80-83 µs, 13,068 and 12,795 ->
-- 17,525 and 17,302 commands/s; the subspaces' updates 31,000-32,000 -> 8,000-9,000, nearly all
-- HOT, and the table 63-66 MB -> 7.6 MB for ~1,000 live rows. `bench --no-index` pairs: b_sql
-- +21-26 %, e2e +8-14 %. One connection with batches of 100 commands over 50 users
-- (`bench-db`), ~2 new artifacts per user and call: the same cost as before (73 vs 74 µs).

CREATE OR REPLACE FUNCTION capture._typed_batch(
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
-- Every lookup here must be an index probe, whatever the statistics say: plpgsql caches each
-- statement's plan for the session, made on the statistics of that moment, and a fresh or
-- truncated table looks like ten pages. Planned on such statistics, the batch's joins to the
-- ledger and the artifacts became hash joins over sequential scans: every batch then read
-- both tables whole (measured: the cost per command grew with the table until an ANALYZE).
-- With the plans' shape pinned, one plan per statement for the session is enough: planning
-- anew on each call's arrays (what the plan cache chose for some statements, and for all of
-- them on small batches) cost more than a one-command batch's work. The settings alone did not
-- pin the lookups (0008's header): they are written as probes, LATERAL ... LIMIT 1. No bitmap
-- scans (0010's header).
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET plan_cache_mode = force_generic_plan
SET enable_bitmapscan = off
AS $$
DECLARE
    v_canonical   text[];
    v_problems    text[];
    v_hash        uuid[];
    v_levels      capture.engagement_level[];
    v_stored      uuid[];
    v_stored_res  jsonb[];
    v_first       integer[];  -- an earlier element of this batch that took the same command_id
    v_applied     integer[];  -- the elements applied here, in order
    v_creating    integer[];  -- those of them that create their artifact, in order
    v_creates     boolean[];  -- the same, by element
    v_artifact    uuid[];
    v_owner       integer[];  -- the element whose artifact state this one reports (see 1.)
    v_prev        capture.engagement_level[];
    v_subspace    uuid[];
    v_sub_created boolean[];
    v_margin      double precision[];
    v_runner_up   uuid[];
    v_results     jsonb[];
    v_count       bigint;
    i             integer;
    -- One new artifact's subspace assignment (as in _ingest):
    p_user_id     uuid;
    p_embedding   vector;
    v_artifact_id uuid;
    v_cnt         integer;
    v_best_id     uuid;
    v_best        double precision;
    v_second_id   uuid;
    v_second      double precision;
    v_sim         double precision;
    v_best_k      integer;
    -- The subspaces of the users with a new artifact in this call, read once and kept here
    -- while the call's new artifacts join them (each written back once, in 2b):
    s_id          uuid[];
    s_user        uuid[];
    s_sum         vector[];
    s_scale       integer[];
    s_count       integer[];
    s_next        integer[];   -- the next subspace of the same user (a list per user)
    s_dirty       boolean[];   -- changed here
    s_founder     uuid[];      -- for those created here (beyond s_read): the founding artifact
    s_created     timestamptz[];
    s_read        integer;     -- how many were read
    s_n           integer;
    u_id          uuid[];      -- the users, and the first of each one's subspaces
    u_head        integer[];
    v_u           integer;
    v_k           integer;
    v_sum         vector;
    v_scale       integer;
    v_now         timestamptz;  -- processed_at of every command applied by this call
    v_processed   text;
BEGIN
    -- 1. Order-free decisions (the users' locks are held: their ledger rows and artifacts cannot
    -- change under us; another user's same command_id is caught when writing). The shape checks
    -- repeat _ingest's, in its order and with its messages: SQLSTATE (5 characters) then text.
    WITH t AS (
        SELECT u.*, c.canonical
        FROM unnest(command_ids, user_ids, urls, titles, embeddings, reading_depths,
                    occurred_ats) WITH ORDINALITY AS u(cid, uid, url, title, emb, depth, occ, ord)
             CROSS JOIN LATERAL capture._canonical(u.url) c  -- inlined: no call per command
        OFFSET 0  -- the canonical url once per command, not once per use
    ), checked AS (
        SELECT t.ord::integer AS ord, t.cid, t.uid, t.canonical,
               CASE
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
               END AS problem,
               -- The same payload hash as _ingest: the ledger of one path serves the other.
               md5(convert_to(jsonb_build_array(t.cid, t.uid, t.url, t.title,
                                                extract(epoch FROM t.occ), 1)::text, 'UTF8')
                   || float8send(t.depth) || vector_send(t.emb))::uuid AS hash,
               CASE
               WHEN t.depth >= cfg.deep THEN 'deep'
               WHEN t.depth >= cfg.read THEN 'read'
               WHEN t.depth >= cfg.skimmed THEN 'skimmed'
               ELSE 'captured' END::capture.engagement_level AS level,
               l.payload_hash AS stored, l.result AS stored_res
        FROM t
        -- A probe per command (LIMIT 1: a subquery the planner cannot turn into a join; see
        -- the header), never a scan of the ledger.
        LEFT JOIN LATERAL (SELECT l.payload_hash, l.result FROM capture.command_ledger l
                           WHERE l.command_id = t.cid LIMIT 1) l ON true
    ), taken AS (
        -- An element takes its command_id when it is well-formed and new or an exact repeat
        -- of the ledger's; a later element with the same id repeats (or conflicts with) the
        -- first that took it. An element applies when it is well-formed, new, and first.
        SELECT c.*,
               min(c.ord) FILTER (WHERE c.problem IS NULL
                                    AND (c.stored IS NULL OR c.hash = c.stored))
                   OVER (PARTITION BY c.cid ORDER BY c.ord
                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS first
        FROM checked c
    ), applies AS (
        SELECT k.*, k.problem IS NULL AND k.stored IS NULL AND k.first IS NULL AS applied,
               CASE WHEN k.problem IS NULL AND k.stored IS NULL AND k.first IS NULL
                    THEN md5('artifact:' || k.uid || ':' || k.canonical)::uuid END AS artifact
        FROM taken k
    ), placed AS (
        -- An applied element's artifact: stored already, or created by the first applied
        -- element on it (its "owner": the element whose subspace it reports).
        SELECT p.*, a.artifact_id IS NOT NULL AS stored_artifact, a.subspace_id,
               a.assignment_margin, a.runner_up_subspace_id,
               CASE WHEN p.applied AND a.artifact_id IS NULL
                    THEN min(p.ord) FILTER (WHERE p.applied) OVER (PARTITION BY p.artifact)
                    ELSE p.ord END AS owner,
               greatest(a.engagement_level,
                        max(p.level) FILTER (WHERE p.applied)
                            OVER (PARTITION BY p.artifact ORDER BY p.ord
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS prev
        FROM applies p
        LEFT JOIN LATERAL (SELECT a.artifact_id, a.subspace_id, a.assignment_margin,
                                  a.runner_up_subspace_id, a.engagement_level
                           FROM capture.artifacts a WHERE a.artifact_id = p.artifact LIMIT 1) a
            ON true
    )
    SELECT array_agg(x.canonical ORDER BY x.ord), array_agg(x.problem ORDER BY x.ord),
           array_agg(x.hash ORDER BY x.ord), array_agg(x.level ORDER BY x.ord),
           array_agg(x.stored ORDER BY x.ord), array_agg(x.stored_res ORDER BY x.ord),
           array_agg(x.first ORDER BY x.ord),
           coalesce(array_agg(x.ord ORDER BY x.ord) FILTER (WHERE x.applied), '{}'),
           coalesce(array_agg(x.ord ORDER BY x.ord)
                    FILTER (WHERE x.applied AND NOT x.stored_artifact AND x.owner = x.ord), '{}'),
           array_agg(coalesce(x.applied AND NOT x.stored_artifact AND x.owner = x.ord, false)
                     ORDER BY x.ord),
           array_agg(x.artifact ORDER BY x.ord), array_agg(x.owner ORDER BY x.ord),
           array_agg(x.prev ORDER BY x.ord), array_agg(x.subspace_id ORDER BY x.ord),
           array_agg(false ORDER BY x.ord),
           array_agg(x.assignment_margin ORDER BY x.ord),
           array_agg(x.runner_up_subspace_id ORDER BY x.ord)
    INTO v_canonical, v_problems, v_hash, v_levels, v_stored, v_stored_res, v_first,
         v_applied, v_creating, v_creates, v_artifact, v_owner, v_prev, v_subspace, v_sub_created,
         v_margin, v_runner_up
    FROM placed x;

    -- 2. The subspace of each new artifact, in order (as _ingest, 0004), against its user's
    -- subspaces as the earlier new artifacts of this call left them. They are read once per
    -- call and kept here (0011): a lookup and an update per new artifact, each lookup meeting
    -- the dead versions the updates left, were two fifths of the server's work.
    IF cardinality(v_creating) > 0 THEN
        u_id := ARRAY(SELECT DISTINCT user_ids[c] FROM unnest(v_creating) AS n(c));
        SELECT coalesce(array_agg(s.subspace_id ORDER BY s.subspace_id), '{}'),
               coalesce(array_agg(s.user_id ORDER BY s.subspace_id), '{}'),
               coalesce(array_agg(s.centroid_sum ORDER BY s.subspace_id), '{}'),
               coalesce(array_agg(s.centroid_scale ORDER BY s.subspace_id), '{}'),
               coalesce(array_agg(s.member_count ORDER BY s.subspace_id), '{}')
        INTO s_id, s_user, s_sum, s_scale, s_count
        FROM capture.subspaces s
        WHERE s.user_id = ANY (u_id);
        s_read := cardinality(s_id);
        s_n := s_read;
        u_head := array_fill(NULL::integer, ARRAY[cardinality(u_id)]);
        s_next := array_fill(NULL::integer, ARRAY[greatest(s_n, 1)]);
        s_dirty := array_fill(false, ARRAY[greatest(s_n, 1)]);
        FOR v_k IN REVERSE s_n .. 1 LOOP
            v_u := array_position(u_id, s_user[v_k]);
            s_next[v_k] := u_head[v_u];
            u_head[v_u] := v_k;
        END LOOP;
    END IF;

    FOREACH i IN ARRAY v_creating LOOP
        p_user_id := user_ids[i];
        p_embedding := embeddings[i];
        v_artifact_id := v_artifact[i];
        v_cnt := 0;
        v_best_id := NULL; v_best := NULL; v_second_id := NULL; v_second := NULL;
        v_u := array_position(u_id, p_user_id);
        v_k := u_head[v_u];
        WHILE v_k IS NOT NULL LOOP
            v_cnt := v_cnt + 1;
            v_sim := coalesce(nullif(1 - (s_sum[v_k] <=> p_embedding), 'NaN'::float8), 0);
            IF v_best_id IS NULL OR v_sim > v_best
               OR (v_sim = v_best AND s_id[v_k] < v_best_id) THEN
                v_second_id := v_best_id; v_second := v_best;
                v_best_id := s_id[v_k]; v_best := v_sim; v_best_k := v_k;
            ELSIF v_second_id IS NULL OR v_sim > v_second
                  OR (v_sim = v_second AND s_id[v_k] < v_second_id) THEN
                v_second_id := s_id[v_k]; v_second := v_sim;
            END IF;
            v_k := s_next[v_k];
        END LOOP;

        IF v_cnt = 0 OR (v_best < cfg.join_threshold AND v_cnt < cfg.max_per_user) THEN
            v_subspace[i] := md5('subspace:' || v_artifact_id)::uuid;
            v_sub_created[i] := true;
            s_n := s_n + 1;
            s_id[s_n] := v_subspace[i];
            s_user[s_n] := p_user_id;
            s_sum[s_n] := p_embedding;
            s_scale[s_n] := 0;
            s_count[s_n] := 1;
            s_founder[s_n] := v_artifact_id;
            s_created[s_n] := occurred_ats[i];
            s_next[s_n] := u_head[v_u];
            u_head[v_u] := s_n;
            v_margin[i] := 1.0 - v_best;
            v_runner_up[i] := v_best_id;
        ELSE
            v_subspace[i] := v_best_id;
            v_k := v_best_k;
            -- The plain float32 addition while it cannot overflow, otherwise _centroid_plus
            -- rescales (see subspaces.centroid_scale).
            IF s_scale[v_k] = 0 AND vector_norm(s_sum[v_k]) + vector_norm(p_embedding) < 1e38 THEN
                s_sum[v_k] := s_sum[v_k] + p_embedding;
            ELSE
                SELECT c.sum, c.new_scale INTO v_sum, v_scale
                FROM capture._centroid_plus(s_sum[v_k], s_scale[v_k], p_embedding) c;
                s_sum[v_k] := v_sum;
                s_scale[v_k] := v_scale;
            END IF;
            s_count[v_k] := s_count[v_k] + 1;
            s_dirty[v_k] := true;
            v_margin[i] := v_best - v_second;
            v_runner_up[i] := v_second_id;
        END IF;
    END LOOP;

    -- 2b. The subspaces written back: the new ones (in the order they were created), and one
    -- new version of each one that changed.
    IF s_n > coalesce(s_read, 0) THEN
        INSERT INTO capture.subspaces (subspace_id, user_id, founding_artifact_id, centroid_sum,
                                       centroid_scale, member_count, created_at)
        SELECT s_id[g.n], s_user[g.n], s_founder[g.n], s_sum[g.n], s_scale[g.n], s_count[g.n],
               s_created[g.n]
        FROM generate_series(s_read + 1, s_n) AS g(n)
        ORDER BY g.n;
    END IF;
    IF s_read > 0 THEN
        UPDATE capture.subspaces t SET centroid_sum = s_sum[x.gk], centroid_scale = s_scale[x.gk],
                                       member_count = s_count[x.gk]
        FROM (SELECT gk FROM generate_series(1, s_read) AS g(gk) WHERE s_dirty[gk]) x
        WHERE t.subspace_id = s_id[x.gk]
          -- The same rows as an index condition (see 0008's header).
          AND t.subspace_id = ANY (ARRAY(SELECT s_id[d] FROM generate_series(1, s_read) AS g(d)
                                         WHERE s_dirty[d]));
    END IF;

    -- 3. The artifacts: what the batch's commands on each add up to.
    WITH a AS (
        SELECT x.artifact, min(x.k) AS owner, max(x.level) AS level, count(*) AS n,
               (array_agg(x.title ORDER BY x.k DESC) FILTER (WHERE x.title IS NOT NULL))[1]
                   AS title,
               max(x.occ) AS last_occ
        FROM (SELECT k, v_artifact[k] AS artifact, v_levels[k] AS level, titles[k] AS title,
                     occurred_ats[k] AS occ
              FROM unnest(v_applied) AS n(k)) x
        GROUP BY x.artifact
    ), created AS (
        INSERT INTO capture.artifacts (artifact_id, user_id, canonical_url, url, title,
                                       embedding, engagement_level, signal_count, subspace_id,
                                       assignment_margin, runner_up_subspace_id,
                                       first_occurred_at, last_occurred_at)
        SELECT a.artifact, user_ids[a.owner], v_canonical[a.owner], urls[a.owner], a.title,
               embeddings[a.owner], a.level, a.n, v_subspace[a.owner], v_margin[a.owner],
               v_runner_up[a.owner], occurred_ats[a.owner], a.last_occ
        FROM a WHERE v_creates[a.owner]
        ORDER BY a.owner
        RETURNING 1
    )
    UPDATE capture.artifacts t SET
        engagement_level = greatest(t.engagement_level, a.level),
        signal_count = t.signal_count + a.n,
        title = coalesce(a.title, t.title),
        last_occurred_at = greatest(t.last_occurred_at, a.last_occ)
    FROM a WHERE t.artifact_id = a.artifact AND NOT v_creates[a.owner]
      -- The same rows, named as an index condition: the join alone let a plan made on an
      -- empty table read the whole table on every call.
      AND t.artifact_id = ANY (ARRAY(SELECT u.artifact FROM a u WHERE NOT v_creates[u.owner]));

    -- 4. The results, in order. A new command reports its artifact's state after it.
    v_now := clock_timestamp();
    v_processed := to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"');
    SELECT array_agg(CASE
        WHEN v_problems[k] IS NOT NULL THEN
            capture._refusal(command_ids[k], 'constraint', substr(v_problems[k], 6),
                             left(v_problems[k], 5))
        -- Processed before, earlier in this batch or in the ledger, with another payload.
        WHEN v_hash[k] <> coalesce(v_hash[v_first[k]], v_stored[k]) THEN
            capture._refusal(command_ids[k], 'conflict',
                format('command_id %s: already processed with a different payload',
                       command_ids[k]),
                'CW409')
        WHEN v_first[k] IS NOT NULL THEN NULL  -- a repeat within the batch: below
        WHEN v_stored[k] IS NOT NULL THEN v_stored_res[k]
        ELSE jsonb_build_object(
            'event_id', md5('capture.result:' || command_ids[k])::uuid,
            'command_id', command_ids[k],
            'user_id', user_ids[k],
            'status', 'ingested',
            'artifact_id', v_artifact[k],
            'artifact_created', v_creates[k],
            'engagement_level', greatest(v_prev[k], v_levels[k]),
            'previous_engagement_level', v_prev[k],
            'subspace_id', v_subspace[v_owner[k]],
            'subspace_created', v_sub_created[k],
            'assignment_margin', v_margin[v_owner[k]]::numeric,
            'runner_up_subspace_id', v_runner_up[v_owner[k]],
            'processed_at', v_processed,
            'error', NULL,
            'schema_version', 1)
        END ORDER BY k)
    INTO v_results
    FROM generate_series(1, cardinality(command_ids)) AS g(k);

    FOR i IN 1 .. cardinality(command_ids) LOOP
        IF v_results[i] IS NULL THEN  -- the element that took its command_id came first
            v_results[i] := v_results[v_first[i]];
        END IF;
    END LOOP;

    -- A concurrent transaction of another user may hold one of these command_ids uncommitted
    -- (the lookup could not see it): the one refusal found only while writing. Raising aborts
    -- the whole call; the caller repeats it isolated (see 0005's header).
    INSERT INTO capture.command_ledger (command_id, user_id, payload_hash, result, processed_at)
    SELECT command_ids[k], user_ids[k], v_hash[k], v_results[k], v_now
    FROM unnest(v_applied) AS n(k)
    ON CONFLICT (command_id) DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count <> cardinality(v_applied) THEN
        RAISE EXCEPTION 'command_id: one of this batch was processed concurrently with a different payload'
            USING ERRCODE = 'CW409';
    END IF;
    INSERT INTO capture.signals (signal_id, artifact_id, user_id, reading_depth, engagement_level,
                                 occurred_at)
    SELECT command_ids[k], v_artifact[k], user_ids[k], reading_depths[k], v_levels[k],
           occurred_ats[k]
    FROM unnest(v_applied) AS n(k);

    RETURN to_jsonb(v_results);
END;
$$;

REVOKE ALL ON FUNCTION
    capture._typed_batch(capture.ingest_config, uuid[], uuid[], text[], text[], vector[],
                         double precision[], timestamptz[])
FROM PUBLIC;
