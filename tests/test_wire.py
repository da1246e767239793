"""Envelopes, codecs, and the verification pipeline: one crafted message per reason code,
then fuzzing: random and mutated bytes never raise and never get a forgery accepted."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.codecs import CODECS, FLOAT_CODECS, WORD_CODECS, decode, encode, encoded_size
from gossip.envelope import (
    Envelope,
    bin_header,
    canonical,
    header_digest,
    payload_digest,
    seal,
    seal_update,
)
from gossip.errors import CodecError
from gossip.identity import Identity
from gossip.verify import REASONS, Accepted, Reason, Rejected, Verifier

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
CAROL = Identity.from_seed(b"c" * 32)  # revoked by the network admin
SCHEMA = bytes(range(32))
N = 257
PARAMS = torch.linspace(-1, 1, N)


def verifier(**kw) -> Verifier:
    args = dict(network="net", trusted={ALICE.peer_id, BOB.peer_id}, schema=SCHEMA, n_params=N,
                neighbours={ALICE.peer_id}, max_size=1 << 20, revoked={CAROL.peer_id})
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
    assert np.shares_memory(view.numpy(), np.frombuffer(payload, dtype="<f4"))


def _crafted():
    """One message per reason code, each failing exactly that check."""
    good = message()
    forged_sig = tamper(good, sig=bytes(64))
    wide_round = good.replace(b"\xa5round\x05", b"\xa5round\xcc\x05")  # the same value, a wider int
    wrong_payload = tamper(good, payload=encode(PARAMS + 1, "raw-f32"))
    nan = PARAMS.clone()
    nan[3] = float("nan")
    return {
        Reason.TOO_LARGE: (b"\x00" * ((1 << 20) + 1), {}),
        Reason.MALFORMED: (b"\xc1garbage", {}),
        Reason.BAD_VERSION: (tamper(good, v=1), {}),
        Reason.WRONG_NETWORK: (message(net="other"), {}),
        Reason.UNKNOWN_SENDER: (message(ident=MALLORY), {}),
        Reason.REVOKED: (message(ident=CAROL), {}),
        Reason.NOT_A_NEIGHBOUR: (message(ident=BOB), {}),
        Reason.STALE_ROUND: (message(round=4), {}),
        Reason.FUTURE_ROUND: (message(round=8), {}),
        Reason.REPLAY: (good, {"replay": True}),
        Reason.BAD_SIGNATURE: (forged_sig, {}),
        Reason.SCHEMA_MISMATCH: (message(schema=b"\xff" * 32), {}),
        Reason.PAYLOAD_HASH_MISMATCH: (wrong_payload, {}),
        Reason.NON_FINITE: (message(params=nan), {}),
        Reason.NON_CANONICAL: (wide_round, {}),
        Reason.WRONG_KIND: (message(kind="masked"), {}),  # masked contributions go to secure_mean peers only
        Reason.PRIVACY_ROLLBACK: (message(eps=2.5), {"witnessed": {ALICE.peer_id: 7.0}}),
    }


@pytest.mark.parametrize("reason", list(Reason))
def test_each_reason_code_has_a_crafted_message(reason):
    data, opts = _crafted()[reason]
    v = verifier()
    v.witnessed = opts.get("witnessed")
    seen: set = set()
    if opts.get("replay"):  # the round state records what it accepted; the verifier only reads it
        first = v.verify(data, 5, seen)
        assert isinstance(first, Accepted)
        seen.add((first.sender, first.envelope.round))
    r = v.verify(data, 5, seen)
    assert isinstance(r, Rejected), r
    assert r.reason == reason, (r.reason, r.detail)
    assert r.detail


def test_a_sender_whose_signed_epsilon_goes_down_is_rejected_as_a_privacy_rollback():
    """The epsilon is signed (part of the update id) and may only grow: once 7.0 was accepted from
    a sender, 2.5 is its privacy ledger gone back, proven by its own signature."""
    v = verifier()
    v.witnessed = {}
    for eps in (0.0, 7.0, 7.0, 9.5):
        assert isinstance(v.verify(message(eps=eps), 5), Accepted)
        v.witnessed[ALICE.peer_id] = eps  # what the peer's inbox records of an accepted update
    r = v.verify(message(eps=9.0), 5)
    assert r.reason == Reason.PRIVACY_ROLLBACK and r.authenticated and "9 after 9.5" in r.detail
    assert verifier().verify(message(eps=2.5), 5).update_id != verifier().verify(message(eps=3.5), 5).update_id
    forged = tamper(message(eps=9.5), eps=9.75)  # not re-signed
    assert v.verify(forged, 5).reason == Reason.BAD_SIGNATURE


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
    if isinstance(r, Accepted):  # only the very same bytes can pass: the encoding is canonical
        assert bytes(buf) == good
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
    assert CODECS == ("raw-f32", "f16", "int8", "u32", "sparse-f32", "sparse-f16", "sparse-int8")


# --- two stages: screen (header + signature) then finish (payload) ------------------------


def test_screen_returns_the_authenticated_envelope_and_finish_the_values():
    v = verifier()
    env = v.screen(message(), 5)
    assert isinstance(env, Envelope) and env.sender == ALICE.peer_id and env.round == 5
    r = v.finish(env)
    assert isinstance(r, Accepted) and torch.equal(r.params, PARAMS)


def test_screen_leaves_the_payload_to_finish():
    good = message()
    obj = msgpack.unpackb(good, raw=False)
    wrong_payload = tamper(good, payload=encode(PARAMS + 1, "raw-f32"))
    assert obj["payload_hash"] != payload_digest(encode(PARAMS + 1, "raw-f32"))
    env = verifier().screen(wrong_payload, 5)
    assert isinstance(env, Envelope)  # the header and its signature are fine
    r = verifier().finish(env)
    assert r.reason == Reason.PAYLOAD_HASH_MISMATCH and r.authenticated


def test_replay_is_read_from_the_callers_set_and_never_written():
    v = verifier()
    seen = {(ALICE.peer_id, 5)}
    assert v.screen(message(), 5, seen).reason == Reason.REPLAY
    assert v.verify(message(), 5, seen).reason == Reason.REPLAY
    other: set = set()
    assert isinstance(v.verify(message(), 5, other), Accepted)
    assert isinstance(v.verify(message(), 5, other), Accepted)  # the caller records acceptances
    assert other == set()
    assert isinstance(v.verify(message(round=6), 5, seen), Accepted)  # another round of the same sender


def test_rejections_say_whether_the_sender_is_proven():
    nan = PARAMS.clone()
    nan[0] = float("inf")
    crafted = _crafted()
    after_signature = {Reason.SCHEMA_MISMATCH, Reason.PAYLOAD_HASH_MISMATCH, Reason.NON_FINITE, Reason.WRONG_KIND,
                       Reason.PRIVACY_ROLLBACK}
    for reason, (data, opts) in crafted.items():
        v, seen = verifier(), set()
        v.witnessed = opts.get("witnessed")
        if opts.get("replay"):
            seen.add((ALICE.peer_id, 5))
        r = v.verify(data, 5, seen)
        assert r.reason == reason
        assert r.authenticated == (reason in after_signature), reason
    r = verifier().verify(tamper(message(), sig=bytes(64)), 5)
    assert r.sender == ALICE.peer_id and not r.authenticated  # as claimed


def test_trust_and_neighbours_are_read_at_each_call():
    v = verifier(trusted=set(), neighbours=None)
    assert v.verify(message(), 5, set()).reason == Reason.UNKNOWN_SENDER
    v.trusted.add(ALICE.peer_id)
    assert isinstance(v.verify(message(), 5, set()), Accepted)
    v.neighbours = {BOB.peer_id}
    assert v.verify(message(), 5, set()).reason == Reason.NOT_A_NEIGHBOUR
    v.neighbours.add(ALICE.peer_id)
    assert isinstance(v.verify(message(), 5, set()), Accepted)
    v.trusted.discard(ALICE.peer_id)
    assert v.verify(message(), 5, set()).reason == Reason.UNKNOWN_SENDER


# --- the checks at their edges (each kills a mutant of verify.py or envelope.py) ------------


def test_a_new_payload_under_the_old_signature_is_a_bad_signature():
    good = message()
    forged_payload = encode(PARAMS * 3, "raw-f32")
    # the attacker re-binds the payload: a new payload and its matching hash, the old signature
    forged = tamper(good, payload=bytes(forged_payload), payload_hash=payload_digest(forged_payload))
    assert forged != good and len(forged) == len(good)
    r = verifier().verify(forged, 5)
    assert r.reason == Reason.BAD_SIGNATURE, r.detail


@pytest.mark.parametrize("changes", [{"net": "other"}, {"round": 6}, {"ts": 1.5}, {"kind": "other"},
                                     {"schema": b"\xee" * 32}, {"codec": "f16", "n": 2 * N},
                                     {"codec": "int8", "n": 4 * N - 4}, {"deg": 3}, {"parents": [b"\x01" * 32]}])
def test_every_header_field_is_signed(changes):
    """Each field changed under the old signature (same payload bytes, so every size still fits)."""
    r = verifier(network=changes.get("net", "net"), n_params=changes.get("n", N)).verify(
        tamper(message(), **changes), 5)
    assert r.reason == Reason.BAD_SIGNATURE, (changes, r.reason, r.detail)


@pytest.mark.parametrize("lead", [0, 1, 2, 5])
def test_the_future_bound_is_inclusive(lead):
    v = verifier(max_lead=lead)
    assert isinstance(v.verify(message(round=5 + lead), 5, set()), Accepted)
    assert v.verify(message(round=6 + lead), 5, set()).reason == Reason.FUTURE_ROUND


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_the_stale_bound_is_inclusive(lag):
    v = verifier(max_lag=lag)
    assert isinstance(v.verify(message(round=5 - lag), 5, set()), Accepted)
    assert v.verify(message(round=4 - lag), 5, set()).reason == Reason.STALE_ROUND


@pytest.mark.parametrize("net", ["", "ne", "n", "net2", "NET", "net ", "xnet"])
def test_the_network_id_must_be_equal(net):
    assert verifier().verify(message(net=net), 5).reason == Reason.WRONG_NETWORK
    assert verifier(network=net).verify(message(), 5).reason == Reason.WRONG_NETWORK


def _boundary_cases():
    """(codec, payload bytes, n) for each msgpack bin-header edge a codec can reach exactly."""
    for codec in FLOAT_CODECS:
        for size in (255, 256, 65_535, 65_536):
            n = next((k for k in range(size + 1) if encoded_size(codec, k) == size), None)
            if n is not None:
                yield codec, size, n


@pytest.mark.parametrize("codec, size, n", list(_boundary_cases()))
def test_payloads_at_the_bin_header_boundaries_seal_and_verify(codec, size, n):
    x = torch.linspace(-2, 2, n)
    sealed = seal_update(ALICE, x, codec=codec, net="net", round=5, schema=SCHEMA)
    assert sealed.data.endswith(bin_header(size) + bytes(encode(x, codec)))
    r = verifier(n_params=n).verify(sealed.data, 5)
    assert isinstance(r, Accepted), r
    assert torch.equal(r.params, decode(encode(x, codec), codec, n))
    assert len(r.envelope.payload) == size


def test_the_bin_header_boundaries_are_reached_by_every_codec():
    reached = {(c, s) for c, s, _ in _boundary_cases()}
    assert {("raw-f32", 256), ("raw-f32", 65_536), ("f16", 256), ("f16", 65_536)} <= reached
    assert {("int8", s) for s in (255, 256, 65_535, 65_536)} <= reached


def test_the_size_limit_is_inclusive():
    data = message()
    assert isinstance(verifier(max_size=len(data)).verify(data, 5, set()), Accepted)
    assert verifier(max_size=len(data) - 1).verify(data, 5, set()).reason == Reason.TOO_LARGE


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", [0, N - 1])
def test_any_non_finite_value_is_rejected(bad, where):
    x = PARAMS.clone()
    x[where] = bad
    r = verifier().verify(message(params=x), 5)
    assert r.reason == Reason.NON_FINITE and r.authenticated


@pytest.mark.parametrize("n", [0, 1, N - 1, N + 1, 4 * N])
def test_a_signed_update_with_another_value_count_is_a_schema_mismatch(n):
    # the right schema hash, a valid signature, a payload that matches its n: still not this model
    # (one value would otherwise be spread over the whole row)
    r = verifier().verify(message(params=torch.linspace(-1, 1, n)), 5)
    assert r.reason == Reason.SCHEMA_MISMATCH and r.authenticated, r
    assert f"with {n} values" in r.detail


def _sealed(kind: str, codec: str, n: int = N) -> bytes:
    payload = np.arange(n, dtype="<u4").tobytes() if codec == "u32" else encode(PARAMS, codec)
    return seal(ALICE, net="net", round=5, schema=SCHEMA, payload=payload, codec=codec, n=n, kind=kind).data


@pytest.mark.parametrize("masked_words", [None, N])
@pytest.mark.parametrize("kind", ["update", "masked"])
@pytest.mark.parametrize("codec", ["raw-f32", "u32"])
def test_masked_words_travel_only_as_kind_masked_codec_u32_to_a_secure_peer(masked_words, kind, codec):
    r = verifier(masked_words=masked_words).verify(_sealed(kind, codec), 5)
    if masked_words is not None and kind == "masked" and codec == "u32":
        assert isinstance(r, Accepted) and r.params.dtype == torch.uint32
        assert torch.equal(r.params.to(torch.int64), torch.arange(N))
    elif masked_words is None and kind == "update" and codec == "raw-f32":
        assert isinstance(r, Accepted) and r.params.dtype == torch.float32
    else:
        assert r.reason == Reason.WRONG_KIND and r.authenticated, (r.reason, r.detail)


# --- codecs: the layout the docstring promises ---------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 8192, 8193])
def test_int8_is_one_scale_per_4096_block_then_the_codes(n):
    x = torch.randn(n) * torch.linspace(0.1, 10.0, n)  # a different scale in each block
    data = bytes(encode(x, "int8"))
    blocks = -(-n // 4096)
    assert len(data) == encoded_size("int8", n) == 4 * blocks + n
    scales = np.frombuffer(data, "<f4", count=blocks)
    codes = np.frombuffer(data, "i1", offset=4 * blocks)
    for b in range(blocks):
        block = x[b * 4096 : (b + 1) * 4096].numpy()
        assert scales[b] == np.float32(np.abs(block).max() / np.float32(127.0))
        assert np.abs(codes[b * 4096 : (b + 1) * 4096]).max() == 127  # the largest value of a block is +-127
    y = decode(data, "int8", n)
    for b in range(blocks):  # each block's largest magnitude comes back to float32 rounding
        block, back = x[b * 4096 : (b + 1) * 4096], y[b * 4096 : (b + 1) * 4096]
        i = int(block.abs().argmax())
        assert abs(float(back[i]) - float(block[i])) <= 1e-6 * abs(float(block[i]))


@pytest.mark.parametrize("codec", FLOAT_CODECS + WORD_CODECS)
@pytest.mark.parametrize("n", [0, 1, 7, 4096])
def test_a_payload_of_the_wrong_size_is_a_codec_error(codec, n):
    size = encoded_size(codec, n)
    for wrong in (size - 1, size + 1, size + 4, 2 * size + 4):
        if wrong >= 0:
            with pytest.raises(CodecError, match=f"{size} bytes"):
                decode(bytes(wrong), codec, n)
    assert decode(bytes(size), codec, n).shape == (n,)


def test_a_start_below_what_a_neighbour_witnessed_is_a_rollback():
    from peer.runtime.witness import rollback

    assert rollback({"n1": (5, 2.0), "n2": None}, 5, 2.0) is None  # round 5 sent, resumed at 5: redone
    assert "round 6" in rollback({"n1": (6, 2.0)}, 5, 2.0)
    assert "epsilon 2.01" in rollback({"n1": (4, 2.01)}, 5, 2.0)
    assert rollback({"n1": (4, 2.0 * (1 + 1e-12))}, 5, 2.0) is None  # the same float, rounded
    assert rollback({}, 0, 0.0) is None
