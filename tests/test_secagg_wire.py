"""The double-masking messages (privacy.secagg_wire) and the member's ledger record: canonical,
bounded, strict; hostile records refused."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy import secagg_wire as wire
from privacy.secagg import SecAggError
from privacy.secagg_ledger import LedgerEntry, MemberLedger

from .secagg_helpers import BY_ID, MEMBERS, NET, RECEIVER, Group, updates

N = 4


@pytest.fixture(scope="module")
def messages() -> dict[type, bytes]:
    """One message of each kind from a real round of 4 members (one drops after dealing, so the
    reveals carry s shares too)."""
    g = Group(N)
    out: dict[type, bytes] = {}
    xs = updates(g.members, g.size, seed=1)
    books = g.keys()
    forwards = g.deals(books)
    survivors = g.masked(forwards, xs, drop={g.members[0]})
    proofs = g.consents(survivors)
    g.reveals(proofs)
    k = g.members[1]
    for data in (g.sent["advert"][k], books[k], g.sent["deal"][k], forwards[k], survivors[k], g.sent["consent"][k],
                 proofs[k], g.sent["reveal"][k]):
        out[wire.kind_of(data)] = data
    assert set(out) == set(wire.SPECS)
    assert wire.parse(out[wire.Reveal]).s_shares
    return out


def test_every_message_is_canonical_signed_and_within_its_bound(messages):
    for cls, data in messages.items():
        msg = wire.parse(data, N)
        assert type(msg) is cls and msg.signed_by_sender()
        assert len(data) <= wire.limit(cls, N) <= wire.limit(cls, N + 1) <= wire.max_limit(N + 1)
        values = {f: getattr(msg, f) for f, _ in wire.SPECS[cls][1] if f != "sender"}
        assert wire.encode(BY_ID[msg.sender], cls, **values) == data  # one byte string per message
        with pytest.raises(SecAggError) as err:
            wire.parse(data + b"\x00", N)
        assert err.value.reason in ("malformed", "oversize")


def test_a_message_larger_than_its_kind_allows_for_the_group_is_refused_unread(messages):
    book = messages[wire.KeyBook]
    assert wire.limit(wire.KeyBook, 2) < len(book)
    with pytest.raises(SecAggError) as err:
        wire.parse(book, 2)
    assert err.value.reason == "oversize"
    with pytest.raises(SecAggError) as err:
        wire.parse(b"GFSB\x01" + bytes(wire.limit(wire.KeyBook, N) + 1), N)
    assert err.value.reason == "oversize"


def test_every_truncation_is_refused(messages):
    for data in messages.values():
        for cut in range(len(data)):
            with pytest.raises(SecAggError) as err:
                wire.parse(data[:cut], N)
            assert err.value.reason in ("malformed", "non_canonical")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_flipped_bit_is_refused_or_breaks_the_signature(messages, data):
    cls = data.draw(st.sampled_from(sorted(messages, key=lambda c: c.KIND)))
    raw = bytearray(messages[cls])
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    try:
        msg = wire.parse(bytes(raw), N)
    except SecAggError as exc:
        assert exc.reason in ("malformed", "non_canonical", "oversize") and exc.who == ()
        return
    assert not msg.signed_by_sender()


def _advert_body() -> dict:
    return {"net": NET, "sender": MEMBERS[0].peer_id, "to": RECEIVER.peer_id, "round": 3, "c_pub": bytes(32),
            "s_pub": bytes(32), "sig": bytes(64)}


def test_non_canonical_encodings_are_refused():
    magic = wire.MAGICS[wire.Advert]
    ok = magic + wire.canonical(_advert_body())
    assert wire.parse(ok).round == 3
    wide_round = ok.replace(msgpack.packb("round") + b"\x03", msgpack.packb("round") + b"\xcd\x00\x03")
    map16 = magic + b"\xde\x00\x07" + wire.canonical(_advert_body())[1:]
    reordered = magic + wire.canonical(dict(sorted(_advert_body().items())))
    as_str = ok.replace(msgpack.packb("c_pub") + msgpack.packb(bytes(32), use_bin_type=True),
                        msgpack.packb("c_pub") + b"\xd9\x20" + bytes(32))
    for data in (wide_round, map16, reordered, as_str):
        with pytest.raises(SecAggError) as err:
            wire.parse(data)
        assert err.value.reason == "non_canonical", data
    for data in (b"GFSZ\x01" + ok[5:], b"GFSA\x02" + ok[5:], b"", b"\x8e"):
        with pytest.raises(SecAggError, match="magic"):
            wire.parse(data)
        assert wire.kind_of(data) is None


def test_unsorted_or_repeated_members_are_refused(messages):
    survivors = wire.parse(messages[wire.Survivors])
    body = {"net": NET, "sender": RECEIVER.peer_id, "round": survivors.round, "book": survivors.book,
            "survivors": list(reversed(survivors.survivors)), "sig": bytes(64)}
    with pytest.raises(SecAggError, match="not sorted"):
        wire.parse(wire.MAGICS[wire.Survivors] + wire.canonical(body))
    body["survivors"] = [survivors.survivors[0]] * 2
    with pytest.raises(SecAggError, match="twice"):
        wire.parse(wire.MAGICS[wire.Survivors] + wire.canonical(body))
    body["survivors"] = ["not-a-peer-id"]
    with pytest.raises(SecAggError, match="a peer in survivors"):
        wire.parse(wire.MAGICS[wire.Survivors] + wire.canonical(body))


# --- the ledger record ----------------------------------------------------------------------------


def test_the_ledger_record_round_trips_through_json():
    g = Group(4)
    g.run(updates(g.members, g.size, seed=2), {"masked": {g.members[0]}})
    ledger = g.ledgers[g.members[1]]
    assert g.ms[g.members[1]].record() == ledger.entry(RECEIVER.peer_id, 3).to_record()
    rec = json.loads(json.dumps(ledger.to_record()))
    again = MemberLedger.from_record(rec)
    assert again.to_record() == ledger.to_record()
    entry = again.entry(RECEIVER.peer_id, 3)
    assert entry.phase == "revealed" and entry.dropped == (g.members[0],)
    assert not set(entry.dropped) & set(entry.survivors)


def _entry(**over) -> dict:
    m = sorted(p.peer_id for p in MEMBERS[:3])
    rec = {"receiver": RECEIVER.peer_id, "round": 3, "phase": "revealed", "book": "ab" * 32,
           "survivors": m[:2], "dropped": m[2:]}
    rec.update(over)
    return rec


@pytest.mark.parametrize("bad", [
    {"round": True}, {"round": -1}, {"round": 1 << 64}, {"round": "3"}, {"phase": "done"}, {"receiver": "x"},
    {"book": "AB" * 32}, {"book": "ab" * 31}, {"book": None}, {"survivors": None}, {"survivors": []},
    {"dropped": None}, {"phase": "consented"}, {"phase": "advertised"}, {"extra": 1},
])
def test_a_hostile_ledger_entry_is_refused(bad):
    m = sorted(p.peer_id for p in MEMBERS[:3])
    assert LedgerEntry.from_record(_entry()).dropped == tuple(m[2:])
    with pytest.raises(SecAggError) as err:
        LedgerEntry.from_record(_entry(**bad))
    assert err.value.reason == "bad_record"


def test_hostile_ledger_records_are_refused():
    m = sorted(p.peer_id for p in MEMBERS[:3])
    unsorted = _entry(survivors=[m[1], m[0]])
    overlap = _entry(dropped=[m[0]])
    for bad in (unsorted, overlap, _entry(survivors=[m[0]] * 2)):
        with pytest.raises(SecAggError, match="bad_record"):
            LedgerEntry.from_record(bad)
    # a later record of a session that changes what was signed or revealed, or goes back
    with pytest.raises(SecAggError, match="changes its survivors"):
        MemberLedger.restore([_entry(phase="consented", dropped=None), _entry(survivors=[m[0]], dropped=[m[2]])])
    with pytest.raises(SecAggError, match="goes back"):
        MemberLedger.restore([_entry(), _entry(phase="masked", survivors=None, dropped=None)])
    good = {"v": 1, "last": [[RECEIVER.peer_id, 3]], "sessions": [_entry()]}
    assert MemberLedger.from_record(good).last_round(RECEIVER.peer_id) == 3
    for bad in ({**good, "v": 2}, {**good, "last": [[RECEIVER.peer_id, 2]]}, {**good, "last": []},
                {**good, "last": [[RECEIVER.peer_id, 3]] * 2}, {**good, "sessions": "x"}, [], None,
                {**good, "last": [[RECEIVER.peer_id, True]]}):
        with pytest.raises(SecAggError, match="bad_record"):
            MemberLedger.from_record(bad)


def test_the_ledger_never_records_both_kinds_of_shares_or_a_second_set():
    m = sorted(p.peer_id for p in MEMBERS[:4])
    ledger = MemberLedger()
    e = ledger.advance(ledger.begin(RECEIVER.peer_id, 5), "dealt", bytes(32))
    e = ledger.advance(e, "masked")
    e = ledger.consent(e, tuple(m[:3]))
    with pytest.raises(SecAggError, match="conflicting_survivors"):
        ledger.consent(e, tuple(m[1:]))
    with pytest.raises(SecAggError, match="conflicting_survivors"):
        ledger.reveal(e, tuple(m[1:]), (m[0],))
    with pytest.raises(SecAggError, match="both_shares"):
        ledger.reveal(e, tuple(m[:3]), (m[0],))
    e = ledger.reveal(e, tuple(m[:3]), (m[3],))
    assert ledger.reveal(e, tuple(m[:3]), (m[3],)) == e  # the same reveal again is allowed
    with pytest.raises(SecAggError, match="already_revealed"):
        ledger.reveal(e, tuple(m[:3]), ())
    ledger.forget_before(6)
    assert ledger.entry(RECEIVER.peer_id, 5) is None
    with pytest.raises(SecAggError, match="already_started"):
        ledger.begin(RECEIVER.peer_id, 5)
