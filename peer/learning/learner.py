"""The learner interface: the peer trains and evaluates through it and never assumes the task.

A learner is built once per peer by a factory named in `train.learner`:

    factory(model, flat, data, cfg, seed, **train.options) -> Learner

- model: the torch.nn.Module (its parameters are views into `flat`: update them in place,
  as every torch.optim optimizer does, never rebind them)
- flat:  the 1-D float32 tensor holding every parameter (what the peer sends and aggregates)
- data:  peer.learning.data.LocalData (x_train, y_train, x_eval, y_eval, classes); labels may be
  floats (regression) or all zeros (a loader that gave no labels)
- cfg:   peer.learning.classification.TrainConfig (local_steps, epochs, batch_size, lr, momentum, weight_decay)
- seed:  an int for the learner's own random generator

and it offers:

    train(round) -> {"loss": ..., ...}      one round of local training from the current model
    evaluate(x=None, y=None) -> {...}       on the held-out split, or on the x, y given
    state() -> {name: Tensor}               what a checkpoint must carry (optimizer state)
    load_state({name: Tensor})              restore it after a restart

Metrics are dicts of floats; "loss" is expected, everything else is the learner's choice
(accuracy, auroc, mae, ...). The built-in learner is "classification" (peer.learning.classification).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from gossip.lazy import lazy

from ..errors import ConfigError, PeerError

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch, nn = lazy("torch"), lazy("torch.nn")  # loaded when a learner is built, not to read a config

LEARNER_ARGUMENTS = ("model", "flat", "data", "cfg", "seed")  # what gossipfl passes every learner factory
BUILTIN_LEARNERS = {"classification": "peer.learning.classification:ClassificationLearner"}
MAX_METRICS = 64
MAX_METRIC_NAME = 64
MAX_STATE_TENSORS = 4096
STATE_FACTOR = 4  # a learner's state holds at most this many model-sized float32 vectors (Adam: 2)


class LearnerError(PeerError):
    """A learner returned something the peer cannot use (not a dict of floats, a state too large)."""


class Metrics(dict):
    """A learner's metrics: a dict of floats; known keys also read as attributes (m.loss)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"the learner reported no {key!r} (it reported: {', '.join(self) or 'nothing'})") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def line(self) -> str:
        """'loss 0.123, accuracy 0.912': for a log line, whatever the task."""
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.items())


def check_metrics(raw: Any, where: str) -> Metrics:
    """A learner's answer as Metrics: a mapping of at most MAX_METRICS names to numbers."""
    if not isinstance(raw, Mapping):
        raise LearnerError(f"{where} must return a dict of metrics (name -> float), got {type(raw).__name__}")
    if len(raw) > MAX_METRICS:
        raise LearnerError(f"{where} returned {len(raw)} metrics, at most {MAX_METRICS}")
    out = Metrics()
    for k, v in raw.items():
        if not isinstance(k, str) or not 0 < len(k) <= MAX_METRIC_NAME or not k.isprintable():
            raise LearnerError(f"{where}: metric names are strings of 1 to {MAX_METRIC_NAME} characters, got {k!r:.80}")
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise LearnerError(f"{where}: metric {k!r} must be a number, got {type(v).__name__}")
        out[k] = int(v) if k == "samples" and isinstance(v, int) else float(v)
    return out


def state_limit(n_params: int) -> int:
    """Bytes a learner's state may take: STATE_FACTOR model-sized float32 vectors and 1 MB."""
    return STATE_FACTOR * 4 * n_params + (1 << 20)


def check_state(raw: Any, n_params: int, where: str) -> dict[str, torch.Tensor]:
    """A learner's state: at most MAX_STATE_TENSORS named numeric tensors within state_limit."""
    if not isinstance(raw, Mapping):
        raise LearnerError(f"{where} must return a dict of tensors, got {type(raw).__name__}")
    if len(raw) > MAX_STATE_TENSORS:
        raise LearnerError(f"{where} returned {len(raw)} tensors, at most {MAX_STATE_TENSORS}")
    out, total = {}, 0
    for k, v in raw.items():
        if not isinstance(k, str) or not 0 < len(k) <= 256:
            raise LearnerError(f"{where}: names are strings of 1 to 256 characters, got {k!r:.80}")
        if not isinstance(v, torch.Tensor) or v.is_complex() or v.dtype == torch.bool:
            raise LearnerError(f"{where}: {k!r} must be a real-valued tensor, got {type(v).__name__}")
        total += v.numel() * v.element_size()
        out[k] = v.detach()
    if total > state_limit(n_params):
        raise LearnerError(f"{where}: {total:,} bytes of state, at most {state_limit(n_params):,} for this model")
    return out


@runtime_checkable
class Learner(Protocol):
    def train(self, round: int) -> Mapping[str, float]: ...

    def evaluate(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Mapping[str, float]: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...


class CheckedLearner:
    """A user's learner behind the checks the peer relies on: metrics are Metrics, state is
    bounded, a learner without state() / load_state() checkpoints nothing. Other attributes
    (e.g. `data`) are the user's object's."""

    def __init__(self, inner: Any, name: str, n_params: int):
        self.inner, self.name, self.n_params = inner, name, n_params

    def __getattr__(self, key: str) -> Any:
        return getattr(self.inner, key)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("inner", "name", "n_params"):
            object.__setattr__(self, key, value)
        else:
            setattr(self.inner, key, value)  # e.g. the simulator's poisoning replaces .data

    def train(self, round: int) -> Metrics:
        return check_metrics(self.inner.train(round), f"{self.name}: train()")

    def evaluate(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Metrics:
        raw = self.inner.evaluate() if x is None else self.inner.evaluate(x, y)
        return check_metrics(raw, f"{self.name}: evaluate()")

    def state(self) -> dict[str, torch.Tensor]:
        fn = getattr(self.inner, "state", None)
        if fn is None:
            return {}
        return {k: v.clone() for k, v in check_state(fn(), self.n_params, f"{self.name}: state()").items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        fn = getattr(self.inner, "load_state", None)
        if fn is not None and state:
            fn(dict(state))


def resolve_learner(name: str, base: str | os.PathLike | None = None):
    """The factory named by train.learner: a built-in name or package.module:factory (looked
    up beside the config, in `base`, first)."""
    from .model import load_object

    if name in BUILTIN_LEARNERS:
        return load_object(BUILTIN_LEARNERS[name], "train.learner")
    if ":" not in name:
        raise ConfigError(f"train.learner must be {', '.join(BUILTIN_LEARNERS)} or package.module:factory, "
                          f"got {name!r}")
    return load_object(name, "train.learner", base)


def check_learner(name: str, options: dict, base: str | os.PathLike | None = None) -> None:
    """At config load: the learner imports and its factory takes train.options."""
    from .model import check_call

    if name not in BUILTIN_LEARNERS:  # a built-in is not imported just to read a config
        check_call(resolve_learner(name, base), "train.options", options, fixed=LEARNER_ARGUMENTS)
    elif options:
        raise ConfigError(f"train.options.{sorted(options)[0]}: the built-in {name} learner takes no options")


def make_learner(model: nn.Module, flat: torch.Tensor, data, cfg, seed: int,
                 base: str | os.PathLike | None = None):
    """Build the learner train.learner names (cfg: TrainConfig); ConfigError naming the field."""
    factory = resolve_learner(cfg.learner, base)
    try:
        learner = factory(model=model, flat=flat, data=data, cfg=cfg, seed=seed, **cfg.options)
    except (ConfigError, LearnerError):
        raise
    except Exception as exc:  # user code: one line naming the factory
        raise ConfigError(f"train.learner: {cfg.learner} failed: {type(exc).__name__}: {exc}") from None
    if cfg.learner in BUILTIN_LEARNERS:
        return learner
    missing = [m for m in ("train", "evaluate") if not callable(getattr(learner, m, None))]
    if missing:
        raise ConfigError(f"train.learner: {cfg.learner} returned a {type(learner).__name__} without "
                          f"{' and '.join(missing)}(); a learner has train(round) and evaluate(x=None, y=None)")
    return CheckedLearner(learner, cfg.learner, flat.numel())


def probe_model(module: nn.Module, data, classes: int, learner: str, model_name: str) -> None:
    """Before any round: the model takes the data; the built-in classifier also needs one
    output per class (other learners decide what their model outputs)."""
    try:
        with torch.no_grad():
            out = module(data.x_train[:2])
    except Exception as exc:
        raise ConfigError(f"model {model_name} does not accept the data ({data.features} features): {exc}") from None
    if learner == "classification":
        if not isinstance(out, torch.Tensor) or out.shape[-1] != classes:
            got = out.shape[-1] if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"model {model_name} outputs {got} classes, model.classes = {classes}")


# --- torch.optim state as named tensors (for a user learner's state() / load_state()) ---------


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """`opt`'s per-parameter state as {"opt.<index>.<key>": tensor}: what a checkpoint carries.
    Hyperparameters are not included: they come from the config on every start."""
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, v in st.items():
            out[f"opt.{idx}.{key}"] = v if isinstance(v, torch.Tensor) else torch.tensor(float(v))
    return out


def load_optimizer_state(opt: torch.optim.Optimizer, state: Mapping[str, torch.Tensor]) -> None:
    """Restore what optimizer_state() returned (entries not of that form are ignored)."""
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, v in state.items():
        prefix, _, rest = name.partition(".")
        idx, _, key = rest.partition(".")
        if prefix == "opt" and idx.isdigit() and key:
            per_param.setdefault(int(idx), {})[key] = v.clone()
    if per_param:
        current = opt.state_dict()
        opt.load_state_dict({"state": per_param, "param_groups": current["param_groups"]})

