-- jqd schema v1. Every state transition is one guarded statement on `jobs`;
-- `job_counts` is kept exact by triggers so that stats and backpressure are O(queues).
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused
    type             TEXT    NOT NULL,
    payload          TEXT    NOT NULL,                   -- JSON object
    state            TEXT    NOT NULL CHECK (state IN ('queued','running','succeeded','dead','cancelled')),
    queue            TEXT    NOT NULL DEFAULT 'default',
    priority         INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    run_at           REAL    NOT NULL,                   -- Unix seconds
    max_retries      INTEGER NOT NULL DEFAULT 3,
    attempts         INTEGER NOT NULL DEFAULT 0,
    rescues          INTEGER NOT NULL DEFAULT 0,
    timeout_seconds  REAL,
    idempotency_key  TEXT,
    request_hash     TEXT,                               -- digest of type + payload, for replays
    last_error       TEXT,
    result           TEXT,                               -- JSON
    progress         TEXT,                               -- JSON
    created_at       REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    lease_owner      TEXT,                               -- id of the daemon run holding the lease
    lease_token      INTEGER,                            -- fences completions of stale attempts
    lease_expires_at REAL
);

-- Claiming: one index seek per priority level over queued jobs only.
CREATE INDEX jobs_claim ON jobs (priority, run_at, id) WHERE state = 'queued';
-- The next due run_at, and the age of the oldest due job.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state = 'queued';
-- The reaper: running jobs by lease expiry.
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
-- Retention pruning of finished jobs.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded','dead','cancelled');
-- Listing by state, newest first.
CREATE INDEX jobs_state_id ON jobs (state, id);
-- Idempotency keys are reserved while the job exists.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE job_counts (
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (state, queue)
) WITHOUT ROWID;

CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (state, queue, n) VALUES (NEW.state, NEW.queue, 1)
    ON CONFLICT (state, queue) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_update AFTER UPDATE OF state ON jobs WHEN OLD.state <> NEW.state BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state AND queue = OLD.queue;
    INSERT INTO job_counts (state, queue, n) VALUES (NEW.state, NEW.queue, 1)
    ON CONFLICT (state, queue) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state AND queue = OLD.queue;
END;

-- Pauses survive restarts; queue '*' is the global pause.
CREATE TABLE pauses (
    queue     TEXT PRIMARY KEY,
    reason    TEXT,
    paused_at REAL NOT NULL
);
