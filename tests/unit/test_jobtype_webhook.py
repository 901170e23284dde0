"""The `webhook` job type: httpx.MockTransport for status handling, a real server for headers."""

from __future__ import annotations

import http.server
import json
import threading

import httpx
import pytest
import trio

from jqd.handlers import JobContext, PayloadError, PermanentError, RetryAfter
from jqd.jobtypes.webhook import WebhookError, make_webhook_type

ALLOWED = frozenset({"hooks.example.com", "other.example.com", "127.0.0.1", "::1"})
URL = "https://hooks.example.com/in"


def validator(allowed: frozenset[str] = ALLOWED):
    """The validator alone; its client is never used (a mock one avoids loading CA certificates)."""
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: None))
    return make_webhook_type(allowed, client).validate


def context(payload: dict, attempt: int = 1) -> JobContext:
    return JobContext(id=42, type="webhook", payload=payload, attempt=attempt, queue="default",
                      trio_token=trio.lowlevel.current_trio_token())


def mock_client(handler) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose transport calls `handler(request)`; also returns the requests seen."""
    seen: list[httpx.Request] = []

    async def transport(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        result = handler(request)
        return await result if hasattr(result, "__await__") else result

    return httpx.AsyncClient(transport=httpx.MockTransport(transport)), seen


async def run(handler, payload: dict, allowed: frozenset[str] = ALLOWED):
    client, seen = mock_client(handler)
    async with client:
        result = await make_webhook_type(allowed, client).run(context(payload))
    return result, seen


async def test_success_sends_json_and_job_headers():
    result, [request] = await run(lambda r: httpx.Response(204), {"url": URL, "json": {"a": [1, None]}})
    assert result == {"status": 204}
    assert request.method == "POST"
    assert request.headers["Jqd-Job-Id"] == "42"
    assert request.headers["Jqd-Attempt"] == "1"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"a": [1, None]}


async def test_method_headers_and_text_body():
    payload = {"url": URL, "method": "put", "headers": {"X-Token": "abc", "Content-Type": "text/plain"},
               "body": "héllo"}
    _, [request] = await run(lambda r: httpx.Response(200), payload)
    assert request.method == "PUT"
    assert request.headers["X-Token"] == "abc"
    assert request.headers["Content-Type"] == "text/plain"
    assert request.content == "héllo".encode()


async def test_client_cookies_are_not_shared_between_jobs():
    client, seen = mock_client(lambda r: httpx.Response(200, headers={"Set-Cookie": "session=tenant-a"}))
    async with client:
        webhook = make_webhook_type(ALLOWED, client)
        await webhook.run(context({"url": URL}))
        await webhook.run(context({"url": URL}))
    assert "cookie" not in seen[1].headers


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_retryable_statuses(status):
    with pytest.raises(WebhookError, match=str(status)):
        await run(lambda r: httpx.Response(status, text="busy"), {"url": URL})


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_permanent_statuses_quote_the_body(status):
    body = "no such hook " + "x" * 1000
    with pytest.raises(PermanentError, match=f"HTTP {status}: no such hook") as info:
        await run(lambda r: httpx.Response(status, text=body), {"url": URL})
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(("status", "header", "seconds"), [
    (429, "7", 7.0), (503, "120", 120.0), (429, "999999", 3600.0),
    (503, "Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past
])
async def test_retry_after(status, header, seconds):
    with pytest.raises(RetryAfter) as info:
        await run(lambda r: httpx.Response(status, headers={"Retry-After": header}), {"url": URL})
    assert info.value.seconds == seconds


async def test_retry_after_garbage_is_ordinary_retry():
    with pytest.raises(WebhookError):
        await run(lambda r: httpx.Response(429, headers={"Retry-After": "soon"}), {"url": URL})


async def test_network_error_is_retryable():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(WebhookError, match="ConnectError"):
        await run(refuse, {"url": URL})


async def test_timeout_is_retryable(autojump_clock):
    async def slow(request):
        await trio.sleep(60)
        return httpx.Response(200)

    with pytest.raises(WebhookError, match="timed out after 2.5 s"):
        await run(slow, {"url": URL, "timeout_seconds": 2.5})


def redirecting(status: int, location: str):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/in":
            return httpx.Response(status, headers={"Location": location})
        return httpx.Response(200)

    return handler


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_redirect_to_allowed_host_switches_to_get(status):
    payload = {"url": URL, "json": {"x": 1}, "headers": {"Authorization": "Bearer t", "X-Keep": "1"}}
    result, seen = await run(redirecting(status, "https://other.example.com/next"), payload)
    assert result == {"status": 200}
    assert [(r.method, str(r.url)) for r in seen] == [
        ("POST", URL), ("GET", "https://other.example.com/next")]
    assert seen[1].content == b""
    assert "content-type" not in seen[1].headers
    assert "authorization" not in seen[1].headers  # another origin: credentials stay behind
    assert seen[1].headers["X-Keep"] == "1"
    assert seen[1].headers["Jqd-Job-Id"] == "42"


@pytest.mark.parametrize("status", [307, 308])
async def test_redirect_keeps_method_and_body(status):
    payload = {"url": URL, "method": "PATCH", "body": "data", "headers": {"Authorization": "Bearer t"}}
    result, seen = await run(redirecting(status, "/elsewhere"), payload)
    assert result == {"status": 200}
    assert seen[1].method == "PATCH"
    assert str(seen[1].url) == "https://hooks.example.com/elsewhere"
    assert seen[1].content == b"data"
    assert seen[1].headers["Authorization"] == "Bearer t"  # same origin


async def test_redirect_to_forbidden_host_is_permanent():
    with pytest.raises(PermanentError, match="evil.example.net"):
        await run(redirecting(302, "http://evil.example.net/steal"), {"url": URL})


async def test_redirect_loop_is_permanent():
    with pytest.raises(PermanentError, match="more than 5 redirects"):
        await run(lambda r: httpx.Response(302, headers={"Location": URL}), {"url": URL})


async def test_redirect_to_other_scheme_is_permanent():
    with pytest.raises(PermanentError, match="non-HTTP"):
        await run(redirecting(302, "ftp://hooks.example.com/x"), {"url": URL})


async def test_handler_rechecks_allowlist():
    client, seen = mock_client(lambda r: httpx.Response(200))
    async with client:
        make_webhook_type(ALLOWED, client).validate({"url": URL})  # accepted at submission...
        with pytest.raises(PermanentError, match="hooks.example.com"):  # ...but the config changed
            await make_webhook_type(frozenset({"other.example.com"}), client).run(context({"url": URL}))
    assert seen == []


async def test_star_allows_any_host():
    payload = {"url": "http://anything.test:8080/x"}
    result, _ = await run(lambda r: httpx.Response(200), payload, frozenset({"*"}))
    assert result == {"status": 200}


def test_host_match_is_case_insensitive_and_handles_ipv6():
    validate = validator()
    validate({"url": "https://HOOKS.Example.COM/x"})
    validate({"url": "http://[::1]:9000/x"})


@pytest.mark.parametrize("payload", [
    {},  # no url
    {"url": "ftp://hooks.example.com/x"},
    {"url": "file:///etc/passwd"},
    {"url": "hooks.example.com/x"},
    {"url": "https:///x"},
    {"url": "https://evil.example.net/x"},
    {"url": "https://hooks.example.com.evil.net/x"},
    {"url": "https://user:pw@hooks.example.com/x"},
    {"url": "https://hooks.example.com/a b"},
    {"url": 5},
    {"url": URL, "method": "TRACE"},
    {"url": URL, "method": 1},
    {"url": URL, "headers": {"X-A": "1\r\nX-Injected: 1"}},
    {"url": URL, "headers": {"X-A\r\nX-B": "1"}},
    {"url": URL, "headers": {"X-A": 1}},
    {"url": URL, "headers": {"X-A": "é"}},
    {"url": URL, "headers": ["X-A: 1"]},
    {"url": URL, "headers": {"jqd-job-id": "1"}},
    {"url": URL, "headers": {"Jqd-Attempt": "1"}},
    {"url": URL, "headers": {"Host": "other.example.com"}},
    {"url": URL, "headers": {"Content-Length": "1"}},
    {"url": URL, "json": {}, "body": ""},
    {"url": URL, "body": {"not": "a string"}},
    {"url": URL, "timeout_seconds": 0},
    {"url": URL, "timeout_seconds": 301},
    {"url": URL, "timeout_seconds": True},
    {"url": URL, "timeout_seconds": "5"},
    {"url": URL, "extra": 1},
])
def test_validation_rejects(payload):
    with pytest.raises(PayloadError):
        validator()(payload)


@pytest.mark.parametrize("payload", [
    {"url": URL},
    {"url": "http://127.0.0.1:8000/hook", "method": "GET", "timeout_seconds": 300},
    {"url": URL, "json": None, "headers": {"X-Empty": "", "Authorization": "Bearer a b"}},
    {"url": URL, "method": "DELETE", "body": "", "timeout_seconds": 0.5},
])
def test_validation_accepts(payload):
    validator()(payload)


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, dict, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append((self.command, self.path, dict(self.headers), body))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_real_server_receives_job_headers(receiver):
    port = receiver.server_address[1]
    payload = {"url": f"http://127.0.0.1:{port}/hook", "json": {"n": 1}}
    async with httpx.AsyncClient() as client:
        result = await make_webhook_type(ALLOWED, client).run(context(payload, attempt=3))
    assert result == {"status": 201}
    [(method, path, headers, body)] = Receiver.received
    assert (method, path) == ("POST", "/hook")
    assert headers["Jqd-Job-Id"] == "42"
    assert headers["Jqd-Attempt"] == "3"
    assert headers["User-Agent"].startswith("jqd/")
    assert json.loads(body) == {"n": 1}
