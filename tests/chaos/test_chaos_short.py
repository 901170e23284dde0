"""The random-kill campaign, small: part of `make test` (a few seconds).

Runs `tests/chaos/harness.py` as a subprocess (its own process, as `make chaos` does) with a
few hundred jobs and 4 SIGKILLs, then checks its JSON report: nothing acknowledged was lost,
every integrity check passed, the counts table did not drift. The long campaigns and their
figures are in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")
KILLS = 4


def test_random_kills_lose_nothing(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, HARNESS, "--jobs", "500", "--clients", "4", "--kills", str(KILLS), "--seed", "7",
         "--workers", "8", "--delivery-timeout", "40", "--workdir", str(tmp_path / "work"),
         "--json-out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert out.exists(), f"no report; exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    context = f"{proc.stdout}\n{proc.stderr[-3000:]}"
    assert report["lost"] == 0, (report["lost_detail"], context)
    assert report["integrity_failures"] == 0, report["integrity_failure_detail"]
    assert report["counts_drift"] == {}, report["counts_drift"]
    assert report["acked_missing_in_db"] == 0
    assert report["acked_missing_at_kill"] == [] and report["counts_drift_at_kill"] == []
    assert report["tokens_under_several_job_ids"] == 0, report["tokens_under_several_job_ids_detail"]
    assert report["client_errors"] == [], report["client_errors"]
    assert report["kills"] == KILLS
    assert report["acknowledged"] >= 500
    assert report["delivered"] == report["acknowledged"]
    assert report["final_stop_exit_status"] == 0
    assert report["passed"] and proc.returncode == 0, context
