"""Differential privacy in the batched engine: update mode, vectorized over nodes.

The protocol engine runs each peer's own privacy (peer.runtime.privacy_ledger). Here every node's round
change is clipped to `clip` and noised with N(0, (sigma * clip)^2) per value in one (c, d)
operation, with noise from the counter-based streams (sim.streams) so that a node's noise does
not depend on its chunk, shard or Ray actor. Box-Muller on 24-bit uniforms truncates the normal
at ~5.8 sigma: fine for measuring accuracy, never used on a gateway (privacy.dp there).

Every honest node releases once a round, so all spend the same epsilon; with a budget, nodes
stop training and sending once another round would exceed it (as peers do), which freezes the
models from that round on. Record mode (DP-SGD) is modelled by the protocol engine only.
"""

from __future__ import annotations

import numpy as np
import torch

from privacy.accountant import Accountant, Release
from privacy.dp import clip_rows

from . import streams
from .errors import ScenarioError
from .scenario import Scenario, privacy_settings


def update_privacy(sc: Scenario):
    """The scenario's privacy settings if the batched engine applies them (update mode), else None."""
    s = privacy_settings(sc)
    if s.mode == "record":
        raise ScenarioError('privacy.mode = "record" (DP-SGD) is modelled by the protocol engine only: set '
                            'engine = "protocol", or use privacy.mode = "update" on the batched engine')
    return s if s.mode == "update" else None


def ledger(sc: Scenario) -> tuple[int, float | None, float | None]:
    """(rounds in which nodes train and send, the epsilon each honest node spent under add/remove
    and under replacement): all rounds, or as many as the budget allows; epsilon None without privacy."""
    s = update_privacy(sc)
    if s is None:
        return sc.rounds, None, None
    acct, release = Accountant(s.accountant, s.delta), Release(s.noise_multiplier, 1.0, 1)
    done = 0
    while done < sc.rounds and acct.allows(release, s.epsilon):
        acct.spend(release)
        done += 1
    return done, acct.epsilon(), acct.epsilon_replace()


def releases_allowed(sc: Scenario) -> int:
    return ledger(sc)[0]


def epsilon_spent(sc: Scenario) -> tuple[float | None, float | None]:
    """(add/remove, replacement)."""
    return ledger(sc)[1:]


def privatize_rows(sc: Scenario, start: torch.Tensor, trained: torch.Tensor, nodes: np.ndarray,
                   r: int) -> torch.Tensor:
    """start + clip(trained - start) + noise, for nodes (global indices) in round r: (c, d)."""
    s = privacy_settings(sc)
    clipped, _ = clip_rows(trained - start, s.clip)
    noise = streams.normal(sc.seed, streams.PRIVACY, nodes[:, None], r, np.arange(start.shape[1])[None, :])
    return start + clipped + noise.mul_(s.noise_multiplier * s.clip)
