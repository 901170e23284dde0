"""Prometheus metrics. Counters and histograms live in this process (they reset on restart,
as Prometheus expects); the queue gauges are read from the store at scrape time, because
the database is the only source of truth.

Counters and histograms are updated on the hot path (several per job) and only ever from the
Trio thread, so they are plain dicts and lists exposed through a custom collector, not
prometheus_client's metric objects: those take a lock and look up a labelled child on every
update, which was ~12 % of the event loop's time per job in a noop drain (py-spy). The text
format they produce is the same (`<name>_total`, `<name>_bucket{le=...}`, `_sum`, `_count`).
"""

from __future__ import annotations

import bisect

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class LocalCounter:
    """A counter, optionally with one label, updated from the Trio thread only."""

    def __init__(self, name: str, documentation: str, label: str | None = None):
        self._name, self._doc, self._label = name, documentation, label
        self._values: dict[str | None, float] = {} if label else {None: 0}

    def inc(self, amount: float = 1, label: str | None = None) -> None:
        self._values[label] = self._values.get(label, 0) + amount

    def value(self, label: str | None = None) -> float:
        return self._values.get(label, 0)

    def collect(self):
        family = CounterMetricFamily(self._name, self._doc, labels=[self._label] if self._label else None)
        for label, value in list(self._values.items()):
            family.add_metric([label] if self._label else [], value)
        yield family


class LocalHistogram:
    """A histogram with fixed buckets, optionally with one label, updated from the Trio thread only."""

    def __init__(self, name: str, documentation: str, buckets: tuple, label: str | None = None):
        self._name, self._doc, self._label = name, documentation, label
        self._bounds = list(buckets)
        self._series: dict[str | None, list] = {}  # label -> [count per bucket (+Inf last), sum]

    def observe(self, value: float, label: str | None = None) -> None:
        series = self._series.get(label)
        if series is None:
            series = self._series[label] = [[0] * (len(self._bounds) + 1), 0.0]
        series[0][bisect.bisect_left(self._bounds, value)] += 1  # first bucket with value <= le
        series[1] += value

    def count(self, label: str | None = None) -> int:
        series = self._series.get(label)
        return sum(series[0]) if series else 0

    def collect(self):
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._label] if self._label else None)
        for label, (counts, total) in list(self._series.items()):
            cumulative, buckets = 0, []
            for bound, n in zip([*map(_le, self._bounds), "+Inf"], counts):
                cumulative += n
                buckets.append((bound, cumulative))
            family.add_metric([label] if self._label else [], buckets, total)
        yield family


class _WriterCollector:
    """The store writer's own counters, as of the scrape."""

    def __init__(self, stats):
        self._stats = stats

    def collect(self):
        stats = self._stats()
        for name, doc, value in (
                ("jqd_store_commits", "Write transactions (group commits) attempted", stats.batches),
                ("jqd_store_operations", "Store operations written in them", stats.operations),
                ("jqd_store_failed_commits", "Write transactions that failed and were rolled back",
                 stats.failed_batches)):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family


def _le(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = LocalCounter("jqd_jobs_submitted", "Jobs created (replays excluded)", "type")
        self.replayed = LocalCounter("jqd_jobs_replayed", "Submissions answered from an idempotency key")
        self.succeeded = LocalCounter("jqd_jobs_succeeded", "Jobs that succeeded", "type")
        self.failed_attempts = LocalCounter("jqd_attempts_failed", "Attempts that failed (retried or not)", "type")
        self.dead = LocalCounter("jqd_jobs_dead", "Jobs dead-lettered", "type")
        self.rescued = LocalCounter("jqd_jobs_rescued", "Running jobs taken back after a lapsed lease or a crash")
        self.interrupted = LocalCounter("jqd_attempts_interrupted",
                                        "Attempts returned to queued by shutdown or drain")
        self.pickup = LocalHistogram("jqd_job_pickup_seconds", "Time from a job's due time to its start",
                                     LATENCY_BUCKETS)
        self.run_time = LocalHistogram("jqd_job_run_seconds", "Run time of one attempt", LATENCY_BUCKETS, "type")
        for collector in (self.submitted, self.replayed, self.succeeded, self.failed_attempts, self.dead,
                          self.rescued, self.interrupted, self.pickup, self.run_time):
            self.registry.register(collector)
        r = self.registry
        self.queued = Gauge("jqd_jobs_queued", "Jobs queued, per queue", ["queue"], registry=r)
        self.running = Gauge("jqd_jobs_running", "Jobs running, per queue", ["queue"], registry=r)
        self.oldest_queued_age = Gauge("jqd_oldest_queued_age_seconds",
                                       "How long the oldest due job has waited", registry=r)

    def watch_writer(self, statistics) -> None:
        """Expose the store writer's counters (operations per commit shows group commit at work)."""
        self.registry.register(_WriterCollector(statistics))

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
