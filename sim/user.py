"""The user's own model, data loader, shared test set and learner in a scenario.

Each is named `package.module:name`, as in peer.toml, and looked up in the scenario's folder
first, then in the installed packages; the scenario checks them when it loads (errors name the
field). The protocol engine's peers then find the same modules already imported. The batched
engine runs a learner only if it is a `peer.learning.functional.Functional` (its step is
pure functions it can vectorize over nodes); for any other learner it says so and the
protocol engine runs it, exactly as a peer would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from peer.errors import ConfigError, DataError
from peer.learning.data import from_loader
from peer.learning.functional import CLASSIFICATION, Functional
from peer.learning.learner import BUILTIN_LEARNERS, check_learner
from peer.learning.model import check_model_factory, load_object

from .errors import ScenarioError

BUILTIN_DATASETS = ("digits", "fashion_mnist", "synthetic")


def folder(sc) -> Path | None:
    return Path(sc.source).resolve().parent if sc.source else None


def load(sc, path: str, what: str):
    try:
        return load_object(path, what, folder(sc))
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None


def check(sc) -> None:
    """Import every user module the scenario names; check the factories take their options."""
    try:
        if sc.model not in ("mlp", "cnn") and ":" in sc.model:
            check_model_factory(sc.model, sc.model_options, folder(sc))
        check_learner(sc.learner, sc.learner_options, folder(sc))
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    if ":" in sc.dataset:
        load(sc, sc.dataset, "data.dataset")
    if sc.test_data:
        load(sc, sc.test_data, "data.test")


def functional(sc) -> Functional | None:
    """The scenario's learner as pure functions, or None when it is an object the batched
    engine cannot vectorize."""
    if sc.learner in BUILTIN_LEARNERS:
        return CLASSIFICATION
    obj = load(sc, sc.learner, "train.learner")
    return obj if isinstance(obj, Functional) else None


def metric(sc) -> tuple[str, bool]:
    """(the figure reported per node, higher is better): accuracy for the built-in learner,
    a Functional's `metric`, else the learner's "loss"."""
    fn = functional(sc)
    return ("loss", False) if fn is None else (fn.metric, fn.higher_is_better)


def batched_refusal(sc) -> str | None:
    """Why the batched engine cannot run this scenario's learner (None: it can)."""
    if functional(sc) is None:
        return (f"train.learner = {sc.learner!r} is not a peer.learning.functional.Functional (a loss "
                "per sample and an optimizer the engine can vectorize over nodes); use engine = \"protocol\", "
                "which runs it exactly as a peer does")
    return None


def loader(sc):
    """node i's (x, y) for the scenario's own data loader, as the peer with plan index i loads it."""
    fn = load(sc, sc.dataset, "data.dataset")

    def load_node(i: int, total: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            result = fn(shard=int(i), shards=int(total), seed=sc.seed, **sc.data_options)
        except DataError:
            raise
        except Exception as exc:  # user code: one line
            raise ScenarioError(f"data.dataset {sc.dataset} failed: {type(exc).__name__}: {exc}") from None
        return from_loader(result, f"data.dataset {sc.dataset}")
    return load_node


def test_set(sc) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The held-out set every node is scored on: data.test, else the built-in data set's
    test split (None: each node is scored on its own held-out samples)."""
    if sc.test_data:
        fn = load(sc, sc.test_data, "data.test")
        try:
            x, y = from_loader(fn(), f"data.test {sc.test_data}")
        except (DataError, ScenarioError):
            raise
        except Exception as exc:
            raise ScenarioError(f"data.test {sc.test_data} failed: {type(exc).__name__}: {exc}") from None
        x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(y))
    if sc.dataset in BUILTIN_DATASETS:
        from . import datasets

        t = datasets.test_set(sc.dataset, sc.data_options)
        return None if t is None else (torch.from_numpy(t[0]), torch.from_numpy(t[1]))
    return None
