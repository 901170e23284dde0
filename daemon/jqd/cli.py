"""`jqd`: parse the configuration, run the daemon, turn failures into exit statuses.

Exit statuses: 0 after a graceful shutdown; 1 a start-up failure (database locked,
corrupt or unreadable, port or socket in use, handler module broken); 2 a configuration
value that does not parse (the message names the setting).
"""

from __future__ import annotations

import logging
import sys

import trio

from jqd import app, logs
from jqd.config import Config, ConfigError
from jqd.control_server import ControlSocketError
from jqd.store.errors import DatabaseCorrupt, DatabaseLocked

log = logging.getLogger("jqd")


def main(argv: list[str] | None = None) -> int:
    try:
        config = Config.from_sources(argv)
    except ConfigError as exc:
        print(f"jqd: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(config.log_format, config.log_level)
    try:
        trio.run(app.run, config)
    except BaseException as exc:
        reason = _startup_failure(exc)
        if reason is None:
            raise
        log.error("cannot start: %s", reason)
        return 1
    return 0


STARTUP_FAILURES = (DatabaseLocked, DatabaseCorrupt, ControlSocketError, app.StartupError, OSError)


def _startup_failure(exc: BaseException) -> BaseException | None:
    """The operator-facing cause inside `exc` (nurseries wrap errors in groups), if any."""
    if isinstance(exc, STARTUP_FAILURES):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_failure(inner)
            if found is not None:
                return found
    return None
