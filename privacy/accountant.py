"""Epsilon of a peer's releases so far, from dp_accounting (no hand-written composition).

A round's releases are a `Release`: update mode is one Gaussian mechanism on the clipped
change (noise multiplier sigma, sensitivity C, add/remove of the peer's data);
record mode is `steps` DP-SGD steps, each a Poisson-subsampled Gaussian with sampling rate q.
The accountant composes each spent release into a live library accountant (a round costs one
library composition: asking epsilon_if then spending the same release composes once), and its
state is the releases merged per (sigma, q) (a steps total each): a few numbers however long
the peer runs, recomposed by the library when read back.

kind "rdp": dp_accounting's RdpAccountant. kind "pld": its PLDAccountant (tighter) with a
value discretization of PLD_DISCRETIZATION. The PLD's work grows with epsilon and with the
number of steps (seconds, then minutes), so once the RDP bound exceeds PLD_LIMIT or the
ledger holds more than PLD_MAX_STEPS steps, the RDP epsilon (also a valid bound) is reported.
A PLD composed round by round and the same ledger recomposed after a restart may differ in
the last digits (discretization); both are upper bounds.

Two neighbouring relations (`epsilon()` and `epsilon_replace()`): add/remove (the datasets
differ by one unit being present or absent: a gateway's whole data in update mode, one record
in record mode) and replacement (one unit swapped for another, which moves a clipped change or
gradient by up to 2C: twice the sensitivity). The budget is enforced on add/remove, the
relation the peer's settings speak of; replacement is reported beside it for comparison with
work that uses it. Replacement is dp_accounting's PLD under REPLACE_ONE (whatever `kind` says:
its RDP accountant does not take Poisson sampling under replacement); where the PLD is out of
its range, update mode falls back to the RDP bound of a Gaussian of sensitivity 2C (sigma / 2)
and record mode reports infinity (no bound computed).
"""

from __future__ import annotations

import copy
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass

KINDS = ("rdp", "pld")
MAX_EVENT_KINDS = 64  # distinct (sigma, q) pairs in one ledger
MAX_STEPS = 10**9  # a (sigma, q) pair's steps total: bounds the library's work on a hostile state
SIGMA_RANGE = (1e-2, 1e4)  # outside it epsilon is useless (huge) or the noise drowns the model
MIN_Q = 1e-6  # a batch of 1 from a million records
PLD_DISCRETIZATION = 1e-3  # dp_accounting's default 1e-4 costs ~1 s a round for a few rounds
PLD_LIMIT = 64.0  # above this RDP epsilon, PLD's work is large and its answer meaningless
PLD_MAX_STEPS = 10**6  # beyond, one PLD composition can take minutes (measured: <= 3 s within)


class PrivacyStateError(ValueError):
    """A release or an accountant state (from disk) that is not a valid ledger."""


def _real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def release_problem(sigma, q, steps) -> str | None:
    """Why (sigma, q, steps) is not a release the accountant takes, or None."""
    lo, hi = SIGMA_RANGE
    if not _real(sigma) or not lo <= sigma <= hi:
        return f"sigma must be a number in [{lo:g}, {hi:g}], got {sigma!r:.40}"
    if not _real(q) or not MIN_Q <= q <= 1:
        return f"q must be a number in [{MIN_Q:g}, 1], got {q!r:.40}"
    if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps <= MAX_STEPS:
        return f"steps must be a whole number in 0..{MAX_STEPS}, got {steps!r:.40}"
    return None


@dataclass(frozen=True)
class Release:
    """One round's releases: Release(sigma) in update mode, Release(sigma, q, steps) in record mode."""

    sigma: float
    q: float = 1.0
    steps: int = 1

    def __post_init__(self):
        problem = release_problem(self.sigma, self.q, self.steps)
        if problem:
            raise PrivacyStateError(f"release: {problem}")


@contextmanager
def _quiet_library():
    """dp_accounting logs a warning per RDP order that fails to converge (it then drops the order,
    soundly); a gateway would print them every round."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def library_event(sigma: float, q: float):
    """The dp_accounting event of one step: Gaussian, Poisson-subsampled when q < 1."""
    import dp_accounting as dpa

    event = dpa.GaussianDpEvent(sigma)
    return event if q == 1 else dpa.PoissonSampledDpEvent(q, event)


class _Composition:
    """The library's accountants for what was spent: RDP always, PLD too while affordable."""

    def __init__(self, kind: str, delta: float):
        from dp_accounting import pld, rdp

        self.delta, self.steps = delta, 0
        self.rdp = rdp.RdpAccountant()
        self.pld = pld.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION) if kind == "pld" else None

    def copy(self) -> _Composition:
        return copy.deepcopy(self)

    def add(self, sigma: float, q: float, steps: int) -> None:
        if not steps:
            return
        event = library_event(sigma, q)
        self.steps += steps
        with _quiet_library():
            self.rdp.compose(event, steps)
            if self.pld is not None:
                if self.steps <= PLD_MAX_STEPS and self.rdp.get_epsilon(self.delta) <= PLD_LIMIT:
                    self.pld.compose(event, steps)
                else:
                    self.pld = None  # from now on the RDP bound

    def epsilon(self) -> float:
        with _quiet_library():
            eps = float((self.rdp if self.pld is None else self.pld).get_epsilon(self.delta))
        return math.inf if math.isnan(eps) else max(eps, 0.0)


def replacement_epsilon(steps: dict[tuple[float, float], int], delta: float) -> float:
    """Epsilon under the replace-one relation of the releases (sigma, q) -> steps."""
    import dp_accounting as dpa
    from dp_accounting import pld, rdp

    total = sum(steps.values())
    if not total:
        return 0.0
    with _quiet_library():
        if total <= PLD_MAX_STEPS:
            acc = pld.PLDAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE,
                                    value_discretization_interval=PLD_DISCRETIZATION)
            bound = rdp.RdpAccountant()  # add/remove at sigma / 2 bounds the work (as for add/remove)
            for (sigma, q), n in sorted(steps.items()):
                bound.compose(library_event(sigma / 2, q), n)
            if bound.get_epsilon(delta) <= 2 * PLD_LIMIT:
                for (sigma, q), n in sorted(steps.items()):
                    acc.compose(library_event(sigma, q), n)
                eps = float(acc.get_epsilon(delta))
                return math.inf if math.isnan(eps) else max(eps, 0.0)
        if any(q < 1 for _, q in steps):
            return math.inf
        acc = rdp.RdpAccountant()
        for (sigma, _), n in sorted(steps.items()):
            acc.compose(dpa.GaussianDpEvent(sigma / 2), n)
        eps = float(acc.get_epsilon(delta))
    return math.inf if math.isnan(eps) else max(eps, 0.0)


class Accountant:
    """A peer's privacy ledger: spend a round's Release, ask epsilon (now, or if it spent one more)."""

    def __init__(self, kind: str = "rdp", delta: float = 1e-5):
        if kind not in KINDS:
            raise PrivacyStateError(f"accountant kind must be one of {', '.join(KINDS)}, got {kind!r:.40}")
        if not _real(delta) or not 0 < delta < 1:
            raise PrivacyStateError(f"delta must be a number with 0 < delta < 1, got {delta!r:.40}")
        self.kind, self.delta = kind, float(delta)
        self._steps: dict[tuple[float, float], int] = {}  # (sigma, q) -> steps spent
        self._composition: _Composition | None = None  # built on first use: dp_accounting loads then
        self._epsilon = 0.0
        self._next: tuple[Release, _Composition, float] | None = None  # the last epsilon_if
        self._replace: tuple[tuple, float] | None = None  # (the steps it was computed for, epsilon)

    def _room(self, release: Release) -> tuple[float, float]:
        key = (float(release.sigma), float(release.q))
        if key not in self._steps and len(self._steps) >= MAX_EVENT_KINDS:
            raise PrivacyStateError(f"more than {MAX_EVENT_KINDS} distinct (sigma, q) releases in one ledger")
        if self._steps.get(key, 0) + release.steps > MAX_STEPS:
            raise PrivacyStateError(f"more than {MAX_STEPS} steps at sigma {key[0]:g}, q {key[1]:g}")
        return key

    def _base(self) -> _Composition:
        if self._composition is None:
            self._composition = _Composition(self.kind, self.delta)
        return self._composition

    def epsilon(self) -> float:
        """Epsilon under add/remove (the budget's relation)."""
        return self._epsilon

    def epsilon_replace(self) -> float:
        """Epsilon of the same releases under replacement (see the module docstring)."""
        key = tuple(sorted(self._steps.items()))
        if self._replace is None or self._replace[0] != key:
            self._replace = (key, replacement_epsilon(dict(key), self.delta))
        return self._replace[1]

    def epsilon_if(self, release: Release) -> float:
        """Epsilon after `release`, without spending it."""
        if not release.steps:
            return self._epsilon
        if self._next is None or self._next[0] != release:
            key = self._room(release)
            after = self._base().copy()
            after.add(*key, release.steps)
            self._next = (release, after, after.epsilon())
        return self._next[2]

    def allows(self, release: Release, budget: float) -> bool:
        """Whether spending `release` keeps epsilon within `budget` (inf: always)."""
        return budget == math.inf or self.epsilon_if(release) <= budget

    def spend(self, release: Release) -> float:
        """Record a round's release; returns the new epsilon."""
        if release.steps:
            eps = self.epsilon_if(release)
            key = self._room(release)
            self._steps[key] = self._steps.get(key, 0) + release.steps
            after = self._next
            assert after is not None  # epsilon_if just computed it
            self._composition, self._epsilon, self._next = after[1], eps, None
        return self._epsilon

    def state(self) -> dict:
        """msgpack/JSON-safe: {"kind", "delta", "events": [[sigma, q, steps_total], ...]}."""
        return {"kind": self.kind, "delta": self.delta,
                "events": [[s, q, n] for (s, q), n in sorted(self._steps.items())]}

    @classmethod
    def from_state(cls, d) -> Accountant:
        """An accountant from state() read back from disk: every field checked, PrivacyStateError
        (one line) on anything else."""
        if not isinstance(d, dict) or set(d) != {"kind", "delta", "events"}:
            keys = sorted(map(str, d))[:8] if isinstance(d, dict) else type(d).__name__
            raise PrivacyStateError(f"privacy state must be a map of kind, delta, events; got {keys}")
        acc = cls(d["kind"], d["delta"])
        events = d["events"]
        if not isinstance(events, list | tuple) or len(events) > MAX_EVENT_KINDS:
            raise PrivacyStateError(f"privacy state: events must be a list of at most {MAX_EVENT_KINDS} entries")
        for i, e in enumerate(events):
            if not isinstance(e, list | tuple) or len(e) != 3:
                raise PrivacyStateError(f"privacy state: events[{i}] must be [sigma, q, steps]")
            problem = release_problem(*e)
            if problem:
                raise PrivacyStateError(f"privacy state: events[{i}]: {problem}")
            key = (float(e[0]), float(e[1]))
            if key in acc._steps:
                raise PrivacyStateError(f"privacy state: events[{i}] repeats sigma {key[0]:g}, q {key[1]:g}")
            if e[2]:
                acc._steps[key] = e[2]
        if acc._steps:
            composition = acc._base()
            for (sigma, q), steps in sorted(acc._steps.items()):
                composition.add(sigma, q, steps)
            acc._epsilon = composition.epsilon()
        return acc

    def __repr__(self) -> str:
        return f"Accountant({self.kind}, delta={self.delta:g}, epsilon={self._epsilon:.4g})"
