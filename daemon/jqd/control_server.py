"""The control socket: a Unix stream socket that serves `jqd_ctl.wire` requests.

`serve()` owns the socket file from bind to exit: it creates it mode 0600 (0660 and chgrp'ed
to the configured group), reports the path through ``task_status.started()`` once it listens,
and removes the file on exit (cancellation) if the file is still the one it bound. It refuses
to replace a socket that a live process answers on (`ControlSocketInUse`), and removes one
left by a crashed run.

Each connection is its own task in a nursery below `serve()`: check the peer's credentials
(SO_PEERCRED), read one request line within `REQUEST_TIMEOUT`, call the `Controller`, write
the reply (and drain progress), close. The controller owns all daemon state; this module keeps
none beyond the socket. A client can never crash the server: protocol errors become error
replies, a `ControlError` from the controller becomes its error reply, any other exception is
logged with its traceback and answered ``internal``, and a client that goes away mid-reply is
logged at debug level. Setup failures (socket in use, unknown group, chgrp refused) raise
`ControlSocketError` from `serve()` before ``started()``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import logging
import os
import platform
import pwd
import socket
import stat
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import attrs
import trio

from jqd_ctl import wire
from jqd_ctl.wire import ControlError, ProtocolError

__all__ = [
    "ControlError", "ControlSocketError", "ControlSocketInUse", "Controller",
    "PeerCredentials", "peer_allowed", "peer_credentials", "serve",
]

log = logging.getLogger("jqd.control")

REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request line
WRITE_TIMEOUT = 10.0  # seconds one reply line may take to be accepted by the peer
LINGER = 1.0  # seconds to read and discard what a refused client still sends before closing
LINGER_BYTES = 4 * wire.MAX_LINE  # ... and at most this much
STALE_PROBE_TIMEOUT = 1.0  # seconds to wait when probing an existing socket file
SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, NUL excluded
BACKLOG = 64

# SO_PEERGROUPS (Linux >= 4.13): the peer's supplementary groups, straight from the kernel.
# Python does not export the constant; 59 is its value on asm-generic architectures only.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", None)
if _SO_PEERGROUPS is None and platform.system() == "Linux" and platform.machine() in (
        "x86_64", "i386", "i486", "i586", "i686", "aarch64", "arm64", "armv7l", "armv6l",
        "riscv64", "s390x", "ppc64le", "ppc64", "loongarch64"):
    _SO_PEERGROUPS = 59


class ControlSocketError(Exception):
    """The control socket cannot be set up; the message says why and names the path."""


class ControlSocketInUse(ControlSocketError):
    """A live process already answers on the socket path; we do not steal it."""


class Controller(Protocol):
    """What the daemon core provides to the control server.

    Methods return JSON-able dicts, or raise `ControlError(code, message)` to refuse.
    """

    async def status(self) -> dict: ...

    async def pause(self, queue: str | None, reason: str | None) -> dict: ...

    async def resume(self, queue: str | None) -> dict: ...

    def drain(self, timeout: float | None) -> AsyncIterator[dict]:
        """An async generator: yields progress dicts; the LAST yielded dict is the result.

        The server sends each item as progress once the next one arrives (it needs to know
        which item is last), so yield progress promptly. If the client disconnects, the
        generator is closed (``aclose()``): that means only that nobody watches any more;
        the daemon should stay draining.
        """
        ...


@attrs.frozen
class PeerCredentials:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()  # supplementary groups, when the kernel tells us


class _ClientGone(Exception):
    """The peer closed, reset, or stopped reading; nothing more can be said to it."""


@attrs.frozen
class _Policy:
    own_uid: int
    group_gid: int | None
    denial_message: str


def peer_allowed(uid: int, gid: int, *, own_uid: int, group_gid: int | None,
                 groups: tuple[int, ...] = ()) -> bool:
    """May a peer with these credentials use the control socket?

    Yes for the daemon's own uid and for root; with a group configured, also for a peer whose
    primary gid or one of whose supplementary ``groups`` is that group.
    """
    if uid == own_uid or uid == 0:
        return True
    return group_gid is not None and (gid == group_gid or group_gid in groups)


def peer_credentials(sock: Any) -> PeerCredentials:
    """Read the connected peer's pid, uid, gid (SO_PEERCRED) and groups (SO_PEERGROUPS)."""
    size = struct.calcsize("3i")
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size))
    groups: tuple[int, ...] = ()
    if _SO_PEERGROUPS is not None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 1024)
        except OSError:  # older kernel, or more than 1024 groups: the primary gid still counts
            raw = b""
        groups = struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    return PeerCredentials(pid=pid, uid=uid, gid=gid, groups=groups)


def _resolve_group(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(f"control socket group {group!r} does not exist (JQD_CONTROL_GROUP)") from None


def _user_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _denial_message(own_uid: int, group: str | None) -> str:
    who = _user_name(own_uid) if own_uid == 0 else f"{_user_name(own_uid)}, root"
    who += f" or members of group {group!r}" if group else ""
    return f"permission denied: only {who} may use this control socket"


def _prepare_directory(path: str, group_gid: int | None) -> None:
    """Create the socket's parent directory if missing: 0700, or 0750 owned by the group."""
    parent = os.path.dirname(os.path.abspath(path))
    mode = 0o750 if group_gid is not None else 0o700
    try:
        os.makedirs(parent, mode=mode)
    except FileExistsError:
        return  # not ours to change (e.g. systemd's RuntimeDirectory)
    os.chmod(parent, mode)  # makedirs' mode is filtered by the umask
    if group_gid is not None:
        _chgrp(parent, group_gid)


def _chgrp(path: str, gid: int) -> None:
    if os.stat(path).st_gid == gid:
        return  # e.g. systemd Group= already made it ours: no chown syscall needed
    try:
        os.chown(path, -1, gid)
    except PermissionError as exc:
        raise ControlSocketError(
            f"cannot give {path} to gid {gid} ({exc.strerror}): the daemon's user must be a member of "
            "the control group (under systemd, set Group= to that group)") from None


def _bind(path: str, group_gid: int | None) -> socket.socket:
    """Bind and listen with the file never more open than 0600; then chgrp/chmod. Blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        with contextlib.suppress(OSError):
            os.fchmod(sock.fileno(), 0o600)  # Linux: the inode created by bind gets this mode
        old_umask = os.umask(0o177)  # process-wide, so held only for the bind syscall
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        bound = True
        if group_gid is not None:
            _chgrp(path, group_gid)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return sock


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody answers on; raise if it is live or not a socket. Blocking."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(STALE_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.warning("removed stale control socket %s (left by a run that did not exit cleanly)", path)
        return
    except FileNotFoundError:
        return
    except OSError as exc:  # timeout (backlog full) or anything odd: someone is there
        raise ControlSocketInUse(
            f"control socket {path} exists and did not refuse a connection ({exc}); "
            "is another jqd running? stop it or choose another --control-socket") from None
    finally:
        probe.close()
    raise ControlSocketInUse(
        f"another process is serving the control socket {path}; "
        "is another jqd running? stop it or choose another --control-socket")


def _create_socket(path: str, group_gid: int | None) -> tuple[socket.socket, tuple[int, int]]:
    """Bind ``path``, replacing a stale socket; return the socket and the file's (dev, inode)."""
    sock = _bind_or_replace(path, group_gid)
    try:
        st = os.lstat(path)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


def _bind_or_replace(path: str, group_gid: int | None) -> socket.socket:
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ControlSocketError(f"control socket path {path!r} is longer than {SUN_PATH_MAX} bytes")
    try:
        _prepare_directory(path, group_gid)
    except OSError as exc:
        raise ControlSocketError(f"cannot create the directory of control socket {path}: {exc}") from exc
    try:
        return _bind(path, group_gid)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise ControlSocketError(f"cannot create control socket {path}: {exc.strerror}") from exc
    _clear_stale(path)
    try:
        return _bind(path, group_gid)
    except OSError as exc:  # someone else bound it between our probe and our bind
        raise ControlSocketError(f"cannot create control socket {path}: {exc.strerror}") from exc


def _unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except OSError:
        pass  # already gone, or replaced by someone else's: either way not ours to remove


async def serve(path: str, controller: Controller, *, group: str | None = None,
                request_timeout: float = REQUEST_TIMEOUT,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket at ``path`` until cancelled; ``started(path)`` once listening.

    ``group`` (a name or a numeric gid) opens the socket to that group: mode 0660 and a
    parent directory, if we create it, of 0750. Raises `ControlSocketInUse` if a live
    process answers on ``path``, `ControlSocketError` for other setup failures.
    """
    group_gid = _resolve_group(group) if group else None
    own_uid = os.getuid()
    policy = _Policy(own_uid=own_uid, group_gid=group_gid, denial_message=_denial_message(own_uid, group))
    raw, identity = await trio.to_thread.run_sync(_create_socket, path, group_gid)
    try:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        handler = functools.partial(_serve_connection, controller=controller, policy=policy,
                                    request_timeout=request_timeout)
        async with listener, trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handler, [listener])
            log.info("control socket listening on %s (mode %s)", path, "0660" if group_gid is not None else "0600")
            task_status.started(path)
    finally:
        _unlink_if_ours(path, identity)
        raw.close()


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    try:
        with trio.fail_after(WRITE_TIMEOUT):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
        raise _ClientGone(repr(exc)) from None


async def _refuse(stream: trio.SocketStream, code: str, message: str) -> None:
    """Send an error reply to a request we did not read in full, then linger briefly.

    Closing a Unix socket with unread input makes the peer's next read fail with ECONNRESET,
    and some clients then lose our reply; so we half-close and discard the rest first.
    """
    await _send(stream, wire.encode(wire.error(code, message)))
    discarded = 0
    with trio.move_on_after(LINGER):
        try:
            await stream.send_eof()
            while discarded < LINGER_BYTES and (chunk := await stream.receive_some()):
                discarded += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _receive_line(stream: trio.SocketStream) -> bytes | None:
    """One request line without its newline, or None on EOF before a newline."""
    buffer = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(wire.MAX_LINE + 1)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ClientGone(repr(exc)) from None
        if not chunk:
            return None
        end = chunk.find(b"\n")
        buffer += chunk if end < 0 else chunk[:end]
        if len(buffer) > wire.MAX_LINE:
            raise ProtocolError(wire.LINE_TOO_LONG, f"request line exceeds {wire.MAX_LINE} bytes")
        if end >= 0:
            return bytes(buffer)


async def _serve_connection(stream: trio.SocketStream, *, controller: Controller, policy: _Policy,
                            request_timeout: float) -> None:
    async with stream:
        try:
            await _converse(stream, controller, policy, request_timeout)
        except _ClientGone as exc:
            log.debug("control client went away: %s", exc)
        except Exception:  # a bug here must cost one connection, never the daemon
            log.exception("control connection failed")


async def _converse(stream: trio.SocketStream, controller: Controller, policy: _Policy,
                    request_timeout: float) -> None:
    peer = peer_credentials(stream.socket)
    if not peer_allowed(peer.uid, peer.gid, own_uid=policy.own_uid, group_gid=policy.group_gid,
                        groups=peer.groups):
        log.warning("refused control connection from pid %d uid %d gid %d: not our user, root or the control group",
                    peer.pid, peer.uid, peer.gid)
        await _refuse(stream, wire.PERMISSION_DENIED, policy.denial_message)
        return
    try:
        with trio.move_on_after(request_timeout) as timeout_scope:
            line = await _receive_line(stream)
        if timeout_scope.cancelled_caught:
            log.debug("control client pid %d sent no request within %s s", peer.pid, request_timeout)
            raise ProtocolError(wire.REQUEST_TIMEOUT, f"no request line within {request_timeout:g} s")
        if line is None:
            return  # connected and left (e.g. a liveness probe): nothing to answer
        request = wire.decode_request(line)
    except ProtocolError as exc:
        await _refuse(stream, exc.code, exc.message)
        return
    level = logging.DEBUG if request.cmd == "status" else logging.INFO
    log.log(level, "control %s %s from pid %d uid %d", request.cmd, dict(request.args), peer.pid, peer.uid)
    try:
        reply = await _run(stream, controller, request)
    except ControlError as exc:
        reply = wire.encode(wire.error(exc.code, exc.message))
    except _ClientGone:
        raise
    except Exception:
        log.exception("control command %r failed", request.cmd)
        reply = wire.encode(wire.error(wire.INTERNAL, f"internal error in {request.cmd}; see the daemon log"))
    await _send(stream, reply)


async def _run(stream: trio.SocketStream, controller: Controller, request: wire.Request) -> bytes:
    """Run one command; return the encoded final reply. Drain progress is sent from here."""
    args: Mapping[str, Any] = request.args
    if request.cmd == "status":
        result = await controller.status()
    elif request.cmd == "pause":
        result = await controller.pause(args.get("queue"), args.get("reason"))
    elif request.cmd == "resume":
        result = await controller.resume(args.get("queue"))
    elif request.cmd == "drain":
        result = await _drain(stream, controller, args.get("timeout"))
    else:  # wire.decode_request admits only known commands
        raise AssertionError(f"unhandled command {request.cmd!r}")
    return wire.encode(wire.ok(result))


async def _drain(stream: trio.SocketStream, controller: Controller, timeout: float | None) -> Mapping[str, Any]:
    """Forward all but the last item as progress; return the last. Closes the generator."""
    missing = object()
    previous: Any = missing
    async with contextlib.aclosing(controller.drain(timeout)) as updates:  # type: ignore[type-var]
        async for item in updates:
            if previous is not missing:
                await _send(stream, wire.encode(wire.progress(previous)))
            previous = item
    if previous is missing:
        raise RuntimeError("Controller.drain() yielded nothing; its last item must be the result")
    return previous
