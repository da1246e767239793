"""A peer's upload budget (`[transport] max_upload_kbps`): when each transmission may start so
that what the outbox sends stays within the budget, a gateway on a narrow uplink leaving room
for the rest of its traffic (its protocol messages, TCP's acknowledgements, whatever else the
site sends) instead of filling the link with updates.

Pure: the time is passed in (a virtual clock in tests, the loop's clock in the outbox). It is
the generic cell rate algorithm: a theoretical time at which the budget is paid up (`paid`)
moves forward by size / rate with every transmission; one may start once `paid` is at most
`burst` seconds ahead of now. Over any window of T seconds the bytes started are at most
rate * (T + burst) plus one transmission.
"""

from __future__ import annotations

from dataclasses import dataclass

BURST_SECONDS = 1.0  # what may go out at once after a quiet spell (one second of the budget)


@dataclass
class UploadBudget:
    kbps: float  # kilobits (1000 bits) a second
    burst: float = BURST_SECONDS
    paid: float = float("-inf")  # when everything charged so far is paid for at the budget's rate

    def __post_init__(self) -> None:
        if not self.kbps > 0 or not self.burst >= 0:
            raise ValueError(f"an upload budget needs kbps > 0 and burst >= 0, got {self.kbps}, {self.burst}")

    @property
    def bytes_per_second(self) -> float:
        return self.kbps * 1000 / 8

    def reserve(self, size: int, now: float) -> float:
        """Charge `size` bytes; the seconds to wait from `now` before sending them."""
        start = max(now, self.paid - self.burst)
        self.paid = max(self.paid, now) + size / self.bytes_per_second
        return start - now

    def charge(self, size: int, now: float) -> None:
        """Count bytes that go out without waiting (a small protocol message): later ones wait."""
        self.paid = max(self.paid, now) + size / self.bytes_per_second
