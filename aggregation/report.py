"""What an aggregation returns: the value and a small report for the provenance log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Report:
    """Which rows a rule used and why, in plain JSON-able types.

    `selected`: rows whose values fed the output (None when every row did, coordinate-wise).
    `scores`: one number per row where the rule scores rows (Krum scores, distances, weights).
    `details`: anything else worth recording (requirements used, iterations, radius...).
    """

    rule: str
    n: int
    f: int
    selected: list[int] | None = None
    scores: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    pre: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "n": self.n, "f": self.f}
        if self.selected is not None:
            out["selected"] = list(self.selected)
        if self.scores is not None:
            out["scores"] = [float(s) for s in self.scores]
        if self.details:
            out["details"] = dict(self.details)
        if self.pre:
            out["pre"] = list(self.pre)
        return out


@dataclass
class BatchReport:
    """The reports of a batch of B aggregations, kept as tensors until one is read: a
    simulator aggregating thousands of neighbourhoods rarely reads them, a peer reads its one.

    `selected`: (B, k) row indices, ascending per batch, or None.
    `scores`: (B, n) per-row numbers, or None.
    `details`: a torch.Tensor value is per batch (entry b belongs to batch b); any other
    value is shared by every batch. `pre`: the pre-steps' records, shared.
    """

    rule: str
    n: int
    f: int
    batch: int
    selected: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)
    pre: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.batch

    def __getitem__(self, b: int) -> Report:
        if not -self.batch <= b < self.batch:
            raise IndexError(f"batch entry {b} of {self.batch}")
        details = {k: v[b].item() if isinstance(v, torch.Tensor) else v for k, v in self.details.items()}
        return Report(self.rule, self.n, self.f,
                      selected=None if self.selected is None else self.selected[b].tolist(),
                      scores=None if self.scores is None else self.scores[b].tolist(),
                      details=details, pre=list(self.pre))

    def __iter__(self):
        return (self[b] for b in range(self.batch))

    def to_dict(self) -> list[dict[str, Any]]:
        """One report dict per batch entry, as a single (n, d) call would give."""
        return [r.to_dict() for r in self]


@dataclass
class Aggregate:
    """Result of `aggregation.aggregate`: `.value` is the (d,) tensor and `.report` the
    Report for an (n, d) stack; (B, d) and a BatchReport for a (B, n, d) batch."""

    value: torch.Tensor
    report: Report | BatchReport
