"""A blocking control-socket client, stdlib only (no Trio): one connection per command.

Failure, by exception:

- `Unreachable(path, cause)`: the socket cannot be used: missing file, permission denied,
  connection refused (a stale socket), a timeout, or the connection broke before the final
  reply. ``kind`` names the case for callers that add their own hints.
- `Refused(code, message)`: the daemon answered with an error reply.
- `wire.ProtocolError`: the daemon's reply did not parse (mismatched versions, usually).
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from jqd_ctl import wire


class Unreachable(Exception):
    """The control socket at ``path`` cannot be used; ``cause`` says why, for humans."""

    def __init__(self, path: str, cause: str, kind: str = "other") -> None:
        super().__init__(path, cause)
        self.path = path
        self.cause = cause
        self.kind = kind  # missing | permission | refused | timeout | broken | other

    def __str__(self) -> str:
        return f"cannot reach {self.path}: {self.cause}"


class Refused(wire.ControlError):
    """The daemon refused the command with an error reply (its ``code`` and ``message``)."""


def _owner(path: str) -> str:
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "unknown (cannot stat it)"
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _permission_cause(path: str) -> str:
    # Blame the directory when we cannot even look at the socket file (e.g. /run/jqd is 0750).
    target = path if os.access(os.path.dirname(os.path.abspath(path)), os.X_OK) else os.path.dirname(
        os.path.abspath(path))
    what = "the socket file" if target == path else f"its directory {target}"
    owner = _owner(target)
    return (f"permission denied: {what} is owned by {owner}; only that user, root or the "
            "daemon's configured control group (JQD_CONTROL_GROUP) may connect")


class Client:
    """Talks to the jqd control socket at ``path``.

    ``timeout`` (seconds, None for none) bounds the connect and each wait for a reply line;
    for ``drain`` without a deadline, pass None or a value above the expected drain time.
    """

    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, cmd: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one command; return its result dict (progress lines are skipped)."""
        result: dict[str, Any] = {}
        for result in self.stream(cmd, args):
            pass
        return result

    def stream(self, cmd: str, args: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield each progress dict as it arrives, then the result dict last."""
        for reply in self.replies(cmd, args):
            yield dict(reply.data)

    def replies(self, cmd: str, args: Mapping[str, Any] | None = None) -> Iterator[wire.Progress | wire.Result]:
        """Yield `wire.Progress` items, then one `wire.Result`; raise `Refused` on an error reply."""
        data = wire.encode(wire.request(cmd, args))
        with self._connect() as sock:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may have answered and closed already (e.g. permission denied)
            except TimeoutError:
                raise Unreachable(self.path, f"the daemon did not take the request within {self.timeout:g} s",
                                  "timeout") from None
            for line in self._lines(sock):
                reply = wire.decode_reply(line)
                if isinstance(reply, wire.Failure):
                    raise Refused(reply.code, reply.message)
                yield reply
                if isinstance(reply, wire.Result):
                    return
        raise Unreachable(self.path, "the daemon closed the connection before its final reply", "broken")

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise Unreachable(self.path, "no such socket file", "missing") from None
        except PermissionError:
            sock.close()
            raise Unreachable(self.path, _permission_cause(self.path), "permission") from None
        except ConnectionRefusedError:
            sock.close()
            raise Unreachable(self.path, "connection refused: a stale socket file, the daemon is not running "
                              "(or the path is not a socket)", "refused") from None
        except TimeoutError:
            sock.close()
            raise Unreachable(self.path, f"no connection within {self.timeout:g} s (daemon overloaded or stuck?)",
                              "timeout") from None
        except OSError as exc:
            sock.close()
            raise Unreachable(self.path, exc.strerror or str(exc)) from None
        return sock

    def _lines(self, sock: socket.socket) -> Iterator[bytes]:
        buffer = bytearray()
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                yield line
                continue
            if len(buffer) > wire.MAX_LINE:
                raise wire.ProtocolError(wire.LINE_TOO_LONG, f"reply line exceeds {wire.MAX_LINE} bytes")
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise Unreachable(self.path, f"no reply within {self.timeout:g} s; the command may still "
                                  "have taken effect (check with status)", "timeout") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return
            buffer += chunk
