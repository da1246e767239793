"""What a transport holds of received messages that the peer has not taken yet, bounded per
sender and in total, so that a flood into one inbox (re-published captured updates, say) costs
the receiver a fixed amount of memory and never starves the other senders.

The sender a message is charged to is the one the transport proved (gossip.inbox_gate: an
MQTT topic's last level alone is anyone's word where the broker has no ACL), or STRANGERS for
what it cannot prove. Senders that are not among the known neighbours share one slot (the
strangers'), so inventing names buys no room beyond that slot and the total; each neighbour
has a share of its own that nobody else's messages can fill. A message that does not fit is
dropped at once and counted under its reason (`refuse` counts the gate's reasons too); every
byte taken is given back exactly once, when the peer takes the message or it is dropped
further on.
Thread-safe: the MQTT thread takes, the peer's loop gives back.
"""

from __future__ import annotations

import threading
from collections import Counter

STRANGERS = "*"
OVER_SHARE = "sender over its share"
OVER_TOTAL = "inbox over its total"
TOO_LARGE = "too large"
INBOX_FULL = "inbox queue full"


class InboxBudget:
    def __init__(self, per_sender_bytes: int, *, per_sender_messages: int = 32, total_bytes: int | None = None,
                 total_messages: int = 256):
        if per_sender_bytes <= 0 or per_sender_messages <= 0 or total_messages <= 0:
            raise ValueError("inbox bounds must be positive")
        self.per_sender_bytes, self.per_sender_messages = per_sender_bytes, per_sender_messages
        self.fixed_total = total_bytes
        self.total_messages = total_messages
        self.known: frozenset[str] | None = None  # None: every sender is its own slot
        self.dropped: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._held: dict[str, list[int]] = {}  # sender -> [bytes, messages]
        self._slot: dict[str, list[int]] = {}  # slot (a known sender, or STRANGERS) -> [bytes, messages]
        self.bytes = self.messages = 0

    @property
    def total_bytes(self) -> int:
        """The whole inbox: the fixed total, else one share per known sender plus the strangers'."""
        if self.fixed_total is not None:
            return self.fixed_total
        return self.per_sender_bytes * max(8, len(self.known or ()) + 1)

    def slot(self, sender: str) -> str:
        return sender if self.known is None or sender in self.known else STRANGERS

    def set_known(self, senders) -> None:
        """The neighbours (each gets its own share); what others hold moves to the strangers'."""
        with self._lock:
            self.known = frozenset(senders)
            self._slot = {}
            for sender, (b, n) in self._held.items():
                s = self._slot.setdefault(self.slot(sender), [0, 0])
                s[0] += b
                s[1] += n

    def take(self, sender: str, size: int, limit: int | None = None) -> bool:
        """Room for one message of `size` bytes from `sender`? Held if so; counted if not."""
        with self._lock:
            reason = None
            slot = self._slot.get(self.slot(sender), (0, 0))
            if limit is not None and size > limit:
                reason = TOO_LARGE
            elif slot[0] + size > self.per_sender_bytes or slot[1] >= self.per_sender_messages:
                reason = OVER_SHARE
            elif self.bytes + size > self.total_bytes or self.messages >= self.total_messages:
                reason = OVER_TOTAL
            if reason is not None:
                self.dropped[reason] += 1
                return False
            for table, key in ((self._held, sender), (self._slot, self.slot(sender))):
                entry = table.setdefault(key, [0, 0])
                entry[0] += size
                entry[1] += 1
            self.bytes += size
            self.messages += 1
            return True

    def refuse(self, reason: str) -> None:
        """A message dropped before it asked for room (counted under `reason`)."""
        with self._lock:
            self.dropped[reason] += 1

    def give_back(self, sender: str, size: int, dropped: str | None = None) -> None:
        """The peer took the message (or it was dropped later, for `dropped`)."""
        with self._lock:
            if dropped:
                self.dropped[dropped] += 1
            for table, key in ((self._held, sender), (self._slot, self.slot(sender))):
                entry = table.get(key)
                if entry is None:
                    continue
                entry[0] -= size
                entry[1] -= 1
                if entry[1] <= 0:
                    del table[key]
            self.bytes -= size
            self.messages -= 1

    def clear(self) -> None:
        """A fresh start (a new receive queue): nothing is held any more."""
        with self._lock:
            self._held.clear()
            self._slot.clear()
            self.bytes = self.messages = 0
