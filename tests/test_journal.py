"""The journal writes the provenance log on its own thread: the event loop goes on while an
append (with its fsync) is under way, a message that must follow a durable event waits until
that event is on disk, and a checkpoint is published only once its event is."""

from __future__ import annotations

import asyncio
import threading

from gossip.identity import Identity
from peer.runtime.commands import Transmit
from peer.runtime.journal import Journal
from peer.state.provenance import EventKind, NewEvent, ProvenanceLog

ME = Identity.from_seed(b"j" * 32)


class Gate:
    """Wraps the real log: each append blocks until the test lets one more through."""

    def __init__(self, prov: ProvenanceLog):
        self.prov, self.permits, self.entered = prov, threading.Semaphore(0), threading.Event()
        self.threads: set[str] = set()

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()

    def append_many(self, events):
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.permits.acquire(timeout=30), "the test never let this append through"
        return self.prov.append_many(events)


class Outbox:
    def __init__(self):
        self.sent: list[tuple[str, bytes]] = []

    def message(self, to, data, retry_for):
        self.sent.append((to, data))

    def updates(self, per_neighbour, round_):
        self.sent.extend(per_neighbour.items())


def journal(tmp_path):
    prov = ProvenanceLog(tmp_path / "provenance.db", ME, "net")
    gate, outbox, published, failures = Gate(prov), Outbox(), [], []
    j = Journal(gate, lambda: published.append(prov.last_event(EventKind.CHECKPOINT)), outbox,
                lambda what, exc: failures.append(exc))
    return j, gate, outbox, published, failures, prov


async def until(condition, what: str) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


def test_the_loop_runs_while_the_log_is_written_and_messages_wait_for_their_durable_event(tmp_path):
    j, gate, outbox, published, failures, prov = journal(tmp_path)

    async def scenario():
        j.durable(NewEvent(EventKind.MEMBERSHIP, 1, details={"epoch": 1}))
        j.send(Transmit(("nb",), b"record"))  # must not leave before the record's event is on disk
        await until(gate.entered.is_set, "the write to begin")
        ticks = 0
        for _ in range(5):  # the loop is free while the writer thread is blocked in the append
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 5 and outbox.sent == [] and prov.last_event(EventKind.MEMBERSHIP) is None
        gate.allow(10)
        await until(lambda: outbox.sent, "the held message to leave")
        assert prov.last_event(EventKind.MEMBERSHIP) is not None  # on disk before it left
        j.send(Transmit(("nb",), b"later"))  # nothing durable pending: leaves at once
        assert outbox.sent[-1] == ("nb", b"later")
        await j.close()

    asyncio.run(scenario())
    assert failures == [] and gate.threads and threading.current_thread().name not in gate.threads
    prov.close()


def test_a_checkpoint_is_published_only_once_its_event_is_on_disk(tmp_path):
    j, gate, outbox, published, failures, prov = journal(tmp_path)

    async def scenario():
        j.add(NewEvent(EventKind.TRAINED, 0))
        first = asyncio.ensure_future(j.flush())  # a write under way without the checkpoint event
        await until(gate.entered.is_set, "the write to begin")
        j.add(NewEvent(EventKind.CHECKPOINT, 1, details={"next_round": 1, "params_hash": "ab" * 32}))
        gate.allow(10)
        await first
        assert published == []  # the write that finished did not carry it
        await j.flush()
        assert len(published) == 1 and published[0] is not None and published[0].round == 1
        await j.close()

    asyncio.run(scenario())
    assert failures == []
    prov.close()


def test_a_failed_write_stops_the_peer_saying_why(tmp_path):
    j, gate, outbox, published, failures, prov = journal(tmp_path)
    gate.allow(10)
    prov.close()  # every append now fails

    async def scenario():
        j.durable(NewEvent(EventKind.MEMBERSHIP, 1))
        j.send(Transmit(("nb",), b"record"))
        await until(lambda: failures, "the failure to be reported")
        assert outbox.sent == []  # what waited for the lost event never leaves

    asyncio.run(scenario())
    assert len(failures) == 1


def test_a_message_waits_for_its_own_durable_event_not_for_an_earlier_write(tmp_path):
    j, gate, outbox, published, failures, prov = journal(tmp_path)

    async def scenario():
        j.add(NewEvent(EventKind.TRAINED, 0))
        first = asyncio.ensure_future(j.flush())  # a write under way
        await until(gate.entered.is_set, "the write to begin")
        j.durable(NewEvent(EventKind.MEMBERSHIP, 0, details={"epoch": 1}))  # in the next batch
        j.send(Transmit(("nb",), b"record"))
        gate.allow(1)  # the first batch only
        await first
        assert outbox.sent == [] and prov.last_event(EventKind.MEMBERSHIP) is None
        gate.allow(1)
        await until(lambda: outbox.sent, "the held message to leave")
        assert prov.last_event(EventKind.MEMBERSHIP) is not None
        await j.close()

    asyncio.run(scenario())
    assert failures == []
    prov.close()


def test_a_durable_event_added_while_the_journal_writes_is_written_by_that_same_sync(tmp_path):
    """A reveal logged while the previous group commit is on its way to disk: its message must
    leave when its event is written, with no later call to the journal (once lost: the member's
    reveal waited for its own round's deadline, and every receiver waiting for it too)."""
    j, gate, outbox, published, failures, prov = journal(tmp_path)

    async def scenario():
        j.durable(NewEvent(EventKind.MEMBERSHIP, 0, details={"epoch": 1}))  # starts the journal's own write
        j.send(Transmit(("nb",), b"first"))
        await until(gate.entered.is_set, "the write to begin")
        j.durable(NewEvent(EventKind.MEMBERSHIP, 0, details={"epoch": 2}))  # while that write is under way
        j.send(Transmit(("nb",), b"second"))
        gate.allow(2)
        await until(lambda: len(outbox.sent) == 2, "both held messages to leave")
        assert [d for _, d in outbox.sent] == [b"first", b"second"]
        assert prov.last_event(EventKind.MEMBERSHIP).details["epoch"] == 2  # on disk before it left
        await j.close()

    asyncio.run(scenario())
    assert failures == []
    prov.close()
