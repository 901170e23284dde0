"""The `email` type against a real SMTP server (aiosmtpd), and without SMTP settings."""

from __future__ import annotations

import email
import email.policy
import socket
import threading

import pytest
from aiosmtpd.controller import Controller

from tests.integration.conftest import wait_state


class Inbox:
    """An aiosmtpd handler keeping every message it accepts; can refuse with a given reply."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.reply: str | None = None  # e.g. "450 try later"; None accepts

    async def handle_DATA(self, server, session, envelope):
        if self.reply is not None:
            return self.reply
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, controller.port
    controller.stop()


def test_email_is_delivered(start_jqd, smtp):
    inbox, port = smtp
    d = start_jqd(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), SMTP_FROM="jqd@example.com")
    with d.client() as c:
        r = c.post("/createJob", json={"type": "email", "payload": {
            "email": "alice@example.org", "subject": "Your report é", "message": "Hello Alice,\nall done.\n"}})
        assert r.status_code == 201, r.text
        job = wait_state(c, r.json()["id"], {"succeeded", "dead"})
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 1
        # `body` is accepted for `message`.
        r2 = c.post("/createJob", json={"type": "email", "payload": {
            "email": "bob@example.org", "subject": "second", "body": "via body"}})
        assert wait_state(c, r2.json()["id"], {"succeeded", "dead"})["state"] == "succeeded"
    with inbox.lock:
        assert len(inbox.messages) == 2
        (sender, rcpts, msg), (_, rcpts2, msg2) = inbox.messages
    assert sender == "jqd@example.com"
    assert rcpts == ["alice@example.org"]
    assert msg["To"] == "alice@example.org"
    assert msg["From"] == "jqd@example.com"
    assert msg["Subject"] == "Your report é"
    assert msg.get_content().replace("\r\n", "\n") == "Hello Alice,\nall done.\n"
    assert msg["Jqd-Job-Id"] == str(job["id"])
    assert msg["Message-ID"] and job["result"]["message_id"] == msg["Message-ID"]
    assert rcpts2 == ["bob@example.org"] and msg2.get_content().strip() == "via body"


def test_smtp_4xx_retries_and_5xx_is_permanent(start_jqd, smtp):
    inbox, port = smtp
    d = start_jqd(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), SMTP_FROM="jqd@example.com",
                  JQD_RETRY_BASE="0.01", JQD_RETRY_MAX="0.05")
    payload = {"email": "carol@example.org", "subject": "s", "message": "m"}
    with d.client() as c:
        inbox.reply = "451 4.3.0 try again later"
        job = wait_state(c, c.post("/createJob", json={"type": "email", "payload": payload,
                                                        "max_retries": 2}).json()["id"], "dead")
        assert job["attempts"] == 3 and "451" in job["last_error"], job
        inbox.reply = "554 5.7.1 rejected"
        job = wait_state(c, c.post("/createJob", json={"type": "email", "payload": payload}).json()["id"], "dead")
        assert job["attempts"] == 1 and "554" in job["last_error"], job
        inbox.reply = None
        job = wait_state(c, c.post("/createJob", json={"type": "email", "payload": payload}).json()["id"],
                         "succeeded")
    assert len(inbox.messages) == 1


def test_email_without_smtp_settings_fails_clearly(start_jqd):
    d = start_jqd()
    with d.client() as c:
        r = c.post("/createJob", json={"type": "email", "payload": {
            "email": "alice@example.org", "subject": "hi", "message": "text"}})
        assert r.status_code == 201, r.text
        noop = c.post("/createJob", json={"type": "noop", "payload": {}}).json()["id"]
        job = wait_state(c, r.json()["id"], {"dead", "succeeded"})
        assert job["state"] == "dead"
        assert job["attempts"] == 1  # no point retrying: it is a configuration problem
        assert "SMTP_HOST" in job["last_error"] and "not configured" in job["last_error"], job["last_error"]
        assert wait_state(c, noop, {"succeeded", "dead"})["state"] == "succeeded"
        # Bad email payloads are refused at submission.
        for payload in ({"email": "alice@example.org", "subject": "hi"},
                        {"email": "not an address", "subject": "hi", "message": "m"},
                        {"email": "a@example.org", "subject": "x\r\nBcc: evil@example.org", "message": "m"}):
            r = c.post("/createJob", json={"type": "email", "payload": payload})
            assert r.status_code == 422, (payload, r.text)
        assert c.get("/readyz").status_code == 200
