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
class Aggregate:
    """Result of `aggregation.aggregate`: `.value` is the (d,) tensor, `.report` the Report."""

    value: torch.Tensor
    report: Report
