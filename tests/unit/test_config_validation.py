"""Configuration parsing and request validation: every refusal has a clear message."""

import random

import pytest

from jqd.backoff import retry_delay
from jqd.config import Config, ConfigError
from jqd.handlers import JobType, PayloadError, Registry
from jqd.model import format_time, parse_time
from jqd.validation import RequestError, parse_batch, parse_json, parse_list_query, parse_new_job

NOW = 1_800_000_000.0


def test_defaults():
    c = Config.from_mapping({})
    assert (c.db_path, c.bind_host, c.bind_port, c.workers) == ("./jobs.db", "127.0.0.1", 8080, 10)
    assert c.visibility_timeout == 60 and c.shutdown_grace == 25 and c.max_body == 1 << 20


def test_systemd_directories_set_the_default_paths():
    c = Config.from_mapping({"STATE_DIRECTORY": "/var/lib/jqd", "RUNTIME_DIRECTORY": "/run/jqd"})
    assert c.db_path == "/var/lib/jqd/jobs.db" and c.control_socket == "/run/jqd/control.sock"


def test_flags_override_env_override_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("WORKER_COUNT=3\nJQD_RETRY_BASE=7\nJQD_JOB_TIMEOUT=9\n")
    c = Config.from_sources(["--workers", "5"], environ={"JQD_RETRY_BASE": "1.5"})
    assert (c.workers, c.retry_base, c.job_timeout) == (5, 1.5, 9.0)


@pytest.mark.parametrize("env, name", [
    ({"JQD_VISIBILITY_TIMEOUT": "abc"}, "JQD_VISIBILITY_TIMEOUT"),
    ({"WORKER_COUNT": "0"}, "WORKER_COUNT"),
    ({"JQD_BIND": "nohost"}, "JQD_BIND"),
    ({"JQD_RETRY_MAX": "-1"}, "JQD_RETRY_MAX"),
    ({"JQD_SHUTDOWN_GRACE": "nan"}, "JQD_SHUTDOWN_GRACE"),
    ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS"),
    ({"JQD_QUEUE_LIMITS": "mail"}, "JQD_QUEUE_LIMITS"),
])
def test_bad_values_name_the_setting(env, name):
    with pytest.raises(ConfigError, match=name):
        Config.from_mapping(env)


def test_secrets_stay_out_of_repr():
    c = Config.from_mapping({"JQD_API_TOKEN": "tok-secret", "GMAIL_USER": "a@b.c", "GMAIL_APP_PASSWORD": "pw-secret"})
    assert "tok-secret" not in repr(c) and "pw-secret" not in repr(c)
    assert c.smtp.host == "smtp.gmail.com" and c.smtp.user == "a@b.c" and c.smtp.password == "pw-secret"


def test_backoff_full_jitter_within_bounds():
    rng = random.Random(1)
    delays = [retry_delay(3, 2.0, 3600.0, rng) for _ in range(1000)]
    assert 0 <= min(delays) and max(delays) <= 8.0 and max(delays) > 6.0
    assert all(retry_delay(40, 2.0, 60.0, rng) <= 60.0 for _ in range(100))


def test_time_roundtrip():
    assert parse_time(format_time(NOW)) == NOW
    assert parse_time("2027-01-15T10:00:00+02:00") == parse_time("2027-01-15T08:00:00Z")
    for bad in ["2027-01-15", "2027-01-15T10:00:00", "yesterday", 5]:
        with pytest.raises(ValueError):
            parse_time(bad)


def registry():
    def validate(payload):
        if "bad" in payload:
            raise PayloadError("bad is not allowed")
    return Registry([JobType("noop", lambda j: None), JobType("checked", lambda j: None, validate)])


def expect(status, code, body):
    with pytest.raises(RequestError) as info:
        parse_new_job(body, registry(), NOW)
    assert (info.value.status, info.value.code) == (status, code), info.value.message
    return info.value.message


def test_valid_job_with_all_fields():
    new = parse_new_job({"type": "noop", "payload": {"a": [1]}, "max_retries": 0, "idempotency_key": "k",
                         "delay_seconds": 10, "priority": 9, "queue": "q.1", "timeout_seconds": 0.5},
                        registry(), NOW)
    assert (new.run_at, new.priority, new.queue, new.timeout_seconds) == (NOW + 10, 9, "q.1", 0.5)
    assert new.request_hash and new.payload_json == '{"a":[1]}'


@pytest.mark.parametrize("body, code", [
    ([], "invalid_field"),
    ({"type": "noop"}, "invalid_field"),
    ({"type": "noop", "payload": []}, "invalid_field"),
    ({"type": "noop", "payload": {}, "extra": 1}, "unknown_field"),
    ({"type": "noop", "payload": {}, "priority": 10}, "invalid_field"),
    ({"type": "noop", "payload": {}, "priority": "1"}, "invalid_field"),
    ({"type": "noop", "payload": {}, "max_retries": True}, "invalid_field"),
    ({"type": "noop", "payload": {}, "queue": "a b"}, "invalid_field"),
    ({"type": "noop", "payload": {}, "queue": "'); DROP TABLE jobs;--"}, "invalid_field"),
    ({"type": "noop", "payload": {}, "run_at": "2027-01-01T00:00:00"}, "invalid_field"),
    ({"type": "noop", "payload": {}, "run_at": "2027-01-01T00:00:00Z", "delay_seconds": 1}, "invalid_field"),
    ({"type": "noop", "payload": {}, "delay_seconds": -1}, "invalid_field"),
    ({"type": "noop", "payload": {}, "timeout_seconds": 0}, "invalid_field"),
    ({"type": "noop", "payload": {}, "idempotency_key": ""}, "invalid_field"),
])
def test_invalid_fields_are_400(body, code):
    expect(400, code, body)


def test_unknown_type_and_rejected_payload_are_422():
    assert "known: checked, noop" in expect(422, "unknown_type", {"type": "nope", "payload": {}})
    assert "bad is not allowed" in expect(422, "invalid_payload", {"type": "checked", "payload": {"bad": 1}})


def test_json_parsing_refuses_nan_and_deep_nesting():
    for body in [b"{", b'{"a": NaN}', b"[" * 100000 + b"]" * 100000, b"\xff"]:
        with pytest.raises(RequestError) as info:
            parse_json(body)
        assert info.value.status == 400


def test_batch_rules():
    with pytest.raises(RequestError, match=r"jobs\[1\]\.priority"):
        parse_batch({"jobs": [{"type": "noop", "payload": {}}, {"type": "noop", "payload": {}, "priority": 99}]},
                    registry(), NOW, 1000)
    with pytest.raises(RequestError):
        parse_batch({"jobs": [{"type": "noop", "payload": {}}] * 3}, registry(), NOW, 2)
    with pytest.raises(RequestError):
        parse_batch({"jobs": []}, registry(), NOW, 2)


def test_list_query():
    assert parse_list_query({"state": "dead", "limit": "5", "after": "10"}).limit == 5
    for bad in [{"state": "x"}, {"limit": "0"}, {"limit": "a"}, {"after": "-1"}, {"sort": "id"}]:
        with pytest.raises(RequestError):
            parse_list_query(bad)
