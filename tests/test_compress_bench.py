"""The reduced compression benchmark: it runs, prints its table and a final JSON line, draws the
PNG, and CHOCO at 10% reaches raw-f32's accuracy with fewer bytes."""

from __future__ import annotations

import json

from bench import compression


def test_the_quick_benchmark_reaches_raw_accuracy_with_fewer_bytes(tmp_path, capsys):
    figures = compression.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == json.loads(json.dumps(figures))
    assert any("B/node to target" in line for line in out)
    assert (tmp_path / "compression.png").stat().st_size > 10_000
    raw, choco = figures["digits/raw-f32"], figures["digits/choco 10%"]
    assert raw["bytes_ratio_to_target"] == 1.0
    assert choco["bytes_ratio_to_target"] is not None and choco["bytes_ratio_to_target"] > 2
    assert choco["final_accuracy"] >= figures["digits/target_accuracy"]
    assert figures["digits/int8"]["bytes_ratio_per_round"] > 3
