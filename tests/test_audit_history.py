"""A fleet with a history - a gateway admitted, every process killed (SIGKILL) and resumed, a
gateway revoked, one coming back late and catching up - read back from its real logs: the
lifecycle found in them, the audit report showing the revocation at its round in headless
Chromium, and the audit tables fitting 80 columns with hashes cut to prefixes."""

from __future__ import annotations

import json
import re

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from peer.audit.fleet import Fleet
from peer.audit.lifecycle import fleet_history
from tests.audit_fleet import ADMITTED, LATE_START, REVOKE_AT, build_lifecycle_fleet
from tests.test_audit_report import chromium

REVOKED = 1
LONG_HEX = re.compile(r"\b[0-9a-f]{13,}\b")  # a hash or raw bytes longer than a prefix


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    return build_lifecycle_fleet(tmp_path_factory.mktemp("history") / "plan")


def run(*args: str, columns: int = 80) -> str:
    r = CliRunner().invoke(main, list(args), env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    return r.output


def fits(text: str, columns: int = 80) -> None:
    too_long = [line for line in text.splitlines() if len(line) > columns]
    assert not too_long, "\n".join(too_long)


def test_the_lifecycle_is_read_from_the_logs(history):
    fleet = Fleet.load([history.plan])
    events = fleet_history(fleet)
    ids = history.peer_ids
    admits = [h for h in events if h.kind == "admit"]
    revokes = [h for h in events if h.kind == "revoke"]
    assert [(h.peer, h.round) for h in admits] == [(ids[ADMITTED], 2)]
    assert {a["peer"] for a in admits[0].applied} == set(ids)  # every peer was up to apply it
    assert [(h.peer, h.round) for h in revokes] == [(ids[REVOKED], REVOKE_AT)]
    appliers = {a["peer"] for a in revokes[0].applied}
    assert {ids[0], ids[3]} <= appliers and ids[2] not in appliers  # 2 was down (1 logs it if it heard, then stops)
    crashed = {h.peer for h in events if h.kind == "crash-resume"}
    assert crashed == set(ids)  # the child process died under every peer
    assert all("no `stopped`" in h.text for h in events if h.kind == "crash-resume")
    late = [h for h in events if h.kind == "jump" and h.peer == ids[2]]
    assert late and late[-1].round >= LATE_START, late  # node 2 caught up with its neighbours
    assert {h.peer for h in events if h.kind == "stopped"} == set(ids)
    assert [h.ts for h in events] == sorted(h.ts for h in events)


def test_the_report_shows_the_revocation_at_its_round(history, tmp_path):
    out = tmp_path / "report"
    run("audit", "report", str(history.plan), "--out", str(out))
    url = (out / "index.html").resolve().as_uri()
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    revoked = f"{history.names[REVOKED]} (..{history.peer_ids[REVOKED][-8:]})"
    row = re.search(r'<tr class="ev-revoke">(.*?)</tr>', dom.stdout)
    assert row, dom.stdout[-3000:]
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]
    assert cells[0] == str(REVOKE_AT) and cells[2] == "revoke" and cells[3] == revoked, cells
    assert f"revoke {revoked} (epoch 2" in cells[4] and f"applied at round {REVOKE_AT} by" in cells[4], cells
    head = re.search(r'<th class="th-revoke"[^>]*>(.*?)</th>', dom.stdout)  # the rounds table's column
    assert head and head.group(1) == f"{REVOKE_AT} revoke {history.names[REVOKED]}", head
    crashed = set()  # a row per crash-resume, or one naming the peers that crashed alike
    for row in re.findall(r'<tr class="ev-crash-resume">(.*?)</tr>', dom.stdout):
        who = re.sub(r"<[^>]+>", "", re.findall(r"<td[^>]*>(.*?)</td>", row)[3])
        crashed |= set(who.split(": ", 1)[1].split(", ")) if " peers: " in who else {who.split(" (..")[0]}
    assert crashed == set(history.names), crashed
    shot = tmp_path / "shot.png"
    r = chromium(f"--screenshot={shot}", "--window-size=1200,2200", url)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = mpimg.imread(shot)[..., :3]

    def pixels(rgb_hex: str) -> int:
        rgb = np.array([int(rgb_hex[i:i + 2], 16) / 255 for i in (0, 2, 4)])
        return int(np.all(np.abs(img - rgb) < 0.03, axis=-1).sum())

    assert pixels("efe6f8") > 2000  # the history's revoke row
    assert pixels("7b4fa6") > 1000  # the revoke column's header, the heat map's line and revoked rounds
    assert pixels("fde8d7") > 2000  # crash-resume rows


def test_audit_show_gives_membership_records_by_summary_and_prefix(history):
    log = history.logs[0]
    out = run("audit", "show", str(log), "--kind", "membership")
    fits(out)
    assert not LONG_HEX.search(out), out
    assert f"admit {history.names[ADMITTED]}, epoch 1" in out and f"revoke {history.names[REVOKED]}, epoch 2" in out
    assert len(re.findall(r"record [0-9a-f]{10} \(\d+\s+bytes\s+signed\s+by\s+the\s+admin\)", out)) == 2, out
    everything = run("audit", "show", str(log))
    fits(everything)
    assert not LONG_HEX.search(everything)
    assert len(everything.splitlines()) < 12 * len(Fleet.load([log]).logs[0].events)


@pytest.mark.parametrize("columns", [80, 160])
def test_audit_rejections_is_a_whole_table_at_80_and_160_columns(history, columns):
    out = run("audit", "rejections", str(history.plan), columns=columns)
    fits(out, columns)
    data = json.loads(run("audit", "rejections", str(history.plan), "--json"))
    lines = out.splitlines()
    for title, cols, rows in (("unauthenticated input", ("reason", "count", "claimed senders", "rejected by",
                                                         "rounds"), data["unauthenticated"]),
                              ("senders proven", ("sender", "reason", "count", "rejected by", "rounds"),
                               data["proven"])):
        if not rows:
            continue
        at = next(i for i, line in enumerate(lines) if line.startswith(title))
        header = lines[at + 1].split()
        assert " ".join(header) == " ".join(cols), lines[at:at + 3]  # every column, in one header line
        for r in rows:  # each reason and its count, whole, on the line that starts its row
            assert any(line.split()[:2] == [r["reason"], str(r["count"])] or
                       (r["reason"] in line.split() and str(r["count"]) in line.split()) for line in lines), r
    assert "revoked" in out  # the revoked gateway's messages, refused


def test_audit_timeline_says_rounds_and_neighbours(history):
    out = run("audit", "timeline", str(history.plan), "--peer", "0", "--from", "2", "--to", "4")
    fits(out)
    assert out.splitlines()[0].startswith(f"timeline of peer {history.names[0]} (..{history.peer_ids[0][-8:]}), "
                                          "rounds 2 to 4")
    assert re.search(r"\(\d neighbours\)", out) and not LONG_HEX.search(out)
    assert not re.search(r"\bto \d+\b", out.split("\n", 1)[1])  # a count never reads like a peer's name
