"""Rejections of messages whose sender is not proven: anyone can claim anything, so they are
counted per reason and round (with a few of the claimed names) and logged once, at the close
of the round, instead of one event each (a flood must not fill the provenance log)."""

from __future__ import annotations

from ..state.provenance import EventKind, NewEvent
from .commands import Command, Log

CLAIMED_SAMPLE = 8  # distinct claimed senders kept per summarised rejection


class Strangers:
    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], list] = {}  # (reason, round) -> [count, claimed]

    def add(self, reason: str, round_: int, claimed: str | None) -> None:
        entry = self.counts.setdefault((reason, round_), [0, []])
        entry[0] += 1
        if claimed is not None and claimed not in entry[1] and len(entry[1]) < CLAIMED_SAMPLE:
            entry[1].append(claimed[:64])

    def summary(self) -> list[Command]:
        """One `rejected` event per (reason, round) since the last summary."""
        out: list[Command] = [Log(NewEvent(EventKind.REJECTED, rnd, None, None, {
            "reason": reason, "count": count, "claimed": claimed, "authenticated": False}))
            for (reason, rnd), (count, claimed) in sorted(self.counts.items())]
        self.counts.clear()
        return out
