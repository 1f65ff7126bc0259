-- 0010: the ingest functions look up a user's subspaces with a plain index scan, never a
-- bitmap scan.
--
-- Each new artifact reads its user's subspaces (to find the nearest centroid) and updates the
-- one it joins: a new version of a ~1.6 kB row. A version that does not fit on its page leaves
-- a dead entry in subspaces_user_idx, hundreds per user between two vacuums (autovacuum visits
-- a table at most once a minute by default; a busy worker updates subspaces thousands of times
-- a second). A plain index scan marks an entry dead when it finds the row version dead to
-- everyone, and later scans skip it; a bitmap scan never marks one. The planner chooses a
-- bitmap scan for this lookup on tables not yet analysed (a new database) and on analysed ones
-- with tens of subspaces per user (25 rows expected: 50 users, ~1,200 subspaces), and then
-- every lookup read every dead entry again and visited its heap tuple: after 1,200 commands of
-- two users, 219 entries for a user's 3 subspaces, on every lookup
-- (tests/integration/db/test_plan_stability.py; with this migration, 3). Six concurrent
-- streams of 60,000 commands into a new database spent ~15 % less server CPU per command with
-- it (136-139 -> 114-118 µs; 2 streams: 118-127 -> 98-106).
--
-- Nothing else changes: the functions' other statements look up one key each, and the
-- artifacts' `artifact_id = ANY (...)` update scans the primary key for the array's elements.

ALTER FUNCTION capture._typed_batch(capture.ingest_config, uuid[], uuid[], text[], text[],
                                    vector[], double precision[], timestamptz[])
    SET enable_bitmapscan = off;
ALTER FUNCTION capture._ingest(jsonb, capture.ingest_config) SET enable_bitmapscan = off;
