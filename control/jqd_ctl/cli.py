"""jqd-ctl: talk to a running jqd over its control socket.

Exit statuses: 0 done, 1 the daemon refused (its message on stderr), 2 usage, 3 cannot reach
the socket (the message names the path and the likely cause), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from jqd_ctl import wire
from jqd_ctl.client import Client, Refused, Unreachable

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
TIMEOUT = 10.0  # seconds to wait for an answer to status, pause, resume
DRAIN_MARGIN = 30.0  # seconds beyond --timeout before drain gives up on the daemon


def default_socket(environ: Mapping[str, str] | None = None) -> str:
    """JQD_CONTROL_SOCKET, else $RUNTIME_DIRECTORY/control.sock, else ./jqd.sock (as the daemon)."""
    env = os.environ if environ is None else environ
    if env.get("JQD_CONTROL_SOCKET"):
        return env["JQD_CONTROL_SOCKET"]
    runtime_dir = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return os.path.join(runtime_dir, "control.sock") if runtime_dir else "./jqd.sock"


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, e.g. 30 or 0.5, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {raw!r}")
    return value


def _queue(raw: str) -> str:
    if not raw.strip():
        raise argparse.ArgumentTypeError("queue name must not be empty")
    return raw


def _parser() -> argparse.ArgumentParser:
    # --socket/--json work before or after the command: both parsers know them, SUPPRESS keeps
    # the subparser from overwriting a value given before the command with its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="control socket (default: $JQD_CONTROL_SOCKET, $RUNTIME_DIRECTORY/control.sock, "
                             "./jqd.sock)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's answer as JSON")
    parser = argparse.ArgumentParser(prog="jqd-ctl", parents=[common],
                                     description="Control a running jqd daemon.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", parents=[common], help="daemon state, jobs in flight, counts, uptime")
    pause = commands.add_parser("pause", parents=[common], help="start no new jobs (intake continues)")
    pause.add_argument("--queue", type=_queue, help="pause only this queue")
    pause.add_argument("--reason", help="why (stored and shown by status)")
    resume = commands.add_parser("resume", parents=[common], help="undo pause or drain")
    resume.add_argument("--queue", type=_queue, help="resume only this queue")
    drain = commands.add_parser("drain", parents=[common], help="close intake and wait until nothing runs")
    drain.add_argument("--timeout", type=_seconds, metavar="S",
                       help="after S seconds cancel what still runs and requeue it")
    return parser


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _since(pause: Mapping[str, Any]) -> str:
    text = f" since {pause['paused_at']}" if pause.get("paused_at") else ""
    return text + (f": {pause['reason']}" if pause.get("reason") else "")


def render_status(result: Mapping[str, Any]) -> str:
    """Human-readable status; fields the daemon did not send are left out."""
    rows: list[tuple[str, str]] = []
    if "state" in result:
        rows.append(("state", str(result["state"])))
    if "version" in result:
        rows.append(("version", str(result["version"])))
    if isinstance(result.get("uptime_seconds"), (int, float)):
        rows.append(("uptime", _duration(result["uptime_seconds"])))
    if "in_flight" in result or "workers" in result:
        text = str(result.get("in_flight", "?"))
        rows.append(("in flight", f"{text} of {result['workers']} workers" if "workers" in result else text))
    counts = result.get("counts")
    if isinstance(counts, Mapping):
        rows.append(("jobs", ", ".join(f"{state} {n}" for state, n in counts.items()) or "none"))
    paused: list[str] = []
    if isinstance(result.get("global_pause"), Mapping):
        paused.append("all queues" + _since(result["global_pause"]))
    for item in result.get("paused_queues") or []:
        if isinstance(item, Mapping):
            paused.append(f"queue {item.get('queue')!r}" + _since(item))
    for i, text in enumerate(paused):
        rows.append(("paused" if i == 0 else "", text))
    width = max((len(label) for label, _ in rows), default=0) + 1
    return "\n".join(f"{label + ':' if label else '':<{width}} {value}" for label, value in rows)


def _print_json(obj: Any, out: TextIO) -> None:
    print(json.dumps(obj, sort_keys=True), file=out, flush=True)


class _LiveLine:
    """One status line that rewrites itself on a terminal, or one line per update otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        if self.tty:
            self.out.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty and self.width:
            self.out.write("\n")
            self.out.flush()
            self.width = 0


def _drain(client: Client, args: dict[str, Any], as_json: bool, out: TextIO) -> None:
    live = _LiveLine(out)
    try:
        for reply in client.replies("drain", args):
            if as_json:
                _print_json(reply.data, out)
            elif isinstance(reply, wire.Progress):
                live.show(f"draining: {reply.data.get('running', '?')} running, {reply.data.get('queued', '?')} queued")
            else:
                live.finish()
                returned = reply.data.get("returned") or []
                text = f"{reply.data.get('state', 'drained')}: nothing running"
                if returned:
                    text += f"; {len(returned)} job(s) put back to queued: {', '.join(map(str, returned))}"
                print(text, file=out)
    finally:
        live.finish()


def _run(options: argparse.Namespace, out: TextIO) -> None:
    as_json = getattr(options, "json", False)
    path = getattr(options, "socket", None) or default_socket()
    if options.command == "drain":
        timeout = None if options.timeout is None else options.timeout + DRAIN_MARGIN
        args = {"timeout": options.timeout}
        return _drain(Client(path, timeout), args, as_json, out)
    client = Client(path, TIMEOUT)
    if options.command == "status":
        result = client.call("status")
        if as_json:
            return _print_json(result, out)
        return print(render_status(result), file=out)
    target = f"queue {options.queue!r}" if options.queue else "all queues"
    if options.command == "pause":
        result = client.call("pause", {"queue": options.queue, "reason": options.reason})
        text = f"paused {target}" + (f": {options.reason}" if options.reason else "")
    else:
        result = client.call("resume", {"queue": options.queue})
        text = f"resumed {target}"
    if as_json:
        return _print_json(result, out)
    print(text + (f" (daemon {result['state']})" if result.get("state") else ""), file=out)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run jqd-ctl; return the exit status (argparse's usage errors included)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        options = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        _run(options, out)
    except Refused as exc:
        print(f"jqd-ctl: the daemon refused: {exc.message} ({exc.code})", file=err)
        return EXIT_REFUSED
    except Unreachable as exc:
        hint = ""
        if exc.kind == "missing":
            hint = "; is jqd running? pass --socket or set JQD_CONTROL_SOCKET"
        print(f"jqd-ctl: cannot reach the jqd control socket {exc.path}: {exc.cause}{hint}", file=err)
        return EXIT_UNREACHABLE
    except wire.ProtocolError as exc:
        print(f"jqd-ctl: unexpected reply from the daemon: {exc.message} ({exc.code})", file=err)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        if options.command == "drain":
            print("\njqd-ctl: interrupted; the daemon keeps draining (jqd-ctl resume undoes it)", file=err)
        return EXIT_INTERRUPTED
    return EXIT_OK
