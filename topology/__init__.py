"""Graphs for gossip: generators, file formats, mixing weights, analysis, drawings.
Imports nothing of the project but `aggregation` (for rule requirements).

Names load on first use (PEP 562): a peer that needs only `topology.mixing.mh_weights`
does not pay for networkx, scipy and the analysis (~35 MB of RSS on a gateway).
"""

from __future__ import annotations

import importlib

_HOME = {
    "Summary": "analysis", "summarize": "analysis",
    "TopologyError": "errors",
    "load": "formats", "resolve": "formats", "save": "formats",
    "GENERATORS": "generators", "from_spec": "generators",
    "metropolis_hastings": "mixing", "mh_weights": "mixing", "rounds_to_consensus": "mixing",
    "spectral_gap": "mixing",
    "analyse": "robustness", "max_byzantine": "robustness",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'topology' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
