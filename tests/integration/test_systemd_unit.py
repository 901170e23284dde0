"""The shipped unit file: `systemd-analyze verify` passes and the sandbox stays tight.

`.ci/run` installs Debian's `systemd` package when `systemd-analyze` is missing; elsewhere
(e.g. a laptop without systemd) these tests skip and say why.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "systemd", "jqd.service")
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                "(apt-get install systemd; .ci/run does this)")


@pytest.fixture
def unit(tmp_path):
    """The unit with ExecStart pointing at this checkout's jqd, so verify can check it."""
    jqd = os.path.join(os.path.dirname(sys.executable), "jqd")
    text = open(UNIT).read()
    assert re.search(r"^ExecStart=/opt/jqd/venv/bin/jqd$", text, re.M)
    path = tmp_path / "jqd.service"
    path.write_text(re.sub(r"^ExecStart=.*$", f"ExecStart={jqd}", text, flags=re.M))
    return str(path)


def test_unit_verifies_cleanly(unit):
    result = subprocess.run([ANALYZE, "verify", unit], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "jqd.service" not in result.stderr, result.stderr  # no warning about our unit


def test_unit_has_the_required_settings():
    text = open(UNIT).read()
    for setting in ["Type=notify", "WatchdogSec=", "StateDirectory=jqd", "RuntimeDirectory=jqd",
                    "EnvironmentFile=-/etc/jqd/jqd.env", "Restart=on-failure", "KillMode=mixed",
                    "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                    "PrivateTmp=yes", "RestrictAddressFamilies=", "SystemCallFilter="]:
        assert setting in text, setting
    stop = float(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))
    assert stop > 25  # above the default JQD_SHUTDOWN_GRACE


def test_security_exposure_is_low(unit):
    result = subprocess.run([ANALYZE, "security", "--offline=yes", unit], capture_output=True, text=True,
                            timeout=60)
    match = re.search(r"Overall exposure level for jqd.service: (\d+\.\d+)", result.stdout + result.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot score unit files offline: {result.stderr.strip()[:200]}")
    score = float(match.group(1))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= 2.0
