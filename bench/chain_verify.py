"""What checking a provenance log's whole chain on open costs (peer.state.chain): seconds to open
logs of growing length, per million events, next to only reading the same rows (the baseline,
same run) and to `audit verify` (which also checks every event's signature).

    python bench/chain_verify.py [--events 20000 100000] [--audit-max 20000]

Builds each log with the real ProvenanceLog (signed events with small details, as a peer's
`trained`/`sent` events are) in a temporary folder, then opens it again with a cold Python
object and a warm page cache (the case of a peer restarting)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._table import emit_json, print_table  # noqa: E402
from gossip.identity import Identity  # noqa: E402
from peer.audit.verify import verify_log  # noqa: E402
from peer.state.provenance import EventKind, NewEvent, ProvenanceLog  # noqa: E402


def build(path: Path, ident: Identity, n: int) -> None:
    log = ProvenanceLog(path, ident, "bench")
    batch = 10_000
    for start in range(0, n, batch):
        log.append_many([NewEvent(EventKind.TRAINED, i // 10, details={"loss": 0.25, "steps": 10})
                         for i in range(start, min(n, start + batch))])
    log.close()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def scan(path: Path) -> None:
    con = sqlite3.connect(path)
    for _ in con.execute("SELECT * FROM events ORDER BY seq"):
        pass
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--audit-max", type=int, default=20_000, help="run audit verify on logs up to this length")
    args = ap.parse_args()
    ident = Identity.from_seed(b"b" * 32)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.events:
            path = Path(tmp) / f"log{n}.db"
            build(path, ident, n)
            scan(path)  # warm the page cache: a restarting peer's log was just written
            read = min(timed(lambda p=path: scan(p)) for _ in range(2))
            opened = min(timed(lambda p=path: ProvenanceLog(p, ident, "bench").close()) for _ in range(2))
            audit = timed(lambda p=path: verify_log(p)) if n <= args.audit_max else None
            per_m = opened * 1e6 / n
            rows.append([n, read, opened, per_m, read * 1e6 / n, opened / read,
                         "-" if audit is None else audit * 1e6 / n])
            figures[f"open_s_per_million_at_{n}"] = round(per_m, 2)
            figures[f"open_vs_read_ratio_at_{n}"] = round(opened / read, 2)
            if audit is not None:
                figures[f"audit_verify_s_per_million_at_{n}"] = round(audit * 1e6 / n, 2)
    print_table(["events", "read s", "open+verify s", "open s/M", "read s/M", "open/read", "audit s/M"], rows,
                title="opening a provenance log (whole chain re-hashed, head signature checked)")
    emit_json(figures)


if __name__ == "__main__":
    main()
