"""Admin key rotation: the record rules (pure), a peer's membership applying and replaying them,
the trust list's `retired_admins`, and `fleet rotate-admin` on a plan folder (no network:
delivery is recorded instead)."""

from __future__ import annotations

import json

import msgpack
import pytest
from click.testing import CliRunner

from gossip.errors import TrustListError
from gossip.identity import Identity, load_key
from gossip.membership import MembershipError, check_rotation, open_record, seal_record
from gossip.trust import build_trust_list, load_trust_list
from gossipfl.cli import main
from peer.ops.admin import Plan
from peer.ops.plan import write_plan
from peer.runtime.commands import Reject, SetAllowed
from peer.runtime.membership import Membership, MembershipFileError, on_record
from peer.transports.libp2p import Libp2pKind
from peer.transports.mqtt import MqttKind
from topology import from_spec

OLD = Identity.from_seed(b"O" * 32)
NEW = Identity.from_seed(b"N" * 32)
NEWER = Identity.from_seed(b"W" * 32)
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(4)]


def rec(epoch, action, peer, key, neighbours=()):
    return seal_record(key, network="net", epoch=epoch, action=action, peer=peer.peer_id,
                       neighbours=[n.peer_id for n in neighbours])


def peer(tmp_path, admin=OLD, retired=(), name="membership.msgpack"):
    return Membership(IDS[0].peer_id, "net", admin.peer_id, {i.peer_id for i in IDS[:3]}, {IDS[1].peer_id: None},
                      tmp_path / name, retired=[k.peer_id for k in retired])


# --- the rules, pure ---------------------------------------------------------------------------

def test_the_rotation_rules():
    members = {IDS[0].peer_id, IDS[1].peer_id}
    chain = [OLD.peer_id, NEW.peer_id]  # OLD rotated away, NEW signs now

    def check(action, who):
        return check_rotation(open_record(rec(5, action, who, NEW), admin=NEW.peer_id, network="net"), chain, members)

    assert check("rotate", NEWER) is None
    assert "the current admin key" in check("rotate", NEW)
    assert "a retired admin key" in check("rotate", OLD)  # never back to a key a thief may hold
    assert "a gateway's key" in check("rotate", IDS[1])
    assert "an admin key of this network" in check("admit", OLD)
    assert "an admin key of this network" in check("admit", NEW)
    assert check("admit", IDS[2]) is None and check("revoke", IDS[1]) is None


def test_a_rotation_record_names_only_its_successor():
    r = open_record(rec(1, "rotate", NEW, OLD), admin=OLD.peer_id, network="net")
    assert (r.action, r.peer, r.addr, r.neighbours) == ("rotate", NEW.peer_id, "", ())
    with pytest.raises(MembershipError, match="rotation carries no address or neighbours"):
        seal_record(OLD, network="net", epoch=1, action="rotate", peer=NEW.peer_id, addr="/ip4/1.2.3.4/tcp/1")
    with pytest.raises(MembershipError, match="rotation carries no address or neighbours"):
        seal_record(OLD, network="net", epoch=1, action="rotate", peer=NEW.peer_id, neighbours=[IDS[0].peer_id])


# --- one peer's membership ---------------------------------------------------------------------

def test_after_a_rotation_the_old_key_is_refused_and_the_new_one_applies(tmp_path):
    m = peer(tmp_path)
    assert m.offer(rec(1, "admit", IDS[3], OLD, (IDS[0],))).record is not None
    assert m.offer(rec(2, "rotate", NEW, OLD)).record is not None
    assert (m.admin, m.admins, m.epoch) == (NEW.peer_id, [OLD.peer_id, NEW.peer_id], 2)
    thief = m.offer(rec(3, "revoke", IDS[1], OLD))  # the old key, now retired
    assert thief.record is None and thief.reason == "retired_admin" and thief.by == OLD.peer_id
    assert "rotated away at epoch 2" in thief.detail and IDS[1].peer_id in m.trusted
    again = m.offer(rec(3, "rotate", NEWER, OLD))  # the old key cannot rotate again: a rotation is final
    assert again.reason == "retired_admin" and m.admin == NEW.peer_id
    back = m.offer(rec(3, "rotate", OLD, NEW))  # nor can the new key hand it back
    assert back.reason == "refused_membership" and back.by == NEW.peer_id and m.admin == NEW.peer_id
    assert m.offer(rec(2, "revoke", IDS[1], NEW)).reason == "stale_membership"  # epochs stay monotone
    assert m.offer(rec(3, "revoke", IDS[1], NEW)).record is not None and IDS[1].peer_id in m.revoked
    forged = m.offer(rec(4, "revoke", IDS[2], NEWER))  # a key nobody named: unproven
    assert forged.reason == "bad_membership" and not forged.proven
    assert m.offer(rec(4, "rotate", NEWER, NEW)).record is not None
    assert m.admins == [OLD.peer_id, NEW.peer_id, NEWER.peer_id]
    assert m.offer(rec(5, "admit", IDS[1], NEW, (IDS[0],))).reason == "retired_admin"  # every retired key


def test_the_admin_chain_is_rebuilt_from_the_log_whatever_trust_list_the_gateway_has(tmp_path):
    live = peer(tmp_path, name="live.msgpack")
    for data in (rec(1, "admit", IDS[3], OLD, (IDS[0],)), rec(2, "rotate", NEW, OLD), rec(3, "revoke", IDS[1], NEW)):
        assert live.offer(data).record is not None
    log = list(live.records)
    state = (NEW.peer_id, [OLD.peer_id], 3, live.trusted, live.revoked)

    def restarted(logged, **kw):
        (tmp_path / "fresh.msgpack").unlink(missing_ok=True)  # no cache: the log alone
        m = peer(tmp_path, name="fresh.msgpack", **kw)
        m.load(logged)
        return m

    for m in (restarted(log), restarted(log, admin=NEW, retired=(OLD,))):  # its own trust.toml, or the plan's
        assert (m.admin, m.retired, m.epoch, m.trusted, m.revoked) == state
        assert m.offer(rec(4, "revoke", IDS[2], OLD)).reason == "retired_admin"
        assert m.offer(rec(4, "revoke", IDS[2], NEW)).record is not None
    copied = restarted(log[:1], admin=NEW, retired=(OLD,))  # down during the rotation; the plan's trust.toml since
    assert (copied.admin, copied.epoch) == (NEW.peer_id, 1)
    assert copied.offer(rec(2, "rotate", NEWER, OLD)).reason == "retired_admin"  # the thief's race, lost
    assert restarted([]).admin == OLD.peer_id
    assert restarted([], admin=NEW, retired=(OLD,)).admin == NEW.peer_id  # a gateway set up again from the plan
    with pytest.raises(MembershipFileError, match="does not apply"):  # the rotation cut out of the log
        restarted([log[0], log[2]])
    with pytest.raises(MembershipFileError, match="not the ones the trust list names"):
        restarted(log, admin=NEWER, retired=(OLD,))  # the log rotated to NEW, the trust list to NEWER
    with pytest.raises(MembershipFileError, match="does not apply"):  # a rotation by a key not current then
        restarted([rec(1, "rotate", NEWER, NEW)], admin=NEW, retired=(OLD,))


def test_a_rotation_applied_but_not_yet_logged_is_kept_by_the_cache(tmp_path):
    m = peer(tmp_path)
    assert m.offer(rec(1, "rotate", NEW, OLD)).record is not None  # persisted to the cache at once
    again = peer(tmp_path)
    assert [r.action for r in again.load([])] == ["rotate"] and again.admin == NEW.peer_id
    raw = msgpack.unpackb((tmp_path / "membership.msgpack").read_bytes())
    assert raw == m.records


def test_a_peer_logs_the_refusal_and_lets_only_the_current_admin_connect(tmp_path):
    m = peer(tmp_path)
    nbrs = [IDS[1].peer_id]
    cmds = on_record(m, OLD.peer_id, rec(1, "rotate", NEW, OLD), 3, nbrs)
    allowed = next(c for c in cmds if isinstance(c, SetAllowed)).peers
    assert NEW.peer_id in allowed and OLD.peer_id not in allowed
    (reject,) = on_record(m, NEW.peer_id, rec(2, "revoke", IDS[1], OLD), 3, nbrs)
    assert reject == Reject("retired_admin", reject.detail, OLD.peer_id, True)  # logged, blamed on the old key


# --- the trust list ----------------------------------------------------------------------------

def test_retired_admins_in_the_trust_list(tmp_path):
    trust = build_trust_list("net", [IDS[0].peer_id], NEWER.peer_id, [OLD.peer_id, NEW.peer_id])
    (tmp_path / "trust.toml").write_text(trust.to_toml())
    assert load_trust_list(tmp_path / "trust.toml").retired == (OLD.peer_id, NEW.peer_id)
    for retired, message in ([[OLD.peer_id, OLD.peer_id], "twice"], [[NEWER.peer_id], "as the admin"],
                             [[IDS[0].peer_id], "or a peer"], ["x", "list of PeerId"], [["nope"], "retired_admins"]):
        with pytest.raises(TrustListError, match=message):
            build_trust_list("net", [IDS[0].peer_id], NEWER.peer_id, retired)
    with pytest.raises(TrustListError, match="without `admin`"):
        build_trust_list("net", [IDS[0].peer_id], None, [OLD.peer_id])


# --- the admin's tool --------------------------------------------------------------------------

@pytest.fixture
def sent(monkeypatch):
    """What the plan delivered, under which admin key (no gateway runs here)."""
    out = []

    def deliver(self, plan, data, nodes):
        out.append((plan.admin.peer_id, data, [n["node"] for n in nodes]))
        return {n["node"]: True for n in nodes}

    monkeypatch.setattr(Libp2pKind, "deliver", deliver)
    monkeypatch.setattr(MqttKind, "deliver", deliver)
    return out


def test_fleet_rotate_admin_switches_the_plan_to_the_successor(tmp_path, sent):
    folder = tmp_path / "plan"
    write_plan(from_spec("ring:4"), folder, network_id="lab", draw=False, admin=OLD,
               transport_options={"ports": [41001, 41002, 41003, 41004]})
    run = CliRunner().invoke(main, ["fleet", "revoke", str(folder), "3"])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(main, ["fleet", "rotate-admin", str(folder)])
    assert run.exit_code == 0 and "epoch 2: rotate the admin key to" in run.output, run.output
    assert "delivered to 3 of 3 gateways" in run.output and "destroy every copy" in run.output
    plan = Plan(folder)
    new = plan.admin.peer_id
    assert new != OLD.peer_id and plan.admins == [OLD.peer_id, new]
    assert load_key(folder / "admin" / "admin.key").peer_id == new
    assert load_trust_list(folder / "trust.toml").retired == (OLD.peer_id,)
    assert json.loads((folder / "plan.json").read_text())["retired_admins"] == [OLD.peer_id]
    signer, data, nodes = sent[-1]
    assert signer == OLD.peer_id and nodes == ["0", "1", "2"]  # delivered under the old key, to the live ones
    rotation = open_record(data, admin=OLD.peer_id, network="lab")
    assert (rotation.epoch, rotation.action, rotation.peer) == (2, "rotate", new)
    run = CliRunner().invoke(main, ["fleet", "revoke", str(folder), "2"])  # later records: the new key signs
    assert run.exit_code == 0 and "epoch 3: revoke" in run.output, run.output
    signer, data, _ = sent[-1]
    assert signer == new and open_record(data, admin=new, network="lab").epoch == 3
    with pytest.raises(MembershipError):
        open_record(data, admin=OLD.peer_id, network="lab")
    run = CliRunner().invoke(main, ["fleet", "admit", str(folder), "--name", "g5", "--neighbours", "0,1", "--no-send"])
    assert run.exit_code == 0 and "epoch 4: admit" in run.output, run.output
    assert load_trust_list(folder / "trust.toml").retired == (OLD.peer_id,)  # admit and revoke keep the chain
    run = CliRunner().invoke(main, ["fleet", "rotate-admin", str(folder), "--epoch", "9"])
    assert run.exit_code == 0 and "epoch 9: rotate" in run.output, run.output
    assert Plan(folder).admins[:2] == [OLD.peer_id, new] and Plan(folder).next_epoch() == 10


def test_fleet_rotate_admin_refuses_a_key_that_is_not_fresh(tmp_path, sent):
    folder = tmp_path / "plan"
    nodes = write_plan(from_spec("ring:3"), folder, network_id="lab", draw=False, admin=OLD,
                       transport_options={"ports": [41011, 41012, 41013]})
    for key, message in ((folder / "admin" / "admin.key", "is the admin key"), (nodes[0].dir / "peer.key",
                                                                                 "a gateway's key")):
        run = CliRunner().invoke(main, ["fleet", "rotate-admin", str(folder), "--key", str(key)])
        assert run.exit_code != 0 and message in run.output, run.output
    keep = tmp_path / "old.key"
    keep.write_bytes((folder / "admin" / "admin.key").read_bytes())
    keep.chmod(0o600)
    assert CliRunner().invoke(main, ["fleet", "rotate-admin", str(folder)]).exit_code == 0
    run = CliRunner().invoke(main, ["fleet", "rotate-admin", str(folder), "--key", str(keep)])
    assert run.exit_code != 0 and "a retired admin key" in run.output, run.output
    run = CliRunner().invoke(main, ["fleet", "rotate-admin", str(folder), "--epoch", "1"])
    assert run.exit_code != 0 and "not above the plan's records" in run.output, run.output
    assert len(sent) == 1


def test_an_mqtt_plan_moves_the_admin_broker_login(tmp_path, sent):
    folder = tmp_path / "plan"
    write_plan(from_spec("ring:3"), folder, network_id="lab", transport="mqtt", draw=False, admin=OLD)
    before = (folder / "admin" / "mqtt.password").read_text()
    run = CliRunner().invoke(main, ["fleet", "rotate-admin", str(folder)])
    assert run.exit_code == 0 and "the admin's broker login changed" in run.output, run.output
    new = Plan(folder).admin.peer_id
    passwd, acl = (folder / "broker" / "passwd").read_text(), (folder / "broker" / "acl").read_text()
    assert f"{new}:" in passwd and f"{OLD.peer_id}:" not in passwd
    assert f"user {new}" in acl and OLD.peer_id not in acl
    assert (folder / "admin" / "mqtt.password").read_text() != before
    assert sent[-1][0] == OLD.peer_id  # delivered with the old login, before it went


def test_a_relay_follows_the_records_folder_through_a_rotation(tmp_path, caplog):
    """A relay reads the plan's records folder: it replays from the first admin key its trust
    list names, through the rotation, and refuses what the retired key signed after it."""
    from peer.ops.relay import FleetMembers, RelayConfig, RelayLimits

    trust = build_trust_list("net", [IDS[0].peer_id, IDS[1].peer_id], NEW.peer_id, [OLD.peer_id])
    (tmp_path / "trust.toml").write_text(trust.to_toml())
    records = tmp_path / "records"
    records.mkdir()
    for i, data in enumerate([rec(1, "admit", IDS[2], OLD, (IDS[0],)), rec(2, "rotate", NEW, OLD),
                              rec(3, "admit", IDS[3], NEW, (IDS[0],)), rec(4, "revoke", IDS[0], OLD)], 1):
        (records / f"{i:06d}.msgpack").write_bytes(data)
    members = FleetMembers(RelayConfig(tmp_path / "k", tmp_path / "trust.toml", [], RelayLimits(), records))
    with caplog.at_level("WARNING", logger="gossipfl"):
        assert members.refresh()
    assert set(members) == {i.peer_id for i in IDS} and members.membership.admin == NEW.peer_id
    assert "000004.msgpack refused: signed by the admin key" in caplog.text and "rotated away at epoch 2" in caplog.text
