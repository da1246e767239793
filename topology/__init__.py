"""Graphs for gossip: generators, file formats, mixing weights, analysis, drawings.
Imports nothing of the project but `aggregation` (for rule requirements)."""

from .analysis import Summary, summarize
from .errors import TopologyError
from .formats import load, resolve, save
from .generators import GENERATORS, from_spec
from .mixing import metropolis_hastings, mh_weights, rounds_to_consensus, spectral_gap
from .robustness import analyse, max_byzantine

__all__ = ["GENERATORS", "Summary", "TopologyError", "analyse", "from_spec", "load", "max_byzantine",
           "metropolis_hastings", "mh_weights", "resolve", "rounds_to_consensus", "save", "spectral_gap",
           "summarize"]
