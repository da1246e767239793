"""A fleet's history beside its rounds: who was admitted or revoked when, and each peer's starts,
stops, crashes and catch-up jumps, read from the provenance logs (no event kind of its own:
it is what the `started`, `stopped`, `trained`, `membership` and `privacy` events imply).

- a `started` event whose log's previous run did not end with `stopped` is a crash-resume
  (the process died: kill -9, power loss); its `resumed_from` is the checkpoint it came back to;
- a `trained` round beyond the one a peer was at (after a start: the round it started at;
  after training round r: r + 1) is a catch-up jump to its neighbours' round;
- a membership record is one fleet-level event however many peers applied it, with the
  rounds at which each did, placed at the round most of them were at."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..state.provenance import EventKind
from .fleet import Fleet, PeerLog, short


@dataclass
class Happening:
    """One point of the fleet's history."""

    kind: str          # started, restarted, crash-resume, stopped, jump, admit, revoke, budget-spent, diverged
    round: int | None  # where it shows in the rounds (membership: the first round any peer applied it)
    ts: float
    peer: str          # whose log (membership: the peer admitted or revoked)
    text: str          # a sentence for people
    applied: list[dict[str, Any]] = field(default_factory=list)  # membership: {peer, round} per log

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peer_history(fleet: Fleet, log: PeerLog) -> list[Happening]:
    """Starts, stops, crash-resumes, catch-up jumps and privacy/divergence markers of one log."""
    out: list[Happening] = []
    running = False      # a run started and not (yet) stopped
    last = None          # the last event of the running run
    expected: int | None = None
    starts = 0
    for e in log.events:
        if e.kind == EventKind.STARTED:
            resumed = e.details.get("resumed_from")
            resumed = resumed if isinstance(resumed, int) else None
            came_back = f"resumed from its checkpoint of round {resumed}" if resumed is not None else \
                "with no checkpoint (a fresh model)"
            if running and last is not None:
                out.append(Happening("crash-resume", e.round, e.ts, log.owner,
                                     f"restarted after a crash: its previous run ended at round {last.round} "
                                     f"with a `{last.kind}` event and no `stopped`; {came_back}"))
            elif starts:
                out.append(Happening("restarted", e.round, e.ts, log.owner, f"restarted, {came_back}"))
            else:
                out.append(Happening("started", e.round, e.ts, log.owner,
                                     f"started at round {e.round}" + (f", {came_back}" if resumed is not None else "")))
            starts, running, expected = starts + 1, True, e.round
        elif e.kind == EventKind.STOPPED:
            out.append(Happening("stopped", e.round, e.ts, log.owner,
                                 f"stopped at round {e.round} ({e.details.get('reason', '?')})"))
            running, expected = False, None
        elif e.kind == EventKind.TRAINED and e.round is not None:
            if expected is not None and e.round > expected:
                out.append(Happening("jump", e.round, e.ts, log.owner,
                                     f"caught up with its neighbours: jumped from round {expected} to {e.round}"))
            expected = e.round + 1
        elif e.kind == EventKind.PRIVACY and e.details.get("exhausted") is True:
            out.append(Happening("budget-spent", e.round, e.ts, log.owner,
                                 f"privacy budget spent (epsilon {e.details.get('epsilon')} of "
                                 f"{e.details.get('budget')}): stopped training and sending"))
        elif e.kind == EventKind.DIVERGED:
            out.append(Happening("diverged", e.round, e.ts, log.owner,
                                 f"model went non-finite; back to the checkpoint of round "
                                 f"{e.details.get('restored_round')}"))
        if running:
            last = e
    return out


def membership_history(fleet: Fleet) -> list[Happening]:
    """One entry per admin-signed record, with every log that applied it and at which round."""
    records: dict[str, Happening] = {}
    for log in fleet.logs:
        for e in log.events:
            if e.kind != EventKind.MEMBERSHIP or not e.update_hash:
                continue
            d = e.details
            h = records.get(e.update_hash)
            if h is None:
                action = got if (got := d.get("action")) in ("admit", "revoke", "rotate") else "membership"
                subject = got if isinstance(got := d.get("peer"), str) else e.counterpart or ""
                nbrs = [fleet.name(n) for n in d.get("neighbours") or () if isinstance(n, str)]
                what = "rotate the admin key to" if action == "rotate" else action
                text = (f"{what} {fleet.label(subject)} (epoch {d.get('epoch', '?')}, record "
                        f"{short(e.update_hash)})" + (f", neighbour of {', '.join(nbrs)}" if nbrs else ""))
                h = records[e.update_hash] = Happening(action, e.round, e.ts, subject, text)
            h.applied.append({"peer": log.owner, "round": e.round})
            h.ts = min(h.ts, e.ts)
    for h in records.values():
        h.applied.sort(key=lambda a: (a["round"] if a["round"] is not None else -1, fleet.name(a["peer"])))
        h.round = fleet_round([a["round"] for a in h.applied])
    return list(records.values())


def fleet_round(rounds: list[int | None]) -> int | None:
    """The round the fleet was at when peers applied a record: the one most of them were at (a
    peer lagging behind, or just admitted at round 0, does not move it); the later one on a tie."""
    counts = Counter(r for r in rounds if r is not None)
    return max(counts, key=lambda r: (counts[r], r)) if counts else None


def fleet_history(fleet: Fleet) -> list[Happening]:
    """Everything, in the order it happened (time, then round)."""
    out = membership_history(fleet)
    for log in fleet.logs:
        out += peer_history(fleet, log)
    return sorted(out, key=lambda h: (h.ts, h.round if h.round is not None else -1))


def revoked_at(fleet: Fleet) -> dict[str, int]:
    """Peer -> the first round any log applied its revocation."""
    return {h.peer: h.round for h in membership_history(fleet) if h.kind == "revoke" and h.round is not None}
