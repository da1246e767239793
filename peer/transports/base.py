"""What a transport kind declares, once: everything the project does differently per transport.

A kind (memory, libp2p, mqtt) is one `TransportKind` subclass in a module of its own, listed
in peer.transports.KINDS. It holds:

- its `[transport]` table: a dataclass (`config`, a subclass of TransportConfig), the parse
  spec of each field (`schema`), a comment per field for `peer init`'s example, and a
  `check` hook for what needs more than one field (files it reads, the network id);
- the factory that builds it for a peer (`build`), and the addresses others dial (`addresses`);
- what a plan writes for it: its `plan_settings` dataclass (the `topology plan` options are
  derived from its fields), each node's `[transport]` table, neighbour address and secret
  files (`endpoints`), and files for the whole plan (`plan_files`, e.g. a broker's);
- how the network admin reaches gateways over it (`deliver`), and what admitting or revoking
  a gateway changes besides the trust list (`admit_endpoint`, `revoked`).

Adding a transport is one new module with one such declaration, and its line in KINDS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ..config.settings import TransportConfig
from ..errors import ConfigError


@dataclass
class NodeEndpoint:
    """What a plan (or `fleet admit`) writes for one node of a transport."""

    transport: dict[str, Any]  # the node's [transport] table
    addr: str | None = None  # what its neighbours dial (their network.neighbours[].addr); None: nothing
    port: int | None = None  # the port it listens on, if any (plan.json; checked against the plan's others)
    secrets: dict[str, str] = field(default_factory=dict)  # file name -> text, beside its key, mode 0600
    changed: Path | None = None  # admit: a folder of shared files this changed (a broker's: reload it)


@dataclass(frozen=True)
class NoPlanSettings:
    """A transport that `topology plan` asks nothing of."""


class TransportKind:
    """One transport kind's declaration; subclasses set the class attributes and override the
    hooks that apply to them (the defaults suit a transport with no addresses and no files)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # a few words for the CLI help and peer init's example
    config: ClassVar[type[TransportConfig]] = TransportConfig
    schema: ClassVar[dict[str, tuple]] = {}  # field -> (type, _Table.get keywords), `kind` excepted
    comments: ClassVar[dict[str, str]] = {}  # field -> comment in peer init's example
    # True: a plan's nodes run on gateways (systemd units; rounds paced, a quorum); False: in one process
    deployed: ClassVar[bool] = True
    plan_settings: ClassVar[type] = NoPlanSettings
    per_node: ClassVar[tuple[str, ...]] = ()  # [transport] keys a plan writes per node (a template's are dropped)

    # --- a peer's config and its transport --------------------------------------------------

    def check(self, transport: TransportConfig, network: str, base: Path) -> None:
        """After the table parsed: what spans fields or reads files (raise ConfigError)."""

    def build(self, cfg, identity, *, hub=None, max_size: int, allowed: set[str] | None = None, members=None):
        raise NotImplementedError

    def addresses(self, cfg, peer_id: str) -> list[str]:
        """Where others dial this peer (its neighbours' `addr`, the admin's delivery); [] if nowhere."""
        return []

    def describe(self, cfg, peer_id: str) -> list[str]:
        """What `gossipfl peer id` prints after the PeerId."""
        return self.addresses(cfg, peer_id)

    # --- plans ------------------------------------------------------------------------

    def settings(self, values: Mapping[str, Any]) -> Any:
        """This kind's plan settings from option values by field name (others are ignored:
        a caller may pass the options of every kind it might choose)."""
        names = {f.name for f in fields(self.plan_settings)}
        return self.plan_settings(**{k: v for k, v in values.items() if k in names})

    def endpoints(self, settings, peer_ids: list[str]) -> list[NodeEndpoint]:
        """One endpoint per node of a plan, in the plan's node order."""
        return [NodeEndpoint({"kind": self.name}) for _ in peer_ids]

    def plan_files(self, out: Path, configs: list, settings, admin_dir: Path, admin_id: str) -> None:
        """Files for the whole plan once every node's config is written (loaded PeerConfigs);
        `admin_dir` holds the admin key (a login of the admin's goes there, never to a gateway)."""

    # --- the network admin (peer.ops.admin) -------------------------------------------------------

    def admit_endpoint(self, plan, peer_id: str, neighbours: list[str], host: str, port: int | None) -> NodeEndpoint:
        """The new gateway's endpoint (`port`: a free one the admin picked when `listens`)."""
        return NodeEndpoint({"kind": self.name})

    listens: ClassVar[bool] = False  # each node needs a port of its own (admit picks a free one)

    def revoked(self, plan, peer_id: str) -> Path | None:
        """Take the revoked gateway's access away where the transport keeps one (a broker login);
        the folder whose files changed, or None."""
        return None

    def rotated_admin(self, plan, admin_id: str) -> Path | None:
        """The admin key was rotated to `admin_id` (and the rotation delivered): move the admin's
        access where the transport keeps one (a broker login); the folder whose files changed."""
        return None

    def deliver(self, plan, data: bytes, nodes: list[dict]) -> dict[str, bool]:
        """Send a membership record to these nodes of the plan; node name -> delivered."""
        raise ConfigError(f"a {self.name} plan has no way to reach its gateways: use --no-send and deliver the "
                          f"record file yourself")
