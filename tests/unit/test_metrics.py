"""The hot-path metrics are local collectors; they must expose what prometheus_client's own
Counter and Histogram would (names, labels, buckets, sums), minus the `_created` series."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from jqd.metrics import LATENCY_BUCKETS, LocalCounter, LocalHistogram, Metrics
from jqd.store.writer import WriterStatistics


def _lines(registry) -> set[str]:
    text = generate_latest(registry).decode()
    return {line for line in text.splitlines() if line and "_created" not in line}


def test_local_histogram_matches_prometheus_client():
    values = [0.0, 0.001, 0.0011, 0.004, 0.3, 2.5, 59.0, 7200.0]
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h_seconds", "doc", ["type"], buckets=LATENCY_BUCKETS, registry=theirs)
    local = LocalHistogram("h_seconds", "doc", LATENCY_BUCKETS, "type")
    ours.register(local)
    for i, v in enumerate(values):
        label = "a" if i % 3 else "b"
        reference.labels(label).observe(v)
        local.observe(v, label)
    assert _lines(ours) == _lines(theirs)
    assert local.count("a") + local.count("b") == len(values)


def test_local_counters_match_prometheus_client():
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    labelled, plain = Counter("c_jobs", "doc", ["type"], registry=theirs), Counter("p_jobs", "doc", registry=theirs)
    local_labelled, local_plain = LocalCounter("c_jobs", "doc", "type"), LocalCounter("p_jobs", "doc")
    ours.register(local_labelled)
    ours.register(local_plain)
    for label, n in [("email", 1), ("noop", 5), ("email", 2)]:
        labelled.labels(label).inc(n)
        local_labelled.inc(n, label)
    plain.inc(3)
    local_plain.inc(3)
    assert _lines(ours) == _lines(theirs)
    assert local_labelled.value("email") == 3 and local_plain.value() == 3


def test_render_exposes_every_metric_of_the_spec():
    m = Metrics()
    m.watch_writer(lambda: WriterStatistics(batches=4, operations=10, failed_batches=1, writable=True))
    m.succeeded.inc(1, "noop")
    m.pickup.observe(0.002)
    m.run_time.observe(0.01, "noop")
    text = m.render([("queued", "default", 7), ("running", "default", 2)], oldest_due=90.0, now=100.0).decode()
    for line in ('jqd_jobs_succeeded_total{type="noop"} 1.0', "jqd_jobs_replayed_total 0.0",
                 "jqd_jobs_rescued_total 0.0", "jqd_attempts_interrupted_total 0.0",
                 'jqd_job_pickup_seconds_bucket{le="0.0025"} 1.0', "jqd_job_pickup_seconds_count 1.0",
                 'jqd_job_run_seconds_bucket{le="0.01",type="noop"} 1.0', 'jqd_jobs_queued{queue="default"} 7.0',
                 'jqd_jobs_running{queue="default"} 2.0', "jqd_oldest_queued_age_seconds 10.0",
                 "jqd_store_commits_total 4.0", "jqd_store_operations_total 10.0",
                 "jqd_store_failed_commits_total 1.0"):
        assert line in text, line
