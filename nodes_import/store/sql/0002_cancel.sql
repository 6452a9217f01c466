-- 0002: cancelling a job (issue 16). `jobs cancel` / POST /jobs/{id}/cancel set the time
-- of the request; the job's runner sees it at its next batch boundary (the batch's counters
-- UPDATE returns it) and ends the job FAILED "Cancelled"; a job that has not started yet
-- never starts. A re-run on purpose (`import --retry-failed`) clears it.
ALTER TABLE job_status ADD COLUMN IF NOT EXISTS cancel_requested_at TIMESTAMPTZ;
