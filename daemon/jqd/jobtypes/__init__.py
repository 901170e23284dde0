"""The built-in job types: `noop`, `sleep`, `email` and `webhook`.

`builtin_types()` builds them from the configuration and the daemon's shared HTTP client; the
daemon adds them to its `Registry` next to custom types. How each type fails is described in
its module: `PermanentError` for what no retry can fix, any other exception to retry.
"""

from __future__ import annotations

import httpx

from jqd.config import Config
from jqd.handlers import JobType
from jqd.jobtypes.basic import basic_types
from jqd.jobtypes.email import make_email_type
from jqd.jobtypes.webhook import make_webhook_type


def builtin_types(config: Config, http_client: httpx.AsyncClient) -> list[JobType]:
    """`noop`, `sleep`, `email` (from `config.smtp`) and `webhook` (on `http_client`)."""
    return [
        *basic_types(),
        make_email_type(config.smtp),
        make_webhook_type(config.webhook_allowed_hosts, http_client),
    ]
