"""A peer's differential privacy: what each round releases, what it costs, and the budget.

`[privacy]` in peer.toml (privacy.settings.PrivacySettings) picks a mode:
- `update`: the change a round of training made to the model is clipped to norm `clip` and
  Gaussian noise of std `noise_multiplier * clip` is added before the model is sent (works with
  any learner; protects everything a gateway's data contributed to that round);
- `record`: DP-SGD inside local training (per-example clipping and noise, Poisson-sampled
  batches), for learners that offer `enable_record_dp` (the built-in one does).

Each round's release is composed by dp-accounting's accountant (privacy.accountant). Before a
round trains, the peer asks whether the release would take epsilon past `privacy.epsilon`; if it
would, the peer stops training and sending for good (it keeps receiving and aggregating, which
costs its data nothing) and says so in its log, status and metrics.

Every release is a `privacy` event in the provenance log, written before the update leaves,
with the accountant's whole state: after a crash the peer continues from the log's last such
event (never from less than it released), and `gossipfl audit show --kind privacy` is the ledger.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gossip.lazy import lazy

from ..errors import ConfigError, PeerError
from ..state.provenance import EventKind, NewEvent, ProvenanceLog

log = logging.getLogger("gossipfl.peer")
if TYPE_CHECKING:
    from privacy import accountant, dp
else:
    dp, accountant = lazy("privacy.dp"), lazy("privacy.accountant")


# what `epsilon` (add/remove) and `epsilon_replace` (replacement) are about, per mode
RELATIONS = {"update": "a gateway's whole data", "record": "one training record"}


class PrivacyLedgerError(PeerError):
    """The provenance log's privacy ledger cannot be read back: continuing could overspend."""


@dataclass
class RoundPrivacy:
    """What one round did for privacy: the details of its `privacy` event."""

    details: dict
    send: bool


class PeerPrivacy:
    """The accountant and the noise of one peer (mode `off`: a no-op that never refuses)."""

    def __init__(self, settings, learner, generator=None, split=None):
        self.settings = s = settings
        self.split = split  # personalization local_head: only the shared part is released (and noised)
        self.mode = s.mode
        self.exhausted = False
        self.release: accountant.Release | None = None
        self.acct: accountant.Accountant | None = None
        self._transmit, self._start = True, None  # this round's, between before_ and after_training
        if self.mode == "off":
            return
        self.gen = generator if generator is not None else dp.secure_generator()
        if self.mode == "record":
            enable = getattr(learner, "enable_record_dp", None)
            if enable is None:
                raise ConfigError(f"privacy.mode = \"record\" needs a learner that supports DP-SGD; "
                                  f"{type(learner).__name__} has no enable_record_dp(clip, sigma, generator). "
                                  "Use privacy.mode = \"update\" (any learner) or the built-in learner")
            q, steps = enable(s.clip, s.noise_multiplier, self.gen)
            self.release = accountant.Release(s.noise_multiplier, float(q), int(steps))
        else:
            self.release = accountant.Release(s.noise_multiplier, 1.0, 1)
        self.acct = accountant.Accountant(s.accountant, s.delta)

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def _kept(self) -> tuple[accountant.Accountant, accountant.Release]:
        """The accountant and the round's release: both set whenever privacy is on."""
        assert self.acct is not None and self.release is not None, "privacy is off"
        return self.acct, self.release

    def epsilon(self) -> float:
        """Epsilon under add/remove (of a gateway's data in update mode, of a record in record mode)."""
        return self.acct.epsilon() if self.acct is not None else 0.0

    def signed(self) -> float:
        """The cumulative epsilon an update carries in its signed header (0 without privacy; the
        largest float for an unbounded one): neighbours refuse a sender whose value goes down."""
        eps = self.epsilon()
        return eps if math.isfinite(eps) else sys.float_info.max

    def epsilon_replace(self) -> float:
        """The same releases' epsilon under replacement (one unit swapped for another)."""
        return self.acct.epsilon_replace() if self.acct is not None else 0.0

    def restore(self, prov: ProvenanceLog) -> None:
        """Continue the ledger from the log's last `privacy` event (the log has every release that
        ever left: it is written before the update is sent)."""
        if not self.on:
            return
        ev = prov.last_event(EventKind.PRIVACY)
        if ev is None:
            return
        state = ev.details.get("accountant") if isinstance(ev.details, dict) else None
        try:
            restored = accountant.Accountant.from_state(state)
        except (ValueError, TypeError) as exc:
            raise PrivacyLedgerError(f"{prov.path}: privacy event {ev.seq} cannot be read back ({exc}); "
                                     "refusing to continue: the privacy budget spent is unknown") from None
        acct, _ = self._kept()
        if restored.kind != acct.kind or restored.delta != self.settings.delta:
            raise PrivacyLedgerError(
                f"{prov.path}: the ledger was kept with accountant {restored.kind!r} and delta {restored.delta:g}; "
                f"peer.toml now says {acct.kind!r} and {self.settings.delta:g}: changing them would restart "
                "the accounting. Put privacy.accountant and privacy.delta back")
        self.acct = restored
        self.exhausted = bool(ev.details.get("exhausted"))
        log.info("privacy ledger: epsilon %.4g spent so far (budget %s)", self.epsilon(), _budget(self.settings))

    def begin_round(self, round_: int) -> RoundPrivacy | None:
        """Before training: may this round release an update? None when privacy is off; else the
        round's plan (send=False once the budget would be exceeded: logged once)."""
        if not self.on:
            return None
        acct, release = self._kept()
        if not self.exhausted and acct.allows(release, self.settings.epsilon):
            return RoundPrivacy({}, True)
        first = not self.exhausted
        self.exhausted = True
        if first:
            log.warning("privacy budget: another round would take epsilon from %.4g past %s; this peer stops "
                        "training and sending (it keeps aggregating what its neighbours send)",
                        self.epsilon(), _budget(self.settings))
        return RoundPrivacy(self._details(exhausted=True), False) if first else RoundPrivacy({}, False)

    def before_training(self, round_: int, flat) -> tuple[bool, list[NewEvent]]:
        """May this round release an update (train and send)? And the events to log (the budget
        ran out: said once). Update mode remembers the model training starts from."""
        plan = self.begin_round(round_)
        self._transmit = plan is None or plan.send
        self._start = flat.detach().clone() if self._transmit and self.mode == "update" else None
        return self._transmit, [self.event(round_, plan.details)] if plan is not None and plan.details else []

    def after_training(self, round_: int, flat) -> list[NewEvent]:
        """Noise (update mode) and account the release before anything is sent: its event."""
        if not (self._transmit and self.on):
            return []
        return [self.event(round_, self.spend(self.privatize(self._start, flat)))]

    def privatize(self, start, flat) -> dict:
        """Update mode, after training: replace the model by start + the clipped, noised change."""
        if self.mode != "update":
            return {}
        if self.split is not None:
            new, details = dp.privatize_model(self.split.shared(start), self.split.shared(flat), self.settings.clip,
                                              self.settings.noise_multiplier, self.gen)
            self.split.put_shared(flat, new)
            return details
        new, details = dp.privatize_model(start, flat, self.settings.clip, self.settings.noise_multiplier, self.gen)
        flat.copy_(new)
        return details

    def spend(self, extra: dict) -> dict:
        """The round's release is about to leave: compose it; returns the `privacy` event's details."""
        acct, release = self._kept()
        acct.spend(release)
        return {**self._details(exhausted=False), **extra}

    def _details(self, exhausted: bool) -> dict:
        (acct, r), s = self._kept(), self.settings
        return {"mode": s.mode, "sigma": r.sigma, "clip": s.clip, "q": r.q, "steps": r.steps, "delta": s.delta,
                "epsilon": _finite(self.epsilon()), "epsilon_replace": _finite(self.epsilon_replace()),
                "relation": RELATIONS[s.mode], "budget": _finite(s.epsilon), "exhausted": exhausted,
                "accountant": acct.state()}

    def event(self, round_: int, details: dict) -> NewEvent:
        return NewEvent(EventKind.PRIVACY, round_, details=details)

    def status(self) -> dict:
        """For the status message and metrics."""
        if not self.on:
            return {}
        return {"mode": self.mode, "epsilon": _finite(self.epsilon()), "epsilon_replace": _finite(self.epsilon_replace()),
                "relation": RELATIONS[self.mode], "budget": _finite(self.settings.epsilon), "exhausted": self.exhausted}


def _finite(x: float) -> float | None:
    """JSON has no infinity: an unlimited budget (or epsilon) is null."""
    return float(x) if math.isfinite(x) else None


def _budget(s) -> str:
    return f"{s.epsilon:g}" if math.isfinite(s.epsilon) else "unlimited"
