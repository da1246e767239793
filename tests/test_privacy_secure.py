"""Secure aggregation among neighbours: masks, fixed point, drop-outs, reveals and their wire."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from gossip.identity import Identity
from privacy.secure import (
    FixedPoint,
    MaskError,
    agreement_key,
    check_binding,
    commitment,
    key_binding,
    late_reason,
    masked_contribution,
    may_reveal,
    pair_seed,
    prg,
    public_bytes,
    reveal_seeds,
    unmask,
)
from privacy.secure_wire import (
    DOMAIN_REQUEST,
    MAGIC_REQUEST,
    MAX_MESSAGE,
    SecureWireError,
    contribution_bytes,
    contribution_from_bytes,
    contribution_words,
    encode_request,
    encode_reveal,
    kind_of,
    parse_request,
    parse_reveal,
    verify,
)

NET = "net-a"
PEERS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(10)]
RECEIVER, OTHER_RECEIVER = PEERS[0], PEERS[9]
MEMBERS = PEERS[1:9]  # up to 8 members
KEYS = {p.peer_id: agreement_key(p) for p in PEERS}
PUBS = {pid: public_bytes(k) for pid, k in KEYS.items()}
MALLORY = Identity.from_seed(b"M" * 32)


def group_of(size: int) -> list[str]:
    return sorted(p.peer_id for p in MEMBERS[:size])


def contribute(x, me, group, *, receiver=RECEIVER.peer_id, round=7, net=NET, bound=1.0):
    fp = FixedPoint(bound, len(group))
    return masked_contribution(x, me, receiver, group, round, net, KEYS[me], PUBS, fp)


def run_round(xs: dict[str, torch.Tensor], dropped: list[str], *, bound=1.0, round=7):
    """What receiver and members do: contributions of the delivered, reveals towards the dropped,
    unmask. Returns (decoded sum, plain sum over the delivered after clipping, fp)."""
    group = sorted(xs)
    fp = FixedPoint(bound, len(group))
    delivered = [j for j in group if j not in dropped]
    cs = {j: contribute(xs[j], j, group, round=round, bound=bound) for j in delivered}
    reveals = {j: reveal_seeds(j, RECEIVER.peer_id, round, dropped, NET, KEYS[j], PUBS) for j in delivered}
    total = unmask(cs, reveals if dropped else {}, group, fp)
    plain = sum(xs[j].double().clamp(-bound, bound) for j in delivered)
    return total, plain, fp


# --- exactness with drop-outs ---------------------------------------------------------------


@pytest.mark.parametrize("size,drops", [(s, k) for s in range(3, 9) for k in (0, 1, 2) if s - k >= 2])
def test_the_unmasked_sum_is_the_plain_sum_with_drop_outs(size, drops):
    group = group_of(size)
    gen = torch.Generator().manual_seed(size * 10 + drops)
    xs = {j: torch.randn(1000, generator=gen) * 0.6 for j in group}
    total, plain, fp = run_round(xs, group[1:1 + drops])
    assert total.dtype == torch.float32 and total.shape == (1000,)
    assert (total.double() - plain).abs().max().item() <= fp.error()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(3, 8), drops=st.integers(0, 2), bound=st.sampled_from([0.01, 1.0, 3.0, 1000.0]),
       data=st.data())
def test_exactness_holds_for_any_values(size, drops, bound, data):
    drops = min(drops, size - 2)
    group = group_of(size)
    d = data.draw(st.integers(1, 40))
    edge = float(np.float32(2 * bound))  # values up to twice the bound: clipping is exercised
    elements = st.floats(-edge, edge, width=32, allow_nan=False)
    xs = {j: torch.from_numpy(data.draw(hnp.arrays(np.float32, d, elements=elements))) for j in group}
    dropped = data.draw(st.permutations(group))[:drops]
    total, plain, fp = run_round(xs, dropped, bound=bound)
    assert (total.double() - plain).abs().max().item() <= fp.error()


def test_sums_at_the_bound_never_wrap():
    for size in (2, 3, 8):
        group = group_of(size)
        for value in (1.0, -1.0):
            xs = {j: torch.full((16,), value * 5) for j in group}  # clipped to the bound
            total, plain, fp = run_round(xs, [])
            assert torch.allclose(total.double(), plain, atol=fp.error())
            assert total[0].item() == pytest.approx(value * size)


def test_fixed_point_scale_and_refusals():
    for bound, count in [(1.0, 8), (0.37, 3), (1e6, 256), (1e-6, 2)]:
        fp = FixedPoint(bound, count)
        assert np.log2(fp.scale) == int(np.log2(fp.scale))  # a power of two
        assert count * (bound * fp.scale + 0.5) < 2**31 <= count * (bound * 2 * fp.scale + 0.5)
    fp = FixedPoint(1.0, 3)
    with pytest.raises(ValueError, match="NaN"):
        fp.encode(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="wrapped"):
        fp.decode(np.zeros(2, np.uint32), 4)
    for bad in [(0.0, 3), (float("inf"), 3), (1.0, 0), (1.0, True)]:
        with pytest.raises(ValueError):
            FixedPoint(*bad)


def test_a_group_must_hide_something_and_agree_on_the_fixed_point():
    x = torch.zeros(4)
    me = MEMBERS[0].peer_id
    with pytest.raises(ValueError, match="hides nothing"):
        masked_contribution(x, me, RECEIVER.peer_id, [me], 1, NET, KEYS[me], PUBS, FixedPoint(1.0, 1))
    with pytest.raises(ValueError, match="count"):
        masked_contribution(x, me, RECEIVER.peer_id, group_of(3), 1, NET, KEYS[me], PUBS, FixedPoint(1.0, 4))
    with pytest.raises(ValueError, match="receiver"):
        masked_contribution(x, me, me, group_of(3), 1, NET, KEYS[me], PUBS, FixedPoint(1.0, 3))
    with pytest.raises(MaskError) as err:
        masked_contribution(x, me, RECEIVER.peer_id, group_of(3), 1, NET, KEYS[me], {}, FixedPoint(1.0, 3))
    assert err.value.reason == "no_agreement_key"


# --- what a single contribution shows -------------------------------------------------------


def test_a_single_masked_contribution_looks_like_uniform_noise():
    group = group_of(3)
    x = torch.full((50_000,), 0.5)
    c = contribute(x, group[0], group)
    plain = FixedPoint(1.0, 3).encode(x)
    assert np.mean(c.payload == plain) < 1e-3
    byte_counts = np.bincount(c.payload.view(np.uint8), minlength=256)
    assert stats.chisquare(byte_counts).pvalue > 0.001
    top_bits = np.bincount(c.payload >> 24, minlength=256)  # 256 buckets of the value range
    assert stats.chisquare(top_bits).pvalue > 0.001
    # the same test tells the plain encoding from noise at once: it has power
    assert stats.chisquare(np.bincount(plain.view(np.uint8), minlength=256)).pvalue < 1e-100


def test_the_prg_is_chacha20_keyed_by_the_seed():
    seed = bytes(range(32))
    a = prg(seed, 1000)
    assert a.dtype == np.uint32 and a.shape == (1000,)
    assert np.array_equal(prg(seed, 10), a[:10])
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor().update(bytes(4000))
    assert a.tobytes() == np.frombuffer(stream, "<u4").tobytes()
    assert not np.array_equal(prg(bytes(32), 1000), a)


# --- detection ------------------------------------------------------------------------------


def _dropped_round(size=5, drops=1):
    group = group_of(size)
    dropped = group[-drops:]
    delivered = [j for j in group if j not in dropped]
    xs = {j: torch.rand(64) for j in group}
    cs = {j: contribute(xs[j], j, group) for j in delivered}
    reveals = {j: reveal_seeds(j, RECEIVER.peer_id, 7, dropped, NET, KEYS[j], PUBS) for j in delivered}
    return group, delivered, dropped, cs, reveals, FixedPoint(1.0, size)


def test_a_wrong_revealed_seed_is_detected_and_names_the_revealer():
    group, delivered, dropped, cs, reveals, fp = _dropped_round()
    liar = delivered[1]
    reveals[liar] = {dropped[0]: bytes(32)}
    with pytest.raises(MaskError) as err:
        unmask(cs, reveals, group, fp)
    assert (err.value.reason, err.value.who) == ("wrong_reveal", (liar,))
    # a seed for another round fails the same way
    reveals[liar] = reveal_seeds(liar, RECEIVER.peer_id, 8, dropped, NET, KEYS[liar], PUBS)
    with pytest.raises(MaskError, match="wrong_reveal"):
        unmask(cs, reveals, group, fp)


def test_a_missing_reveal_is_detected_and_names_who_did_not_reveal():
    group, delivered, dropped, cs, reveals, fp = _dropped_round(size=6, drops=2)
    silent = delivered[0]
    del reveals[silent]
    with pytest.raises(MaskError) as err:
        unmask(cs, reveals, group, fp)
    assert (err.value.reason, err.value.who) == ("missing_reveal", (silent,))
    reveals[silent] = {dropped[0]: reveal_seeds(silent, RECEIVER.peer_id, 7, dropped, NET, KEYS[silent],
                                                PUBS)[dropped[0]]}  # one of two
    with pytest.raises(MaskError) as err:
        unmask(cs, reveals, group, fp)
    assert (err.value.reason, err.value.who) == ("missing_reveal", (silent,))


def test_a_reveal_towards_a_delivered_member_is_refused():
    group, delivered, dropped, cs, reveals, fp = _dropped_round()
    j = delivered[0]
    reveals[j] = reveal_seeds(j, RECEIVER.peer_id, 7, [*dropped, delivered[1]], NET, KEYS[j], PUBS)
    with pytest.raises(MaskError) as err:
        unmask(cs, reveals, group, fp)
    assert (err.value.reason, err.value.who) == ("unexpected_reveal", (j,))


def test_inconsistent_commitments_name_the_pair():
    group, delivered, dropped, cs, reveals, fp = _dropped_round()
    j, k = delivered[0], delivered[2]
    tampered = dict(cs[j].commitments, **{k: bytes(32)})
    cs[j] = type(cs[j])(cs[j].payload, tampered)
    with pytest.raises(MaskError) as err:
        unmask(cs, reveals, group, fp)
    assert (err.value.reason, err.value.who) == ("inconsistent_commitments", (j, k))
    short = {m: v for m, v in cs[k].commitments.items() if m != j}
    cs[k] = type(cs[k])(cs[k].payload, short)
    with pytest.raises(MaskError, match="bad_commitments"):
        unmask(cs, reveals, group, fp)


def test_too_few_senders_and_outsiders_are_refused():
    group, delivered, dropped, cs, reveals, fp = _dropped_round(size=3, drops=1)
    with pytest.raises(MaskError, match="too_few_senders"):
        unmask({delivered[0]: cs[delivered[0]]}, reveals, group, fp)
    with pytest.raises(MaskError, match="not_a_member"):
        unmask({**cs, MALLORY.peer_id: cs[delivered[0]]}, reveals, group, fp)


@pytest.mark.parametrize("swap", ["receiver", "round", "network"])
def test_masks_for_another_receiver_round_or_network_do_not_cancel(swap):
    """Decision: a contribution made for another receiver (or round, or network) fails the
    pairwise commitment check, naming a pair with its sender; were it summed anyway, the masks
    would not cancel and the sum would be noise."""
    group = group_of(4)
    fp = FixedPoint(1.0, 4)
    xs = {j: torch.rand(256) for j in group}
    cs = {j: contribute(xs[j], j, group) for j in group}
    j = group[2]
    other = {"receiver": dict(receiver=OTHER_RECEIVER.peer_id), "round": dict(round=8),
             "network": dict(net="net-b")}[swap]
    cs[j] = contribute(xs[j], j, group, **other)
    with pytest.raises(MaskError) as err:
        unmask(cs, {}, group, fp)
    assert err.value.reason == "inconsistent_commitments" and j in err.value.who
    total = np.zeros(256, np.uint32)
    for c in cs.values():
        total += c.payload
    garbage = fp.decode(total, 4).double()
    assert (garbage - sum(x.double() for x in xs.values())).abs().median().item() > 1.0


# --- keys and seeds -------------------------------------------------------------------------


def test_pair_seeds_are_symmetric_and_fresh_per_receiver_round_and_network():
    a, b = MEMBERS[0].peer_id, MEMBERS[1].peer_id
    r = RECEIVER.peer_id
    ab = pair_seed(KEYS[a], a, b, PUBS[b], r, 3, NET)
    assert ab == pair_seed(KEYS[b], b, a, PUBS[a], r, 3, NET)
    others = {pair_seed(KEYS[a], a, b, PUBS[b], OTHER_RECEIVER.peer_id, 3, NET),
              pair_seed(KEYS[a], a, b, PUBS[b], r, 4, NET), pair_seed(KEYS[a], a, b, PUBS[b], r, 3, "net-b"),
              pair_seed(KEYS[a], a, MEMBERS[2].peer_id, PUBS[MEMBERS[2].peer_id], r, 3, NET)}
    assert ab not in others and len(others) == 4
    assert len(ab) == 32 and commitment(ab) != commitment(others.pop())
    with pytest.raises(MaskError, match="bad_agreement_key"):
        pair_seed(KEYS[a], a, b, bytes(32), r, 3, NET)  # a low-order point


def test_the_agreement_key_is_derived_from_the_identity():
    p = MEMBERS[0]
    assert public_bytes(agreement_key(p)) == public_bytes(agreement_key(Identity.from_seed(p.seed)))
    assert public_bytes(agreement_key(p)) != public_bytes(agreement_key(MEMBERS[1]))


def test_a_binding_checks_only_for_its_own_key_peer_and_network():
    p, q = MEMBERS[0], MEMBERS[1]
    binding = key_binding(p, NET)
    assert check_binding(p.peer_id, NET, PUBS[p.peer_id], binding)
    assert not check_binding(p.peer_id, NET, PUBS[q.peer_id], binding)  # another peer's key
    assert not check_binding(q.peer_id, NET, PUBS[p.peer_id], binding)  # claimed by another peer
    assert not check_binding(p.peer_id, "net-b", PUBS[p.peer_id], binding)
    tampered = bytes([binding[0] ^ 1]) + binding[1:]
    assert not check_binding(p.peer_id, NET, PUBS[p.peer_id], tampered)
    assert not check_binding(p.peer_id, NET, PUBS[p.peer_id], binding[:-1])
    assert not check_binding("not-a-peer", NET, PUBS[p.peer_id], binding)
    forged = key_binding(MALLORY, NET)  # Mallory's signature over her own key, claimed for p
    assert not check_binding(p.peer_id, NET, public_bytes(agreement_key(MALLORY)), forged)


# --- the revealer's rules -------------------------------------------------------------------


def request(delivered, missing, sender=RECEIVER.peer_id, round=7):
    return SimpleNamespace(sender=sender, round=round, delivered=delivered, missing=missing)


def test_may_reveal_accepts_a_proper_request_once():
    group = group_of(5)
    req = request(group[:3], group[3:])
    assert may_reveal(req, group[0], group, set()) == (True, "ok")
    assert may_reveal(req, group[0], group, {(RECEIVER.peer_id, 7)}) == (False, "already_revealed")
    # a second request with another M for the same receiver and round: still refused
    assert may_reveal(request(group[:2], group[2:]), group[0], group, {(RECEIVER.peer_id, 7)}) == \
        (False, "already_revealed")
    assert may_reveal(req, group[0], group, {(RECEIVER.peer_id, 6), (OTHER_RECEIVER.peer_id, 7)}) == (True, "ok")


@pytest.mark.parametrize("case,reason", [
    ("one_delivered", "too_few_delivered"),
    ("me_missing", "not_delivered"),
    ("overlap", "not_a_partition"),
    ("member_left_out", "not_a_partition"),
    ("outsider", "not_a_partition"),
    ("duplicate", "not_a_partition"),
    ("nothing_missing", "nothing_missing"),
    ("not_my_receiver", "not_a_member"),
])
def test_may_reveal_refuses(case, reason):
    group = group_of(5)
    me = group[0]
    req = {
        "one_delivered": request([me], group[1:]),
        "me_missing": request(group[1:3], [me, *group[3:]]),
        "overlap": request(group[:3], group[2:]),
        "member_left_out": request(group[:3], group[3:4]),
        "outsider": request(group[:3], [*group[3:], MALLORY.peer_id]),
        "duplicate": request([*group[:3], me], group[3:]),
        "nothing_missing": request(group, []),
        "not_my_receiver": request(group[:3], group[3:], sender=group[1]),
    }[case]
    assert may_reveal(req, me, group, set()) == (False, reason)


def test_a_late_contribution_after_the_reveal_request_is_dropped():
    group = group_of(4)
    assert late_reason(group[3], None) is None
    assert late_reason(group[3], [group[3]]) == "late_after_reveal"
    assert late_reason(group[0], [group[3]]) is None


# --- wire -----------------------------------------------------------------------------------


def test_requests_and_reveals_round_trip_and_verify():
    group = group_of(5)
    data = encode_request(RECEIVER, net=NET, round=7, delivered=reversed(group[:3]), missing=group[3:])
    assert kind_of(data) == "reveal_request" and data.startswith(MAGIC_REQUEST)
    req = verify(parse_request(data), network=NET, trusted=group + [RECEIVER.peer_id])
    assert (req.sender, req.round, req.delivered, req.missing) == (RECEIVER.peer_id, 7, tuple(group[:3]),
                                                                   tuple(group[3:]))
    j = MEMBERS[[m.peer_id for m in MEMBERS].index(group[0])]
    seeds = reveal_seeds(j.peer_id, RECEIVER.peer_id, 7, req.missing, NET, KEYS[j.peer_id], PUBS)
    data = encode_reveal(j, net=NET, to=RECEIVER.peer_id, round=7, seeds=seeds)
    assert kind_of(data) == "reveal"
    rev = verify(parse_reveal(data), network=NET, trusted=group, me=RECEIVER.peer_id)
    assert (rev.sender, rev.to, rev.round, rev.seed_map()) == (j.peer_id, RECEIVER.peer_id, 7, seeds)
    assert kind_of(msgpack.packb({"v": 2})) is None and kind_of(b"GFLM\x01...") is None


def _reveal(sender=MEMBERS[0], **kw):
    seeds = {MEMBERS[3].peer_id: bytes(range(32)), MEMBERS[4].peer_id: bytes(32)}
    return encode_reveal(sender, net=NET, to=RECEIVER.peer_id, round=7, seeds=kw.pop("seeds", seeds), **kw)


def test_a_forged_or_misdirected_message_is_refused():
    trusted = [m.peer_id for m in MEMBERS] + [RECEIVER.peer_id]
    victim = MEMBERS[0].peer_id
    # Mallory signs a message that claims the victim as sender
    body = {"net": NET, "sender": victim, "to": RECEIVER.peer_id, "round": 7, "seeds": []}
    signed = msgpack.packb(body, use_bin_type=True)
    sig = MALLORY.sign(hashlib.sha256(b"gossipfl/secagg/reveal/v1\x00" + signed).digest())
    forged = b"GFLS\x01" + msgpack.packb({**body, "sig": sig}, use_bin_type=True)
    cases = [
        (parse_reveal(forged), {}, "bad_signature"),
        (parse_reveal(_reveal(MALLORY)), {}, "untrusted_sender"),
        (parse_reveal(_reveal()), {"network": "net-b"}, "wrong_network"),
        (parse_reveal(_reveal()), {"me": OTHER_RECEIVER.peer_id}, "wrong_receiver"),
    ]
    for msg, kw, reason in cases:
        with pytest.raises(SecureWireError) as err:
            verify(msg, **{"network": NET, "trusted": trusted, **kw})
        assert err.value.reason == reason
    # a signature over the request domain does not pass as a reveal (domain separation)
    sig = MEMBERS[0].sign(hashlib.sha256(DOMAIN_REQUEST + signed).digest())
    cross = b"GFLS\x01" + msgpack.packb({**body, "sig": sig}, use_bin_type=True)
    with pytest.raises(SecureWireError, match="not signed"):
        verify(parse_reveal(cross), network=NET, trusted=trusted)


def _unpacked_reveal():
    return msgpack.unpackb(_reveal()[5:], raw=False)


@pytest.mark.parametrize("mangle,reason", [
    (lambda d: d[:-1], "malformed"),  # truncated
    (lambda d: d[:40], "malformed"),
    (lambda d: d + b"\x00", "malformed"),  # trailing bytes
    (lambda d: d + b"x" * MAX_MESSAGE, "oversize"),
    (lambda d: b"GFLS\x02" + d[5:], "malformed"),  # another magic
    (lambda d: b"GFLS\x01" + msgpack.packb(dict(reversed(list(_unpacked_reveal().items()))), use_bin_type=True),
     "non_canonical"),  # keys out of order
    (lambda d: b"GFLS\x01" + msgpack.packb({**_unpacked_reveal(), "round": 7.0}, use_bin_type=True),
     "malformed"),
    (lambda d: b"GFLS\x01" + msgpack.packb({**_unpacked_reveal(), "to": "nobody"}, use_bin_type=True),
     "malformed"),  # not a PeerId
    (lambda d: b"GFLS\x01" + msgpack.packb({**_unpacked_reveal(), "extra": 1}, use_bin_type=True),
     "malformed"),
    (lambda d: b"GFLS\x01" + msgpack.packb({**_unpacked_reveal(), "seeds": _unpacked_reveal()["seeds"][::-1]},
                                           use_bin_type=True), "non_canonical"),  # unsorted
    (lambda d: b"GFLS\x01" + msgpack.packb({**_unpacked_reveal(), "seeds": [_unpacked_reveal()["seeds"][0]] * 2},
                                           use_bin_type=True), "malformed"),  # a member twice
    (lambda d: b"GFLS\x01" + msgpack.packb({**_unpacked_reveal(), "seeds": [[MEMBERS[3].peer_id, b"x" * 31]]},
                                           use_bin_type=True), "malformed"),  # short seed
    (lambda d: d.replace(b"\xa5round\x07", b"\xa5round\xcc\x07"), "non_canonical"),  # wide int
])
def test_a_mangled_reveal_is_refused_with_its_reason(mangle, reason):
    with pytest.raises(SecureWireError) as err:
        parse_reveal(mangle(_reveal()))
    assert err.value.reason == reason


def test_a_mangled_request_is_refused():
    group = group_of(4)
    data = encode_request(RECEIVER, net=NET, round=7, delivered=group[:2], missing=group[2:])
    doc = msgpack.unpackb(data[5:], raw=False)
    unsorted = b"GFLR\x01" + msgpack.packb({**doc, "delivered": doc["delivered"][::-1]}, use_bin_type=True)
    for bad, reason in [(data[:-3], "malformed"), (data + b"\x00", "malformed"), (unsorted, "non_canonical"),
                        (data, "oversize")]:
        with pytest.raises(SecureWireError) as err:
            parse_request(bad, max_size=len(data) - 1 if bad is data else MAX_MESSAGE)
        assert err.value.reason == reason
    with pytest.raises(SecureWireError, match="magic"):
        parse_request(_reveal())
    with pytest.raises(SecureWireError, match="twice"):  # refused before it is sent
        encode_request(RECEIVER, net=NET, round=7, delivered=[*group, group[0]], missing=[])
    with pytest.raises(SecureWireError, match="both"):
        encode_request(RECEIVER, net=NET, round=7, delivered=group[:3], missing=group[2:])


def test_a_contribution_travels_as_tag_commitments_then_words():
    group = group_of(4)
    r = RECEIVER.peer_id
    xs = {j: torch.rand(100) for j in group}
    cs = {j: contribute(xs[j], j, group) for j in group}
    wire = {j: contribution_bytes(c, net=NET, sender=j, receiver=r, round=7) for j, c in cs.items()}
    assert all(len(b) == 4 * contribution_words(100, 4) for b in wire.values())
    back = {j: contribution_from_bytes(b, net=NET, sender=j, receiver=r, round=7, group=group)
            for j, b in wire.items()}
    for j in group:
        assert back[j].commitments == cs[j].commitments and np.array_equal(back[j].payload, cs[j].payload)
    fp = FixedPoint(1.0, 4)
    total = unmask(back, {}, group, fp)
    assert (total.double() - sum(x.double() for x in xs.values())).abs().max() <= fp.error()
    j = group[0]
    for bad in (wire[j][:-1], b"\x00" * 64):
        with pytest.raises(SecureWireError) as err:
            contribution_from_bytes(bad, net=NET, sender=j, receiver=r, round=7, group=group)
        assert err.value.reason == "malformed"


@pytest.mark.parametrize("context", [dict(receiver=OTHER_RECEIVER.peer_id), dict(round=8), dict(net="net-b"),
                                     dict(sender=MEMBERS[7].peer_id)])
def test_a_forwarded_or_replayed_contribution_is_refused_by_its_tag(context):
    """A receiver that forwards j's signed contribution to another receiver (or a replay from
    another round) is caught by the tag, instead of the pair check blaming j."""
    group = group_of(3)
    j = group[0]
    data = contribution_bytes(contribute(torch.rand(10), j, group), net=NET, sender=j, receiver=RECEIVER.peer_id,
                              round=7)
    where = {"net": NET, "sender": j, "receiver": RECEIVER.peer_id, "round": 7, **context}
    with pytest.raises(SecureWireError) as err:
        contribution_from_bytes(data, group=group, **where)
    assert err.value.reason == "wrong_context"
