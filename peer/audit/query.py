"""The questions people ask of a fleet's logs, one function each, answered as plain data
(`to_dict()` for --json) that the command line and the HTML report render.

Rejections come in two kinds and are never mixed: a *proven* rejection names a sender whose
signature was checked (counterpart = sender); a rejection of unauthenticated input is a
count per reason and round with the senders it *claimed* to come from, which anyone can
claim: it says nothing about those peers."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..state.provenance import Event, EventKind
from .fleet import AuditLookupError, Fleet, short


def _strangers(e: Event) -> bool:
    return e.kind == EventKind.REJECTED and e.counterpart is None and e.details.get("authenticated") is False


def _claimed(e: Event) -> list[str]:
    return [c for c in e.details.get("claimed", ()) if isinstance(c, str)]


def _count(e: Event) -> int:
    c = e.details.get("count", 1)
    return c if isinstance(c, int) and c > 0 else 1


# --- which updates went into X's model at round R ---------------------------------------


@dataclass
class ModelInputs:
    peer: str
    round: int
    outcome: str                       # "aggregated", "skipped: ...", or "no aggregation logged"
    model: str | None = None           # hash of the model the aggregation produced
    rule: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)     # {update, signer, own, verified}
    rejected: list[dict[str, Any]] = field(default_factory=list)   # {sender, update, reason, detail}
    unauthenticated: list[dict[str, Any]] = field(default_factory=list)  # {reason, count, claimed}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_inputs(fleet: Fleet, peer: str, round_: int) -> ModelInputs:
    """What peer's aggregation of `round_` used, who signed each input, and what it turned down."""
    log = fleet.log_of(peer)
    evs = [e for e in log.events if e.round == round_]
    if not any(e.kind in (EventKind.TRAINED, EventKind.AGGREGATED, EventKind.SKIPPED, EventKind.SENT) for e in evs):
        have = sorted({e.round for e in log.events if e.kind == EventKind.TRAINED and e.round is not None})
        span = f"rounds {have[0]}..{have[-1]}" if have else "no rounds"
        raise AuditLookupError(f"peer {fleet.name(peer)} logged nothing for round {round_} (its log has {span})")
    received = {e.update_hash: e.counterpart for e in evs if e.kind == EventKind.RECEIVED}
    own = {e.update_hash for e in evs if e.kind == EventKind.SENT}
    out = ModelInputs(peer, round_, "no aggregation logged")
    agg = next((e for e in evs if e.kind == EventKind.AGGREGATED), None)
    skip = next((e for e in evs if e.kind == EventKind.SKIPPED), None)
    if agg is not None:
        out.outcome, out.model, out.rule = "aggregated", agg.update_hash, agg.details.get("rule")
        senders = agg.details.get("senders") or []
        for i, h in enumerate(h for h in agg.details.get("inputs", ()) if isinstance(h, str)):
            if h in own:
                out.inputs.append({"update": h, "signer": peer, "own": True, "verified": True})
                continue
            claimed = senders[i] if i < len(senders) and isinstance(senders[i], str) else None
            signer = received.get(h, claimed)
            # a received event's header is re-checked by `audit verify`: the signer is proven
            out.inputs.append({"update": h, "signer": signer, "own": False, "verified": h in received})
    elif skip is not None:
        out.outcome = f"skipped: {skip.details.get('reason', '')}"
    for e in evs:
        if e.kind != EventKind.REJECTED:
            continue
        if _strangers(e):
            out.unauthenticated.append({"reason": e.details.get("reason"), "count": _count(e),
                                        "claimed": _claimed(e)})
        else:
            out.rejected.append({"sender": e.counterpart, "update": e.update_hash,
                                 "reason": e.details.get("reason"), "detail": e.details.get("detail", "")})
    return out


# --- where did update U go ----------------------------------------------------------------


@dataclass
class UpdateStory:
    update: str
    what: str                          # "update" (a sent message) or "model" (an aggregation's result)
    origin: str | None = None          # the peer that sent it / whose model it is
    round: int | None = None
    sent_to: list[str] = field(default_factory=list)
    accepted_by: list[dict[str, Any]] = field(default_factory=list)    # {peer, round}
    rejected_by: list[dict[str, Any]] = field(default_factory=list)    # {peer, round, reason, detail}
    aggregated_by: list[dict[str, Any]] = field(default_factory=list)  # {peer, round, model}
    inputs: list[str] = field(default_factory=list)                    # of a model: what it combined

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def update_story(fleet: Fleet, update: str) -> UpdateStory:
    """Who sent the update, who accepted, rejected and aggregated it, in which rounds."""
    story = UpdateStory(update, "update")
    for log in fleet.logs:
        for e in log.events:
            if e.update_hash == update:
                if e.kind == EventKind.SENT:
                    story.origin, story.round = log.owner, e.round
                    if e.counterpart and e.counterpart not in story.sent_to:
                        story.sent_to.append(e.counterpart)
                elif e.kind == EventKind.RECEIVED:
                    story.accepted_by.append({"peer": log.owner, "round": e.round})
                elif e.kind == EventKind.REJECTED:
                    story.rejected_by.append({"peer": log.owner, "round": e.round, "sender": e.counterpart,
                                              "reason": e.details.get("reason"),
                                              "detail": e.details.get("detail", "")})
                elif e.kind == EventKind.AGGREGATED:
                    story.what, story.origin, story.round = "model", log.owner, e.round
                    story.inputs = [h for h in e.details.get("inputs", ()) if isinstance(h, str)]
            if e.kind == EventKind.AGGREGATED and update in e.details.get("inputs", ()):
                story.aggregated_by.append({"peer": log.owner, "round": e.round, "model": e.update_hash})
    if story.origin is None and story.rejected_by:
        story.origin = story.rejected_by[0]["sender"]
        story.round = story.rejected_by[0]["round"]
    for key in ("accepted_by", "rejected_by", "aggregated_by"):
        getattr(story, key).sort(key=lambda d: (d["round"] if d["round"] is not None else -1, fleet.name(d["peer"])))
    return story


# --- what did X do over rounds A..B ---------------------------------------------------------


@dataclass
class RoundRow:
    round: int
    trained: dict[str, Any] = field(default_factory=dict)     # loss, accuracy
    sent: str | None = None                                   # the update id sent
    sent_to: int = 0                                          # neighbours it went to (distinct)
    accepted: list[str] = field(default_factory=list)          # senders
    rejected: dict[str, int] = field(default_factory=dict)     # proven: reason -> count
    unauthenticated: dict[str, int] = field(default_factory=dict)  # reason -> count
    outcome: str = ""                                          # aggregated / skipped / diverged ...
    model: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timeline(fleet: Fleet, peer: str, first: int | None = None, last: int | None = None) -> list[RoundRow]:
    """One row per round of peer's log within first..last (inclusive)."""
    log = fleet.log_of(peer)
    rows: dict[int, RoundRow] = {}
    recipients: dict[int, set] = {}  # a round sent again after a restart goes to the same neighbours
    for e in log.events:
        if e.round is None or (first is not None and e.round < first) or (last is not None and e.round > last):
            continue
        row = rows.setdefault(e.round, RoundRow(e.round))
        d = e.details
        if e.kind == EventKind.TRAINED:
            row.trained = {k: d[k] for k in ("loss", "accuracy", "eval_accuracy") if k in d}
        elif e.kind == EventKind.SENT:
            sent = recipients.setdefault(e.round, set())
            sent.add(e.counterpart)
            row.sent, row.sent_to = e.update_hash, len(sent)
        elif e.kind == EventKind.RECEIVED and e.counterpart:
            row.accepted.append(e.counterpart)
        elif e.kind == EventKind.REJECTED:
            bucket = row.unauthenticated if _strangers(e) else row.rejected
            reason = str(d.get("reason", "?"))
            bucket[reason] = bucket.get(reason, 0) + _count(e)
        elif e.kind == EventKind.AGGREGATED:
            n = len(d.get("inputs", ()))
            row.outcome, row.model = f"aggregated {n} ({d.get('rule', '?')})", e.update_hash
        elif e.kind == EventKind.SKIPPED:
            row.outcome = f"skipped: {d.get('reason', '')}"
        elif e.kind == EventKind.DIVERGED:
            row.notes.append(f"diverged: {d.get('reason', d.get('detail', ''))}".rstrip(": "))
        elif e.kind == EventKind.RATE_LIMITED:
            row.notes.append(f"rate-limited {fleet.name(e.counterpart)}")
        elif e.kind == EventKind.STARTED:
            row.notes.append("started")
        elif e.kind == EventKind.STOPPED:
            row.notes.append(f"stopped ({d.get('reason', '')})")
    if not rows:
        raise AuditLookupError(f"peer {fleet.name(peer)} logged no events in rounds "
                               f"{'' if first is None else first}..{'' if last is None else last}")
    return [rows[r] for r in sorted(rows)]


# --- which peers ever sent something rejected ------------------------------------------------


@dataclass
class Rejections:
    proven: list[dict[str, Any]] = field(default_factory=list)           # {sender, reason, count, by, rounds}
    unauthenticated: list[dict[str, Any]] = field(default_factory=list)  # {reason, count, claimed, by, rounds}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rejections(fleet: Fleet) -> Rejections:
    """Proven senders of rejected updates, by reason; and unauthenticated rejections by reason
    with the senders they claimed (claims, not proof)."""
    proven: dict[tuple[str, str], dict[str, Any]] = {}
    strangers: dict[str, dict[str, Any]] = {}
    for log in fleet.logs:
        for e in log.events:
            if e.kind != EventKind.REJECTED:
                continue
            reason = str(e.details.get("reason", "?"))
            if _strangers(e):
                s = strangers.setdefault(reason, {"reason": reason, "count": 0, "claimed": Counter(),
                                                  "by": set(), "rounds": set()})
                s["claimed"].update(_claimed(e))
            else:
                s = proven.setdefault((e.counterpart or "?", reason), {
                    "sender": e.counterpart, "reason": reason, "count": 0, "by": set(), "rounds": set()})
            s["count"] += _count(e)
            s["by"].add(log.owner)
            if e.round is not None:
                s["rounds"].add(e.round)

    def plain(d: dict[str, Any]) -> dict[str, Any]:
        out = {**d, "by": sorted(d["by"], key=fleet.name), "rounds": sorted(d["rounds"])}
        if "claimed" in d:
            out["claimed"] = [{"peer": p, "times": n} for p, n in d["claimed"].most_common()]
        return out

    return Rejections(
        [plain(d) for d in sorted(proven.values(), key=lambda d: (fleet.name(d["sender"]), d["reason"]))],
        [plain(d) for d in sorted(strangers.values(), key=lambda d: d["reason"])])


def round_span(fleet: Fleet, peer: str) -> tuple[int, int] | None:
    rounds = [e.round for e in fleet.log_of(peer).events if e.round is not None]
    return (min(rounds), max(rounds)) if rounds else None


__all__ = ["ModelInputs", "RoundRow", "Rejections", "UpdateStory", "model_inputs", "rejections",
           "round_span", "short", "timeline", "update_story"]
