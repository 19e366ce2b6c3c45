-- bench/jobs/run.sh (c): records every state change of a job, with the time the statement made
-- it (clock_timestamp(), after claim's per-group lock was taken), so that check_runs.sql can
-- rebuild each run (claim to completion, one per fence) and count how many ran at once. Part of
-- the benchmark's private cluster only: an AFTER trigger adds an insert to each state change.
SET client_min_messages = warning;
CREATE UNLOGGED TABLE IF NOT EXISTS bench_job_events (
  id        text NOT NULL,
  fence     bigint NOT NULL,
  old_state text NOT NULL,
  new_state text NOT NULL,
  at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION bench_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench_job_events (id, fence, old_state, new_state)
  VALUES (NEW.id, NEW.fence, OLD.state, NEW.state);
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_job_event ON qos_jobs;
CREATE TRIGGER bench_job_event AFTER UPDATE OF state ON qos_jobs FOR EACH ROW
  WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION bench_job_event();
