"""The commented example peer.toml that `gossipfl peer init` writes, generated from the config
dataclasses: every value is the field's default unless EXAMPLE_VALUES sets a deployment
value (a name, an address), so the example can never drift from what parse_config assumes."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

from privacy.settings import PrivacySettings

from ..learning.classification import TrainConfig
from ..learning.model import BUILTIN
from ..learning.personal import Personalization
from ..transports import KINDS, kind_of
from .parse import (
    DEFAULT_DATA_DIR,
    AggregationConfig,
    DataConfig,
    MetricsConfig,
    ModelConfig,
    RoundConfig,
    default_of,
)
from .tomlwrite import value

# values that differ from the defaults on purpose: an example names a real deployment
EXAMPLE_VALUES: dict[str, Any] = {
    "name": "gateway-1", "identity.key": "peer.key", "network.id": "my-network", "network.trust": "trust.toml",
    "transport.kind": "libp2p", "transport.listen": ["/ip4/0.0.0.0/tcp/4001"], "data.shards": 8,
}

_MLP_HIDDEN = list(inspect.signature(BUILTIN["mlp"]).parameters["hidden"].default)

# table -> (dataclass or None, [(key, comment)]); keys whose value is None are written commented out
_LAYOUT = [
    ("", None, [("name", "shown in logs and plans")]),
    ("identity", None, [("key", "Ed25519 key, mode 0600 (gossipfl keygen --out peer.key)")]),
    ("network", None, [("id", "peers only accept updates for their own network id"),
                       ("trust", "PeerIds allowed in the network")]),
    ("transport", None, []),  # from the transport declarations: _transport_lines
    ("model", ModelConfig, [
        ("name", f"{' | '.join(BUILTIN)} | package.module:factory"), ("classes", "number of classes"),
        ("options", f"factory options, e.g. {{ hidden = {value(_MLP_HIDDEN)} }} for mlp (its default)"),
        ("seed", "initial weights")]),
    ("data", DataConfig, [
        ("source", "digits | npz | csv | package.module:loader"), ("shard", "this peer's shard of the demo data ..."),
        ("shards", "... out of this many"), ("partition", "iid | dirichlet (alpha) | labels (labels_per_shard)"),
        ("alpha", "dirichlet concentration"), ("labels_per_shard", "labels partition"),
        ("path", "npz or csv file"), ("label_column", "csv"), ("x_key", "npz features"), ("y_key", "npz labels"),
        ("holdout", "fraction kept for local evaluation"), ("seed", "partition and holdout"),
        ("options", "keyword arguments of a package.module:loader")]),
    ("train", TrainConfig, [
        ("local_steps", "SGD steps per round"), ("epochs", "> 0: passes over the data instead of local_steps"),
        ("batch_size", ""), ("lr", "learning rate"), ("momentum", ""), ("weight_decay", ""),
        ("learner", "classification | package.module:factory (your own loss, optimizer, task)"),
        ("options", "keyword arguments of a package.module:factory learner")]),
    ("aggregation", AggregationConfig, [
        ("rule", "see `gossipfl rules`; pre-steps compose: \"nnm+krum\""), ("f", "Byzantine neighbours to tolerate"),
        ("weights", "uniform | metropolis_hastings"), ("params", "the rule's parameters (see `gossipfl rules`)")]),
    ("round", RoundConfig, [
        ("deadline", "seconds to wait for neighbours each round"), ("quorum", "proceed once this many arrived (0: all); plans: n - f where the rule allows"),
        ("rounds", "the round to stop at, counted from 0, not from a restart (0: run until stopped)"),
        ("max_lead", "rounds ahead of this peer that are buffered"), ("codec", "raw-f32 | f16 | int8"),
        ("max_message_mb", "largest accepted message (default: derived from the model and codec)"),
        ("inbox_per_neighbour", "updates buffered per neighbour and round"),
        ("train_in_thread", "train off the event loop"),
        ("interval", "at least this many seconds between round starts (pacing); plans: 2 on gateways")]),
    ("metrics", MetricsConfig, [
        ("listen", "HOST:PORT of a Prometheus endpoint, e.g. \"127.0.0.1:9464\" (absent: none)"),
        ("share_learning_metrics", "also publish training/eval numbers (computed on private data)")]),
    ("privacy", PrivacySettings, [
        ("mode", "off | update (clip + noise each round's model change) | record (DP-SGD)"),
        ("noise_multiplier", "sigma: noise std = sigma * clip"), ("clip", "L2 bound of a change or an example's gradient"),
        ("delta", ""), ("epsilon", "the budget: stop sending before exceeding it (inf: never stop)"),
        ("accountant", "rdp | pld (dp-accounting)")]),
    ("personalization", Personalization, [
        ("mode", "shared (one fleet model) | local_head (personal layers stay here) | ditto (a personal model too)"),
        ("personal", "local_head: name patterns of the layers that never leave, e.g. [\"3.*\"] for mlp's last"),
        ("lambda", "ditto: pull of the personal model towards the fleet model"),
        ("similarity", "weigh neighbours by how close their models are to this one's")]),
    ("storage", None, [("dir", "checkpoints and the provenance log")]),
]

_PLAIN_DEFAULTS = {"storage.dir": DEFAULT_DATA_DIR, "personalization.lambda": Personalization().lam}
# fields off by default, shown commented out with a value to copy
_COMMENTED_SAMPLES = {"metrics.listen": "127.0.0.1:9464"}
# shown commented out with their defaults: `topology plan` computes them per node unless a
# template (often this example, edited) sets them
_PLAN_COMPUTED = ("round.quorum", "round.interval")


def example_value(table: str, key: str, cls=None):
    """The value the example shows for table.key: a deployment value or the default."""
    dotted = f"{table}.{key}" if table else key
    if dotted in EXAMPLE_VALUES:
        return EXAMPLE_VALUES[dotted]
    if dotted in _PLAIN_DEFAULTS:
        return _PLAIN_DEFAULTS[dotted]
    field_ = next(f for f in cls.__dataclass_fields__.values() if f.name == key)
    return default_of(field_)


def _line(key: str, v, comment: str, commented: bool = False) -> str:
    text = f"# {key} = ..." if v is None else f"{'# ' if commented else ''}{key} = {value(v)}"
    return f"{text:<40} # {comment}" if comment else text


def _transport_lines() -> list[str]:
    """`kind`, the example's kind's fields, then every other kind's, commented out."""
    chosen = kind_of(EXAMPLE_VALUES["transport.kind"])
    kinds = [chosen, *(k for k in KINDS.values() if k is not chosen)]
    undeployed = [k.name for k in KINDS.values() if not k.deployed]
    lines = [_line("kind", chosen.name, " | ".join(KINDS) + "".join(f" ({n}: only inside one process)"
                                                                     for n in undeployed)),
             _line("max_upload_kbps", 0.0, "upload budget in kbit/s that the outbox paces updates to (0: none)")]
    for k in kinds:
        for f in fields(k.config):
            if f.name in ("kind", "max_upload_kbps"):
                continue
            v = EXAMPLE_VALUES.get(f"transport.{f.name}", default_of(f)) if k is chosen else default_of(f)
            lines.append(_line(f.name, v, f"{k.name}: {k.comments.get(f.name, '')}".rstrip(": "),
                               commented=k is not chosen))
    return lines


def example_config() -> str:
    lines = ["# gossipfl peer configuration. Paths are relative to this file.",
             "# Values shown are the defaults, except the example deployment's name, addresses and shards."]
    for table, cls, entries in _LAYOUT:
        if table:
            lines += ["", f"[{table}]"]
        if table == "transport":
            lines += _transport_lines()
            continue
        for key, comment in entries:
            sample = _COMMENTED_SAMPLES.get(f"{table}.{key}")
            if f"{table}.{key}" in _PLAN_COMPUTED:
                sample = example_value(table, key, cls)
            lines.append(_line(key, sample, comment, commented=True) if sample is not None
                         else _line(key, example_value(table, key, cls), comment))
    return "\n".join(lines) + "\n"
