-- bench/jobs/run.sh (c): what the recorded state changes (audit.sql) say, as "key,value" lines.
-- psql variables: t_load, t_end, t_tail (epoch seconds: load start, load end, end of the
-- backlog-only tail), skip (seconds left out after t_load), n (the group's N), service_ms.
-- A run is one claim (state -> running, with its fence) until the row leaves running with that
-- fence (succeeded, queued again, dead). The database sees claims and completions, not the
-- handler itself: the run's interval holds the handler's execution unless the lease was taken
-- back (runs_taken_back).
CREATE TEMP VIEW runs AS
  SELECT s.id, s.fence, s.at AS started,
         (SELECT min(e.at) FROM bench_job_events e
           WHERE e.id = s.id AND e.fence = s.fence AND e.old_state = 'running') AS ended
    FROM bench_job_events s WHERE s.new_state = 'running';
SELECT 'jobs_total', count(*) FROM qos_jobs;
SELECT 'jobs_' || state, count(*) FROM qos_jobs GROUP BY state ORDER BY state;
SELECT 'runs', count(*) FROM runs;
SELECT 'runs_unfinished', count(*) FROM runs WHERE ended IS NULL;
SELECT 'jobs_claimed_more_than_once', count(*) FROM (SELECT id FROM runs GROUP BY id HAVING count(*) > 1) x;
-- A run the store took back (lease expired: running -> queued or dead) may still have been
-- executing when the next claim started it again: only the consumer can tell (its fenced_out
-- count, which run.sh adds). Zero here and above means no job ran twice at all. Counted up to
-- t_tail (the stop comes after).
SELECT 'runs_taken_back', count(*) FROM bench_job_events
 WHERE old_state = 'running' AND new_state IN ('queued', 'dead') AND at < to_timestamp(:t_tail);
-- after t_tail the processes are stopped: SIGTERM gives back what a consumer has not started
SELECT 'runs_given_back_at_stop', count(*) FROM bench_job_events
 WHERE old_state = 'running' AND new_state IN ('queued', 'dead') AND at >= to_timestamp(:t_tail);
SELECT 'max_fence', coalesce(max(fence), 0) FROM qos_jobs;
SELECT 'max_running_exact', coalesce(max(running), 0) FROM (
  SELECT sum(d) OVER (ORDER BY at, d ROWS UNBOUNDED PRECEDING) AS running FROM (
    SELECT at, 1 AS d FROM bench_job_events WHERE new_state = 'running'
    UNION ALL
    SELECT at, -1 FROM bench_job_events WHERE old_state = 'running') e) s;
SELECT 'run_ms_mean', round(avg(extract(epoch FROM ended - started) * 1000)::numeric, 2)
  FROM runs WHERE ended IS NOT NULL;
SELECT 'run_ms_p99',
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM ended - started)) * 1000)::numeric, 2)
  FROM runs WHERE ended IS NOT NULL;
SELECT 'n', :n;
SELECT 'service_ms', :service_ms;
SELECT 'target_per_s', round(:n * 1000.0 / :service_ms, 2);
SELECT 'completed_per_s_under_load', round(count(*) / greatest(:t_end - :t_load - :skip, 0.001), 2)
  FROM bench_job_events WHERE new_state = 'succeeded'
   AND at >= to_timestamp(:t_load + :skip) AND at < to_timestamp(:t_end);
SELECT 'completed_per_s_backlog_only', round(count(*) / greatest(:t_tail - :t_end, 0.001), 2)
  FROM bench_job_events WHERE new_state = 'succeeded'
   AND at >= to_timestamp(:t_end) AND at < to_timestamp(:t_tail);
-- the backlog left when the processes were stopped (after the tail)
SELECT 'queued_at_stop', count(*) FROM qos_jobs WHERE state = 'queued';
