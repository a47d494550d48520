"""Smoke run of `kv-vla bench paper` (the full benchmark is a command, not a test)."""

import json

from kv_vla_ros.cli import main


def test_bench_paper_smoke(tmp_path, capsys):
    out = tmp_path / "bp"
    # the shipped model's backbone: the smallest one, so the smoke run stays short
    rc = main(["bench", "paper", "--backbone", "default", "--history", "4,12", "--repeats", "1", "--threads", "1",
               "--budget-frames", "3", "--policies", "full,gated,gated-static", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench_default.json").read_text())
    step = data["tokens_per_step"]
    rows = {(r["policy"], r["frames"]): r for r in data["table"]}
    assert rows[("full", 12)]["tokens_held"] == rows[("full", 12)]["tokens_seen"]
    for policy in ("gated", "gated-static"):
        r = rows[(policy, 12)]
        assert r["tokens_held"] <= 3 * step and r["kv_reduction"] > 2 and r["flops_saved_pct"] > 0
    assert (out / "bench_default.png").stat().st_size > 1000
    assert "KV-Efficient VLA paper" in capsys.readouterr().out
