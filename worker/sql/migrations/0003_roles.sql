-- 0003: least privilege. The worker connects with a login that is a member of capture_worker
-- (`capture-worker db create-login NAME`); that role may call the functions below and nothing
-- else: no table privileges at all, so every write goes through ingest_with_signal /
-- ingest_batch. Those functions run with their owner's rights (SECURITY DEFINER) and pin their
-- search_path. Admin functions (reset_state, *_embedding_index) stay with the owner.

-- Roles are cluster-wide: another database on the same server may have created it already,
-- possibly at this very moment (hence the exception handler, not only the IF).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'capture_worker') THEN
        CREATE ROLE capture_worker NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA capture FROM PUBLIC, capture_worker;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA capture FROM PUBLIC, capture_worker;
GRANT USAGE ON SCHEMA capture TO capture_worker;

GRANT EXECUTE ON FUNCTION
    capture.ingest_with_signal(jsonb),
    capture.ingest_batch(jsonb),
    capture.record_rejections(jsonb),
    capture.capture_state_digest(),
    capture.capture_artifact_state(uuid, text),
    capture.user_artifacts(uuid),
    capture.get_config(),
    capture.canonical_url(text)
TO capture_worker;
