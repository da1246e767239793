"""`gossipfl peer export`: a fresh process loads every format and predicts exactly what the
peer's model predicts, without the training data; a checkpoint the log does not vouch for
is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from peer.ops.plan import write_plan
from peer.runtime.local import build_memory_network, run_peers
from sim.virtual_time import run_virtual
from topology import from_spec

ROOT = Path(__file__).resolve().parents[1]
CLI = "import gossipfl.cli_export; from gossipfl.cli import main; main()"
LOADER = r'''
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
fmt, path, xfile = sys.argv[1:4]
x = torch.from_numpy(np.load(xfile))
if fmt == "onnx":
    import onnxruntime
    out = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
elif fmt == "torchscript":
    out = torch.jit.load(path)(x).detach().numpy()
else:
    if fmt == "safetensors":
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, weights_only=True)
    from peer.learning.model import build_model
    model = build_model("mlp", x.shape[1], 10, {"hidden": [24]})
    model.load_state_dict(state)
    out = model(x).detach().numpy()
json.dump(out.tolist(), sys.stdout)
'''


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _export(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, "peer", "export", "--config", str(config), "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)


def _npz_plan(tmp_path) -> tuple[list, Path]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    data = tmp_path / "shared.npz"
    np.savez(data, x=x, y=y)
    over = {"model": {"name": "mlp", "options": {"hidden": [24]}}, "data": {"source": "npz", "path": str(data)},
            "train": {"local_steps": 10, "lr": 0.1, "momentum": 0.5}, "aggregation": {"rule": "mean", "f": 0},
            "round": {"deadline": 5.0, "train_in_thread": False}}
    return write_plan(from_spec("ring:3", seed=1), tmp_path / "plan", transport="memory", overrides=over,
                      draw=False), data


def test_every_export_predicts_what_the_peer_predicts_without_the_training_data(tmp_path):
    nodes, data = _npz_plan(tmp_path)
    _, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=3))
    data.unlink()  # export needs the config's model section and the checkpoint, not the data
    out = tmp_path / "export"
    done = _export(nodes[0].config, out)
    assert done.returncode == 0, done.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["round"] == 3 and meta["in_features"] == 12 and meta["skipped"] == {}
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(5))
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        expected = peers[0].model.module.eval()(x).numpy()
    for fmt, name in meta["files"].items():
        run = subprocess.run([sys.executable, "-c", LOADER, fmt, str(out / name), str(tmp_path / "x.npy")],
                             capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
        assert run.returncode == 0, (fmt, run.stderr[-2000:])
        got = np.array(json.loads(run.stdout), dtype=np.float32)
        assert np.allclose(got, expected, rtol=1e-5, atol=1e-5), (fmt, np.abs(got - expected).max())
    assert set(meta["files"]) == {"state_dict", "safetensors", "torchscript", "onnx"}


def test_export_refuses_a_checkpoint_the_log_does_not_vouch_for(tmp_path):
    nodes, _ = _npz_plan(tmp_path)
    _, peers = build_memory_network(nodes)
    run_virtual(run_peers(peers, rounds=1))
    ck = nodes[1].dir / "data" / "checkpoint.msgpack"
    raw = bytearray(ck.read_bytes())
    params = peers[1].model.get().numpy().tobytes()
    raw[raw.find(params[:64]) + 9] ^= 0xFF  # one flipped bit of the parameters
    ck.write_bytes(bytes(raw))
    done = _export(nodes[1].config, tmp_path / "bad")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "vouches for" in done.stderr and len(done.stderr.splitlines()) == 1
    done = _export(nodes[0].config, tmp_path / "x", "--format", "pickle")
    assert done.returncode == 2 and "--format: pickle is not one of" in done.stderr
