"""The envelope's canonical, fixed layout: exactly one byte string per signed update, every
other encoding of it `non_canonical`; limits exact to the byte; hostile input rejected after
reading at most a header; `max_message_size` a true bound."""

from __future__ import annotations

import hashlib
import os

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossip.codecs import FLOAT_CODECS, CodecError, encode, encoded_size
from gossip.envelope import (
    MAX_KIND_LEN,
    MAX_NETWORK_ID_LEN,
    MAX_PARENTS,
    Envelope,
    Malformed,
    NonCanonical,
    canonical,
    header_bytes,
    header_digest,
    max_message_size,
    parse,
    seal,
    seal_update,
)
from gossip.identity import MAX_PEER_ID_LEN, Identity
from gossip.msgpack_canonical import Cursor
from gossip.verify import REASONS, Accepted, Reason, Verifier

ALICE = Identity.from_seed(b"a" * 32)
SCHEMA = bytes(range(32))
N = 257
PARAMS = torch.linspace(-1, 1, N)
PARENTS = [b"\x01" * 32, b"\x02" * 32]


def verifier(**kw) -> Verifier:
    args = dict(network="net", trusted={ALICE.peer_id}, schema=SCHEMA, n_params=N, max_size=1 << 20, max_lead=10)
    args.update(kw)
    return Verifier(**args)


def good(**kw) -> bytes:
    fields = dict(net="net", round=5, schema=SCHEMA, parents=PARENTS, deg=3, ts=1.5)
    fields.update(kw)
    return seal_update(ALICE, PARAMS, **fields).data


GOOD = good()


def reencode(data: bytes, order=None, **options) -> bytes:
    obj = msgpack.unpackb(data, raw=False)
    if order is not None:
        obj = {k: obj[k] for k in order}
    return msgpack.packb(obj, **{"use_bin_type": True, **options})


def _swap(old: bytes, new: bytes) -> bytes:
    assert GOOD.count(old) == 1, old
    return GOOD.replace(old, new)


SENDER = ALICE.peer_id.encode()
REENCODINGS = {
    "sorted keys (format v1 before it was fixed)": reencode(GOOD, sorted(msgpack.unpackb(GOOD))),
    "payload before sig": reencode(GOOD, [*list(msgpack.unpackb(GOOD))[:13], "payload", "sig"]),
    "ts as float32": reencode(GOOD, use_single_float=True),
    "bin as str (use_bin_type=False)": reencode(GOOD, use_bin_type=False),
    "map16 header": b"\xde\x00\x0f" + GOOD[1:],
    "v as uint8": _swap(b"\xa1v\x03", b"\xa1v\xcc\x03"),
    "v as int64": _swap(b"\xa1v\x03", b"\xa1v\xd3" + (3).to_bytes(8, "big")),
    "round as uint16": _swap(b"\xa5round\x05", b"\xa5round\xcd\x00\x05"),
    "round as int8": _swap(b"\xa5round\x05", b"\xa5round\xd0\x05"),
    "n as uint32": _swap(b"\xa1n\xcd\x01\x01", b"\xa1n\xce\x00\x00\x01\x01"),
    "deg as int64": _swap(b"\xa3deg\x03", b"\xa3deg\xd3" + (3).to_bytes(8, "big")),
    "net as str8": _swap(b"\xa3net\xa3net", b"\xa3net\xd9\x03net"),
    "sender as str16": _swap(b"\xd9\x34" + SENDER, b"\xda\x00\x34" + SENDER),
    "codec as str32": _swap(b"\xa7raw-f32", b"\xdb\x00\x00\x00\x07raw-f32"),
    "schema as bin16": _swap(b"\xa6schema\xc4\x20", b"\xa6schema\xc5\x00\x20"),
    "sig as bin32": _swap(b"\xa3sig\xc4\x40", b"\xa3sig\xc6\x00\x00\x00\x40"),
    "payload as bin32": _swap(b"\xa7payload\xc5\x04\x04", b"\xa7payload\xc6\x00\x00\x04\x04"),
    "parents as array16": _swap(b"\xa7parents\x92", b"\xa7parents\xdc\x00\x02"),
    "key as str8": _swap(b"\xa4kind", b"\xd9\x04kind"),
    "a duplicate key": b"\xde\x00\x10" + GOOD[1:] + canonical("deg") + canonical(3),
    "a duplicate key first": b"\xde\x00\x10" + canonical("deg") + canonical(9) + GOOD[1:],
    "an extra key": b"\xde\x00\x10" + GOOD[1:] + canonical("zz") + canonical(1),
}


def test_the_format_fixes_the_key_order():
    assert list(msgpack.unpackb(GOOD)) == ["v", "net", "sender", "round", "ts", "kind", "schema", "codec", "n",
                                          "deg", "eps", "parents", "payload_hash", "sig", "payload"]
    assert canonical(msgpack.unpackb(GOOD, raw=False)) == GOOD  # what msgpack itself writes, in that order


@pytest.mark.parametrize("name", list(REENCODINGS))
def test_every_other_encoding_of_the_same_update_is_non_canonical(name):
    data = REENCODINGS[name]
    assert data != GOOD
    r = verifier().verify(data, 5)
    assert r.reason == Reason.NON_CANONICAL, (name, r.reason, r.detail)
    assert not r.authenticated


def test_same_content_reencodings_decode_equal():
    """The list above really holds the same signed content (msgpack reads them as equal)."""
    same = {k for k, v in REENCODINGS.items() if k not in ("an extra key", "bin as str (use_bin_type=False)")}
    original = msgpack.unpackb(GOOD, raw=False)
    for name in same - {"a duplicate key first", "ts as float32"}:
        assert msgpack.unpackb(REENCODINGS[name], raw=False, strict_map_key=False) == original, name


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutations(draw):
    """Byte flips, cuts and inserts, msgpack re-encodings with other options, or both."""
    buf = GOOD
    if draw(st.booleans()):
        keys = list(msgpack.unpackb(GOOD))
        order = draw(st.permutations(keys)) if draw(st.booleans()) else keys
        buf = reencode(buf, order, use_single_float=draw(st.booleans()), use_bin_type=draw(st.booleans()))
    buf = bytearray(buf)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        i = draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i : i + draw(st.integers(1, 16))]
        else:
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(buf)


def _same_content(data: bytes) -> bool:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False) == msgpack.unpackb(GOOD, raw=False)
    except Exception:  # not msgpack at all
        return False


@FUZZ
@given(mutations())
def test_a_mutated_envelope_is_rejected_or_identical(data):
    r = verifier().verify(data, 5)
    if isinstance(r, Accepted):
        assert data == GOOD
        return
    assert r.reason.value in REASONS
    if _same_content(data):
        assert r.reason == Reason.NON_CANONICAL, r.detail


fields = st.fixed_dictionaries({
    "net": st.text(max_size=40).filter(lambda s: len(s.encode()) <= MAX_NETWORK_ID_LEN),
    "round": st.integers(0, 2**64 - 1), "deg": st.integers(0, 2**64 - 1),
    "ts": st.floats(allow_nan=False, allow_infinity=False),
    "kind": st.text(max_size=MAX_KIND_LEN).filter(lambda s: len(s.encode()) <= MAX_KIND_LEN),
    "parents": st.lists(st.binary(min_size=32, max_size=32), max_size=20),
    "codec": st.sampled_from(FLOAT_CODECS), "n": st.integers(0, 40)})


@FUZZ
@given(fields)
def test_seal_writes_the_one_canonical_encoding(f):
    x = torch.linspace(-1, 1, f["n"])
    sealed = seal(ALICE, net=f["net"], round=f["round"], schema=SCHEMA, payload=encode(x, f["codec"]),
                  codec=f["codec"], n=f["n"], parents=f["parents"], deg=f["deg"], kind=f["kind"], ts=f["ts"])
    assert canonical(msgpack.unpackb(sealed.data, raw=False)) == sealed.data
    env = parse(sealed.data)
    assert env.update_id == sealed.update_id
    assert sealed.data[1 : 1 + len(header_bytes(env.header)) - 1] == header_bytes(env.header)[1:]
    v = verifier(network=f["net"], n_params=f["n"], max_lead=2**64)
    r = v.verify(sealed.data, f["round"], set())
    if f["kind"] == "masked":  # hypothesis draws the literals of the code: a plain peer refuses this kind
        assert r.reason == Reason.WRONG_KIND, r
    else:
        assert isinstance(r, Accepted), r


# --- limits, exact to the byte (a parser off by one fails here) --------------------------------


def test_parents_up_to_the_limit():
    assert MAX_PARENTS == 256  # the format's limit, and max_message_size's allowance depends on it
    parents = [i.to_bytes(32, "big") for i in range(256)]
    assert isinstance(verifier().verify(good(parents=parents), 5), Accepted)
    over = reencode(good(parents=parents))
    obj = msgpack.unpackb(over, raw=False)
    obj["parents"].append(bytes(32))
    r = verifier().verify(canonical(obj), 5)
    assert r.reason == Reason.MALFORMED and "parents" in r.detail
    with pytest.raises(ValueError, match="parents"):
        good(parents=parents + [bytes(32)])


@pytest.mark.parametrize("field, limit", [("net", MAX_NETWORK_ID_LEN), ("kind", MAX_KIND_LEN)])
def test_strings_up_to_their_limit(field, limit):
    at = "é" * (limit // 2)  # multi-byte: the limit counts UTF-8 bytes
    assert len(at.encode()) == limit
    v = verifier(network=at if field == "net" else "net")
    assert isinstance(v.verify(good(**{field: at}), 5), Accepted)
    obj = msgpack.unpackb(good(**{field: at}), raw=False)
    obj[field] = at + "a"
    r = v.verify(canonical(obj), 5)
    assert r.reason == Reason.MALFORMED and field in r.detail
    with pytest.raises(ValueError, match=field):
        good(**{field: at + "a"})


def test_sender_up_to_its_limit():
    obj = msgpack.unpackb(GOOD, raw=False)
    obj["sender"] = "1" * MAX_PEER_ID_LEN
    assert verifier().verify(canonical(obj), 5).reason == Reason.UNKNOWN_SENDER  # parsed, then not trusted
    obj["sender"] = "1" * (MAX_PEER_ID_LEN + 1)
    r = verifier().verify(canonical(obj), 5)
    assert r.reason == Reason.MALFORMED and "sender" in r.detail


@pytest.mark.parametrize("value", [0, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**64 - 1])
def test_integers_at_every_header_width(value):
    data = good(round=value, deg=value)
    assert isinstance(verifier(max_lead=2**64).verify(data, 0, set()), Accepted)


@pytest.mark.parametrize("length", [31, 32, 255, 256])
def test_strings_at_every_header_width(length):
    net = "n" * min(length, MAX_NETWORK_ID_LEN)
    assert isinstance(verifier(network=net).verify(good(net=net), 5), Accepted)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17])
def test_parent_arrays_at_every_header_width(count):
    assert isinstance(verifier().verify(good(parents=[bytes(32)] * count), 5), Accepted)


@pytest.mark.parametrize("changes", [{"round": -1}, {"round": 2.0}, {"ts": float("nan")}, {"ts": 3},
                                     {"schema": bytes(31)}, {"payload_hash": bytes(33)}, {"sig": bytes(63)},
                                     {"codec": "zip"}, {"parents": [bytes(31)]}, {"net": b"net"}])
def test_values_outside_the_format_are_malformed(changes):
    obj = msgpack.unpackb(GOOD, raw=False)
    obj.update(changes)
    r = verifier().verify(canonical(obj), 5)
    assert r.reason in (Reason.MALFORMED, Reason.NON_CANONICAL), r
    assert r.reason == (Reason.NON_CANONICAL if "net" in changes else Reason.MALFORMED)


def test_truncation_anywhere_is_malformed_and_trailing_bytes_too():
    v = verifier()
    for cut in [*range(len(GOOD) - 1, len(GOOD) - 9, -1), *range(len(GOOD) - N * 4, 0, -37)]:
        assert v.verify(GOOD[:cut], 5).reason in (Reason.MALFORMED, Reason.BAD_VERSION), cut
    assert v.verify(GOOD + b"\x00", 5).reason == Reason.MALFORMED


def test_a_message_of_another_version_is_bad_version_whatever_follows():
    for data in (b"\x8e\xa1v\x01", b"\x83\xa1v\x01\xa1x\x01", b"\x8e\xa1v\xa1x", canonical({"v": 9, "x": []})):
        assert verifier().verify(data, 5).reason == Reason.BAD_VERSION, data


# --- hostile input costs at most a header ------------------------------------------------------


def _hostile() -> dict[str, bytes]:
    mb4 = 4_200_000
    header_then = GOOD[: len(GOOD) - N * 4 - 3]  # everything up to the payload's bin header
    return {
        "nested arrays": b"\x91" * mb4,
        "nested array32s": b"\xdd\x00\x00\x00\x01" * (mb4 // 5),
        "nested maps under v": b"\x81\xa1v" * (mb4 // 3),
        "map32 of 4G pairs": b"\xdf\xff\xff\xff\xff" + b"\xc0" * mb4,
        "net of 4 GB declared": b"\x8f\xa1v\x03\xa3net\xdb\xff\xff\xff\xff" + b"a" * mb4,
        "net of 4 MB": b"\x8f\xa1v\x03\xa3net\xdb" + mb4.to_bytes(4, "big") + b"a" * mb4,
        "parents of 4G items": _swap(b"\xa7parents\x92", b"\xa7parents\xdd\xff\xff\xff\xff") + b"\x00" * mb4,
        "a 4 MB payload for 257 values": header_then + b"\xc6" + mb4.to_bytes(4, "big") + b"\x00" * mb4,
        "1 MB of garbage": os.urandom(1 << 20),
        "1 MB of garbage after a map header": b"\x8e" + os.urandom(1 << 20),
    }


@pytest.mark.parametrize("name", list(_hostile()))
def test_hostile_input_is_rejected_within_a_header(name):
    data = _hostile()[name]
    with pytest.raises((Malformed, NonCanonical)) as info:
        parse(data)
    assert info.value.offset <= max_message_size("raw-f32", 0) + 8, info.value.offset
    r = verifier(max_size=8 << 20).verify(data, 5)
    assert r.reason in (Reason.MALFORMED, Reason.NON_CANONICAL, Reason.BAD_VERSION)


def test_errors_name_where_parsing_stopped():
    with pytest.raises(Malformed) as info:
        parse(b"\x91" * 1000)
    assert info.value.offset == 1


# --- max_message_size --------------------------------------------------------------------------


def _largest(codec: str, n: int, identity: Identity) -> bytes:
    """A valid message with every bounded field at its bound."""
    x = torch.linspace(-1, 1, n)
    return seal(identity, net="é" * (MAX_NETWORK_ID_LEN // 2), round=2**64 - 1, schema=SCHEMA,
                payload=encode(x, codec), codec=codec, n=n, parents=[bytes(32)] * MAX_PARENTS, deg=2**64 - 1,
                kind="k" * MAX_KIND_LEN, ts=1.0).data


@pytest.mark.parametrize("n", [0, 1, 63, 64, 127, 128, 16_383, 16_384, 65_536, 100_000])
@pytest.mark.parametrize("codec", FLOAT_CODECS)
def test_max_message_size_bounds_the_largest_valid_message(codec, n):
    longest_id = Identity(ALICE.private_key, "1" * MAX_PEER_ID_LEN)  # a sender id at the parser's limit
    worst = _largest(codec, n, longest_id)
    bound = max_message_size(codec, n)
    assert len(worst) <= bound
    if codec == max(FLOAT_CODECS, key=len):
        assert len(worst) == bound  # tight: every byte of the allowance is needed
    real = _largest(codec, n, ALICE)
    assert len(real) <= bound
    assert isinstance(verifier(network="é" * 64, n_params=n, max_size=bound, max_lead=2**64).verify(real, 0, set()),
                      Accepted)
    assert bound - encoded_size(codec, n) < 10_000  # the header allowance stays small


def test_max_message_size_refuses_what_no_message_can_be():
    with pytest.raises(CodecError):
        max_message_size("zip", 10)
    with pytest.raises(ValueError):
        max_message_size("raw-f32", -1)
    with pytest.raises(ValueError):
        max_message_size("raw-f32", 2**30)  # 4 GiB of payload does not fit a msgpack bin


def test_seal_refuses_what_parse_would_refuse():
    x = encode(PARAMS)
    base = dict(net="net", round=1, schema=SCHEMA, payload=x, codec="raw-f32", n=N)
    for changes, field in [({"schema": bytes(31)}, "schema"), ({"parents": [bytes(33)]}, "parents"),
                           ({"round": -1}, "round"), ({"deg": 2**64}, "deg"), ({"ts": float("inf")}, "ts"), ({"eps": -1.0}, "eps"), ({"eps": float("nan")}, "eps"),
                           ({"codec": "zip"}, "codec"), ({"n": N + 1}, "payload")]:
        with pytest.raises(ValueError, match=field):
            seal(ALICE, **{**base, **changes})
    env = parse(seal(ALICE, **base).data)
    assert env.header["deg"] == 0 and env.header["parents"] == [] and env.header["kind"] == "update"


def test_an_unknown_key_is_named():
    data = _swap(b"\xa4kind", b"\xa4kine")
    r = verifier().verify(data, 5)
    assert r.reason == Reason.MALFORMED and "'kine'" in r.detail
    r = verifier().verify(_swap(b"\xa4kind", b"\x04kind"), 5)  # not even a string key
    assert r.reason == Reason.MALFORMED and "kind" in r.detail


def test_an_envelope_built_by_hand_computes_its_id_from_the_header():
    env = parse(GOOD)
    again = Envelope(header=dict(env.header), payload=env.payload, sig=env.sig)
    assert again.update_id == env.update_id == header_digest(env.header).hex()
    assert verifier().verify(b"\x80", 5).reason == Reason.MALFORMED  # an empty map


# --- the signature and the update id, computed here from the format's description -------------


def test_the_signature_covers_sha256_of_the_domain_and_the_13_header_fields():
    obj = msgpack.unpackb(GOOD, raw=False)
    header = {k: obj[k] for k in ["v", "net", "sender", "round", "ts", "kind", "schema", "codec", "n", "deg",
                                  "eps", "parents", "payload_hash"]}
    digest = hashlib.sha256(b"gossipfl/envelope/v1\x00" + msgpack.packb(header, use_bin_type=True)).digest()
    ALICE.private_key.public_key().verify(obj["sig"], digest)  # raises InvalidSignature if not
    assert parse(GOOD).update_id == header_digest(parse(GOOD).header).hex() == digest.hex()
    assert obj["payload_hash"] == hashlib.sha256(obj["payload"]).digest()


# --- the cursor: each value in its one shortest encoding, every wider one non-canonical --------

INT_HEADERS = [(0xCC, 1, False), (0xCD, 2, False), (0xCE, 4, False), (0xCF, 8, False),
               (0xD0, 1, True), (0xD1, 2, True), (0xD2, 4, True), (0xD3, 8, True)]
INT_EDGES = [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63, 2**64 - 1,
             -1, -32, -33, -128, -129, -32_768, -32_769, -(2**31), -(2**31) - 1, -(2**63)]


def _int_encodings(v: int) -> set[bytes]:
    out = set()
    for code, width, signed in INT_HEADERS:
        try:
            out.add(bytes([code]) + v.to_bytes(width, "big", signed=signed))
        except OverflowError:
            continue
    return out


@pytest.mark.parametrize("v", INT_EDGES)
def test_an_integer_reads_only_in_its_shortest_encoding(v):
    shortest = msgpack.packb(v)
    cur = Cursor(memoryview(shortest))
    assert cur.int("x") == v and cur.at_end()
    wider = _int_encodings(v) - {shortest}
    assert wider or len(shortest) == 9  # a 64-bit header is the widest
    for data in wider | {shortest}:
        if len(data) > 1:  # one byte short: truncated, whatever the header
            with pytest.raises(Malformed, match="truncated"):
                Cursor(memoryview(data[:-1])).int("x")
    for data in wider:
        with pytest.raises(NonCanonical):
            Cursor(memoryview(data)).int("x")


def _length_headers(kind: str, n: int) -> set[bytes]:
    """Every header msgpack has for a str/bin/array/map of n bytes or items."""
    fix, fix_max, wide = {"str": (0xA0, 31, [(0xD9, 1), (0xDA, 2), (0xDB, 4)]),
                          "bin": (None, -1, [(0xC4, 1), (0xC5, 2), (0xC6, 4)]),
                          "array": (0x90, 15, [(0xDC, 2), (0xDD, 4)]),
                          "map": (0x80, 15, [(0xDE, 2), (0xDF, 4)])}[kind]
    out = {bytes([fix | n])} if n <= fix_max else set()
    return out | {bytes([code]) + n.to_bytes(width, "big") for code, width in wide if n < 1 << (8 * width)}


@pytest.mark.parametrize("n", [0, 1, 31, 32, 255, 256, 65_535, 65_536])
def test_a_string_reads_only_under_its_shortest_header(n):
    text = "s" * n
    shortest = msgpack.packb(text)
    cur = Cursor(memoryview(shortest))
    assert cur.str("x", n) == text and cur.at_end()
    wider = {h + text.encode() for h in _length_headers("str", n)} - {shortest}
    assert wider or n >= 1 << 16  # a 32-bit length is the widest
    with pytest.raises(Malformed, match="truncated"):  # one byte short
        Cursor(memoryview(shortest[:-1])).str("x", n)
    for data in wider:
        with pytest.raises(NonCanonical):
            Cursor(memoryview(data)).str("x", n)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65_535, 65_536])
def test_a_byte_string_reads_only_under_its_shortest_header(n):
    raw = b"b" * n
    shortest = msgpack.packb(raw, use_bin_type=True)
    cur = Cursor(memoryview(shortest))
    assert bytes(cur.bin("x", n)) == raw and cur.at_end()
    wider = {h + raw for h in _length_headers("bin", n)} - {shortest}
    assert wider or n >= 1 << 16  # a 32-bit length is the widest
    with pytest.raises(Malformed, match="truncated"):  # one byte short
        Cursor(memoryview(shortest[:-1])).bin("x", n)
    for data in wider:
        with pytest.raises(NonCanonical):
            Cursor(memoryview(data)).bin("x", n)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536])
def test_containers_read_only_under_their_shortest_header(n):
    array = msgpack.packb([None] * n)  # None is one byte: the header is what precedes n of them
    assert Cursor(memoryview(array)).array_header("x", n) == n
    for header in _length_headers("array", n) - {array[: len(array) - n]}:
        with pytest.raises(NonCanonical):
            Cursor(memoryview(header)).array_header("x", n)
    shortest_map = min(_length_headers("map", n), key=len)
    assert msgpack.packb({i: None for i in range(n)}).startswith(shortest_map)
    for header in _length_headers("map", n):
        assert Cursor(memoryview(header)).map_header("x") == (n, header == shortest_map)
