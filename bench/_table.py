"""Shared output convention of every bench script: a table for people, then one JSON line."""

from __future__ import annotations

import json
import sys
import time


def print_table(headers: list[str], rows: list[list], title: str = "") -> None:
    """Plain aligned text table (no colour codes, so logs stay readable)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(title)
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.4f}" if abs(c) < 100 else f"{c:,.0f}"
    return str(c)


def emit_json(figures: dict) -> None:
    """The last line of every bench script: one JSON object with the figures."""
    print(json.dumps(figures, sort_keys=True))


def best_time(fn, repeat: int = 5) -> float:
    """Best wall time of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)

