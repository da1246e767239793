"""secure_mean as a stack rule: the plain mean of rows clipped to [-bound, bound].

A peer never calls this for its own aggregation: with secure aggregation it only ever holds
the sum of its neighbours' masked inputs (double masking: privacy.secagg, peer.runtime.secure_mean), which
is exactly the sum of their updates clipped to the bound and rounded to fixed point. Drop-outs
and the threshold are the protocol's; here every row is summed. This is the
same value without masks, so the simulator's engines and `gossipfl rules` can run and name it.
"""

from __future__ import annotations

import torch

from .coordinate import weighted_mean
from .report import BatchReport

DEFAULT_BOUND = 4.0  # model parameters rarely leave [-4, 4]; documented in peer.runtime.secure_mean


def secure_mean(stack: torch.Tensor, weights: torch.Tensor | None, *, f: int = 0, bound: float = DEFAULT_BOUND,
                threshold: str = "majority") -> tuple[torch.Tensor, BatchReport]:
    batch, n = stack.shape[:2]
    b = float(bound)
    value = weighted_mean(stack.clamp(-b, b), None)
    return value, BatchReport("secure_mean", n, f, batch, details={"bound": b, "threshold": str(threshold)})
