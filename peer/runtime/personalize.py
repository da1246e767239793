"""A peer's `[personalization]` at run time: what of its model meets the wire, and its
personal model (peer.learning.personal has the pure parts).

- shared: the whole model is sent and aggregated (nothing here changes anything).
- local_head: only the shared coordinates are sent, checked against the shared part's schema
  and size, and aggregated; the aggregate is written into them, the personal ones stay. The
  checkpoint holds the whole model, so a restart restores the head and export writes it.
- ditto: the whole fleet model is sent as in shared; beside it a personal copy trains on the
  same data with its own learner and is pulled towards the fleet model the round started from
  (`ditto_pull`). It is checkpointed with its learner's state and is what export writes.
"""

from __future__ import annotations

import asyncio
import copy
from typing import TYPE_CHECKING

from ..learning.classification import steps_per_round
from ..learning.learner import Metrics, make_learner
from ..learning.model import FlatModel
from ..learning.personal import Personalization, Split, ditto_pull, ditto_strength

if TYPE_CHECKING:
    import torch

    from ..state.checkpoint import Checkpoint


class Personalizer:
    """The peer's side of personalization; `model` is the model the peer sends from."""

    def __init__(self, cfg: Personalization, model: FlatModel, split: Split | None, data, train_cfg,
                 seed: int, base=None):
        self.cfg, self.model, self.split, self.train_cfg, self.data = cfg, model, split, train_cfg, data
        self.personal: FlatModel | None = None
        self.learner = None
        self._fleet: torch.Tensor | None = None  # ditto: the fleet model this round started from
        if cfg.personal_model:
            self.personal = FlatModel(copy.deepcopy(model.module))
            self.learner = make_learner(self.personal.module, self.personal.flat, data, train_cfg,
                                        seed=seed + 1, base=base)

    @property
    def mode(self) -> str:
        return self.cfg.mode

    @property
    def serves(self) -> str:
        """Which model the gateway uses (and export writes): "personal" or "shared"."""
        return "shared" if self.cfg.mode == "shared" else "personal"

    # --- the wire --------------------------------------------------------------------

    def outgoing(self) -> torch.Tensor:
        """The part of the model that leaves the gateway (the whole model, or a copy of its shared part)."""
        flat = self.model.flat.detach()
        return self.split.shared(flat) if self.split is not None else flat

    def adopt(self, value: torch.Tensor) -> None:
        """The round's aggregate becomes the model (local_head: its shared part)."""
        if self.split is not None:
            self.split.put_shared(self.model.flat, value)
        else:
            self.model.set(value)

    def full(self, result: torch.Tensor | None) -> torch.Tensor | None:
        """The whole model a checkpoint holds, from what the round produced (None: the current model)."""
        if result is None or self.split is None:
            return result
        return self.split.merge(result, self.split.personal(self.model.flat.detach()))

    # --- ditto's personal model ------------------------------------------------------

    def round_starts(self) -> None:
        """Before training: remember the fleet model the personal one is pulled towards."""
        if self.personal is not None:
            self._fleet = self.model.flat.detach().clone()

    async def train(self, fleet_learner, round_: int, transmit: bool = True, in_thread: bool = False
                    ) -> tuple[Metrics, Metrics]:
        """One round of training (none once no more releases are allowed: the own data is left
        alone, the model is only aggregated): the fleet
        model's (`fleet_learner`) as without personalization, then (ditto) the personal model's.
        `in_thread`: off the event loop. (fleet metrics, personal metrics)."""
        if not transmit:
            return Metrics(), Metrics()
        if in_thread:
            return await asyncio.to_thread(self._train, fleet_learner, round_)
        return self._train(fleet_learner, round_)

    def _train(self, fleet_learner, round_: int) -> tuple[Metrics, Metrics]:
        self.round_starts()
        fleet = fleet_learner.train(round_)
        return fleet, self._train_personal(round_)

    def _train_personal(self, round_: int) -> Metrics:
        if self.personal is None or self.learner is None or self._fleet is None:
            return Metrics()
        metrics = self.learner.train(round_)
        steps = steps_per_round(self.train_cfg, len(self.data.y_train))
        ditto_pull(self.personal.flat, self._fleet, ditto_strength(self.train_cfg.lr, self.cfg.lam, steps))
        self._fleet = None
        return metrics

    def evaluate(self, fleet: Metrics) -> Metrics:
        """The personal model on the held-out split (local_head: the model itself, `fleet`)."""
        if self.learner is not None:
            return self.learner.evaluate()
        return fleet if self.split is not None else Metrics()

    def finite(self) -> bool:
        import torch
        return self.personal is None or bool(torch.isfinite(self.personal.flat).all())

    def state(self) -> tuple[torch.Tensor | None, dict]:
        """(personal parameters, its learner's state) for the checkpoint; (None, {}) without one."""
        if self.personal is None or self.learner is None:
            return None, {}
        return self.personal.flat.detach().clone(), {k: v.clone() for k, v in self.learner.state().items()}

    def restore(self, ck: Checkpoint) -> None:
        """From a checkpoint: the personal model and its learner's state (a checkpoint written
        before ditto was switched on has none: the personal model starts from the fleet's)."""
        if self.personal is None or self.learner is None:
            return
        if ck.personal is not None:
            self.personal.set(ck.personal)
            self.learner.load_state(ck.personal_learner)
        else:
            self.personal.set(self.model.flat.detach())
