"""The [round] table a plan writes: explicit values, each with a comment saying why.

Why: the dataclass defaults suit one process (tests, the simulator: the caller runs the
rounds); a fleet of gateways needs pacing and a quorum. With no pacing (`interval = 0`) fast
peers start the next round the moment they aggregate and any hiccup puts them out of step
with their neighbours; with a pause of a couple of seconds between round starts, a fleet
whose rounds take less than that stays in step with the wall clock. A quorum of n - f (n
neighbours, f of them possibly Byzantine, hence possibly silent) lets a node proceed without
waiting for a neighbour that may never send, where the rule can still aggregate what arrived.
"""

from __future__ import annotations

from aggregation import parse_rule, tolerates

from ..config.settings import RoundConfig

FLEET_INTERVAL = 2.0  # seconds from one round's start to the next, at least, on gateways

COMMENTS = {
    "deadline": "seconds a round waits for neighbours, at most",
    "rounds": "the round to stop at: the peer stops when its round reaches it (0: run until stopped)",
    "max_lead": "rounds ahead of this peer's that are buffered",
}


def plan_quorum(rule: str, f: int, degree: int) -> tuple[int, str]:
    """(quorum, why) for a node with `degree` neighbours: n - f where the rule can aggregate the
    n - f + 1 models it then has (its own included) with f Byzantine among them; else 0."""
    if f == 0:
        return 0, f"0: every neighbour ({degree}), or the deadline"
    name = parse_rule(rule)[1]
    q = degree - f
    if q >= 1 and tolerates(rule, q + 1, f):
        return q, f"proceed once {q} of {degree} neighbours delivered (n - f: up to f = {f} may never send)"
    return 0, (f"0: wait for all {degree} neighbours or the deadline ({name} cannot aggregate {max(q, 0) + 1} "
               f"models with f = {f}, so n - f is too few)")


def round_table(given: dict, *, deployed: bool, rule: str, f: int, degree: int) -> tuple[dict, dict[str, str]]:
    """The node's [round]: what the template or overrides gave, plus explicit deadline,
    quorum, interval, rounds and max_lead; comments keyed "round.<key>" for tomlwrite.dumps."""
    defaults = RoundConfig()
    table = dict(given)
    comments = {f"round.{k}": v for k, v in COMMENTS.items()}
    table.setdefault("deadline", defaults.deadline)
    if "quorum" in given:
        comments["round.quorum"] = "the fleet's choice (its template)"
    elif deployed:
        table["quorum"], comments["round.quorum"] = plan_quorum(rule, f, degree)
    else:
        table["quorum"], comments["round.quorum"] = defaults.quorum, "0: every neighbour, or the deadline"
    if "interval" in given:
        comments["round.interval"] = "seconds between round starts, at least (the fleet's choice)"
    elif deployed:
        table["interval"] = FLEET_INTERVAL
        comments["round.interval"] = ("seconds between round starts, at least: rounds shorter than this keep in "
                                      "step instead of racing (0: flat out)")
    else:
        table["interval"] = defaults.interval
        comments["round.interval"] = "0: no pause (peers in one process: the caller runs the rounds)"
    table.setdefault("rounds", defaults.rounds)
    table.setdefault("max_lead", defaults.max_lead)
    order = ["deadline", "quorum", "interval", "rounds", "max_lead"]
    return {**{k: table[k] for k in order}, **{k: v for k, v in table.items() if k not in order}}, comments
