"""The `email` job type against a real SMTP server (aiosmtpd on loopback, in its own thread)."""

from __future__ import annotations

import base64
import email
import email.policy
import socket
import traceback

import pytest
import trio
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from jqd.config import SmtpConfig
from jqd.handlers import JobContext, PayloadError, PermanentError
from jqd.jobtypes.email import EmailDeliveryError, _redact, connection_mode, make_email_type, validate_email

PASSWORD = "s3cret-Pa55word"
GOOD = {"email": "alice@example.com", "subject": "Hello", "message": "Hi Alice,\nall good.\n"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """An aiosmtpd handler: records delivered messages; can refuse RCPT with a fixed reply."""

    def __init__(self, rcpt_reply: str | None = None):
        self.rcpt_reply = rcpt_reply
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and (auth_data.login, auth_data.password) == (b"bob", PASSWORD.encode()))
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535


AUTH = {"authenticator": authenticator, "auth_required": True, "auth_require_tls": False}


def start_server(handler: Recorder, **kwargs) -> Controller:
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


@pytest.fixture
def smtp_server():
    servers = []

    def start(handler: Recorder, **kwargs) -> Controller:
        servers.append(start_server(handler, **kwargs))
        return servers[-1]

    yield start
    for controller in servers:
        controller.stop()


def context(payload: dict) -> JobContext:
    return JobContext(id=7, type="email", payload=payload, attempt=2, queue="default",
                      trio_token=trio.lowlevel.current_trio_token())


def config_for(controller: Controller, **kwargs) -> SmtpConfig:
    kwargs.setdefault("sender", "jqd@example.org")
    return SmtpConfig(host="127.0.0.1", port=controller.port, **kwargs)


async def test_delivers_message(smtp_server):
    recorder = Recorder()
    controller = smtp_server(recorder)
    result = await make_email_type(config_for(controller)).run(context(GOOD))
    [(mail_from, rcpt_tos, msg)] = recorder.messages
    assert mail_from == "jqd@example.org"
    assert rcpt_tos == ["alice@example.com"]
    assert msg["To"] == "alice@example.com"
    assert msg["From"] == "jqd@example.org"
    assert msg["Subject"] == "Hello"
    assert msg["Jqd-Job-Id"] == "7"
    assert msg["Jqd-Attempt"] == "2"
    assert msg.get_content().replace("\r\n", "\n") == GOOD["message"]
    assert result == {"message_id": msg["Message-ID"]}


async def test_body_alias_and_unicode(smtp_server):
    recorder = Recorder()
    controller = smtp_server(recorder)
    payload = {"email": "a@example.com", "subject": "Grüße ☃", "body": "Ünïcödé body\n"}
    await make_email_type(config_for(controller)).run(context(payload))
    [(_, _, msg)] = recorder.messages
    assert msg["Subject"] == "Grüße ☃"
    assert msg.get_content().replace("\r\n", "\n") == "Ünïcödé body\n"


async def test_rcpt_550_is_permanent(smtp_server):
    controller = smtp_server(Recorder(rcpt_reply="550 5.1.1 no such user"))
    with pytest.raises(PermanentError, match="550"):
        await make_email_type(config_for(controller)).run(context(GOOD))


async def test_rcpt_451_is_retryable(smtp_server):
    controller = smtp_server(Recorder(rcpt_reply="451 4.3.0 try again later"))
    with pytest.raises(EmailDeliveryError, match="451") as info:
        await make_email_type(config_for(controller)).run(context(GOOD))
    assert not isinstance(info.value, PermanentError)


async def test_unreachable_server_is_retryable():
    smtp = SmtpConfig(host="127.0.0.1", port=free_port(), sender="jqd@example.org")
    with pytest.raises(EmailDeliveryError, match="127.0.0.1"):
        await make_email_type(smtp).run(context(GOOD))


async def test_not_configured_is_permanent():
    with pytest.raises(PermanentError, match="email is not configured: set SMTP_HOST"):
        await make_email_type(SmtpConfig()).run(context(GOOD))


async def test_no_sender_is_permanent():
    with pytest.raises(PermanentError, match="SMTP_FROM"):
        await make_email_type(SmtpConfig(host="127.0.0.1", port=25)).run(context(GOOD))


async def test_starttls_required_but_unsupported_is_permanent(smtp_server):
    controller = smtp_server(Recorder())
    with pytest.raises(PermanentError, match="STARTTLS"):
        await make_email_type(config_for(controller, starttls=True)).run(context(GOOD))


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth_login(smtp_server):
    recorder = Recorder()
    controller = smtp_server(recorder, **AUTH)
    smtp = config_for(controller, user="bob", password=PASSWORD)
    await make_email_type(smtp).run(context(GOOD))
    assert len(recorder.messages) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth_failure_is_permanent_and_hides_password(smtp_server):
    recorder = Recorder()
    controller = smtp_server(recorder, **AUTH)
    smtp = config_for(controller, user="bob", password=PASSWORD + "-wrong")
    with pytest.raises(PermanentError, match="535") as info:
        await make_email_type(smtp).run(context(GOOD))
    assert recorder.messages == []
    assert PASSWORD not in "".join(traceback.format_exception(info.value))


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_auth_required_without_login_is_permanent(smtp_server):
    controller = smtp_server(Recorder(), **AUTH)
    with pytest.raises(PermanentError, match="530"):
        await make_email_type(config_for(controller)).run(context(GOOD))


def test_redact_hides_password_forms():
    smtp = SmtpConfig(host="h", user="bob", password=PASSWORD)
    plain = base64.b64encode(f"\0bob\0{PASSWORD}".encode()).decode()
    text = _redact(smtp, f"echo {PASSWORD} and {plain}")
    assert PASSWORD not in text and plain not in text


async def test_bad_payload_at_run_is_permanent():
    smtp = SmtpConfig(host="127.0.0.1", port=25, sender="jqd@example.org")
    with pytest.raises(PermanentError, match="invalid payload"):
        await make_email_type(smtp).run(context({**GOOD, "subject": "a\r\nBcc: x@y.z"}))


@pytest.mark.parametrize(("port", "starttls", "mode"), [
    (465, None, "ssl"), (465, False, "ssl"), (587, None, "starttls"), (587, False, "plain"),
    (25, None, "plain"), (25, True, "starttls"), (2525, False, "plain"),
])
def test_connection_mode(port, starttls, mode):
    assert connection_mode(SmtpConfig(host="h", port=port, starttls=starttls)) == mode


@pytest.mark.parametrize("payload", [
    {"email": "a@example.com", "subject": "s"},  # no message
    {"email": "a@example.com", "message": "m"},  # no subject
    {"subject": "s", "message": "m"},  # no email
    {**GOOD, "body": "b"},  # message and body
    {**GOOD, "cc": "x@example.com"},  # unknown key
    {**GOOD, "subject": "a\nBcc: evil@example.com"},
    {**GOOD, "subject": "a\rb"},
    {**GOOD, "subject": "x" * 999},
    {**GOOD, "subject": 3},
    {**GOOD, "email": "a@example.com\r\nBcc: evil@example.com"},
    {**GOOD, "email": "a@example.com, b@example.com"},
    {**GOOD, "email": "a@example.com;b@example.com"},
    {**GOOD, "email": "Alice <a@example.com>"},
    {**GOOD, "email": "a b@example.com"},
    {**GOOD, "email": "a@b@example.com"},
    {**GOOD, "email": "example.com"},
    {**GOOD, "email": "@example.com"},
    {**GOOD, "email": "a@"},
    {**GOOD, "email": "a@" + "x" * 253},
    {**GOOD, "email": ["a@example.com"]},
    {**GOOD, "message": None},
    {**GOOD, "message": "x" * ((1 << 20) + 1)},
    {**GOOD, "message": "\ud800"},
])
def test_validation_rejects(payload):
    with pytest.raises(PayloadError):
        validate_email(payload)


@pytest.mark.parametrize("payload", [
    GOOD,
    {"email": "a.b+tag@sub.example.com", "subject": "", "body": ""},
    {**GOOD, "subject": "x" * 998, "message": "x" * (1 << 20)},
])
def test_validation_accepts(payload):
    validate_email(payload)
