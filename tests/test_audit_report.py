"""`audit report` writes one self-contained HTML page for a small real fleet's logs, and real
headless Chromium renders it: the DOM holds the expected text, the screenshot the pictures; and
for a fleet of many rounds and peers the page stays as wide as the window, the rounds grid
scrolling inside its container under sticky headers (measured in Chromium's own layout)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from tests.audit_fleet import JUNK_NODE, build_fleet
from tests.provenance_fixtures import write_synthetic_fleet

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return build_fleet(tmp_path_factory.mktemp("report") / "plan")


@pytest.fixture(scope="module")
def report(fleet, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = CliRunner().invoke(main, ["audit", "report", str(fleet.plan), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out / "index.html"


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (.ci/install installs it)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def test_report_is_self_contained(report, fleet):
    html = report.read_text()
    assert html.startswith("<!doctype html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)  # nothing fetched
    assert "<script" not in html and "<link" not in html
    assert html.count("data:image/png;base64,") == 2  # the rounds heat map and the lineage
    assert html.count(">OK<") == 4 and "non_finite" in html and "bad_signature" in html
    assert "claimed senders, not proof" in html


def test_report_renders_in_headless_chromium(report, fleet, tmp_path):
    url = report.resolve().as_uri()
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    for expected in ("gossipfl audit report", "Verification", "Membership and lifecycle", "Rounds per peer",
                     "Accepted and rejected", "Lineage", "non_finite", "4 started", "4 stopped",
                     f"{fleet.names[JUNK_NODE]} (..{fleet.peer_ids[JUNK_NODE][-8:]})"):
        assert expected in text, expected
    shot = tmp_path / "shot.png"
    r = chromium(f"--screenshot={shot}", "--window-size=1200,2600", url)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2600, 1200)

    def pixels(rgb_hex: str) -> int:
        rgb = np.array([int(rgb_hex[i:i + 2], 16) / 255 for i in (0, 2, 4)])
        return int(np.all(np.abs(img - rgb) < 0.03, axis=-1).sum())

    assert pixels("ffd34d") > 300   # the lineage PNG (data: URI) was decoded: its gold traced node
    assert pixels("57b35a") > 5000  # the heat map PNG: aggregated rounds
    assert pixels("d9443c") > 1000  # ... and node 0's rounds with rejections
    assert pixels("e3f3e3") > 2000  # the rounds table: aggregated cells
    assert pixels("fbe0de") > 500   # node 0's rounds with rejections


# --- many rounds and peers ---------------------------------------------------------------------

PEERS, ROUNDS = 24, 300  # a table of 7,200 cells, 26 px a round: 8,000 px of rounds for a 1,200 px window

# what the test measures in Chromium's layout once the page has loaded (the report itself has no
# script: the test adds this one to a copy, and lifts the copy's CSP to let it run)
PROBE = """<script>
window.addEventListener('load', () => {
  const box = document.querySelector('table.grid').closest('div.scroll');
  const img = document.querySelector('img.heat');
  const out = {page: document.documentElement.scrollWidth, window: window.innerWidth,
               overflow: getComputedStyle(box).overflowX, box: box.clientWidth, inside: box.scrollWidth,
               heat: [img.naturalWidth, img.naturalHeight, img.getBoundingClientRect().width]};
  box.scrollLeft = box.scrollWidth; box.scrollTop = box.scrollHeight;
  const at = box.getBoundingClientRect();
  const peer = box.querySelector('tbody tr:last-child th').getBoundingClientRect();
  const round = box.querySelector('thead th:last-child').getBoundingClientRect();
  out.scrolled = [box.scrollLeft, box.scrollTop];
  out.peer_column_left = peer.left - at.left; out.round_row_top = round.top - at.top;
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    write_synthetic_fleet(folder / "fleet", PEERS, ROUNDS)
    r = CliRunner().invoke(main, ["audit", "report", str(folder / "fleet"), "--out", str(folder / "out")])
    assert r.exit_code == 0, r.output
    return folder / "out" / "index.html"


def test_many_rounds_and_peers_scroll_inside_the_grid_and_the_page_keeps_its_width(big_report, tmp_path):
    html = big_report.read_text()
    assert html.count("<tr><th>g") >= PEERS and f"rounds 0 to {ROUNDS}" in html  # stopped at ROUNDS
    probe = tmp_path / "probe.html"
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
                     .replace("</body>", PROBE + "</body>"))
    dom = chromium("--window-size=1200,900", "--dump-dom", probe.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
    assert found, dom.stdout[-2000:]
    m = json.loads(found.group(1))
    assert m["page"] <= m["window"] == 1200, m  # nothing runs off the page
    assert m["overflow"] == "auto" and m["box"] <= m["window"] and m["inside"] > 5 * m["box"], m  # the grid scrolls
    assert m["scrolled"][0] > 0 and m["scrolled"][1] > 0, m
    assert 0 <= m["peer_column_left"] <= 2 and 0 <= m["round_row_top"] <= 2, m  # sticky: still in view
    width, height, shown = m["heat"]  # the heat map: every round in one picture that fits the page
    assert width >= 1000 and height > 0 and shown <= m["window"], m


def test_the_heat_map_shows_every_round_of_every_peer(big_report, tmp_path):
    import base64

    html = big_report.read_text()
    png = re.search(r'<img class=heat alt="[^"]*" src="data:image/png;base64,([^"]+)"', html).group(1)
    path = tmp_path / "heat.png"
    path.write_bytes(base64.b64decode(png))
    img = mpimg.imread(path)[..., :3]
    colours = {"57b35a": 0, "f2c14e": 0, "d9443c": 0, "7b4fa6": 0}  # aggregated, skipped, rejected, revoked
    for hexa in colours:
        rgb = np.array([int(hexa[i:i + 2], 16) / 255 for i in (0, 2, 4)])
        colours[hexa] = int(np.all(np.abs(img - rgb) < 0.03, axis=-1).sum())
    assert all(n > 500 for n in colours.values()), colours
