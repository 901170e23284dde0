-- jqd schema v2: intake maintains job_counts once per batch instead of once per row
-- (the per-row trigger cost a third of bulk-insert throughput). Transitions keep their
-- UPDATE/DELETE triggers.
DROP TRIGGER job_counts_insert;
