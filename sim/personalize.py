"""Personalization in the batched engine, on (c, d) rows of many nodes at once, with the
peer's own pieces (peer.learning.personal: the [personalization] table, `Split`, the Ditto
pull; aggregation.similarity: the similarity-aware mixing):

- "shared": one model for the fleet, as without the table;
- "local_head": the columns of the parameters named `personal` never leave a node: the
  stack a node aggregates holds only the shared columns (what its neighbours send, what an
  attacker crafts from), and the aggregate is written into them; the personal columns stay;
- "ditto": beside the fleet model (trained and aggregated as in "shared") each node trains a
  personal model with the learner's own steps on its own batches, then pulls it towards the
  fleet model the round started from (`ditto_pull`, as a peer does); the node is scored on its
  own held-out data with the personal model;
- similarity = true: a node mixes what it receives with aggregation.similarity (neighbours
  close to its own model weigh more, each pull clipped to a radius set by f) instead of the
  configured rule.
"""

from __future__ import annotations

import torch

from aggregation.similarity import similarity_mix
from peer.errors import ConfigError
from peer.learning.personal import Personalization, Split, parse_personalization

from .errors import ScenarioError

__all__ = ["Personalization", "of", "split_of", "mix"]


def table(sc) -> dict:
    """The scenario's [personalization] as the TOML table a peer.toml would hold."""
    return {"mode": sc.personalization, "personal": list(sc.personal), "lambda": sc.ditto_lambda,
            "similarity": sc.similarity}


def of(sc) -> Personalization:
    try:
        return parse_personalization(table(sc), "personalization", similarity_supported=True)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None


def split_of(pers: Personalization, module: torch.nn.Module) -> Split | None:
    """local_head: which columns are shared (errors name the model's parameters); else None."""
    if not pers.split_parameters:
        return None
    named = list(module.named_parameters())
    try:
        return Split([n for n, _ in named], [tuple(p.shape) for _, p in named], pers.personal)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None


def mix(stack: torch.Tensor, weights: torch.Tensor | None, f: int) -> torch.Tensor:
    """Similarity-aware mixing of (B, n, d) stacks, own rows first: (B, d)."""
    return similarity_mix(stack, weights, f=f).value
