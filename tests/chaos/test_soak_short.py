"""Load held, short: part of `make test` (about 25 s).

Runs `tests/chaos/soak.py` as a subprocess for 20 s of full-speed noop intake (createJob and
createJobs batches) against a real jqd with a 3 s retention, sampling every 1.5 s, and checks
its JSON report: RSS, open fds, WAL and database size stay bounded once the store reached its
steady size, intake latency does not drift, no unexpected answer, integrity ok, exit 0 after
SIGTERM. The 10-minute campaign and its figures are in docs/RELIABILITY.md ("Load held").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SOAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soak.py")


def test_short_soak_stays_bounded(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, SOAK, "--seconds", "20", "--clients", "4", "--workers", "8", "--interval", "1.5",
         "--retention", "3", "--visibility", "2", "--workdir", str(tmp_path / "work"),
         "--json-out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=90)
    context = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert out.exists(), context
    report = json.loads(out.read_text())
    summary, samples = report["summary"], report["samples"]
    assert len(samples) >= 10, context
    # Pruning works: the store holds about retention x rate jobs, not everything submitted.
    assert summary["jobs_acknowledged"] > 5000, context
    last = samples[-1]
    finished_kept = last["rows"] - last["queued"]
    assert summary["jobs_done"] > 3000 and finished_kept < summary["jobs_done"] * 0.6, context
    for key in ("rss", "fds", "wal", "db", "p50"):
        assert summary["bounds"][key]["ok"], (key, summary["bounds"][key], context)
    assert summary["integrity"] == "ok"
    assert summary["failures"] == [], context
    assert proc.returncode == 0, context
