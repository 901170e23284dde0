"""jqd: a crash-resilient, persistent background job daemon."""

__version__ = "0.1.0"

from jqd.handlers import PermanentError, RetryAfter, JobContext, job_type  # noqa: E402,F401
