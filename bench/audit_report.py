"""`audit report` at fleet scale: the time to write the page for P peers x R rounds of real
signed logs (the synthetic fleet of tests/provenance_fixtures.py), what verification takes of
it, the page's size, and what headless Chromium lays out (the page's width against the
window's, the rounds table's scroll width).

    python bench/audit_report.py [--peers 100] [--rounds 1000]

Goal: at 1,000 rounds x 100 peers the page is as wide as the window, its heat map shows every
round, and the report is written in minutes, mostly spent re-verifying every signature."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._table import emit_json, print_table  # noqa: E402

PROBE = """<script>
window.addEventListener('load', () => {
  const box = document.querySelector('table.grid').closest('div.scroll');
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({page: document.documentElement.scrollWidth, window: window.innerWidth,
                                    table: box.scrollWidth, cells: document.querySelectorAll('table.grid td').length});
  document.body.appendChild(pre);
});
</script>"""


def layout(html: Path) -> dict:
    """Chromium's layout of the page (a copy with a probe script; the report has none)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return {}
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html.read_text())
    probe = html.with_name("probe.html")
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        t0 = time.perf_counter()
        out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                              "--window-size=1200,900", "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - t0
    found = re.search(r'<pre id="probe">(.*?)</pre>', out.stdout)
    return {**json.loads(found.group(1)), "render_s": seconds} if found else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1000)
    args = ap.parse_args()

    from peer.audit import report
    from peer.audit.fleet import Fleet
    from tests.provenance_fixtures import write_synthetic_fleet

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_synthetic_fleet(folder / "fleet", args.peers, args.rounds)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fleet = Fleet.load([folder / "fleet"])
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        verification = report._verification(fleet)
        verify_s = time.perf_counter() - t0
        assert verification.count(">OK<") == args.peers
        t0 = time.perf_counter()
        grid = report._grid(fleet)
        grid_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        page = report.write_report(fleet, folder / "out")
        report_s = time.perf_counter() - t0
        events = sum(len(lg.events) for lg in fleet.logs)
        figures = {"peers": args.peers, "rounds": args.rounds, "events": events, "write_logs_s": round(write_s, 1),
                   "load_s": round(load_s, 1), "verify_s": round(verify_s, 1), "grid_s": round(grid_s, 1),
                   "report_s": round(report_s, 1), "html_mb": round(page.stat().st_size / 1e6, 2),
                   "grid_html_mb": round(len(grid) / 1e6, 2)}
        shown = layout(page)
        figures.update({f"chromium_{k}": v if not isinstance(v, float) else round(v, 1) for k, v in shown.items()})
    print_table(["figure", "value"], [[k, v] for k, v in figures.items()],
                title=f"audit report, {args.peers} peers x {args.rounds} rounds")
    emit_json(figures)


if __name__ == "__main__":
    main()
