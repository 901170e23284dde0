"""Fault points for crash testing: named places where a test may kill the process.

`hit(name)` costs one global lookup when no plan is installed, which is always the case in
production: the only way to install one is `install(plan)`, which nothing in the daemon
calls. The crash harness runs the daemon through its own entry point
(`tests/chaos/faulty_jqd.py`), which installs a plan from its command line and then calls
`jqd.cli.main`. An environment variable or a flag could be set by accident; running a
different program from the test tree cannot.

Points: `commit.before` (group commit: statements done, COMMIT not yet issued),
`commit.after` (COMMIT returned, i.e. fsync'd, callers not yet woken), `claim`,
`complete`, `complete.retry` (an outcome that schedules a retry), `drain`,
`migrate.step` (between the statements of a schema migration).
"""

from __future__ import annotations

from collections.abc import Callable

_plan: Callable[[str], None] | None = None


def install(plan: Callable[[str], None] | None) -> None:
    global _plan
    _plan = plan


def hit(name: str) -> None:
    if _plan is not None:
        _plan(name)
