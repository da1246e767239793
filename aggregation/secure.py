"""secure_mean as a stack rule: the plain mean of rows clipped to [-bound, bound].

A peer never calls this for its own aggregation: with secure aggregation it only ever holds
the sum of its neighbours' masked contributions (peer.runtime.secure_round, privacy.secure), which is
exactly the sum of their updates clipped to the bound and rounded to fixed point. This is the
same value without masks, so the simulator's engines and `gossipfl rules` can run and name it.
"""

from __future__ import annotations

import torch

from .coordinate import weighted_mean
from .report import BatchReport

DEFAULT_BOUND = 4.0  # model parameters rarely leave [-4, 4]; documented in peer.runtime.secure_round
DEFAULT_MIN_SENDERS = 2


def secure_mean(stack: torch.Tensor, weights: torch.Tensor | None, *, f: int = 0, bound: float = DEFAULT_BOUND,
                min_senders: int = DEFAULT_MIN_SENDERS) -> tuple[torch.Tensor, BatchReport]:
    batch, n = stack.shape[:2]
    b = float(bound)
    value = weighted_mean(stack.clamp(-b, b), None)
    return value, BatchReport("secure_mean", n, f, batch, details={"bound": b, "min_senders": int(min_senders)})
