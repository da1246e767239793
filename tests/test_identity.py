"""Keys, PeerIds (checked against libp2p's own derivation), key files, trust lists."""

import json
import os
import stat

import pytest
from click.testing import CliRunner

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
from gossip.trust import load_trust_list
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
