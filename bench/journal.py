"""What writing the provenance log costs the event loop: a round's events (trained, 8 sent,
8 received, aggregated, checkpoint; `sent` and a membership record durable, as a peer writes
them) appended by the journal, while a ticker on the same loop measures how late it wakes.

Baseline: the appends run on the loop itself (how the peer wrote its log before), against the
journal's writer thread. Printed per round: time the loop was blocked (sum of ticker lateness
beyond 1 ms), worst single stall, and the round's wall time.

    python bench/journal.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import Executor, Future

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._table import emit_json, print_table  # noqa: E402

NEIGHBOURS = 8
TICK = 0.001


class OnTheLoop(Executor):
    """The baseline: every append runs where it is submitted, on the event loop."""

    def submit(self, fn, /, *args, **kwargs):
        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


class Outbox:
    def message(self, to, data, retry_for):
        pass

    def updates(self, per_neighbour, round_):
        pass


def round_events(r: int):
    from peer.state.provenance import EventKind, NewEvent

    nbs = [f"peer-{i}" for i in range(NEIGHBOURS)]
    sent = [NewEvent(EventKind.SENT, r, nb, "ab" * 32, {"bytes": 400_000}) for nb in nbs]
    received = [NewEvent(EventKind.RECEIVED, r, nb, "cd" * 32, {"header": "00" * 120, "sig": "11" * 64})
                for nb in nbs]
    return (NewEvent(EventKind.TRAINED, r, details={"loss": 0.5}), sent, received,
            NewEvent(EventKind.AGGREGATED, r, None, "ef" * 32, {"rule": "median", "senders": nbs}),
            NewEvent(EventKind.CHECKPOINT, r + 1, details={"next_round": r + 1, "params_hash": "ef" * 32}))


async def one_run(folder: str, writer: Executor | None, rounds: int) -> dict:
    from gossip.identity import Identity
    from peer.runtime.commands import Transmit
    from peer.runtime.journal import Journal
    from peer.state.provenance import EventKind, NewEvent, ProvenanceLog

    prov = ProvenanceLog(os.path.join(folder, "provenance.db"), Identity.from_seed(b"b" * 32), "bench")
    j = Journal(prov, lambda: None, Outbox(), lambda what, exc: (_ for _ in ()).throw(exc), writer=writer)
    blocked, worst, stop = [0.0], [0.0], asyncio.Event()

    async def ticker():
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t = loop.time()
            await asyncio.sleep(TICK)
            late = loop.time() - t - TICK
            if late > TICK:
                blocked[0] += late
                worst[0] = max(worst[0], late)

    tick = asyncio.ensure_future(ticker())
    per_round, walls = [], []
    for r in range(rounds):
        trained, sent, received, aggregated, checkpoint = round_events(r)
        before, t0 = blocked[0], time.perf_counter()
        j.add(trained)
        for e in sent:
            j.add(e)
        await j.flush()  # `sent` is on disk before the update leaves
        for e in received:  # arrivals, a few per turn of the loop
            j.add(e)
            await asyncio.sleep(0)
        j.durable(NewEvent(EventKind.MEMBERSHIP, r, details={"epoch": r}))  # a record passed on
        j.send(Transmit(("peer-0",), b"record"))
        await asyncio.sleep(0.005)  # the rest of the round goes on meanwhile
        j.add(aggregated, checkpoint)
        await j.flush()
        walls.append(time.perf_counter() - t0)
        per_round.append(blocked[0] - before)
    stop.set()
    await tick
    await j.close()
    prov.close()
    return {"blocked_ms": 1000 * statistics.median(per_round), "worst_ms": 1000 * worst[0],
            "round_ms": 1000 * statistics.median(walls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=60, help="rounds per run (default 60)")
    args = ap.parse_args()
    rows, figures = [], {}
    for name, writer in (("on the loop (before)", OnTheLoop()), ("writer thread (now)", None)):
        with tempfile.TemporaryDirectory() as folder:
            print(f"{name}: {args.rounds} rounds ...", flush=True)
            res = asyncio.run(one_run(folder, writer, args.rounds))
        figures[name.split(" (")[0].replace(" ", "_")] = res
        rows.append([name, res["blocked_ms"], res["worst_ms"], res["round_ms"]])
    print_table(["provenance writes", "loop blocked per round (ms, median)", "worst stall (ms)",
                 "round (ms, median)"], rows, title=f"\nload average {os.getloadavg()[0]:.1f}")
    base, now = figures["on_the_loop"], figures["writer_thread"]
    figures["blocked_ratio"] = now["blocked_ms"] / base["blocked_ms"] if base["blocked_ms"] else None
    figures["worst_ratio"] = now["worst_ms"] / base["worst_ms"] if base["worst_ms"] else None
    figures["load"] = os.getloadavg()[0]
    emit_json(figures)


if __name__ == "__main__":
    main()
