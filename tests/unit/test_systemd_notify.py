import os
import socket
import uuid

import pytest
import trio

from jqd.systemd import Notifier, run_watchdog, watchdog_interval


def receive_all(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096))
        except BlockingIOError:
            return messages


@pytest.fixture
def receiver(tmp_path):
    """A datagram socket standing in for systemd's notify socket, and its NOTIFY_SOCKET value."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.setblocking(False)
    with sock:
        yield sock, path


@pytest.fixture
def abstract_receiver():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"jqd-test-{uuid.uuid4().hex}"
    sock.bind(b"\0" + name.encode())
    sock.setblocking(False)
    with sock:
        yield sock, "@" + name


@pytest.mark.parametrize("which", ["receiver", "abstract_receiver"])
def test_messages_arrive(which, request):
    sock, address = request.getfixturevalue(which)
    with Notifier.from_environ({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("serving\n3 jobs running")
        assert notifier.extend_timeout(2.5)
        assert notifier.watchdog()
        assert notifier.stopping()
    assert receive_all(sock) == [b"READY=1", b"STATUS=serving 3 jobs running", b"EXTEND_TIMEOUT_USEC=2500000",
                                 b"WATCHDOG=1", b"STOPPING=1"]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_disabled_without_usable_notify_socket(environ):
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled and not notifier
    assert notifier.ready() is False and notifier.watchdog() is False


def test_failures_are_dropped_and_logged_once(tmp_path, caplog):
    with Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) as notifier:
        assert notifier.ready() is False
        assert notifier.status("x") is False
    assert caplog.text.count("sd_notify to") == 1


def test_full_queue_drops_without_blocking(receiver, caplog):
    sock, path = receiver
    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as notifier:
        sent = [notifier.watchdog() for _ in range(500)]  # nobody reads: the queue fills
    assert sent[0] is True and False in sent
    assert caplog.text.count("queue full, dropped") == 1


@pytest.mark.parametrize("environ, expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(environ, expected):
    assert watchdog_interval(environ) == expected


async def test_watchdog_pings_only_while_probe_says_progress(receiver, nursery, autojump_clock, caplog, request):
    sock, path = receiver
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    request.addfinalizer(notifier.close)
    progressing = True
    await nursery.start(run_watchdog, notifier, 5.0, lambda: progressing)

    await trio.sleep(12)  # ticks at 5 and 10
    assert receive_all(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]

    progressing = False
    await trio.sleep(10)  # ticks at 15 and 20: withheld
    assert receive_all(sock) == []
    assert caplog.text.count("withholding WATCHDOG=1") == 1

    progressing = True
    await trio.sleep(5)  # tick at 25
    assert receive_all(sock) == [b"WATCHDOG=1"]
    assert "resuming watchdog pings" in caplog.text


async def test_watchdog_probe_error_propagates(receiver, autojump_clock):
    _, path = receiver

    def broken_probe():
        raise RuntimeError("probe broke")

    with Notifier.from_environ({"NOTIFY_SOCKET": path}) as notifier, pytest.raises(RuntimeError, match="probe broke"):
        await run_watchdog(notifier, 1.0, broken_probe)
