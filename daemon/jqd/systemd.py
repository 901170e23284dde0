"""systemd integration without libsystemd: sd_notify datagrams and the watchdog task.

`Notifier` sends ``READY=1``, ``STATUS=``, ``STOPPING=1``, ``EXTEND_TIMEOUT_USEC=`` and
``WATCHDOG=1`` to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) over a
non-blocking AF_UNIX datagram socket, so a send never blocks the event loop. Notification is
best effort, as with ``sd_notify(3)``: a full queue (EAGAIN) or a vanished manager drops the
message, logs once per kind of failure, and the method returns False. Without
``NOTIFY_SOCKET`` (not under systemd) `Notifier.from_environ` returns a disabled notifier
whose methods do nothing and return False, so callers need no ``if``.

`run_watchdog` is the task that sends ``WATCHDOG=1``; it owns no state but its timer.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger("jqd.systemd")


class Notifier:
    """Sends sd_notify messages to one address; disabled when ``address`` is None."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._target: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._logged: set[int] = set()  # errnos already logged, so a dead manager is not spammed
        if address:
            # "@name" is Linux's abstract namespace: a leading NUL byte, no file.
            self._target = b"\0" + address[1:].encode() if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        """A notifier for ``$NOTIFY_SOCKET``, or a disabled one when unset or unsupported."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address and not (address.startswith("/") or address.startswith("@")):
            log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; systemd notifications disabled", address)
            address = None
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def __bool__(self) -> bool:
        return self.enabled

    def notify(self, message: str) -> bool:
        """Send one datagram (``KEY=value`` lines); True if the kernel took it."""
        if self._sock is None or self._target is None:
            return False
        try:
            self._sock.sendto(message.encode(), self._target)
        except OSError as exc:
            key = exc.errno or 0
            if key not in self._logged:
                self._logged.add(key)
                reason = "queue full, dropped" if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) else exc.strerror
                log.warning("sd_notify to %s failed (%s); further failures like this are not logged",
                            self.address, reason)
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        # One line: a newline would start a new KEY=value assignment.
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd's start/stop timeout fires (from now)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``WATCHDOG_USEC``), or None without a watchdog for us.

    None when ``WATCHDOG_USEC`` is unset, not a positive integer, or when ``WATCHDOG_PID`` is
    set to another process's pid (the watchdog is meant for someone else).
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


async def run_watchdog(notifier: Notifier, interval: float, progress_probe: Callable[[], bool], *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Every ``interval`` seconds, send ``WATCHDOG=1`` if ``progress_probe()`` says so.

    The probe answers "has the dispatcher made progress, or been idle but responsive, since
    the last ping?". A False answer withholds the ping (logged once per stall), so a wedged
    dispatcher makes systemd kill and restart the daemon after ``WatchdogSec``. This task runs
    on the event loop, so a blocked loop stops the pings as well: the ping proves both the
    loop and the dispatcher move, not merely that a timer fires. Runs until cancelled; an
    exception from the probe propagates (a broken probe must not pass for a healthy daemon).
    Deadlines advance by ``interval`` from the start, so late wake-ups do not drift.
    """
    task_status.started()
    deadline = trio.current_time()
    stalled = False
    while True:
        deadline += interval
        await trio.sleep_until(deadline)
        if progress_probe():
            if stalled:
                log.warning("dispatcher progressing again; resuming watchdog pings")
                stalled = False
            notifier.watchdog()
        elif not stalled:
            log.error("dispatcher made no progress in %.1f s; withholding WATCHDOG=1", interval)
            stalled = True
        deadline = max(deadline, trio.current_time())  # after a long block, restart the cadence
