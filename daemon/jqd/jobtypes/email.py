"""`email`: send one message over SMTP with the settings in `config.smtp`.

Sending uses the stdlib `smtplib` in a Trio worker thread, with a 30 s socket timeout on every
operation. Port 465 means implicit TLS, port 587 STARTTLS, any other port plain SMTP; an
explicit `starttls` setting (`SMTP_STARTTLS`) overrides the port's default for STARTTLS.

How it fails:
- email not configured (no `SMTP_HOST`), no sender, or a bad payload: `PermanentError`;
- an SMTP reply of 5xx (refused sender or recipient, bad credentials, rejected data), or a
  server lacking a needed extension (STARTTLS, AUTH, SMTPUTF8): `PermanentError`;
- a 4xx reply, a refused or dropped connection, a timeout, a TLS error: `EmailDeliveryError`,
  which the worker retries with backoff.
Messages carry the server's reply, never the password. A cancelled attempt abandons its
thread, which finishes on its own within the socket timeouts; the message may still go out,
which is the documented at-least-once duplicate.
"""

from __future__ import annotations

import base64
import email.message
import email.utils
import smtplib
import ssl

import trio

from jqd.config import SmtpConfig
from jqd.handlers import JobContext, JobType, PayloadError, PermanentError
from jqd.jobtypes._payload import check_keys, check_str, permanent_on_bad_payload

SMTP_TIMEOUT = 30.0  # seconds: socket timeout of each SMTP operation
MAX_ADDRESS = 254  # characters of the recipient address (RFC 5321 path limit)
MAX_SUBJECT = 998  # characters of the subject (RFC 5322 line limit)
MAX_MESSAGE = 1 << 20  # bytes (UTF-8) of the message body
_ADDRESS_FORBIDDEN = frozenset(",;<>")


class EmailDeliveryError(Exception):
    """A temporary failure (SMTP 4xx, connection, timeout): the job is retried."""


def validate_email(payload: dict) -> None:
    check_keys(payload, required=("email", "subject"), optional=("message", "body"))
    if ("message" in payload) == ("body" in payload):
        raise PayloadError("exactly one of 'message' or 'body' is required")
    address = check_str(payload, "email", max_chars=MAX_ADDRESS)
    local, at, domain = address.partition("@")
    if (not at or not local or not domain or "@" in domain
            or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 or ch in _ADDRESS_FORBIDDEN
                   for ch in address)):
        raise PayloadError("'email' must be a single address like user@example.com "
                           "(one '@', no spaces, commas, semicolons or angle brackets)")
    check_str(payload, "subject", max_chars=MAX_SUBJECT, single_line=True)
    check_str(payload, "message" if "message" in payload else "body", max_bytes=MAX_MESSAGE)


def connection_mode(smtp: SmtpConfig) -> str:
    """`"ssl"` (implicit TLS), `"starttls"` or `"plain"`, from the port and `starttls`."""
    if smtp.port == 465:
        return "ssl"
    starttls = smtp.starttls if smtp.starttls is not None else smtp.port == 587
    return "starttls" if starttls else "plain"


def build_message(sender: str, ctx: JobContext) -> email.message.EmailMessage:
    payload = ctx.payload
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "jqd.invalid"
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = payload["email"]
    msg["Subject"] = payload["subject"]
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(idstring=f"jqd.{ctx.id}.{ctx.attempt}", domain=domain)
    msg["Jqd-Job-Id"] = str(ctx.id)
    msg["Jqd-Attempt"] = str(ctx.attempt)
    msg.set_content(payload.get("message", payload.get("body")))
    return msg


def make_email_type(smtp: SmtpConfig) -> JobType:
    async def run_email(ctx: JobContext) -> dict:
        permanent_on_bad_payload(validate_email, ctx.payload)
        if smtp.host is None:
            raise PermanentError("email is not configured: set SMTP_HOST (and SMTP_PORT, SMTP_USER, "
                                 "SMTP_PASSWORD, SMTP_FROM as needed) and restart jqd")
        sender = smtp.sender or smtp.user
        if not sender:
            raise PermanentError("email has no sender: set SMTP_FROM or SMTP_USER")
        if smtp.user and not smtp.password:
            raise PermanentError("SMTP_USER is set but SMTP_PASSWORD is not")
        msg = build_message(sender, ctx)
        await trio.to_thread.run_sync(_send, smtp, sender, ctx.payload["email"], msg,
                                     abandon_on_cancel=True)
        return {"message_id": str(msg["Message-ID"])}

    return JobType(name="email", run=run_email, validate=validate_email)


def _send(smtp: SmtpConfig, sender: str, recipient: str, msg: email.message.EmailMessage) -> None:
    """Blocking: connect, maybe STARTTLS and log in, send; map failures to our two classes."""
    where = f"{smtp.host}:{smtp.port}"
    mode = connection_mode(smtp)
    try:
        if mode == "ssl":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=SMTP_TIMEOUT,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=SMTP_TIMEOUT)
        with client:
            if mode == "starttls":
                client.starttls(context=ssl.create_default_context())
            if smtp.user:
                client.login(smtp.user, smtp.password)
            client.send_message(msg, from_addr=email.utils.parseaddr(sender)[1], to_addrs=[recipient])
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()))
        _raise_for_reply(smtp, where, "refused the recipient", code, reply)
    except smtplib.SMTPResponseException as exc:  # incl. sender refused, auth, data, connect
        _raise_for_reply(smtp, where, "answered", exc.smtp_code, exc.smtp_error)
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(_redact(smtp, f"SMTP server {where} lacks a needed extension: {exc}")) from None
    except (smtplib.SMTPException, OSError) as exc:  # OSError covers refused, timeouts and TLS
        raise EmailDeliveryError(
            _redact(smtp, f"SMTP server {where} failed: {type(exc).__name__}: {exc}")) from None


def _raise_for_reply(smtp: SmtpConfig, where: str, what: str, code: int, reply: bytes | str) -> None:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    message = _redact(smtp, f"SMTP server {where} {what}: {code} {text}")
    if code >= 500:
        raise PermanentError(message) from None
    raise EmailDeliveryError(message) from None


def _redact(smtp: SmtpConfig, text: str) -> str:
    """Remove the password, and its base64 forms an AUTH exchange could echo, from `text`."""
    if not smtp.password:
        return text
    secrets = [smtp.password, base64.b64encode(smtp.password.encode()).decode()]
    if smtp.user:
        secrets.append(base64.b64encode(f"\0{smtp.user}\0{smtp.password}".encode()).decode())
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
