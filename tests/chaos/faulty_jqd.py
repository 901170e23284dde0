"""Run the real jqd with a fault plan: SIGKILL the process at the N-th hit of a named point.

    python tests/chaos/faulty_jqd.py --crash-at POINT[:N] [--crash-at ...] -- <jqd args>

The daemon itself has no way to arm a fault (see `jqd/faults.py`): this entry point, which
lives in the test tree, installs a plan with `jqd.faults.install` and then runs
`jqd.cli.main` with the arguments after `--`. The plan counts the hits of every point; at
the N-th hit (default 1) of an armed point it writes one line to stderr, e.g.

    FAULT: killing at commit.before (hit 3)

and sends SIGKILL to its own process: no `finally`, no atexit, no flush of anything
buffered in user space, exactly as a power cut of the process (the page cache survives,
which is what `synchronous=FULL` relies on for an OS-level crash as well).

Points (see `jqd/faults.py`): commit.before, commit.after, claim, complete, complete.retry,
drain, migrate.step. Several `--crash-at` may be given; the first one reached kills.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for sub in ("control", "daemon"):  # this checkout's packages first, like the tests' PYTHONPATH
    path = os.path.join(ROOT, sub)
    if path not in sys.path:
        sys.path.insert(0, path)

POINTS = ("commit.before", "commit.after", "claim", "complete", "complete.retry", "drain", "migrate.step")

USAGE = ("usage: faulty_jqd.py --crash-at POINT[:N] [--crash-at POINT[:N] ...] -- [jqd args]\n"
         f"points: {', '.join(POINTS)}")


class CrashPlan:
    """Counts hits per point; kills the process at the armed hit. Thread-safe: the store
    writer hits its points from a worker thread, drain from the Trio thread."""

    def __init__(self, targets: dict[str, int]):
        self.targets = dict(targets)
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> None:
        with self._lock:
            n = self.hits.get(name, 0) + 1
            self.hits[name] = n
            if self.targets.get(name) != n:
                return
            try:
                os.write(2, f"FAULT: killing at {name} (hit {n})\n".encode())
            finally:
                os.kill(os.getpid(), signal.SIGKILL)


def parse(argv: list[str]) -> tuple[dict[str, int], list[str]]:
    """Split `--crash-at ...` options from the jqd arguments after `--`."""
    if "--" in argv:
        cut = argv.index("--")
        ours, theirs = argv[:cut], argv[cut + 1:]
    else:
        ours, theirs = argv, []
    targets: dict[str, int] = {}
    i = 0
    while i < len(ours):
        arg = ours[i]
        if arg == "--crash-at" and i + 1 < len(ours):
            spec = ours[i + 1]
            i += 2
        elif arg.startswith("--crash-at="):
            spec = arg.split("=", 1)[1]
            i += 1
        else:
            raise ValueError(f"unexpected argument {arg!r}")
        point, _, count = spec.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"bad hit number in {spec!r}") from None
        if n < 1:
            raise ValueError(f"hit number must be >= 1 in {spec!r}")
        targets[point] = n
    if not targets:
        raise ValueError("no --crash-at given")
    return targets, theirs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        targets, jqd_args = parse(argv)
    except ValueError as exc:
        print(f"faulty_jqd: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    from jqd import cli, faults

    faults.install(CrashPlan(targets))
    armed = ", ".join(f"{p}:{n}" for p, n in sorted(targets.items()))
    print(f"FAULT: armed {armed}", file=sys.stderr, flush=True)
    return cli.main(jqd_args)


if __name__ == "__main__":
    raise SystemExit(main())
