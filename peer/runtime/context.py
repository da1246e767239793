"""What one round carries from training to its record, and the record itself: per-round values
live here, never as attributes of the peer set halfway through a round."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..learning.learner import Metrics
from .metrics import metric_dict

log = logging.getLogger("gossipfl.peer")


@dataclass
class RoundRecord:
    round: int
    train: Metrics
    eval: Metrics
    accepted: int
    rejected: Counter
    aggregated: bool
    note: str
    bytes_sent: int
    seconds: float
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # local evaluation on the held-out split (neither training nor protocol)
    personal_eval: Metrics = field(default_factory=Metrics)  # the personal model's (local_head, ditto), else {}


@dataclass
class RoundContext:
    """What one round carries from training to its record."""

    started: float
    train: Metrics = field(default_factory=Metrics)
    eval: Metrics = field(default_factory=Metrics)
    train_s: float = 0.0
    eval_s: float = 0.0
    personal_train: Metrics = field(default_factory=Metrics)  # ditto: the personal model's training
    personal_eval: Metrics = field(default_factory=Metrics)  # the personal model on the held-out split
    own: torch.Tensor | None = None  # the model sent (row 0 of the stack)
    result: torch.Tensor | None = None  # the model the next checkpoint holds
    note: str = ""
    aggregated: bool = False

    def sent(self) -> torch.Tensor:
        """The model this round sends (set once training ended)."""
        assert self.own is not None, "the round has not trained yet"
        return self.own

    def record(self, round_: int, accepted: int, rejected: Counter, bytes_sent: int, now: float) -> RoundRecord:
        return RoundRecord(round_, self.train, self.eval, accepted, rejected, self.aggregated, self.note,
                           bytes_sent, now - self.started, self.train_s, self.eval_s, self.personal_eval)

    def trained(self) -> dict:
        """The `trained` event's details: training and held-out metrics, the personal model's
        prefixed `personal_` (its training) and `personal_eval_`."""
        return {**self.train, **{f"eval_{k}": v for k, v in self.eval.items()},
                **{f"personal_{k}": v for k, v in self.personal_train.items()},
                **{f"personal_eval_{k}": v for k, v in self.personal_eval.items()}}


def log_round(rec: RoundRecord, neighbours: int) -> None:
    """One line per round for people, with the same facts as fields for JSON logs."""
    log.info("round %d: train %s; eval %s; %d/%d neighbours accepted%s, %.2fs", rec.round,
             rec.train.line(), rec.eval.line(), rec.accepted, neighbours,
             f" ({rec.note})" if rec.note else "", rec.seconds, extra={
                 "event": "round", "round": rec.round, "accepted": rec.accepted, "neighbours": neighbours,
                 "rejected": dict(rec.rejected), "aggregated": rec.aggregated, "note": rec.note,
                 "train": metric_dict(rec.train), "eval": metric_dict(rec.eval), "seconds": round(rec.seconds, 3)})
