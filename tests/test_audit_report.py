"""`audit report` writes one self-contained HTML page for a small real fleet's logs, and real
headless Chromium renders it: the DOM holds the expected text, the screenshot the picture."""

from __future__ import annotations

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
    assert html.count("data:image/png;base64,") == 1
    assert html.count(">OK<") == 4 and "non_finite" in html and "bad_signature" in html
    assert "claimed senders, not proof" in html


def test_report_renders_in_headless_chromium(report, fleet, tmp_path):
    url = report.resolve().as_uri()
    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    for expected in ("gossipfl audit report", "Verification", "Rounds per peer", "Accepted and rejected",
                     "Lineage", "non_finite", f"{fleet.names[JUNK_NODE]} (..{fleet.peer_ids[JUNK_NODE][-8:]})"):
        assert expected in text, expected
    shot = tmp_path / "shot.png"
    r = chromium(f"--screenshot={shot}", "--window-size=1200,1800", url)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1800, 1200)

    def pixels(rgb_hex: str) -> int:
        rgb = np.array([int(rgb_hex[i:i + 2], 16) / 255 for i in (0, 2, 4)])
        return int(np.all(np.abs(img - rgb) < 0.03, axis=-1).sum())

    assert pixels("ffd34d") > 300   # the lineage PNG (data: URI) was decoded: its gold traced node
    assert pixels("e3f3e3") > 2000  # the rounds grid: aggregated cells
    assert pixels("fbe0de") > 500   # node 0's rounds with rejections
