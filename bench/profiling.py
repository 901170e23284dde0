"""py-spy around a benchmark phase: record collapsed stacks, summarise them, draw a flame graph.

`py-spy record --format raw --threads --nonblocking` samples the daemon without pausing it
(it still costs CPU on the shared 2 cores, so profiled runs are extra runs, never the
measured ones). The summary splits samples by thread and lists, for the event-loop thread
(MainThread), the functions with the most samples on-CPU ("self") and on the stack
("total"). The SVG is a plain flame graph drawn from the same stacks (no external script).
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from collections import Counter


def py_spy_path() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


class Recording:
    def __init__(self, pid: int, name: str, seconds: float, out_dir: str, rate: int = 250):
        self.raw_path = os.path.join(out_dir, f"profile-{name}.txt")
        self.svg_path = os.path.join(out_dir, f"profile-{name}.svg")
        self.summary_path = os.path.join(out_dir, f"profile-{name}-summary.txt")
        self.name = name
        self.error: str | None = None
        exe = py_spy_path()
        self.proc = None
        if exe is None:
            self.error = "py-spy not installed (pip install py-spy into the venv)"
            return
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(rate),
             "--format", "raw", "--threads", "--nonblocking", "-o", self.raw_path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(self) -> str | None:
        """Wait for py-spy; write the summary and the SVG; return the summary text."""
        if self.proc is None:
            return None
        out, _ = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0 or not os.path.exists(self.raw_path):
            self.error = f"py-spy failed ({self.proc.returncode}): {out.strip()[-500:]}"
            return None
        stacks = read_collapsed(self.raw_path)
        text = summarise(stacks, title=self.name)
        with open(self.summary_path, "w") as f:
            f.write(text)
        with open(self.svg_path, "w") as f:
            f.write(flamegraph_svg(stacks, title=f"jqd: {self.name}"))
        return text


def read_collapsed(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            frames, _, count = line.rpartition(" ")
            try:
                stacks.append((frames.split(";"), int(count)))
            except ValueError:
                continue
    return stacks


def _short(frame: str) -> str:
    """`func (pkg/mod.py:123)` -> `func (pkg/mod.py)`: aggregate a function over its lines."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    return f"{name} ({where.rsplit(':', 1)[0]})"


def summarise(stacks: list[tuple[list[str], int]], title: str, top: int = 25) -> str:
    by_thread: Counter = Counter()
    for frames, n in stacks:
        by_thread[frames[0]] += n
    total = sum(by_thread.values()) or 1
    lines = [f"== py-spy profile: {title} ({total} samples, on-CPU only) ==", "samples by thread:"]
    for thread, n in by_thread.most_common(12):
        lines.append(f"  {100 * n / total:5.1f}%  {thread}")
    main = [(f[1:], n) for f, n in stacks if "MainThread" in f[0]]
    others = [(f[1:], n) for f, n in stacks if "MainThread" not in f[0]]
    lines += _top(main, "event-loop thread (MainThread)", top)
    if sum(n for _, n in others) >= 0.05 * total:
        lines += _top(others, "worker threads (SQLite writer and readers, to_thread calls)", top)
    return "\n".join(lines) + "\n"


_SKIP = ("<module>", "_run_module_as_main", "_run_code", "main (jqd/cli.py)", "run (trio/_core/_run.py)",
         "unrolled_run", "_bootstrap", "_bootstrap_inner", "run (threading.py)", "_work (trio/_core/_thread_cache.py)",
         "Thread.run", "Thread._bootstrap", "WorkerThread._work", "WorkerThread._handle_job")


def _top(stacks: list[tuple[list[str], int]], title: str, top: int) -> list[str]:
    count = sum(n for _, n in stacks) or 1
    self_count: Counter = Counter()
    incl: Counter = Counter()
    for frames, n in stacks:
        if frames:
            self_count[_short(frames[-1])] += n
        for fr in {_short(x) for x in frames}:
            incl[fr] += n
    lines = [f"\n{title}, {count} samples; top by self (on-CPU in that very function):"]
    for fr, n in self_count.most_common(top):
        lines.append(f"  {100 * n / count:5.1f}%  {fr}")
    lines.append(f"{title}: top by total (function anywhere on the stack; start-up frames skipped):")
    shown = 0
    for fr, n in incl.most_common():
        if fr.startswith(_SKIP) or any(k in fr for k in _SKIP):
            continue
        lines.append(f"  {100 * n / count:5.1f}%  {fr}")
        shown += 1
        if shown >= top:
            break
    return lines


def flamegraph_svg(stacks: list[tuple[list[str], int]], title: str, width: int = 1400) -> str:
    """A minimal flame graph (root at the bottom); hover a box for its frame and share."""
    def node():
        return {"n": 0, "kids": {}}

    tree = node()
    for frames, n in stacks:
        tree["n"] += n
        cur = tree
        for fr in frames:
            cur = cur["kids"].setdefault(fr, node())
            cur["n"] += n
    total = tree["n"] or 1
    row, depth_max = 16, [0]
    boxes = []

    def walk(t, x, depth):
        depth_max[0] = max(depth_max[0], depth)
        for fr, kid in sorted(t["kids"].items()):
            w = kid["n"] / total * width
            if w >= 0.3:
                boxes.append((x, depth, w, fr, kid["n"]))
                walk(kid, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    height = (depth_max[0] + 2) * row + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="monospace" font-size="11">',
           f'<text x="4" y="14">{html.escape(title)} ({total} samples)</text>']
    for x, depth, w, fr, n in boxes:
        y = height - (depth + 1) * row
        hue = 10 + (hash(fr.split(" (")[0]) % 50)
        label = html.escape(fr)
        out.append(f'<g><title>{label}: {n} samples, {100 * n / total:.1f}%</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" fill="hsl({hue},85%,60%)"/>')
        chars = int(w / 6.6)
        if chars >= 4:
            text = fr if len(fr) <= chars else fr[: chars - 2] + ".."
            out.append(f'<text x="{x + 2:.1f}" y="{y + 11}">{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
