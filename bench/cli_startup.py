"""Start-up cost of the commands that need no model: wall time and peak RSS of each, next to
`python -c pass` and to importing torch (ratios), and whether torch or libp2p got imported.

    python bench/cli_startup.py [--repeat 3]

Builds a four-peer fleet's logs (memory transport) in a temporary folder for the audit
commands, then runs each command in a fresh interpreter. Goal: under 1 s and 100 MB each."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._table import emit_json, print_table  # noqa: E402

# prints which heavy packages the command imported, after it ran (the command may sys.exit)
PROBE = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("\\nLOADED " + " ".join(m for m in ("torch", "libp2p", "matplotlib")
                                                                    if m in sys.modules) + "\\n"))
sys.argv = ["gossipfl", *sys.argv[1:]]
from gossipfl.cli import main
main()
"""


def run(argv: list[str], cwd: Path) -> tuple[float, float, str, int]:
    """(seconds, peak RSS MB, heavy modules loaded, exit code) of one fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    loaded = next((line[7:].strip() for line in err.splitlines() if line.startswith("LOADED")), "?")
    return seconds, usage.ru_maxrss / 1024, loaded or "-", os.waitstatus_to_exitcode(status)


def best(argv, cwd, repeat):
    runs = [run(argv, cwd) for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the fleet is built in a child: the children measured below inherit this process's peak
        # RSS at fork, so this one must stay small (no torch here)
        plan = tmp / "plan"
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                        "from tests.audit_fleet import build_fleet; build_fleet(Path(sys.argv[1]))", str(plan)],
                       cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        db = str(plan / "node-0" / "data" / "provenance.db")
        from peer.audit.verify import load_events

        update = next(e for e in load_events(db)[1] if e.kind == "sent").update_hash[:8]
        py = sys.executable
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "gossipfl --help": [py, "-c", PROBE, "--help"],
            "gossipfl rules": [py, "-c", PROBE, "rules"],
            "gossipfl keygen": [py, "-c", PROBE, "keygen", "--out", str(tmp / "k.key"), "--force"],
            "gossipfl peer id": [py, "-c", PROBE, "peer", "id", "--config", str(plan / "node-0" / "peer.toml")],
            "gossipfl audit verify": [py, "-c", PROBE, "audit", "verify", str(plan)],
            "gossipfl audit show": [py, "-c", PROBE, "audit", "show", db],
            "gossipfl audit timeline": [py, "-c", PROBE, "audit", "timeline", str(plan), "--peer", "0"],
            "gossipfl audit rejections": [py, "-c", PROBE, "audit", "rejections", str(plan)],
            "gossipfl audit trace (PNG)": [py, "-c", PROBE, "audit", "trace", update, str(plan),
                                           "--png", str(tmp / "l.png")],
        }
        results = {name: best(argv, tmp, args.repeat) for name, argv in commands.items()}
    base_s, base_mb = results["python -c pass"][:2]
    torch_s, torch_mb = results["python -c 'import torch'"][:2]
    rows, figures = [], {}
    for name, (s, mb, loaded, code) in results.items():
        ok = "yes" if s < 1.0 and mb < 100 else "no"
        rows.append([name, round(s, 3), round(mb, 1), round(s / base_s, 1), round(s / torch_s, 2), loaded,
                     code, ok if name.startswith("gossipfl") else ""])
        figures[name] = {"seconds": round(s, 3), "peak_mb": round(mb, 1), "x_python": round(s / base_s, 2),
                         "x_import_torch": round(s / torch_s, 3), "loaded": loaded, "exit": code}
    print_table(["command", "seconds", "peak MB", "x python", "x import torch", "heavy imports", "exit",
                 "<1 s, <100 MB"], rows, title=f"CLI start-up, best of {args.repeat} (python {base_s:.3f} s "
                                                f"{base_mb:.0f} MB; import torch {torch_s:.3f} s {torch_mb:.0f} MB)")
    emit_json(figures)


if __name__ == "__main__":
    main()
