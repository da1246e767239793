"""Compressors and the signed sparse codec: round trips through a signed envelope, exactly one
byte string per update, forged, oversize and non-canonical messages refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.envelope import max_message_size, seal
from gossip.identity import Identity
from gossip.sparse import (
    Compression,
    SparseRejected,
    compress_rows,
    decode_sparse,
    densify,
    encode_sparse,
    quantize_rows,
    select,
)
from gossip.sparse_verify import SPARSE_KIND, SparseAccepted, finish_sparse, seal_sparse
from gossip.verify import Reason, Rejected, Verifier

ALICE = Identity.from_seed(b"c" * 32)
SCHEMA = bytes(range(32))
FIELDS = dict(net="net", round=3, schema=SCHEMA, parents=[b"\x01" * 32], ts=2.0)


def verifier(max_size: int = 1 << 20) -> Verifier:
    return Verifier(network="net", trusted={ALICE.peer_id}, schema=SCHEMA, n_params=0, max_size=max_size, max_lead=5)


def receive(data: bytes, n: int, comp: Compression, max_size: int = 1 << 20) -> SparseAccepted | Rejected:
    env = verifier(max_size).screen(data, 3)
    return env if isinstance(env, Rejected) else finish_sparse(env, schema=SCHEMA, n_params=n, comp=comp)


compressions = st.builds(
    Compression, compressor=st.sampled_from(["topk", "randk"]),
    fraction=st.none(), count=st.integers(1, 60), values=st.sampled_from(["f32", "f16", "int8"]))
rows = st.integers(1, 80).flatmap(lambda n: st.lists(
    st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=n, max_size=n))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=rows, comp=compressions, seed=st.integers(0, 2**62))
def test_a_compressed_update_round_trips_through_a_signed_envelope(x, comp, seed):
    row = torch.tensor([x], dtype=torch.float32)
    n = row.shape[1]
    idx, values = compress_rows(row, comp, torch.tensor([seed]))
    assert idx.shape == (1, comp.k(n))
    sealed = seal_sparse(ALICE, idx[0], values[0], comp, **FIELDS)
    assert len(sealed.data) <= comp.message_size(n)
    got = receive(sealed.data, n, comp, max_size=comp.message_size(n))
    assert isinstance(got, SparseAccepted), got
    assert got.update_id == sealed.update_id
    assert torch.equal(got.update.indices, idx[0])
    assert torch.equal(got.update.values, values[0] + 0.0)
    assert torch.equal(got.update.dense(n), densify(idx, values, n)[0] + 0.0)


@settings(max_examples=300, deadline=None)
@given(k=st.integers(0, 12), n=st.integers(1, 40), codec=st.sampled_from(["sparse-f32", "sparse-f16"]),
       data=st.data())
def test_any_accepted_payload_is_the_one_encoding_of_what_it_decodes_to(k, n, codec, data):
    size = 4 * k + (4 if codec == "sparse-f32" else 2) * k
    ix = sorted(data.draw(st.lists(st.integers(0, n + 1), min_size=k, max_size=k)))
    raw = np.array(ix, dtype="<u4").tobytes() + data.draw(st.binary(min_size=size - 4 * k, max_size=size - 4 * k))
    try:
        up = decode_sparse(raw, codec, k, n)
    except SparseRejected as exc:
        assert exc.reason in {r.value for r in Reason}
        return
    assert encode_sparse(up.indices, up.values, codec) == raw


@settings(max_examples=150, deadline=None)
@given(k=st.integers(1, 20), data=st.data())
def test_int8_blocks_are_accepted_only_when_scaled_to_their_largest_code(k, data):
    codes = data.draw(st.lists(st.integers(-127, 127), min_size=k, max_size=k))
    scale = data.draw(st.floats(2.0 ** -10, 2.0 ** 10, width=32))
    raw = np.arange(k, dtype="<u4").tobytes() + np.float32(scale).tobytes() + np.array(codes, "i1").tobytes()
    peak = max(abs(c) for c in codes)
    if peak == 127:
        up = decode_sparse(raw, "sparse-int8", k, k)
        assert torch.allclose(up.values, torch.tensor(codes, dtype=torch.float32) * np.float32(scale))
    else:
        with pytest.raises(SparseRejected) as info:
            decode_sparse(raw, "sparse-int8", k, k)
        assert info.value.reason == "non_canonical"


def test_topk_keeps_the_largest_magnitudes_and_randk_follows_its_seed():
    x = torch.tensor([[0.1, -5.0, 0.2, 3.0, -0.3, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    assert select(x, Compression("topk", None, 3)).tolist() == [[1, 3, 5], [3, 4, 5]]
    comp = Compression("randk", None, 3)
    a = select(x, comp, torch.tensor([7, 7]))
    assert torch.equal(a[0], a[1])
    assert not torch.equal(select(torch.zeros(1, 1000), Compression("randk", 0.01), torch.tensor([1])),
                           select(torch.zeros(1, 1000), Compression("randk", 0.01), torch.tensor([2])))
    assert Compression("topk", 0.001).k(100_000) == 100 and Compression("topk", 0.5).k(1) == 1


def test_quantized_values_are_what_the_wire_carries():
    x = torch.randn(4, 5000)
    for values in ("f32", "f16", "int8"):
        comp = Compression("topk", 0.9, None, values)
        idx, vals = compress_rows(x, comp)
        for b in range(4):
            up = decode_sparse(encode_sparse(idx[b], vals[b], comp.codec), comp.codec, comp.k(5000), 5000)
            assert torch.equal(up.values, vals[b] + 0.0)
    assert torch.equal(quantize_rows(torch.zeros(2, 3), "sparse-int8"), torch.zeros(2, 3))


def test_the_size_bound_follows_the_model_and_the_settings():
    comp = Compression("topk", 0.01, None, "f16")
    assert comp.k(100_000) == 1000
    assert comp.payload_size(100_000) == 6000
    assert comp.message_size(100_000) == max_message_size("sparse-f16", 1000)
    # the header's allowance (longest ids, 256 parents) is the same; 6,000 payload bytes instead of 400,000,
    # n and the payload's bin header 2 bytes shorter each, the codec's name 3 bytes longer
    assert max_message_size("raw-f32", 100_000) - comp.message_size(100_000) == 400_000 - 6000 + 2 + 2 - 3


def _signed(payload: bytes, comp: Compression, k: int) -> bytes:
    """A message its own sender signed: the signature holds, the payload is what is judged."""
    return seal(ALICE, payload=payload, codec=comp.codec, n=k, kind=SPARSE_KIND, **FIELDS).data


F32 = Compression("topk", None, 3, "f32")


@pytest.mark.parametrize("name,ix,vals,reason", [
    ("indices out of order", [5, 2, 9], [1.0, 2.0, 3.0], Reason.NON_CANONICAL),
    ("a repeated index", [2, 2, 9], [1.0, 2.0, 3.0], Reason.NON_CANONICAL),
    ("an index beyond the model", [2, 5, 10], [1.0, 2.0, 3.0], Reason.MALFORMED),
    ("a negative zero", [2, 5, 9], [1.0, -0.0, 3.0], Reason.NON_CANONICAL),
    ("a NaN", [2, 5, 9], [1.0, float("nan"), 3.0], Reason.NON_FINITE),
])
def test_a_non_canonical_sparse_payload_is_refused_with_a_reason(name, ix, vals, reason):
    payload = np.array(ix, "<u4").tobytes() + np.array(vals, "<f4").tobytes()
    got = receive(_signed(payload, F32, 3), 10, F32)
    assert isinstance(got, Rejected) and got.reason == reason and got.authenticated, (name, got)


def test_forged_oversize_and_foreign_sparse_messages_are_refused():
    x = torch.linspace(-1, 1, 10)[None]
    idx, vals = compress_rows(x, F32)
    good = seal_sparse(ALICE, idx[0], vals[0], F32, **FIELDS).data
    assert isinstance(receive(good, 10, F32), SparseAccepted)
    tampered = good[:-1] + bytes([good[-1] ^ 1])  # a value changed after signing
    assert receive(tampered, 10, F32).reason == Reason.PAYLOAD_HASH_MISMATCH
    forged = good.replace(b"\xa5round\x03", b"\xa5round\x04")  # a signed field changed
    assert receive(forged, 10, F32).reason == Reason.BAD_SIGNATURE
    more = Compression("topk", None, 4, "f32")  # one entry more than this network sends
    i4, v4 = compress_rows(x, more)
    r = receive(seal_sparse(ALICE, i4[0], v4[0], more, **FIELDS).data, 10, F32)
    assert r.reason == Reason.SCHEMA_MISMATCH and "3 entries" in r.detail
    f16 = Compression("topk", None, 3, "f16")
    assert receive(seal_sparse(ALICE, idx[0], vals[0], f16, **FIELDS).data, 10, F32).reason == Reason.SCHEMA_MISMATCH
    big = Compression("topk", None, 5000, "f32")
    ib, vb = compress_rows(torch.randn(1, 10_000), big)
    huge = seal_sparse(ALICE, ib[0], vb[0], big, **FIELDS).data
    r = receive(huge, 10_000, F32, max_size=F32.message_size(10_000))
    assert r.reason == Reason.TOO_LARGE and not r.authenticated
    dense = seal(ALICE, payload=bytes(40), codec="raw-f32", n=10, **FIELDS).data
    assert receive(dense, 10, F32).reason == Reason.WRONG_KIND


def test_a_plain_peer_refuses_a_sparse_update():
    x = torch.linspace(-1, 1, 10)[None]
    idx, vals = compress_rows(x, Compression("topk", None, 10, "f32"))
    data = seal_sparse(ALICE, idx[0], vals[0], Compression("topk", None, 10, "f32"), **FIELDS).data
    plain = Verifier(network="net", trusted={ALICE.peer_id}, schema=SCHEMA, n_params=10, max_lead=5)
    r = plain.verify(data, 3)
    assert isinstance(r, Rejected) and r.reason in (Reason.MALFORMED, Reason.SCHEMA_MISMATCH)


def test_compression_settings_are_checked():
    for bad in (dict(compressor="zip"), dict(values="f8"), dict(fraction=None), dict(fraction=1.5),
                dict(fraction=None, count=0), dict(count=3)):
        with pytest.raises(ValueError):
            Compression(**bad)
