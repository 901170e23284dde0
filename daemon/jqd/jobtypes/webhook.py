"""`webhook`: one HTTP request with the shared `httpx.AsyncClient`, to an allowed host only.

Only hosts in `config.webhook_allowed_hosts` ("*" = any) may be called: submission checks it
(422), and the handler checks it again on every hop, since the configuration may have changed
since. Redirects are followed here, not by httpx, at most `MAX_REDIRECTS` of them; 301/302/303
become a GET without body, 307/308 keep method and body, and credentials are dropped when the
origin changes. Requests are built without the client's cookie jar, so jobs never share cookies.
Each request carries `Jqd-Job-Id` and `Jqd-Attempt` so receivers can deduplicate.

How it fails:
- a bad payload, a host not allowed (even after a redirect), a 4xx other than 408/429, an
  unfollowable 3xx or too many redirects: `PermanentError`, with the status and a body excerpt;
- 429 or 503 with a `Retry-After`: `RetryAfter(seconds)`, at most `MAX_RETRY_AFTER`;
- 408, 429, 5xx, network errors, and `timeout_seconds` spent (for all hops together):
  `WebhookError`, which the worker retries with backoff.
"""

from __future__ import annotations

import email.utils
import json
import re
import time

import httpx
import trio

from jqd import __version__
from jqd.handlers import JobContext, JobType, PayloadError, PermanentError, RetryAfter
from jqd.jobtypes._payload import check_keys, check_seconds, check_str, permanent_on_bad_payload

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})  # set by httpx per request
RESERVED_HEADERS = frozenset({"jqd-job-id", "jqd-attempt"}) | FRAMING_HEADERS
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
DEFAULT_TIMEOUT = 30.0  # seconds, for the whole exchange including redirects
MAX_TIMEOUT = 300.0  # seconds
MAX_REDIRECTS = 5  # hops followed after the first request
MAX_RETRY_AFTER = 3600.0  # seconds: cap of a server's Retry-After
MAX_URL = 8192  # characters
EXCERPT = 200  # characters of a response body quoted in an error
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 header field name
_FIELD_VALUE = re.compile(r"([\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?)?")  # RFC 9110, ASCII only


class WebhookError(Exception):
    """A temporary failure (408, 429, 5xx, network, timeout): the job is retried."""


def host_allowed(url: httpx.URL, allowed_hosts: frozenset[str]) -> bool:
    """Whether `url`'s host (lowercase, no IPv6 brackets; Unicode or IDNA form) is allowed."""
    if "*" in allowed_hosts:
        return True
    return url.host.lower() in allowed_hosts or url.raw_host.decode("ascii").lower() in allowed_hosts


def _has_header(headers: dict[str, str], name: str) -> bool:
    return any(key.lower() == name for key in headers)


def _check_url(raw: str, allowed_hosts: frozenset[str]) -> httpx.URL:
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        raise PayloadError("'url' must not contain whitespace or control characters")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise PayloadError(f"'url' is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise PayloadError("'url' must be an http:// or https:// URL")
    if not url.host:
        raise PayloadError("'url' has no host")
    if url.userinfo:
        raise PayloadError("'url' must not contain credentials; send an Authorization header instead")
    if not host_allowed(url, allowed_hosts):
        raise PayloadError(f"webhook host {url.host!r} is not allowed (JQD_WEBHOOK_ALLOWED_HOSTS)")
    return url


def _check_headers(headers: object) -> dict[str, str]:
    if not isinstance(headers, dict):
        raise PayloadError("'headers' must be an object of strings")
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise PayloadError(f"header name {name!r} is not a valid HTTP token")
        if name.lower() in RESERVED_HEADERS:
            raise PayloadError(f"header {name!r} is set by jqd and cannot be overridden")
        if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
            raise PayloadError(f"header {name!r} must be a string of printable ASCII, without CR or LF "
                               "and without leading or trailing spaces")
    return headers


def make_webhook_type(allowed_hosts: frozenset[str], http_client: httpx.AsyncClient) -> JobType:
    def validate_webhook(payload: dict) -> None:
        check_keys(payload, required=("url",),
                   optional=("method", "headers", "json", "body", "timeout_seconds"))
        _check_url(check_str(payload, "url", max_chars=MAX_URL), allowed_hosts)
        method = payload.get("method", "POST")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise PayloadError(f"'method' must be one of {', '.join(sorted(METHODS))}")
        _check_headers(payload.get("headers", {}))
        if "json" in payload and "body" in payload:
            raise PayloadError("give at most one of 'json' or 'body'")
        if "body" in payload:
            check_str(payload, "body")
        if "timeout_seconds" in payload:
            check_seconds(payload, "timeout_seconds", low=0, high=MAX_TIMEOUT, low_inclusive=False)

    async def run_webhook(ctx: JobContext) -> dict:
        permanent_on_bad_payload(validate_webhook, ctx.payload)
        payload = ctx.payload
        timeout = payload.get("timeout_seconds", DEFAULT_TIMEOUT)
        headers = {**payload.get("headers", {}), "Jqd-Job-Id": str(ctx.id), "Jqd-Attempt": str(ctx.attempt)}
        if not _has_header(headers, "user-agent"):
            headers["User-Agent"] = f"jqd/{__version__}"
        content = None
        if "json" in payload:
            content = json.dumps(payload["json"]).encode()
            if not _has_header(headers, "content-type"):
                headers["Content-Type"] = "application/json"
        elif "body" in payload:
            content = payload["body"].encode()
        request = httpx.Request(payload.get("method", "POST").upper(), payload["url"],
                                headers=headers, content=content)
        try:
            with trio.fail_after(timeout):
                return await _exchange(http_client, request, allowed_hosts, timeout)
        except trio.TooSlowError:
            raise WebhookError(f"webhook to {request.url.host} timed out after {timeout:g} s") from None

    return JobType(name="webhook", run=run_webhook, validate=validate_webhook)


async def _exchange(client: httpx.AsyncClient, request: httpx.Request, allowed_hosts: frozenset[str],
                    timeout: float) -> dict:
    """Send `request`, following redirects by hand; return the result or raise."""
    for hop in range(MAX_REDIRECTS + 1):
        host = request.url.host
        if not host_allowed(request.url, allowed_hosts):
            raise PermanentError(f"webhook host {host!r} is not allowed (JQD_WEBHOOK_ALLOWED_HOSTS)"
                                 + (" (reached by a redirect)" if hop else ""))
        request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as exc:
            raise WebhookError(f"webhook to {host} failed: {type(exc).__name__}: {exc}") from None
        try:
            status = response.status_code
            if 200 <= status < 300:
                return {"status": status}
            if status in (301, 302, 303, 307, 308) and "location" in response.headers:
                request = _redirect(request, response)
                continue
            excerpt = await _excerpt(response)
        finally:
            await response.aclose()
        _raise_for_status(host, status, response.headers, excerpt)
    raise PermanentError(f"webhook to {request.url.host} gave more than {MAX_REDIRECTS} redirects")


def _redirect(request: httpx.Request, response: httpx.Response) -> httpx.Request:
    try:
        url = request.url.join(response.headers["location"])
    except (httpx.InvalidURL, UnicodeError):
        location = response.headers["location"][:EXCERPT]
        raise PermanentError(f"webhook redirect to an invalid URL: {location!r}") from None
    if url.scheme not in ("http", "https"):
        raise PermanentError(f"webhook redirect to a non-HTTP URL: {str(url)[:EXCERPT]!r}")
    method, content = request.method, request.content
    headers = {k: v for k, v in request.headers.items() if k.lower() not in FRAMING_HEADERS}
    if response.status_code in (301, 302, 303):
        method, content = "GET", None
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    same_origin = (url.scheme, url.host, url.port) == (request.url.scheme, request.url.host, request.url.port)
    if not same_origin:
        headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
    return httpx.Request(method, url, headers=headers, content=content)


async def _excerpt(response: httpx.Response) -> str:
    """The start of the body, as one short line; empty if it cannot be read."""
    data = b""
    try:
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) >= 4 * EXCERPT:
                break
    except (httpx.TransportError, httpx.DecodingError):
        pass  # only an excerpt for an error message: the status decides what happens
    return " ".join(data.decode("utf-8", "replace").split())[:EXCERPT]


def _raise_for_status(host: str, status: int, headers: httpx.Headers, excerpt: str) -> None:
    message = f"webhook to {host} answered HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in (429, 503) and (delay := _retry_after(headers.get("retry-after"))) is not None:
        raise RetryAfter(min(delay, MAX_RETRY_AFTER), message)
    if status in (408, 429) or status >= 500:
        raise WebhookError(message)
    raise PermanentError(message)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` of delay-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())
