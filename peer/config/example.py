"""The commented example peer.toml that `gossipfl peer init` writes, generated from the config
dataclasses: every value is the field's default unless EXAMPLE_VALUES sets a deployment
value (a name, an address), so the example can never drift from what parse_config assumes."""

from __future__ import annotations

import inspect

from privacy.settings import PrivacySettings

from ..learning.classification import TrainConfig
from ..learning.model import BUILTIN
from .parse import (
    DEFAULT_DATA_DIR,
    AggregationConfig,
    DataConfig,
    ModelConfig,
    RoundConfig,
    TransportConfig,
    default_of,
)
from .tomlwrite import value

# values that differ from the defaults on purpose: an example names a real deployment
EXAMPLE_VALUES = {
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
    ("transport", TransportConfig, [
        ("kind", "libp2p | mqtt | memory (memory: only inside one process)"), ("listen", "libp2p addresses"),
        ("mdns", "also discover neighbours on the LAN"),
        ("relays", "libp2p behind NAT: /ip4/HOST/tcp/PORT/p2p/PEERID of the fleet's relays"),
        ("reachability", "auto (the relays dial us back) | public | private"),
        ("hole_punch", "upgrade relayed links to direct ones where the NATs allow"),
        ("serve_relay", "relay for the fleet's members (a reachable peer)"),
        ("announce", "direct addresses to announce instead of the listen ones (a port forward)"),
        ("host", "mqtt: the broker"), ("port", "mqtt"),
        ("username", "mqtt"), ("password", "mqtt"), ("tls", "mqtt"), ("ca_file", "mqtt: CA certificate for TLS"),
        ("topic_prefix", "mqtt"), ("status", "mqtt: publish a retained status with a last will")]),
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
        ("batch_size", ""), ("lr", "learning rate"), ("momentum", ""), ("weight_decay", "")]),
    ("aggregation", AggregationConfig, [
        ("rule", "see `gossipfl rules`; pre-steps compose: \"nnm+krum\""), ("f", "Byzantine neighbours to tolerate"),
        ("weights", "uniform | metropolis_hastings"), ("params", "the rule's parameters (see `gossipfl rules`)")]),
    ("round", RoundConfig, [
        ("deadline", "seconds to wait for neighbours each round"), ("quorum", "proceed once this many arrived (0: all)"),
        ("rounds", "stop after this many rounds (0: run until stopped)"),
        ("max_lead", "rounds ahead of this peer that are buffered"), ("codec", "raw-f32 | f16 | int8"),
        ("max_message_mb", "largest accepted message (default: derived from the model and codec)"),
        ("inbox_per_neighbour", "updates buffered per neighbour and round"),
        ("train_in_thread", "train off the event loop"),
        ("interval", "at least this many seconds between round starts (pacing)")]),
    ("privacy", PrivacySettings, [
        ("mode", "off | update (clip + noise each round's model change) | record (DP-SGD)"),
        ("noise_multiplier", "sigma: noise std = sigma * clip"), ("clip", "L2 bound of a change or an example's gradient"),
        ("delta", ""), ("epsilon", "the budget: stop sending before exceeding it (inf: never stop)"),
        ("accountant", "rdp | pld (dp-accounting)")]),
    ("storage", None, [("dir", "checkpoints and the provenance log")]),
]

_PLAIN_DEFAULTS = {"storage.dir": DEFAULT_DATA_DIR}


def example_value(table: str, key: str, cls=None):
    """The value the example shows for table.key: a deployment value or the default."""
    dotted = f"{table}.{key}" if table else key
    if dotted in EXAMPLE_VALUES:
        return EXAMPLE_VALUES[dotted]
    if dotted in _PLAIN_DEFAULTS:
        return _PLAIN_DEFAULTS[dotted]
    field_ = next(f for f in cls.__dataclass_fields__.values() if f.name == key)
    return default_of(field_)


def example_config() -> str:
    lines = ["# gossipfl peer configuration. Paths are relative to this file.",
             "# Values shown are the defaults, except the example deployment's name, addresses and shards."]
    for table, cls, entries in _LAYOUT:
        if table:
            lines += ["", f"[{table}]"]
        for key, comment in entries:
            v = example_value(table, key, cls)
            text = f"# {key} = ..." if v is None else f"{key} = {value(v)}"
            lines.append(f"{text:<40} # {comment}" if comment else text)
    return "\n".join(lines) + "\n"
