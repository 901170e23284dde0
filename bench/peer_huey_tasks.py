"""Tasks for the huey peer benchmark (imported by the bench and by `huey_consumer`).

The database file comes from `JQD_BENCH_HUEY_DB`. `SqliteHuey` is used with its defaults
(WAL journal; `fsync=None`, so SQLite's own `synchronous` default applies: FULL in this
build, i.e. every commit is fsync'd, like jqd's) apart from the name and the file.
"""

import os
import time

from huey import SqliteHuey

huey = SqliteHuey(name="bench", filename=os.environ.get("JQD_BENCH_HUEY_DB", "huey-bench.db"))


@huey.task()
def noop():
    return None


@huey.task()
def stamp():
    """Returns when the handler started (time.time()): for the pickup latency."""
    return time.time()
