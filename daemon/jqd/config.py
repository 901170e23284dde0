"""Configuration: one frozen `Config`, built from flags > environment > .env > defaults.

Every component receives the fields it needs, never a global. A value that does not parse
raises `ConfigError` naming the setting; the CLI turns that into exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping

import attrs


class ConfigError(ValueError):
    """A setting that does not parse; the message names the setting."""


def _parse_duration(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a duration in seconds, e.g. 30 or 0.5") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r}: must be a finite, non-negative number of seconds")
    return value


def _parse_int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r}: must be at least {minimum}")
    return value


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")


def _parse_bind(name: str, raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}={raw!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]")
    return host, _parse_int(name, port)


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_queue_limits(name: str, raw: str) -> Mapping[str, int]:
    limits = {}
    for item in _parse_list(raw):
        queue, sep, limit = item.partition("=")
        if not sep or not queue.strip():
            raise ConfigError(f"{name}={raw!r}: expected QUEUE=N[,QUEUE=N]")
        limits[queue.strip()] = _parse_int(name, limit.strip(), minimum=1)
    return limits


@attrs.frozen
class SmtpConfig:
    """Settings of the `email` job type; `host is None` means email is not configured."""

    host: str | None = None
    port: int = 587
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)  # a secret: never logged
    sender: str | None = None
    starttls: bool | None = None  # None: decided by the port (587 STARTTLS, 465 implicit TLS)


@attrs.frozen
class Config:
    db_path: str = "./jobs.db"  # SQLite database file
    bind_host: str = "127.0.0.1"  # HTTP listen host
    bind_port: int = 8080  # HTTP listen port; 0 picks a free one
    control_socket: str = "./jqd.sock"  # Unix control socket path
    control_group: str | None = None  # group allowed on the control socket (mode 0660)
    workers: int = 10  # jobs executing at once, at most
    queue_limits: Mapping[str, int] = attrs.field(factory=dict)  # per-queue caps, under `workers`
    handler_modules: tuple[str, ...] = ()  # modules imported at start-up to register job types
    visibility_timeout: float = 60.0  # seconds: lease length
    job_timeout: float = 300.0  # seconds: default limit of one attempt
    retry_base: float = 2.0  # seconds: backoff base of the first retry
    retry_max: float = 3600.0  # seconds: cap of one retry delay
    retention: float = 604800.0  # seconds: finished jobs older than this are pruned
    max_queued: int = 100_000  # queued jobs above which intake answers 429
    max_body: int = 1 << 20  # bytes: largest request body
    max_db_bytes: int | None = None  # cap on the database file size (SQLite max_page_count)
    max_batch: int = 1000  # jobs in one POST /createJobs
    shutdown_grace: float = 25.0  # seconds SIGTERM waits for running jobs
    api_token: str | None = attrs.field(default=None, repr=False)  # bearer token; a secret
    webhook_allowed_hosts: frozenset[str] = frozenset()  # "*" allows any host
    smtp: SmtpConfig = SmtpConfig()
    log_format: str = "text"  # text or json
    log_level: str = "info"

    @classmethod
    def from_sources(cls, argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
                     dotenv_path: str | None = ".env") -> "Config":
        """Build the config: flags override the environment, which overrides `.env`."""
        args = _argument_parser().parse_args(argv)
        env = dict(os.environ if environ is None else environ)
        if dotenv_path and os.path.exists(dotenv_path):
            from dotenv import dotenv_values

            for key, value in dotenv_values(dotenv_path).items():
                if value is not None:
                    env.setdefault(key, value)
        return cls.from_mapping(env, args)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str], args: argparse.Namespace | None = None) -> "Config":
        args = args or argparse.Namespace()

        def setting(flag: str | None, name: str) -> str | None:
            value = getattr(args, flag, None) if flag else None
            return value if value is not None else env.get(name)

        fields: dict = {}
        state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
        runtime_dir = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
        fields["db_path"] = setting("db", "JQD_DB") or (
            os.path.join(state_dir, "jobs.db") if state_dir else "./jobs.db")
        fields["control_socket"] = setting("control_socket", "JQD_CONTROL_SOCKET") or (
            os.path.join(runtime_dir, "control.sock") if runtime_dir else "./jqd.sock")
        if (raw := setting("bind", "JQD_BIND")) is not None:
            fields["bind_host"], fields["bind_port"] = _parse_bind("JQD_BIND", raw)
        if (raw := setting("workers", "WORKER_COUNT")) is not None:
            fields["workers"] = _parse_int("WORKER_COUNT", raw, minimum=1)
        if (raw := setting("handlers", "JQD_HANDLERS")) is not None:
            fields["handler_modules"] = _parse_list(raw)
        if (raw := env.get("JQD_QUEUE_LIMITS")) is not None:
            fields["queue_limits"] = _parse_queue_limits("JQD_QUEUE_LIMITS", raw)
        if (raw := env.get("JQD_CONTROL_GROUP")):
            fields["control_group"] = raw
        durations = {
            "visibility_timeout": "JQD_VISIBILITY_TIMEOUT", "job_timeout": "JQD_JOB_TIMEOUT",
            "retry_base": "JQD_RETRY_BASE", "retry_max": "JQD_RETRY_MAX",
            "retention": "JQD_RETENTION", "shutdown_grace": "JQD_SHUTDOWN_GRACE",
        }
        for field, name in durations.items():
            if (raw := env.get(name)) is not None:
                fields[field] = _parse_duration(name, raw)
        if fields.get("visibility_timeout", 1) <= 0:
            raise ConfigError("JQD_VISIBILITY_TIMEOUT: must be greater than 0")
        if fields.get("job_timeout", 1) <= 0:
            raise ConfigError("JQD_JOB_TIMEOUT: must be greater than 0")
        if (raw := env.get("JQD_MAX_QUEUED")) is not None:
            fields["max_queued"] = _parse_int("JQD_MAX_QUEUED", raw, minimum=1)
        if (raw := env.get("JQD_MAX_BODY")) is not None:
            fields["max_body"] = _parse_int("JQD_MAX_BODY", raw, minimum=1024)
        if (raw := env.get("JQD_MAX_DB_BYTES")):
            fields["max_db_bytes"] = _parse_int("JQD_MAX_DB_BYTES", raw, minimum=65536)
        if (raw := env.get("JQD_API_TOKEN")):
            fields["api_token"] = raw
        if (raw := env.get("JQD_WEBHOOK_ALLOWED_HOSTS")) is not None:
            fields["webhook_allowed_hosts"] = frozenset(h.lower() for h in _parse_list(raw))
        fields["smtp"] = _smtp_from(env)
        if (raw := setting("log_format", "JQD_LOG_FORMAT")) is not None:
            if raw not in ("text", "json"):
                raise ConfigError(f"JQD_LOG_FORMAT={raw!r}: expected text or json")
            fields["log_format"] = raw
        if (raw := setting("log_level", "JQD_LOG_LEVEL")) is not None:
            if raw.lower() not in ("debug", "info", "warning", "error", "critical"):
                raise ConfigError(f"JQD_LOG_LEVEL={raw!r}: expected debug, info, warning or error")
            fields["log_level"] = raw.lower()
        return cls(**fields)


def _smtp_from(env: Mapping[str, str]) -> SmtpConfig:
    host = env.get("SMTP_HOST") or None
    user = env.get("SMTP_USER") or env.get("GMAIL_USER") or None
    password = env.get("SMTP_PASSWORD") or env.get("GMAIL_APP_PASSWORD") or None
    if host is None and env.get("GMAIL_USER"):
        host = "smtp.gmail.com"  # the seed's Gmail names imply Gmail's submission server
    port = _parse_int("SMTP_PORT", env["SMTP_PORT"], minimum=1) if env.get("SMTP_PORT") else 587
    starttls = _parse_bool("SMTP_STARTTLS", env["SMTP_STARTTLS"]) if env.get("SMTP_STARTTLS") else None
    return SmtpConfig(host=host, port=port, user=user, password=password,
                      sender=env.get("SMTP_FROM") or user, starttls=starttls)


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jqd", description="jqd: persistent background job daemon")
    parser.add_argument("--db", help="SQLite database file (JQD_DB)")
    parser.add_argument("--bind", help="HTTP listen address HOST:PORT (JQD_BIND)")
    parser.add_argument("--control-socket", dest="control_socket", help="Unix control socket (JQD_CONTROL_SOCKET)")
    parser.add_argument("--workers", help="jobs executing at once (WORKER_COUNT)")
    parser.add_argument("--handlers", help="modules that register job types, comma-separated (JQD_HANDLERS)")
    parser.add_argument("--log-format", dest="log_format", help="text or json (JQD_LOG_FORMAT)")
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning, error (JQD_LOG_LEVEL)")
    return parser
