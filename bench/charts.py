"""PNG charts of a benchmark run (matplotlib, Agg backend), from the rows of bench/run.py.

- perf-intake.png: jqd intake throughput against concurrency: `GET /healthz` (the HTTP stack's
  ceiling) and durable `POST /createJob`, with intake/ceiling in % at each point.
- perf-peers.png: jqd vs huey (SqliteHuey) vs RQ (Redis): noop processing rates and batch /
  single enqueue rates, log scale, each bar labelled with its durability.

    .venv/bin/python bench/charts.py bench/out/results.json docs/   # redraw from a results file
"""

from __future__ import annotations

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 90


def _by_key(rows: list[dict]) -> dict:
    return {r["key"]: r for r in rows if r.get("key") and r.get("value") is not None}


def intake_chart(rows: list[dict], path: str) -> str | None:
    k = _by_key(rows)
    conns = sorted({int(key.rsplit(".c", 1)[1]) for key in k if key.startswith("jqd.healthz.c")})
    conns = [c for c in conns if f"jqd.createJob.c{c}" in k]
    if not conns:
        return None
    ceiling = [k[f"jqd.healthz.c{c}"]["value"] for c in conns]
    intake = [k[f"jqd.createJob.c{c}"]["value"] for c in conns]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(conns, ceiling, "o--", color="#888888", label="GET /healthz (HTTP stack ceiling), req/s")
    ax.plot(conns, intake, "o-", color="#1f77b4", linewidth=2,
            label="POST /createJob, durable (fsync'd before 201), jobs/s")
    for c, ce, i in zip(conns, ceiling, intake):
        ax.annotate(f"{i:,.0f}\n{100 * i / ce:.0f}% of ceiling", (c, i), textcoords="offset points",
                    xytext=(0, -30), ha="center", fontsize=8, color="#1f77b4")
        ax.annotate(f"{ce:,.0f}", (c, ce), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8,
                    color="#555555")
    ax.set_xscale("log", base=2)
    ax.set_xticks(conns)
    ax.set_xticklabels([str(c) for c in conns])
    ax.set_xlabel("concurrent keep-alive clients (closed loop)")
    ax.set_ylabel("per second")
    ax.set_ylim(0, max(ceiling + intake) * 1.2)
    load = max((k[f"jqd.createJob.c{c}"].get("load1") or 0) for c in conns)
    gen = k[f"jqd.createJob.c{conns[0]}"].get("generator", "")
    ax.set_title(f"jqd intake vs concurrency (2 cores shared with the load generator: {gen}; "
                 f"load1 <= {load:.1f})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def peers_chart(rows: list[dict], path: str) -> str | None:
    k = _by_key(rows)
    processing = [(label, k[key]) for label, key in (
        ("jqd w=10", "jqd.drain.noop.w10"), ("jqd w=100", "jqd.drain.noop.w100"),
        ("huey thread x10", "huey.drain.thread10"), ("huey thread x4", "huey.drain.thread4"),
        ("RQ Simple x10", "rq.drain.simple10"), ("RQ Simple x2", "rq.drain.simple2"),
        ("RQ fork x10", "rq.drain.fork10")) if key in k]
    processing += [(f"huey {key.split('.')[-1]}", r) for key, r in k.items() if key.startswith("huey.drain.")
                   and key not in ("huey.drain.thread10", "huey.drain.thread4")]
    enqueue = [(label, k[key]) for label, key in (
        ("jqd createJobs x1000 c=1", "jqd.batch1000.c1"), ("huey 1000 enqueues", "huey.enqueue_loop1000"),
        ("RQ enqueue_many x1000", "rq.enqueue_many1000"), ("jqd createJob c=1 (HTTP)", "jqd.createJob.c1"),
        ("jqd createJob c=64 (HTTP)", "jqd.createJob.c64"), ("huey enqueue (library)", "huey.enqueue"),
        ("RQ enqueue (library)", "rq.enqueue")) if key in k]
    if not any(label.startswith(("huey", "RQ")) for label, _ in processing + enqueue):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0))

    def color(label: str) -> str:
        return "#1f77b4" if label.startswith("jqd") else "#ff7f0e" if label.startswith("huey") else "#d62728"

    for ax, items, title in ((axes[0], processing, "processing 100,000 pre-queued noop jobs (jobs/s)"),
                             (axes[1], enqueue, "intake / enqueue: batches, then single jobs (jobs/s)")):
        if not items:
            ax.set_visible(False)
            continue
        labels = [label for label, _ in items]
        values = [r["value"] for _, r in items]
        bars = ax.bar(range(len(items)), values, color=[color(label) for label in labels])
        for bar, (_, r) in zip(bars, items):
            dur = r.get("durability", "")
            dur = "fsync" if dur.startswith("fsync") else "memory" if dur.startswith("NONE") else dur
            ax.annotate(f"{r['value']:,.0f}\n{dur}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylim(min(values) / 3, max(values) * 8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("jqd vs huey (SqliteHuey, fsync) vs RQ (Redis, in memory: NOT durable); same machine, same run",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def draw(rows: list[dict], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for fn, name in ((intake_chart, "perf-intake.png"), (peers_chart, "perf-peers.png")):
        path = fn(rows, os.path.join(out_dir, name))
        if path:
            written.append(path)
    return written


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "out", "results.json")
    dest = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(src)
    with open(src) as f:
        for p in draw(json.load(f)["rows"], dest):
            print(p)
