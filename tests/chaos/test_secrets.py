"""Secrets never leak: the API token and the SMTP password must not appear in the daemon's
log, in any HTTP answer, or in jqd-ctl's output, whatever goes wrong.

One jqd runs with JQD_API_TOKEN and SMTP_PASSWORD set (SMTP to a closed local port, so every
email attempt fails to connect), at log level debug (the most talkative). The test provokes
401s (no token, a wrong one, a prefix of the right one, a token in the wrong scheme), an email
job that fails and ends dead, reads /stats, /metrics, /jobs, /jobs/{id}, /openapi.json, runs
`jqd-ctl status` (text and --json), and starts other instances with the same secrets that
fail at start: a bad setting (exit 2), the database held by the first one (exit 1). Neither
secret may appear in any of it.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.chaos.chaoslib import JqdProcess, base_env, free_port, jqd_command, poll

TOKEN = "tok-SECRET-123"
PASSWORD = "pw-SECRET-456"
SECRETS = (TOKEN, PASSWORD, "SECRET-123", "SECRET-456")
JQD_CTL = os.path.join(os.path.dirname(sys.executable), "jqd-ctl")


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {where}:\n{text[:3000]}"


def test_secrets_never_leak(tmp_path):
    closed_port = free_port()  # nothing listens there: connection refused
    env = dict(JQD_API_TOKEN=TOKEN, SMTP_HOST="127.0.0.1", SMTP_PORT=str(closed_port), SMTP_USER="u",
               SMTP_PASSWORD=PASSWORD, JQD_RETRY_BASE="0.05", JQD_RETRY_MAX="0.1",
               WORKER_COUNT="2")
    d = JqdProcess(str(tmp_path), env=env)
    d.env["JQD_LOG_LEVEL"] = "debug"
    d.start()
    seen: list[tuple[str, str]] = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with d.client() as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path in (("GET", "/stats"), ("GET", "/metrics"), ("POST", "/createJob"), ("GET", "/jobs/1")):
                r = c.request(method, path, headers=headers, json={"type": "noop", "payload": {}})
                assert r.status_code == 401, (path, headers, r.status_code)
                seen.append((f"401 {method} {path}", str(r.headers) + r.text))
        r = c.post("/createJob", headers=auth, json={
            "type": "email", "max_retries": 1,
            "payload": {"email": "ada@example.com", "subject": "s", "message": "m"}})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = poll(lambda: (j := c.get(f"/jobs/{job_id}", headers=auth).json())["state"] == "dead" and j,
                   timeout=15, interval=0.1, message="the email job to end dead")
        assert job["last_error"], job
        seen.append(("GET /jobs/{id} last_error", str(job)))
        for path in ("/stats", "/metrics", "/jobs", "/openapi.json", "/healthz", "/readyz", f"/jobs/{job_id}"):
            r = c.get(path, headers=auth)
            assert r.status_code == 200, (path, r.status_code)
            seen.append((f"GET {path}", str(r.headers) + r.text))
        bad = c.post("/createJob", headers=auth, json={"type": "email", "payload": {"email": "x\nBcc: y"}})
        seen.append(("422 email payload", bad.text))
    for args in (["status"], ["--json", "status"], ["pause", "--reason", "r"], ["resume"], ["bogus"]):
        out = subprocess.run([JQD_CTL, "--socket", d.socket, *args], capture_output=True, text=True, timeout=20,
                             env=base_env(**env))
        seen.append((f"jqd-ctl {' '.join(args)}", out.stdout + out.stderr))
    # Other instances with the same secrets that fail at start.
    for label, extra in (("bad setting", dict(JQD_RETRY_BASE="soon")),
                         ("bad SMTP_PORT", dict(SMTP_PORT="smtp")),
                         ("database in use", {})):
        other_env = base_env(**{**env, "JQD_DB": d.db, "JQD_BIND": f"127.0.0.1:{free_port()}",
                                "JQD_CONTROL_SOCKET": str(tmp_path / "other.sock"), **extra})
        out = subprocess.run(jqd_command(), env=other_env, cwd=str(tmp_path), capture_output=True, text=True,
                             timeout=30)
        assert out.returncode in (1, 2), (label, out.returncode, out.stderr[-2000:])
        seen.append((f"second instance, {label} (exit {out.returncode})", out.stdout + out.stderr))
    assert d.stop() == 0
    log = d.log()
    assert "email" in log or "SMTP" in log or "smtp" in log  # the failure was logged, somehow
    seen.append(("daemon log", log))
    for where, text in seen:
        assert_clean(where, text)
