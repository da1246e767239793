"""Logging for a running peer: readable lines by default, JSON lines for machines.

Everything the process says goes through one handler: the project's loggers, third-party
ones (py-libp2p, trio, aiomqtt, asyncio), Python warnings, and uncaught exceptions of the
main thread, other threads and finalizers. py-libp2p configures its "libp2p" logger at
import with no handler and propagate=False (unless LIBP2P_DEBUG is set), so its warnings
went to logging's last-resort handler as bare lines; that last resort is our handler too.
PeerIds in messages are shown with their plan names ("gw-2 (..abcdefgh)"), but only where a
PeerId stands alone: names are for people, and an address (a multiaddr's `/p2p/<id>`, an MQTT
topic, a URL) must stay an address that can be copied into a config or a client.

Structured fields: pass them as `extra=` (e.g. `log.info("...", extra={"event": "round",
"round": 3, "accepted": 2})`); in JSON they become keys of the line's object.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Mapping

# base58btc PeerIds: Ed25519 identity multihashes (12D3KooW...) and SHA-256 ones (Qm...)
PEER_ID = re.compile(r"\b(?:12D3KooW[1-9A-HJ-NP-Za-km-z]{44}|Qm[1-9A-HJ-NP-Za-km-z]{44})\b")
# a PeerId that stands alone as a word: not a path segment of an address (/p2p/<id>, a topic
# PREFIX/NET/<id>/inbox, a URL), which a name in its place would turn into a non-address
STANDALONE_PEER_ID = re.compile(rf"(?<![/\w])(?:{PEER_ID.pattern})(?![/\w])")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
MAX_FIELD_CHARS = 2000


def peer_label(peer_id: str, names: Mapping[str, str]) -> str:
    name = names.get(peer_id)
    return f"{name} (..{peer_id[-8:]})" if name else peer_id


class PeerNames(logging.Filter):
    """Adds `peer` (this process's plan name) to every record and writes plan names next to
    the PeerIds that stand alone in its message (never inside an address)."""

    def __init__(self, peer: str | None = None, names: Mapping[str, str] | None = None):
        super().__init__()
        self.peer, self.names = peer, dict(names or {})

    def filter(self, record: logging.LogRecord) -> bool:
        if self.peer and not hasattr(record, "peer"):
            record.peer = self.peer
        if self.names:
            try:
                msg = record.getMessage()
            except Exception:  # a bad format string: leave the record to the formatter
                return True
            named = STANDALONE_PEER_ID.sub(lambda m: peer_label(m.group(0), self.names), msg)
            if named != msg:
                record.msg, record.args = named, None
        return True


class ThirdPartyLevel(logging.Filter):
    """Other libraries' records below `level` are dropped: py-libp2p sets some of its loggers
    to INFO itself (its auto-connector reports every few seconds)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name == "gossipfl" or record.name.startswith("gossipfl.")


def _jsonable(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value[:MAX_FIELD_CHARS]
    if isinstance(value, Mapping):
        return {str(k)[:200]: _jsonable(v) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in list(value)[:100]]
    return str(value)[:MAX_FIELD_CHARS]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the `extra=` fields, and the
    traceback (as a string field) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out and not key.startswith("_"):
                out[key] = _jsonable(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, allow_nan=False)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        self.converter = time.localtime


def _route_uncaught(logger: logging.Logger) -> None:
    """Uncaught exceptions (main thread, other threads, finalizers) become log records."""

    def main_hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        logger.critical("uncaught exception: %r", exc, exc_info=(exc_type, exc, tb))

    def thread_hook(args: threading.ExceptHookArgs):
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread else "?"
        logger.error("uncaught exception in thread %s: %r", name, args.exc_value,
                     exc_info=args.exc_value if args.exc_value is not None else True)

    def unraisable_hook(u):
        logger.warning("exception ignored in %r: %r", u.object, u.exc_value,
                       exc_info=(u.exc_type, u.exc_value, u.exc_traceback) if u.exc_type else None)

    sys.excepthook, threading.excepthook, sys.unraisablehook = main_hook, thread_hook, unraisable_hook


def setup(fmt: str = "text", level: int = logging.INFO, *, peer: str | None = None,
          names: Mapping[str, str] | None = None) -> logging.Handler:
    """Route all of the process's log output through one stderr handler.

    `peer`: this peer's plan name (a `peer` field on every JSON line); `names`: PeerId ->
    plan name (self, neighbours, the trust list) shown beside PeerIds in messages.
    The project's loggers log at `level`; third-party ones at WARNING (DEBUG with -v).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ThirdPartyLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING))
    handler.addFilter(PeerNames(peer, names))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    ours = logging.getLogger("gossipfl")
    ours.handlers[:] = []
    ours.setLevel(level)
    ours.propagate = True
    # loggers that keep no handler and do not propagate (py-libp2p's) end here
    logging.lastResort = handler
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> this handler
    _route_uncaught(logging.getLogger("gossipfl.process"))
    return handler


def names_of(cfg) -> dict[str, str]:
    """PeerId -> plan name for a peer.toml: the trust list's names, the neighbours' names and
    this peer's own; a missing or bad trust list only costs its names."""
    names: dict[str, str] = {}
    try:
        from gossip.trust import load_trust_list

        names.update(load_trust_list(cfg.trust).names)
    except Exception:  # the peer reports a bad trust list itself, with its reason
        pass
    names.update({n.id: n.name for n in cfg.neighbours if n.name})
    if cfg.name:
        try:
            from gossip.identity import load_key

            names[load_key(cfg.key).peer_id] = cfg.name
        except Exception:  # same: the peer reports a bad key itself
            pass
    return names
