"""The aggregation stack, allocated once: one row for the peer's own model, one per neighbour.

An accepted update is copied into its sender's row as soon as it counts for the current
round and the received message is let go, so a round never holds the neighbours'
messages and a freshly stacked copy of them at the same time (at 1M parameters and 8
neighbours that was 32 MB of buffers next to a 36 MB stack, per round).
"""

from __future__ import annotations

import dataclasses

import torch

from gossip.verify import Accepted


class UpdateStack:
    def __init__(self, neighbours: list[str], size: int, masked: bool = False):
        # masked (secure_mean): contributions are words, never stacked; only the own row exists
        self.masked = masked
        self.size = size
        self.set_neighbours(neighbours)

    def set_neighbours(self, neighbours: list[str]) -> None:
        """One row per neighbour (membership changed: allocated again on first use)."""
        self.row_of = {} if self.masked else {n: i + 1 for i, n in enumerate(sorted(neighbours))}
        self._rows: torch.Tensor | None = None

    @property
    def rows(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = torch.empty(1 + len(self.row_of), self.size, dtype=torch.float32)
        return self._rows

    def owns(self, t: torch.Tensor) -> bool:
        """Whether `t` is (a view of) these rows: a rule may return one of its input rows,
        which the next settle() would overwrite."""
        return self._rows is not None and t.untyped_storage().data_ptr() == self._rows.untyped_storage().data_ptr()

    def hold_own(self, values: torch.Tensor) -> torch.Tensor:
        """Copy the peer's own model into row 0 and return that row (it stays put until the
        next call; settling neighbours' updates never touches it)."""
        row = self.rows[0]
        row.copy_(values)
        return row

    def settle(self, update: Accepted) -> Accepted:
        """Copy `update` into its sender's row; the returned Accepted no longer holds the message
        (a masked contribution is kept as it is: it is summed as words by the peer)."""
        if self.masked:
            return update
        row = self.rows[self.row_of[update.sender]]
        row.copy_(update.params)
        envelope = dataclasses.replace(update.envelope, payload=memoryview(b""))
        return Accepted(envelope, row)

    def stacked(self, own: torch.Tensor, inputs: list[Accepted]) -> torch.Tensor:
        """(1 + len(inputs), d): own model first, then `inputs` in their order, all settled.

        Rows of absent neighbours are closed up in place (inputs must be sorted by sender,
        which is their row order), so the result is a view, never a fresh stack.
        """
        rows = self.rows
        if own.data_ptr() != rows[0].data_ptr():
            rows[0].copy_(own)
        for i, update in enumerate(inputs, start=1):
            src = self.row_of[update.sender]
            if src < i:
                raise ValueError("inputs must be in sender order")
            if update.params.data_ptr() != rows[src].data_ptr():
                raise ValueError(f"update from {update.sender} was not settled into the stack")
            if src != i:  # src > i: earlier targets never overwrite a later source
                rows[i].copy_(rows[src])
        return rows[: 1 + len(inputs)]
