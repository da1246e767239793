"""The pure parts of gossip/p2p: signed address records and the address book, fair slots,
the reconnect backoff, which addresses we announce, relay addresses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.identity import Identity
from gossip.p2p.admission import Slots
from gossip.p2p.announce import own_addresses
from gossip.p2p.circuits import Relay
from gossip.p2p.dialer import Backoff
from gossip.p2p.records import (
    MAX_RECORD,
    AddressBook,
    RecordRefused,
    SeqCounter,
    StaleRecord,
    moved_from,
    open_record,
    seal,
)

A, B = Identity.generate(), Identity.generate()
HOME = ["/ip4/198.51.100.7/tcp/4001"]


def test_a_record_opens_only_as_its_signers_and_only_when_newer():
    data = seal(A, HOME, 5)
    record = open_record(data, A.peer_id, 4)
    assert (record.peer_id, record.seq, record.addrs) == (A.peer_id, 5, tuple(HOME))
    with pytest.raises(RecordRefused, match="signed by"):
        open_record(data, B.peer_id)  # it names A: offered as B's, refused before any signature check
    with pytest.raises(StaleRecord):
        open_record(data, A.peer_id, 5)  # an equal seq is not newer


def test_forged_tampered_and_oversized_records_are_refused():
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.envelope import seal_record, unmarshal_envelope
    from libp2p.peer.id import ID
    from libp2p.peer.peer_record import PeerRecord

    # B signs a record naming A (py-libp2p's consume_envelope accepts this)
    forged = seal_record(PeerRecord(ID.from_base58(A.peer_id), [], 9), create_new_key_pair(B.seed).private_key)
    with pytest.raises(RecordRefused, match="naming"):
        open_record(forged.marshal_envelope(), B.peer_id)
    with pytest.raises(RecordRefused, match="signed by"):
        open_record(forged.marshal_envelope(), A.peer_id)
    # a byte of the payload changed after signing (py-libp2p's peerstore accepts this)
    good = seal(A, HOME, 7)
    env = unmarshal_envelope(good)
    tampered = bytearray(good)
    at = bytes(good).index(env.raw_payload) + len(env.raw_payload) - 1
    tampered[at] ^= 1
    with pytest.raises(RecordRefused):
        open_record(bytes(tampered), A.peer_id)
    with pytest.raises(RecordRefused, match="bytes"):
        open_record(good + bytes(MAX_RECORD), A.peer_id)
    with pytest.raises(RecordRefused, match="envelope"):
        open_record(b"\xff" * 64, A.peer_id)
    with pytest.raises(ValueError, match="at most"):
        seal(A, [f"/ip4/10.0.0.{i}/tcp/1" for i in range(17)], 1)


def test_our_seq_goes_up_even_when_the_clock_goes_back(tmp_path):
    path = tmp_path / "seq"
    clock = [1_000]
    counter = SeqCounter(path, clock=lambda: clock[0])
    assert [counter.next(), counter.next()] == [1_000, 1_001]
    clock[0] = 5  # the gateway booted in 1970
    restarted = SeqCounter(path, clock=lambda: clock[0])
    assert restarted.next() == 1_002
    path.write_text("not a number")
    assert SeqCounter(path, clock=lambda: 7).next() == 7  # a damaged file: the clock still orders


def test_the_address_book_dials_the_newest_record_first_and_keeps_only_verified_ones(tmp_path):
    book = AddressBook()
    book.configure(A.peer_id, f"/ip4/192.0.2.1/tcp/4001/p2p/{A.peer_id}")
    assert book.direct(A.peer_id) == ["/ip4/192.0.2.1/tcp/4001"]
    relay = Relay.parse(f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}")
    book.learn(seal(A, ["/ip4/192.0.2.9/tcp/4001", f"{relay.addr}/p2p/{relay.peer_id}/p2p-circuit"], 3), A.peer_id)
    assert book.direct(A.peer_id) == ["/ip4/192.0.2.9/tcp/4001", "/ip4/192.0.2.1/tcp/4001"]
    assert book.relays(A.peer_id) == [B.peer_id]
    held = book.records[A.peer_id].envelope
    assert book.learn(held, A.peer_id) is None  # the same record pushed again: nothing to do
    with pytest.raises(StaleRecord):
        book.learn(seal(A, ["/ip4/192.0.2.66/tcp/4001"], 2), A.peer_id)
    path = tmp_path / "addresses.json"
    book.save(path)
    again = AddressBook()
    assert again.load(path, [A.peer_id]) == 1 and again.direct(A.peer_id) == ["/ip4/192.0.2.9/tcp/4001"]
    saved = json.loads(path.read_text())
    saved[A.peer_id] = seal(B, ["/ip4/192.0.2.66/tcp/4001"], 99).hex()  # a file edited to redirect A
    path.write_text(json.dumps(saved))
    assert AddressBook().load(path, [A.peer_id]) == 0
    path.write_text("{")
    assert AddressBook().load(path, [A.peer_id]) == 0


def test_a_newer_record_says_which_addresses_the_neighbour_left():
    circuit = f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}/p2p-circuit"
    first = open_record(seal(A, ["/ip4/192.0.2.1/tcp/4001", "/ip4/10.0.0.5/tcp/4001", circuit], 1), A.peer_id)
    moved = open_record(seal(A, ["/ip4/192.0.2.2/tcp/4001", "/ip4/10.0.0.5/tcp/4002"], 2), A.peer_id)
    assert moved_from(first, moved) == {"192.0.2.1"}  # 10.0.0.5 kept (another port), the relay is no IP of A's
    assert moved_from(None, moved) == set() and moved_from(moved, moved) == set()


def test_slots_evict_from_the_source_that_holds_the_most():
    slots = Slots(4)
    for i in range(3):
        assert slots.add(("flood", i), "198.51.100.66") is None
    assert slots.add("honest", "192.0.2.1") is None
    for i in range(3, 100):  # the flood goes on: it only ever evicts its own
        assert slots.add(("flood", i), "198.51.100.66")[0] == "flood"
        assert "honest" in slots
    slots.remove("honest")
    assert len(slots) == 3 and slots.held_by("192.0.2.1") == 0


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=200), st.integers(1, 8))
def test_slots_never_exceed_capacity_and_evict_the_busiest(ops, capacity):
    slots, held = Slots(capacity), []
    for n, (source, remove) in enumerate(ops):
        if remove and held:
            token = held.pop(0)
            slots.remove(token)
            continue
        counts = {s: slots.held_by(s) for s in range(6)}
        evicted = slots.add(n, source)
        held.append(n)
        if evicted is not None:
            held.remove(evicted)
            assert counts[ops[evicted][0]] == max(counts.values())  # from a source holding the most
        assert len(slots) == len(held) <= capacity


def test_the_reconnect_backoff_doubles_up_to_the_callers_cap():
    backoff = Backoff(cap=2.0)
    delays = [backoff.failed("p", now=0.0) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert not backoff.ready("p", now=1.9) and backoff.ready("p", now=2.0)
    backoff.clear("p")
    assert backoff.ready("p", now=0.0)
    assert Backoff(cap=0).failed("q", now=0.0) == 0.1  # never a busy loop


def test_what_we_announce():
    relay = Relay.parse(f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}")
    bound = [f"/ip4/0.0.0.0/tcp/4001/p2p/{A.peer_id}"]
    assert own_addresses(bound, [], [], direct=True, interfaces=["10.1.0.2", "192.0.2.5"]) == [
        "/ip4/10.1.0.2/tcp/4001", "/ip4/192.0.2.5/tcp/4001"]
    assert own_addresses(bound, HOME, [relay], direct=True, interfaces=["10.1.0.2"]) == [
        *HOME, f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}/p2p-circuit"]
    assert own_addresses(bound, HOME, [relay], direct=False, interfaces=["10.1.0.2"]) == [
        f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}/p2p-circuit"]


def test_relay_addresses_must_name_the_relay():
    relay = Relay.parse(f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}")
    assert relay.circuit_to(A.peer_id) == f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}/p2p-circuit/p2p/{A.peer_id}"
    for bad in ("/ip4/203.0.113.1/tcp/4001", f"/ip4/203.0.113.1/tcp/4001/p2p/{B.peer_id}/p2p-circuit", "relay"):
        with pytest.raises(ValueError, match="PEERID"):
            Relay.parse(bad)
