"""Smoke run of `kv-vla bench paper` (the full benchmark is a command, not a test)."""

import json

from kv_vla_ros.cli import main


def test_bench_paper_smoke(tmp_path, capsys):
    out = tmp_path / "bp"
    # the shipped model's backbone: the smallest one, so the smoke run stays short
    # (its steps are 5 tokens: 9 frames' budget = 45 tokens, above the 32-token prefix + window)
    rc = main(["bench", "paper", "--backbone", "default", "--history", "4,24", "--repeats", "1", "--threads", "1",
               "--budget-frames", "9", "--evictions", "full,gated,gated-static,gated-static-compiled", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench_default.json").read_text())
    step = data["tokens_per_step"]
    rows = {(r["policy"], r["frames"]): r for r in data["table"]}
    assert rows[("full", 24)]["tokens_held"] == rows[("full", 24)]["tokens_seen"]
    for policy in ("gated", "gated-static", "gated-static-compiled"):
        r = rows[(policy, 24)]
        assert r["tokens_held"] <= 9 * step and r["kv_reduction"] > 2 and r["flops_saved_pct"] > 0
        assert r["floor_bw_ms"] > 0 and r["x_bw_floor"] > 0 and r["aten_ops"] > 0
    # the compiled step (uncompiled on a CPU) holds what the static step holds
    assert rows[("gated-static-compiled", 24)]["tokens_held"] == rows[("gated-static", 24)]["tokens_held"]
    assert data["bandwidth_bytes_per_s"] > 0 and set(data["flatness"]) >= {"gated", "gated-static"}
    assert (out / "bench_default.png").stat().st_size > 1000
    assert "KV-Efficient VLA paper" in capsys.readouterr().out


def test_bench_dtype_smoke(tmp_path, capsys):
    """`kv-vla bench dtype` on the shipped model: a few steps, bfloat16 vs float32, and the compiled
    (uncompiled on a CPU) float32 session, which must agree exactly."""
    out = tmp_path / "bd"
    rc = main(["bench", "dtype", "--steps", "8", "--threads", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench_dtype.json").read_text())
    assert data["steps"] == 8 and data["dtype"] == "bfloat16" and 0.0 <= data["agreement"] <= 1.0
    assert (out / "bench_dtype.png").stat().st_size > 1000
    rc = main(["bench", "dtype", "--steps", "8", "--threads", "1", "--dtype", "float32", "--compile",
               "--cache", "gated:budget_tokens=432,static=true", "--out", str(out)])
    data = json.loads((out / "bench_dtype.json").read_text())
    assert rc == 0 and data["compiled"] == "eager" and data["agreement"] == 1.0 and data["max_logit_gap"] == 0.0
    assert "action agreement vs float32" in capsys.readouterr().out
