"""Envelopes, codecs, and the verification pipeline: one crafted message per reason code,
then fuzzing: random and mutated bytes never raise and never get a forgery accepted."""

from __future__ import annotations

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.codecs import CODECS, decode, encode
from gossip.envelope import canonical, header_digest, seal, seal_update
from gossip.identity import Identity
from gossip.verify import REASONS, Accepted, Reason, Rejected, Verifier

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
SCHEMA = bytes(range(32))
N = 257
PARAMS = torch.linspace(-1, 1, N)


def verifier(**kw) -> Verifier:
    args = dict(network="net", trusted={ALICE.peer_id, BOB.peer_id}, schema=SCHEMA, n_params=N,
                neighbours={ALICE.peer_id}, max_size=1 << 20)
    args.update(kw)
    return Verifier(**args)


def message(ident=ALICE, round=5, net="net", schema=SCHEMA, params=PARAMS, codec="raw-f32", **kw):
    return seal_update(ident, params, codec=codec, net=net, round=round, schema=schema, **kw).data


def tamper(data: bytes, **changes) -> bytes:
    obj = msgpack.unpackb(data, raw=False)
    obj.update(changes)
    return canonical(obj)


def test_a_good_update_is_accepted_with_its_values():
    r = verifier().verify(message(parents=[b"\x01" * 32], deg=4), 5)
    assert isinstance(r, Accepted)
    assert torch.equal(r.params, PARAMS)
    assert r.envelope.header["deg"] == 4 and r.envelope.header["parents"] == [b"\x01" * 32]
    assert r.update_id == header_digest(r.envelope.header).hex()


@pytest.mark.parametrize("codec, tol", [("raw-f32", 0.0), ("f16", 1e-3), ("int8", 1.0 / 127)])
def test_codecs_round_trip(codec, tol):
    x = torch.randn(10_000) * 3
    y = decode(encode(x, codec), codec, x.numel())
    assert y.dtype == torch.float32
    assert (y - x).abs().max() <= tol * x.abs().max() + 1e-6
    r = verifier(n_params=x.numel()).verify(message(params=x, codec=codec), 5)
    assert isinstance(r, Accepted) and torch.equal(r.params, y)


def test_raw_decode_is_zero_copy():
    payload = encode(PARAMS, "raw-f32")
    view = decode(payload, "raw-f32", N)
    import numpy as np
    assert np.shares_memory(view.numpy(), np.frombuffer(payload, dtype="<f4"))


def _crafted():
    """One message per reason code, each failing exactly that check."""
    good = message()
    forged_sig = tamper(good, sig=bytes(64))
    wrong_payload = tamper(good, payload=encode(PARAMS + 1, "raw-f32"))
    nan = PARAMS.clone()
    nan[3] = float("nan")
    return {
        Reason.TOO_LARGE: (b"\x00" * ((1 << 20) + 1), {}),
        Reason.MALFORMED: (b"\xc1garbage", {}),
        Reason.BAD_VERSION: (tamper(good, v=2), {}),
        Reason.WRONG_NETWORK: (message(net="other"), {}),
        Reason.UNKNOWN_SENDER: (message(ident=MALLORY), {}),
        Reason.NOT_A_NEIGHBOUR: (message(ident=BOB), {}),
        Reason.STALE_ROUND: (message(round=4), {}),
        Reason.FUTURE_ROUND: (message(round=8), {}),
        Reason.REPLAY: (good, {"replay": True}),
        Reason.BAD_SIGNATURE: (forged_sig, {}),
        Reason.SCHEMA_MISMATCH: (message(schema=b"\xff" * 32), {}),
        Reason.PAYLOAD_HASH_MISMATCH: (wrong_payload, {}),
        Reason.NON_FINITE: (message(params=nan), {}),
    }


@pytest.mark.parametrize("reason", list(Reason))
def test_each_reason_code_has_a_crafted_message(reason):
    data, opts = _crafted()[reason]
    v = verifier()
    if opts.get("replay"):
        assert isinstance(v.verify(data, 5), Accepted)
    r = v.verify(data, 5)
    assert isinstance(r, Rejected), r
    assert r.reason == reason, (r.reason, r.detail)
    assert r.detail


def test_every_reason_is_covered():
    assert set(REASONS) == {r.value for r in _crafted()}


def test_signature_is_checked_before_the_payload_is_trusted():
    # A forged message whose payload is also wrong must fail on the signature, not later.
    good = message()
    bad = tamper(good, sig=bytes(64), payload=b"\x00" * (4 * N))
    assert verifier().verify(bad, 5).reason == Reason.BAD_SIGNATURE


def test_malformed_shapes():
    good = msgpack.unpackb(message(), raw=False)
    v = verifier()
    cases = [
        canonical([1, 2, 3]),
        canonical({**good, "extra": 1}),
        canonical({k: x for k, x in good.items() if k != "schema"}),
        canonical({**good, "round": "5"}),
        canonical({**good, "round": -1}),
        canonical({**good, "round": True}),
        canonical({**good, "parents": [b"short"]}),
        canonical({**good, "codec": "zip"}),
        canonical({**good, "payload": good["payload"][:-4]}),
        canonical({**good, "sig": b"x"}),
    ]
    for data in cases:
        r = v.verify(data, 5)
        assert isinstance(r, Rejected) and r.reason == Reason.MALFORMED, r


def test_replay_window_state_round_trips_and_forgets():
    v = verifier()
    assert isinstance(v.verify(message(round=5), 5), Accepted)
    state = v.state()
    w = verifier()
    w.restore(state)
    assert w.verify(message(round=5), 5).reason == Reason.REPLAY
    w.forget_before(7)
    assert w.state() == []


def test_future_rejections_carry_an_authenticable_envelope():
    r = verifier().verify(message(round=9), 5)
    assert r.reason == Reason.FUTURE_ROUND and Verifier.authentic(r.envelope)
    r = verifier().verify(tamper(message(round=9), sig=bytes(64)), 5)
    assert not Verifier.authentic(r.envelope)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_rejected_cleanly(data):
    r = verifier().verify(data, 5)
    assert isinstance(r, Rejected) and r.reason.value in REASONS


@FUZZ
@given(st.data())
def test_mutated_messages_are_never_accepted_unless_unchanged(data):
    good = message(params=torch.linspace(-1, 1, N))
    buf = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i : i + data.draw(st.integers(1, 16))]
        else:
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    r = verifier().verify(bytes(buf), 5)
    if isinstance(r, Accepted):
        # only a re-encoding of the very same signed values can pass
        assert torch.equal(r.params, PARAMS) and r.sender == ALICE.peer_id
    else:
        assert r.reason.value in REASONS


@FUZZ
@given(st.dictionaries(st.sampled_from(["v", "net", "sender", "round", "ts", "kind", "schema", "codec", "n",
                                        "deg", "parents", "payload_hash", "payload", "sig", "zz"]),
                       st.one_of(st.integers(-2, 2**70), st.text(max_size=8), st.binary(max_size=70),
                                 st.none(), st.floats(), st.lists(st.binary(max_size=33), max_size=3)),
                       max_size=16))
def test_structured_garbage_is_rejected(fields):
    try:
        data = canonical(fields)
    except (OverflowError, TypeError):
        return
    r = verifier().verify(data, 5)
    assert isinstance(r, Rejected)


def test_forgery_with_a_trusted_senders_name_is_rejected():
    # Mallory signs with her key but claims to be Alice.
    header_msg = seal(MALLORY, net="net", round=5, schema=SCHEMA, payload=encode(PARAMS), codec="raw-f32", n=N).data
    forged = tamper(header_msg, sender=ALICE.peer_id)
    assert verifier().verify(forged, 5).reason == Reason.BAD_SIGNATURE


def test_codecs_listed():
    assert CODECS == ("raw-f32", "f16", "int8")
