"""Keys, PeerIds (checked against libp2p's own derivation), key files, trust lists."""

import json
import os
import stat

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.errors import KeyFileError, PeerIdError, TrustListError
from gossip.identity import (
    Identity,
    b58decode,
    b58encode,
    load_key,
    public_key_of,
    save_key,
    verify_signature,
)
from gossip.trust import build_trust_list, load_trust_list
from gossipfl.cli import main


def test_peer_id_matches_libp2p_derivation():
    from libp2p.crypto.ed25519 import Ed25519PrivateKey as L2PKey
    from libp2p.peer.id import ID

    for _ in range(5):
        ident = Identity.generate()
        theirs = L2PKey.new(ident.seed)
        assert ID.from_pubkey(theirs.get_public_key()).to_base58() == ident.peer_id
        assert ident.peer_id.startswith("12D3KooW")


def test_signature_checks_with_the_peer_id_alone():
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"hello")
    assert verify_signature(a.peer_id, sig, b"hello")
    assert not verify_signature(a.peer_id, sig, b"hellO")
    assert not verify_signature(b.peer_id, sig, b"hello")
    assert not verify_signature("not-a-peer-id", sig, b"hello")


def test_base58_round_trip_and_bad_ids():
    for data in [b"", b"\x00\x00abc", os.urandom(38)]:
        assert b58decode(b58encode(data)) == data
    with pytest.raises(PeerIdError):
        public_key_of("0OIl")
    with pytest.raises(PeerIdError):
        public_key_of("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # an RSA-style (sha256) PeerId
    with pytest.raises(PeerIdError):
        public_key_of("1" * 500)


# identity multihash (code 0, 36 bytes) of protobuf PublicKey{Type: Ed25519, Data: 32 bytes}
ED25519_PREFIX = b"\x00\x24\x08\x01\x12\x20"
ALICE = Identity.from_seed(b"a" * 32)


def test_a_peer_id_is_the_prefix_and_the_32_key_bytes_in_base58():
    assert b58decode(ALICE.peer_id) == ED25519_PREFIX + ALICE.public_bytes


@pytest.mark.parametrize("key_bytes", [33, 31, 0, 34])
def test_a_key_of_another_length_is_a_peer_id_error(key_bytes):
    # 33 bytes: cryptography would raise ValueError, which nothing above public_key_of catches
    key = (ALICE.public_bytes * 2)[:key_bytes]
    with pytest.raises(PeerIdError, match="not an Ed25519 PeerId"):
        public_key_of(b58encode(ED25519_PREFIX + key))


@pytest.mark.parametrize("at", range(len(ED25519_PREFIX)))
def test_alices_key_under_another_prefix_is_not_alice(at):
    # same length, one prefix byte changed (another key type, hash code or length): not a PeerId,
    # or one key would have several PeerIds
    prefix = bytearray(ED25519_PREFIX)
    prefix[at] ^= 0x02
    with pytest.raises(PeerIdError, match="not an Ed25519 PeerId"):
        public_key_of(b58encode(bytes(prefix) + ALICE.public_bytes))


@pytest.mark.parametrize("value", [None, 5, 1.5, b"12D3KooW", bytearray(b"12D3KooW"), ["12D3KooW"], {"id": 1}, "",
                                   ALICE.peer_id + "1", "0" * 52])
def test_anything_but_a_peer_id_is_a_peer_id_error_whatever_its_type(value):
    with pytest.raises(PeerIdError):
        public_key_of(value)
    assert not verify_signature(value, ALICE.sign(b"m"), b"m")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=60).map(b58encode),
                 st.binary(max_size=40).map(lambda b: b58encode(ED25519_PREFIX + b))))
def test_parsing_any_string_returns_a_key_or_raises_peer_id_error(text):
    try:
        key = public_key_of(text)
    except PeerIdError:
        return
    assert b58decode(text) == ED25519_PREFIX + key.public_bytes_raw()


@pytest.mark.parametrize("sig", ["a" * 64, 7, None, bytes(63), bytes(65), [0] * 64])
@pytest.mark.parametrize("message", [b"m", "m", None])
def test_a_signature_that_is_not_one_is_false_not_an_error(sig, message):
    # signatures come from the network and from logs on disk (a tampered row may hold any type)
    assert not verify_signature(ALICE.peer_id, sig, message)
    assert verify_signature(ALICE.peer_id, ALICE.sign(b"m"), b"m")


def test_key_file_is_0600_and_not_overwritten(tmp_path):
    path = tmp_path / "k.pem"
    ident = Identity.generate()
    save_key(ident, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path).peer_id == ident.peer_id
    with pytest.raises(KeyFileError, match="--force"):
        save_key(Identity.generate(), path)
    save_key(Identity.generate(), path, force=True)
    assert load_key(path).peer_id != ident.peer_id


def test_bad_key_files_are_clear_errors(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        load_key(tmp_path / "missing.pem")
    open_key = tmp_path / "open.pem"
    save_key(Identity.generate(), open_key)
    open_key.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(open_key)
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    junk.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM"):
        load_key(junk)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o620, 0o602, 0o610, 0o601, 0o777])
def test_a_key_file_open_to_group_or_others_is_refused_with_the_fix(tmp_path, mode):
    path = tmp_path / "k.pem"
    save_key(Identity.generate(), path)
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    message = str(info.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message and "\n" not in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_key_file_only_its_owner_can_use_loads(tmp_path, mode):
    path = tmp_path / "k.pem"
    ident = Identity.generate()
    save_key(ident, path)
    path.chmod(mode)
    assert load_key(path).peer_id == ident.peer_id


def test_keygen_command(tmp_path):
    out = tmp_path / "peer.key"
    r = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == load_key(out).peer_id
    r = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output


def test_trust_list_toml_and_json(tmp_path):
    ids = [Identity.generate().peer_id for _ in range(3)]
    toml = tmp_path / "trust.toml"
    toml.write_text('network = "lab"\n' + "".join(f'[[peer]]\nid = "{p}"\nname = "n{i}"\n' for i, p in enumerate(ids)))
    tl = load_trust_list(toml)
    assert tl.network == "lab" and set(tl.peers) == set(ids) and tl.names[ids[1]] == "n1"
    js = tmp_path / "trust.json"
    js.write_text(json.dumps({"network": "lab", "peers": ids}))
    assert load_trust_list(js).peers == tl.peers
    again = tmp_path / "again.toml"
    again.write_text(tl.to_toml())
    assert load_trust_list(again).peers == tl.peers


@pytest.mark.parametrize("body, message", [
    ('network = "lab"\npeers = ["nope"]\n', "entry 1"),
    ('network = "lab"\npeers = ["{a}", "{a}"]\n', "listed twice"),
    ('peers = ["{a}"]\n', "network"),
    ('network = "lab"\npeers = [3]\n', "entry 1"),
    ("network = \n", "does not parse"),
])
def test_trust_list_errors(tmp_path, body, message):
    a = Identity.generate().peer_id
    path = tmp_path / "t.toml"
    path.write_text(body.replace("{a}", a))
    with pytest.raises(TrustListError, match=message):
        load_trust_list(path)


def test_the_admin_key_must_be_a_peer_id_and_not_a_node():
    a, b = Identity.generate().peer_id, Identity.generate().peer_id
    assert build_trust_list("lab", [a], admin=b).admin == b
    with pytest.raises(TrustListError, match="kept apart"):
        build_trust_list("lab", [a, b], admin=b)
    with pytest.raises(TrustListError, match="`admin`"):
        build_trust_list("lab", [a], admin=b[:20])


def test_a_trust_list_written_for_single_masking_still_loads_and_its_keys_are_dropped(tmp_path):
    # secure_mean's keys are fresh every round and signed by the identity: the static x25519 keys
    # and bindings older plans wrote are ignored, and never written again
    entries = [{"id": Identity.generate().peer_id, "name": f"n{i}", "x25519": os.urandom(32).hex(),
                "binding": os.urandom(64).hex()} for i in range(3)]
    tl = build_trust_list("lab", entries + [Identity.generate().peer_id], admin=Identity.generate().peer_id)
    path = tmp_path / "trust.toml"
    path.write_text(tl.to_toml())
    assert load_trust_list(path) == tl and "x25519" not in path.read_text()
    assert {e["id"] for e in entries} <= tl.peers and tl.names[entries[0]["id"]] == "n0"


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=200))
def test_libsodium_signs_the_bytes_openssl_signs_and_both_accept_them(seed, message):
    # signing and verifying go through libsodium; Ed25519 is deterministic, so a signature is
    # the one cryptography (OpenSSL) writes, and each library accepts the other's
    ident = Identity.from_seed(seed)
    sig = ident.sign(message)
    assert sig == ident.private_key.sign(message)
    ident.private_key.public_key().verify(sig, message)  # raises if OpenSSL refuses it
    assert verify_signature(ident.peer_id, sig, message)
    assert verify_signature(ident.peer_id, bytearray(sig), memoryview(message))
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(ident.peer_id, flipped, message)
    assert not verify_signature(ident.peer_id, sig, message + b"x")
