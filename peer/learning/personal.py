"""Personalization: which parameters never leave a gateway, and the personal model beside the
fleet's, as pure functions shared by the peer and the simulator.

`[personalization]` (peer.toml and scenarios):

    mode = "shared"        # "shared" (one fleet model) | "local_head" | "ditto"
    personal = ["head.*"]  # local_head: fnmatch patterns over the model's parameter names
    lambda = 0.1           # ditto: how strongly the personal model is pulled towards the fleet's
    similarity = false     # mix neighbours by closeness to the own model (aggregation.similarity)

- local_head (FedPer/FedRep): the parameters whose names match `personal` are the gateway's
  own; only the others (the shared part) are signed, sent and aggregated. `Split` is the index
  arithmetic: the shared and personal coordinates of a flat parameter vector (or of (c, d)
  rows of c nodes), split and merged without a Python loop over coordinates.
- ditto: every gateway trains the fleet model as in "shared" and a personal copy that is
  pulled towards the fleet model by lambda/2 * ||w_personal - w_fleet||^2. The learner's own
  steps on the personal model are followed by the exact proximal step of that term
  (`ditto_pull`): w <- (w + a * w_fleet) / (1 + a) with a = lr * lambda * steps, which is
  stable for every lambda (a gradient step on the term would overshoot for lr * lambda > 2).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gossip.lazy import lazy

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")  # a config is read without torch

MODES = ("shared", "local_head", "ditto")
FIELDS = ("mode", "personal", "lambda", "similarity")
MAX_PATTERNS = 256
MAX_LAMBDA = 1e6
SIMILARITY_UNSUPPORTED = ("personalization.similarity = true is not supported by what reads this table (it cannot "
                          "mix neighbours by similarity); remove it or set it to false")


@dataclass
class Personalization:
    """The parsed `[personalization]` table (`lam` is the TOML key `lambda`)."""

    mode: str = "shared"
    personal: list[str] = field(default_factory=lambda: ["head.*"])
    lam: float = 0.1
    similarity: bool = False

    @property
    def split_parameters(self) -> bool:
        """Whether only part of the model leaves the gateway (local_head)."""
        return self.mode == "local_head"

    @property
    def personal_model(self) -> bool:
        """Whether a second, personal model is trained beside the fleet model (ditto)."""
        return self.mode == "ditto"


def parse_personalization(raw: Any, where: str = "personalization", similarity_supported: bool = False
                          ) -> Personalization:
    """`[personalization]` from a TOML table (a dict); ConfigError naming the field and what is
    allowed. `similarity_supported`: whether the caller can mix by similarity (a peer can)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)} in [{where}]; allowed: {', '.join(FIELDS)}")
    d = Personalization()
    mode = raw.get("mode", d.mode)
    if mode not in MODES:
        raise ConfigError(f"{where}.mode must be one of {', '.join(MODES)}, got {mode!r:.80}")
    personal = raw.get("personal", d.personal)
    if not isinstance(personal, list) or not all(isinstance(p, str) and p and p.isprintable() for p in personal) \
            or len(personal) > MAX_PATTERNS:
        raise ConfigError(f"{where}.personal must be a list of at most {MAX_PATTERNS} non-empty name patterns "
                          f"(fnmatch, like \"head.*\"), got {personal!r:.80}")
    lam = raw.get("lambda", d.lam)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) \
            or not 0 < lam <= MAX_LAMBDA:
        raise ConfigError(f"{where}.lambda must be a number > 0 and at most {MAX_LAMBDA:g} (the pull of the personal "
                          f"model towards the fleet's), got {lam!r:.80}")
    similarity = raw.get("similarity", d.similarity)
    if not isinstance(similarity, bool):
        raise ConfigError(f"{where}.similarity must be true or false, got {similarity!r:.80}")
    if mode == "local_head" and not personal:
        raise ConfigError(f"{where}.personal must name at least one parameter pattern with mode = \"local_head\" "
                          "(else nothing stays on the gateway: use mode = \"shared\")")
    if similarity and not similarity_supported:
        raise ConfigError(SIMILARITY_UNSUPPORTED.replace("personalization.", f"{where}."))
    return Personalization(mode, list(personal), float(lam), similarity)


def personal_names(names: Sequence[str], patterns: Sequence[str], where: str = "personalization.personal"
                   ) -> list[str]:
    """The parameter names (in model order) that match any pattern. Every pattern must match
    something and something must stay shared; errors list the model's names to pick from."""
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    listing = ", ".join(names[:24]) + (", ..." if len(names) > 24 else "")
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise ConfigError(f"{where}: pattern {p!r} matches no parameter of this model; its parameters are: "
                              f"{listing}")
    if len(chosen) == len(names):
        raise ConfigError(f"{where}: {', '.join(patterns)} match every parameter of this model, nothing would be "
                          f"shared; name only the gateway's own layers (the model's parameters: {listing})")
    return chosen


class Split:
    """The shared and personal coordinates of a flat parameter vector laid out as `names` and
    `shapes` (the model's order). Works on (d,) vectors and on (..., d) rows."""

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]], patterns: Sequence[str],
                 where: str = "personalization.personal"):
        if len(names) != len(shapes):
            raise ValueError("one shape per name")
        self.names, self.shapes = list(names), [tuple(int(d) for d in s) for s in shapes]
        personal = set(personal_names(self.names, patterns, where))
        sizes = [math.prod(s) for s in self.shapes]
        keep = torch.repeat_interleave(torch.tensor([n not in personal for n in self.names]),
                                       torch.tensor(sizes, dtype=torch.long))
        self.size = int(sum(sizes))
        self.shared_index = torch.nonzero(keep).flatten()
        self.personal_index = torch.nonzero(~keep).flatten()
        self.shared_names = [n for n in self.names if n not in personal]
        self.personal_names = [n for n in self.names if n in personal]
        self.shared_shapes = [s for n, s in zip(self.names, self.shapes, strict=True) if n not in personal]

    @property
    def shared_size(self) -> int:
        return int(self.shared_index.numel())

    @property
    def personal_size(self) -> int:
        return int(self.personal_index.numel())

    @property
    def shared_schema(self) -> bytes:
        """The schema hash of the shared part: what updates carry and what neighbours check."""
        from .model import schema_hash
        return schema_hash(self.shared_names, self.shared_shapes)

    def shared(self, full: torch.Tensor) -> torch.Tensor:
        """A copy of the shared coordinates of `full` (..., d) -> (..., shared_size)."""
        return full.index_select(-1, self.shared_index)

    def personal(self, full: torch.Tensor) -> torch.Tensor:
        """A copy of the personal coordinates of `full` (..., d) -> (..., personal_size)."""
        return full.index_select(-1, self.personal_index)

    def put_shared(self, full: torch.Tensor, shared: torch.Tensor) -> None:
        """Write `shared` into the shared coordinates of `full`, in place (the personal ones stay)."""
        with torch.no_grad():
            full.index_copy_(full.dim() - 1, self.shared_index, shared.to(full.dtype))

    def merge(self, shared: torch.Tensor, personal: torch.Tensor) -> torch.Tensor:
        """A full vector (or rows) from its shared and personal parts."""
        out = torch.empty(*shared.shape[:-1], self.size, dtype=shared.dtype)
        out.index_copy_(out.dim() - 1, self.shared_index, shared)
        out.index_copy_(out.dim() - 1, self.personal_index, personal.to(shared.dtype))
        return out


def split_of(cfg: Personalization, model: Any) -> Split | None:
    """local_head: the split of `model` (anything with `names` and `shapes`, e.g. a FlatModel;
    ConfigError if a pattern names no parameter); None in the other modes."""
    return Split(model.names, model.shapes, cfg.personal) if cfg.split_parameters else None


def ditto_strength(lr: float, lam: float, steps: int) -> float:
    """a of `ditto_pull`: the proximal step of `steps` learner steps at rate `lr` on
    lambda/2 * ||w - w_fleet||^2 taken at once."""
    return float(lr) * float(lam) * max(1, int(steps))


def ditto_pull(personal: torch.Tensor, fleet: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
    """The proximal step towards the fleet model, in place on `personal` (also returned):
    w <- (w + a * w_fleet) / (1 + a). `strength` a: a number, or one per row of (c, d) rows."""
    a = torch.as_tensor(strength, dtype=personal.dtype)
    if a.dim() == 1 and personal.dim() == 2:
        a = a[:, None]
    with torch.no_grad():
        personal.add_(a * fleet.to(personal.dtype))
        personal.div_(1 + a)
    return personal
