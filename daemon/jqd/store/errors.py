"""Errors raised by store operations, each one mapped to a documented HTTP answer."""


class StoreError(Exception):
    """Base class of the store's errors."""


class StorageFull(StoreError):
    """The database cannot grow (disk full or max_page_count): nothing was written."""


class StorageUnavailable(StoreError):
    """The database cannot be written (read-only file, I/O error): nothing was written."""


class IdempotencyConflict(StoreError):
    """The idempotency key belongs to a job created from a different request."""

    def __init__(self, key: str, job_id: int):
        super().__init__(f"idempotency key {key!r} is already used by job {job_id} with a different request")
        self.key = key
        self.job_id = job_id


class QueueFull(StoreError):
    """More jobs are queued than JQD_MAX_QUEUED allows: try again later."""


class JobNotFound(StoreError):
    def __init__(self, job_id: int):
        super().__init__(f"job {job_id} does not exist")
        self.job_id = job_id


class InvalidTransition(StoreError):
    """The job is not in a state the requested transition starts from."""

    def __init__(self, job_id: int, state: str, action: str):
        super().__init__(f"job {job_id} is {state}: cannot {action}")
        self.job_id = job_id
        self.state = state


class DatabaseLocked(StoreError):
    """Another daemon holds the database."""


class DatabaseCorrupt(StoreError):
    """The file is not a usable jqd database; it is left untouched."""
