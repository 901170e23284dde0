"""Prometheus metrics. Counters and histograms live in this process (they reset on restart,
as Prometheus expects); the queue gauges are read from the store at scrape time, because
the database is the only source of truth."""

from __future__ import annotations


from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter("jqd_jobs_submitted", "Jobs created (replays excluded)", ["type"], registry=r)
        self.replayed = Counter("jqd_jobs_replayed", "Submissions answered from an idempotency key", registry=r)
        self.succeeded = Counter("jqd_jobs_succeeded", "Jobs that succeeded", ["type"], registry=r)
        self.failed_attempts = Counter("jqd_attempts_failed", "Attempts that failed (retried or not)",
                                       ["type"], registry=r)
        self.dead = Counter("jqd_jobs_dead", "Jobs dead-lettered", ["type"], registry=r)
        self.rescued = Counter("jqd_jobs_rescued", "Running jobs taken back after a lapsed lease or a crash",
                               registry=r)
        self.interrupted = Counter("jqd_attempts_interrupted",
                                   "Attempts returned to queued by shutdown or drain", registry=r)
        self.queued = Gauge("jqd_jobs_queued", "Jobs queued, per queue", ["queue"], registry=r)
        self.running = Gauge("jqd_jobs_running", "Jobs running, per queue", ["queue"], registry=r)
        self.oldest_queued_age = Gauge("jqd_oldest_queued_age_seconds",
                                       "How long the oldest due job has waited", registry=r)
        self.pickup = Histogram("jqd_job_pickup_seconds", "Time from a job's due time to its start",
                                buckets=LATENCY_BUCKETS, registry=r)
        self.run_time = Histogram("jqd_job_run_seconds", "Run time of one attempt", ["type"],
                                  buckets=LATENCY_BUCKETS, registry=r)

    def render(self, counts: list[tuple[str, str, int]], oldest_due: float | None, now: float) -> bytes:
        """Prometheus text, with the gauges set from a fresh read of the store."""
        self.queued.clear()
        self.running.clear()
        for state, queue, n in counts:
            if state == "queued":
                self.queued.labels(queue).set(n)
            elif state == "running":
                self.running.labels(queue).set(n)
        self.oldest_queued_age.set(max(0.0, now - oldest_due) if oldest_due else 0.0)
        return generate_latest(self.registry)
