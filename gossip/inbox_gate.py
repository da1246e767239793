"""What an inbox proves of a message before it is queued, where the transport cannot tell who
published it (an MQTT broker without logins: a topic's sender level is anyone's word).

An update is charged to its sender's share of the inbox (gossip.inbox_budget) only once it is
proven to be that sender's; cheapest checks first, on the thread that receives, before any
queue:
1. it parses as an envelope (header only; the payload stays a view);
2. its signed sender may send (the peer's live `allowed` set: neighbours and admin) - the
   cheap trust check;
3. the topic names that same sender (an honest peer publishes under its own PeerId);
4. its update id (the header's digest) was not let in before - else it is dropped (SEEN):
   the peer has it, and a re-published capture costs nothing more;
5. its signature verifies with the sender's key, and the payload matches its signed hash.
Whatever fails 1-3 or 5 is charged to the one share of unproven messages (STRANGERS) and
still reaches the peer, which verifies it again (gossip.verify) and logs the rejection, as
it logs any stranger's. So a flood under a neighbour's name - junk, forgeries, replays of its
real updates - never takes that neighbour's share, and its real updates always have room; at
worst such a flood crowds out other unproven messages (membership records, which carry the
admin's signature, and secure-aggregation messages, which their exchange checks: both land
in the unproven share), never an update.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container

from .envelope import Malformed, parse, payload_digest
from .errors import PeerIdError
from .identity import public_key_of, verify_signature
from .inbox_budget import STRANGERS
from .membership import is_record

SEEN = "update let in before"
REMEMBER = 4096  # update ids remembered (32 bytes each): many rounds of every neighbour


class InboxGate:
    """Not thread-safe: one receiving thread calls `check` and `admitted`. `allowed` is read at
    each call (None: any sender)."""

    def __init__(self, allowed: Container[str] | None = None, remember: int = REMEMBER):
        self.allowed = allowed
        self.remember = remember
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def check(self, hint: str, data: bytes | bytearray) -> tuple[str, bytes | None, str | None]:
        """(the share to charge: the proven sender, or STRANGERS; the update id to pass to
        `admitted` once the message is queued, or None; SEEN to drop it, or None)."""
        unproven = STRANGERS, None, None
        if is_record(data):
            return unproven
        try:
            env = parse(data)
        except Malformed:
            return unproven  # another kind of message, or junk: the peer checks it
        sender = env.sender
        if (self.allowed is not None and sender not in self.allowed) or sender != hint:
            return unproven
        uid = env.digest
        if uid in self._seen:
            return sender, None, SEEN
        try:
            public_key_of(sender)
        except PeerIdError:
            return unproven
        if not verify_signature(sender, env.sig, uid) or payload_digest(env.payload) != env.header["payload_hash"]:
            return unproven
        return sender, uid, None

    def admitted(self, uid: bytes) -> None:
        """The update with this id was queued: a copy of it is dropped from now on."""
        self._seen[uid] = None
        while len(self._seen) > self.remember:
            self._seen.popitem(last=False)
