"""Every bad input a user (or an attacker with write access to a file) can hand the command
line: one `error:` line that names the field or file and what is allowed, exit status 2, no
traceback, no hang. Inputs that used to hang run the real `gossipfl` in a subprocess."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from gossipfl.cli import main

ENV = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def one_line_error(output: str, *needles: str) -> str:
    """The output is a single `error: ...` line containing every needle."""
    assert "Traceback" not in output, output
    lines = [x for x in output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def cli(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    return r.output


def run(*args: str, timeout: float = 60) -> str:
    """The real command in a subprocess; a hang fails the test at `timeout`."""
    p = subprocess.run([sys.executable, "-m", "gossipfl", *args], capture_output=True, text=True, env=ENV,
                       timeout=timeout)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    return p.stderr


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """A 4-node in-memory plan; tests copy node-0's config and edit the copy."""
    out = tmp_path_factory.mktemp("plan")
    r = CliRunner().invoke(main, ["topology", "plan", "ring:4", "--out", str(out / "p"), "--transport", "memory"])
    assert r.exit_code == 0, r.output
    return out / "p" / "node-0"


def edited(plan, name: str, table: str, line: str):
    """node-0's config with `line` put in [table] (replacing that key if present)."""
    text = (plan / "peer.toml").read_text()
    key = line.split("=", 1)[0].strip()
    head, sep, rest = text.partition(f"[{table}]\n")
    if not sep:
        head, sep, rest = text + "\n", f"[{table}]\n", ""
    body, nxt, tail = rest.partition("\n[")
    body = "\n".join(x for x in body.splitlines() if x.split("=", 1)[0].strip() != key)
    path = plan / f"{name}.toml"
    path.write_text(head + sep + line + "\n" + body + nxt + tail)
    return path


@pytest.mark.parametrize("table, line, needles", [
    ("round", "max_message_mb = inf", ["round.max_message_mb", "finite"]),
    ("round", "max_message_mb = nan", ["round.max_message_mb", "finite"]),
    ("round", "max_message_mb = 0", ["round.max_message_mb", "> 0"]),
    ("round", "max_message_mb = -5", ["round.max_message_mb", "> 0"]),
    ("round", "deadline = inf", ["round.deadline", "finite"]),
    ("round", "deadline = 1e300", ["round.deadline", "seconds"]),
    ("round", "quorum = 7", ["round.quorum", "number of neighbours (2)"]),
    ("round", "max_lead = 1000000", ["round.max_lead", "0..100"]),
    ("train", "lr = nan", ["train.lr", "finite"]),
    ("train", "epochs = -1", ["train.epochs"]),
    ("model", "options = { hidden = [-1] }", ["model.options.hidden", "whole number"]),
    ("model", "options = { hidden = [0] }", ["model.options.hidden"]),
    ("model", "options = { hidden = [1.5] }", ["model.options.hidden"]),
    ("model", 'options = { hidden = "wide" }', ["model.options.hidden"]),
    ("model", "options = { depth = 3 }", ["model.options.depth", "allowed: hidden"]),
    ("model", "classes = 0", ["model.classes"]),
    ("model", "seed = -1", ["model.seed"]),
    ("aggregation", "params = { bogus = 1 }", ["aggregation.params.bogus", "allowed"]),
    ("aggregation", "params = { f = 2 }", ["aggregation.params.f", "aggregation.f"]),
    ("aggregation", "f = 5", ["aggregation.f", "number of neighbours (2)"]),
    ("data", "options = { scale = 2 }", ["data.options", "scale"]),
    ("data", 'source = "sim.datasets:nothing"', ["data.source", "no 'nothing'"]),
    ("data", 'source = "peer.learning.data:digits_shard"\noptions = { nope = 1 }', ["data.options", "nope"]),
    ("data", "seed = -1", ["data.seed"]),
    ("transport", "listen = []", ["transport.listen", "multiaddr"]),
    ("transport", 'topic_prefix = "a/#"', ["transport.topic_prefix"]),
    ("identity", 'key = "/dev/zero"', ["/dev/zero", "not a regular file"]),
    ("identity", 'key = "."', ["is a directory"]),
])
def test_bad_config_fields_are_one_line_errors(plan, table, line, needles):
    path = edited(plan, re.sub(r"\W", "_", line)[:40], table, line)
    one_line_error(cli("peer", "id", "--config", str(path)), *needles)


def test_a_trust_list_that_is_dev_zero_does_not_hang(plan):
    path = edited(plan, "zero_trust", "network", 'trust = "/dev/zero"')
    one_line_error(run("peer", "start", "--config", str(path)), "trust list /dev/zero", "not a regular file")


def test_a_key_that_is_dev_zero_does_not_hang(plan):
    path = edited(plan, "zero_key", "identity", 'key = "/dev/zero"')
    one_line_error(run("peer", "id", "--config", str(path), timeout=60), "key file /dev/zero", "not a regular file")


def test_a_fifo_as_config_does_not_hang(tmp_path):
    fifo = tmp_path / "peer.toml"
    os.mkfifo(fifo)
    one_line_error(run("peer", "id", "--config", str(fifo), timeout=60), str(fifo), "not a regular file")


def test_an_oversized_config_is_refused_unread(tmp_path):
    big = tmp_path / "peer.toml"
    with big.open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: the test writes nothing
    one_line_error(cli("peer", "id", "--config", str(big)), str(big), "larger than")


@pytest.mark.timeout(180)
def test_a_message_limit_below_one_update_is_refused_at_start(plan):
    path = edited(plan, "tiny_limit", "round", "max_message_mb = 1e-9")
    one_line_error(cli("peer", "start", "--config", str(path)), "round.max_message_mb")


def _data_config(plan, name: str, source: str, file: str):
    return edited(plan, name, "data", f'source = "{source}"\npath = "{file}"')


def _npz_cases(d):
    (d / "garbage.npz").write_bytes(os.urandom(300))
    np.savez(d / "nokeys.npz", a=np.zeros(3))
    np.savez(d / "flat.npz", x=np.zeros(5), y=np.zeros(5, dtype=np.int64))
    np.savez(d / "mismatch.npz", x=np.zeros((5, 2)), y=np.zeros(4, dtype=np.int64))
    np.savez(d / "strings.npz", x=np.array([["a", "b"]]), y=np.array([1]))
    np.save(d / "single.npy", np.zeros(3))
    (d / "single.npy").rename(d / "single.npz")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    header = buf.getvalue()
    with zipfile.ZipFile(d / "huge.npz", "w") as z:  # claims 4 TB: refused from its header alone
        z.writestr("x.npy", header)
        z.writestr("y.npy", header)
    return {"garbage.npz": "not an NPZ file", "nokeys.npz": "missing ['x', 'y']", "flat.npz": "expected features",
            "mismatch.npz": "expected features", "strings.npz": "not numbers", "single.npz": "not an NPZ file",
            "huge.npz": "larger than"}


def test_bad_npz_files_are_one_line_errors(plan):
    for name, needle in _npz_cases(plan).items():
        path = _data_config(plan, "npz_" + name.split(".")[0], "npz", name)
        one_line_error(cli("peer", "start", "--config", str(path)), name, needle)


@pytest.mark.parametrize("body, needle", [
    (b"label,x\n1,\xff\n", "not UTF-8"), (b"label\n1\n", "no feature columns"), (b"label,x\n1,2\n3\n", ":3: expected 2"),
    (b"label,x\n", "no rows"), (b"", "empty"), (b"label,x\n1.5,2\n", "not a number"),
    (b'label,x\n"1' + b"9" * 200_000 + b'",2\n', "not a valid CSV"), (b"label,x\n1,nan\n", "NaN"),
    (b"a,b\n1,2\n", "data.label_column"),
])
def test_bad_csv_files_are_one_line_errors(plan, body, needle):
    name = f"bad{abs(hash(body)) % 10**8}.csv"
    (plan / name).write_bytes(body)
    path = _data_config(plan, name.split(".")[0], "csv", name)
    one_line_error(cli("peer", "start", "--config", str(path)), needle)


@pytest.mark.parametrize("spec, needle", [
    ("grid:-1,-3", "ROWS must be at least 1"), ("grid:1,1", "ROWS * COLS"), ("ring:-5", "N must be at least 3"),
    ("ring:10000000", "at most 1,000,000"), ("torus:2,9", "ROWS"), ("complete:1", "N"), ("complete:100000", "edges"),
    ("star:1", "N"), ("regular:-4,2", "N"), ("regular:5,3", "even"), ("regular:6,9", "d < n"),
    ("er:0,0.5", "N must be at least 2"), ("er:10,nan", "finite"), ("er:10,inf", "finite"), ("er:10,2", "(0, 1]"),
    ("er:100000,0.5", "at most 5,000"), ("ws:-4,2,0.1", "N"), ("ws:10,3,0.1", "even"), ("ws:10,4,1.5", "[0, 1]"),
    ("ws:10,4,1e400", "finite"), ("ba:5,0", "1 <= M < N"), ("ba:10,1e3", "whole number"), ("exp:2", "N"),
    ("ring:1.5", "whole number"), ("ring:" + "9" * 60, "whole number"), ("ring:8,8", "expected ring:N"),
    ("hex:4", "unknown topology"),
])
def test_bad_topology_specs_are_one_line_errors(tmp_path, spec, needle):
    one_line_error(cli("topology", "show", spec, "--png", str(tmp_path / "t.png")), needle)


def _graph_files(d):
    files = {
        "list.json": ("[1, 2, 3]", "node-link JSON object"),
        "nodes.json": ('{"nodes": [1, 2], "links": []}', "JSON object"),
        "deep.json": ("[" * 100_000, "cannot read as json"),
        "bad.graphml": ("<graphml><graph><node id=", "cannot read as graphml"),
        "bad.gml": ("graph [ node [ id 1 ", "cannot read as gml"),
        "garbage.edgelist": ("1 2\n2 3 garbage more\n", "garbage.edgelist:2: expected two node labels"),
        "one.edgelist": ("1 1\n", "at least 2 nodes"),
    }
    for name, (text, _) in files.items():
        (d / name).write_text(text)
    (d / "binary.edgelist").write_bytes(b"\xff\xfe\x00")
    (d / "folder.graphml").mkdir()
    return {**{k: v[1] for k, v in files.items()}, "binary.edgelist": "not UTF-8",
            "folder.graphml": "a directory"}


def test_bad_graph_files_are_one_line_errors(tmp_path):
    for name, needle in _graph_files(tmp_path).items():
        one_line_error(cli("topology", "show", str(tmp_path / name), "--png", str(tmp_path / "t.png")), name, needle)


def test_a_graph_file_that_is_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "g.graphml"
    os.mkfifo(fifo)
    one_line_error(run("topology", "show", str(fifo), "--png", str(tmp_path / "t.png")), "not a regular file")


@pytest.mark.parametrize("args, needle", [
    (["--byzantine", "nan"], "Byzantine budget"), (["--byzantine", "1e300"], "Byzantine budget"),
    (["--byzantine", "-1"], "Byzantine budget"), (["--png", "t.foo"], "cannot draw in format 'foo'"),
])
def test_bad_topology_options_are_one_line_errors(tmp_path, args, needle):
    args = [a if a != "t.foo" else str(tmp_path / a) for a in args]
    one_line_error(cli("topology", "show", "ring:8", *args), needle)


@pytest.mark.parametrize("body, needles", [
    ("[faults]\nstragglers = -3\n", ["faults.stragglers must be >= 0"]),
    ("[faults]\nlatency = -1\n", ["faults.latency must be >= 0"]),
    ("[faults]\nlatency = nan\n", ["faults.latency", "finite"]),
    ("[faults]\nstragglers = 50\n", ["faults.stragglers", "8 nodes"]),
    ("[faults]\ndeadline = 1e9\n", ["faults.deadline", "at most"]),
    ("[faults]\nrejoin = 2.0\n", ["faults.rejoin"]), ("[faults]\npartition = [3, \"x\"]\n", ["faults.partition"]),
    ("[aggregation]\nf = 50\n", ["aggregation.f", "at most 2", "largest degree"]),
    ('[aggregation]\nrules = ["krum"]\nf = 1\n', ["aggregation.f = 1", "krum", "at most 0"]),
    ("[aggregation]\nparams = { bogus = 1 }\n", ["aggregation.params.bogus"]),
    ("[model]\noptions = { hidden = [-1] }\n", ["model.options.hidden"]),
    ("[data]\noptions = { x = 1 }\n", ["data.options"]), ("[data]\nalpha = 0\n", ["data.alpha"]),
    ("[train]\nlr = inf\n", ["train.lr", "finite"]), ("[train]\nbatch_size = 0\n", ["train.batch_size"]),
    ("[attack]\nbyzantine = 20\n", ["attack.byzantine", "8 nodes"]), ("[attack]\ncap = -1\n", ["attack.cap"]),
    ("[round]\nmax_message_mb = inf\n", ["round.max_message_mb"]), ('[round]\ncodec = "zip"\n', ["round.codec"]),
    ("seed = -1\n", ["seed must be >= 0"]), ("rounds = 10000000000\n", ["rounds must be at most"]),
])
def test_bad_scenarios_are_one_line_errors(tmp_path, body, needles):
    sc = tmp_path / "s.toml"
    top = body if not body.startswith("[") else ""
    sc.write_text(top + 'name = "t"\n[topology]\ngraph = "ring:8"\n' + ("" if top else body))
    one_line_error(cli("sim", "run", str(sc), "--out", str(tmp_path / "r"), "--quiet"), *needles)


def test_scenario_files_are_size_checked(tmp_path):
    one_line_error(run("sim", "run", "/dev/zero"), "scenario /dev/zero", "not a regular file")
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 50_000)
    one_line_error(cli("sim", "run", str(deep)), "deep.toml")


def test_trust_lists_are_size_checked_and_parsed_safely(plan, tmp_path):
    deep = tmp_path / "trust.json"
    deep.write_text("[" * 100_000)
    path = edited(plan, "deep_trust", "network", f'trust = "{deep}"')
    one_line_error(cli("peer", "start", "--config", str(path)), "trust list", "nested too deeply")


@pytest.mark.parametrize("args, needle", [
    (["topology", "plan", "ring:4", "--out", "X", "--base-port", "70000"], "--base-port"),
    (["topology", "plan", "ring:4", "--out", "X", "--f", "-1"], "--f"),
    (["topology", "plan", "ring:4", "--out", "X", "--broker", "host:99999"], "--broker"),
    (["demo", "--nodes", "3"], "--nodes"), (["audit", "trace", "abc", "x.db", "--depth", "-1"], "--depth"),
])
def test_bad_option_values_are_refused(tmp_path, args, needle):
    args = [str(tmp_path / "out") if a == "X" else a for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output, r.output
