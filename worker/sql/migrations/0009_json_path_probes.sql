-- 0009: the JSON path's lookups (ingest_with_signal, ingest_batch) and record_rejections' are
-- index probes whatever the statistics said when their plans were made.
--
-- 0008 fixed this for the typed batch. The same failure was in the other two, found by
-- repeating 0008's case for them (now in tests/integration/db/test_plan_stability.py too):
-- plpgsql keeps a statement's generic plan for the session, and a plan made while the
-- statistics said a table was empty (reltuples 0, as a VACUUM or ANALYZE of the empty table
-- leaves it) reads it with a sequential scan, which costs nothing on an empty table. The
-- connection keeps that plan until an ANALYZE or a VACUUM of the table invalidates it, and
-- each call reads the whole table meanwhile. Measured on 0004's functions, after a VACUUM
-- ANALYZE of the empty tables and 2,000 commands through one connection:
--   ingest_with_signal, one command:     1,991 ledger rows and 2,089 artifact rows read;
--   ingest_batch, ten commands:         19,955 ledger rows, 27,094 artifact rows, 1,506 subspace
--                                        rows;
--   record_rejections, three results:    3,019 rejection rows (the whole table).
--
-- _ingest's statements each look up one row (or one user's subspaces) by an indexed key: with
-- sequential scans off, the index probe is their cheapest plan on any statistics. Nothing else
-- of _ingest changes, so its body is not repeated here. record_rejections' last statement
-- joined the results to the table: as in 0008, it becomes a LATERAL (... LIMIT 1) probe per
-- result, which no plan can turn into a read of the whole table.

ALTER FUNCTION capture._ingest(jsonb, capture.ingest_config) SET enable_seqscan = off;

CREATE OR REPLACE FUNCTION capture.record_rejections(results jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, capture, extensions, public, pg_temp
SET enable_seqscan = off
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
            -- A probe per result (LIMIT 1: never merged into a join; see the header).
            CROSS JOIN LATERAL (SELECT j.result FROM capture.rejections j
                                WHERE j.event_id = (e.r->>'event_id')::uuid LIMIT 1) j);
END;
$$;
