"""Smoke run of `kv-vla bench paper` (the full benchmark is a command, not a test)."""

import json
import subprocess
import sys
from pathlib import Path

from kv_vla_ros.cli import main


def test_bench_paper_smoke(tmp_path, capsys):
    out = tmp_path / "bp"
    # the shipped model's backbone: the smallest one, so the smoke run stays short
    # (its steps are 5 tokens: 9 frames' budget = 45 tokens, above the 32-token prefix + window)
    rc = main(["bench", "paper", "--backbone", "default", "--history", "4,24", "--repeats", "1", "--threads", "1",
               "--budget-frames", "9", "--evictions", "full,gated,gated-static,gated-static-compiled",
               "--out", str(out)])
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
    # the README's table comes from this JSON (scripts/bench_readme_tables.py, as generate_docs.py runs it)
    script = Path(__file__).resolve().parents[2] / "scripts" / "bench_readme_tables.py"
    table = subprocess.run([sys.executable, str(script), "paper", str(out / "bench_default.json")],
                           capture_output=True, text=True, check=True).stdout
    assert f"**{data['title']}**\n" in table  # after a warning when the machine was busy
    assert f"| gated | 24 | {rows[('gated', 24)]['tokens_seen']} |" in table
    targets = subprocess.run([sys.executable, str(script), "paper-targets", str(out / "bench_default.json")],
                             capture_output=True, text=True, check=True).stdout
    assert "no gated row against full at 64 frames" in targets  # this smoke run stops at 24 frames


def test_bench_dtype_smoke(tmp_path, capsys):
    """`kv-vla bench dtype` on the shipped model: a few steps, bfloat16 vs float32, and the compiled
    (uncompiled on a CPU) float32 session, which must agree exactly."""
    out = tmp_path / "bd"
    rc = main(["bench", "dtype", "--steps", "8", "--threads", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench_dtype.json").read_text())
    assert data["steps"] == 8 and data["dtype"] == "bfloat16" and (data["agreement"] * 8).is_integer()
    assert (out / "bench_dtype.png").stat().st_size > 1000
    rc = main(["bench", "dtype", "--steps", "8", "--threads", "1", "--dtype", "float32", "--compile",
               "--cache", "gated:budget_tokens=432,static=true", "--out", str(out)])
    data = json.loads((out / "bench_dtype.json").read_text())
    assert rc == 0 and data["compiled"] == "eager" and data["agreement"] == 1.0 and data["max_logit_gap"] == 0.0
    assert "action agreement vs float32" in capsys.readouterr().out


def test_readme_tables_say_when_a_run_shared_the_machine():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_readme_tables.py"
    spec = importlib.util.spec_from_file_location("bench_readme_tables", path)
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    row = {"frames": 16, "tokens_seen": 272, "full_ms": 7.0, "full_held": 272, "full_bytes": 1, "gated_ms": 9.0,
           "gated_held": 144, "gated_bytes": 1, "gated_speedup": 0.78, "gated_mem_ratio": 1.89}
    busy = {"args": {"evictions": "full,gated"}, "table": [row], "load_average": [5.7, 4.9]}
    assert tables.cache_table(busy).startswith("*Taken on a busy machine (load average up to 5.7)")
    quiet = {**busy, "load_average": [0.3, 0.2]}
    text = tables.cache_table(quiet)
    assert text.startswith("| frames |") and "load average 0.3 at the start" in text
    # a run that recorded the CPU other processes used is judged by it, not by the load average
    # (which counts the benchmark's own threads: a quiet 2-thread run shows a load of 2)
    alone = {**busy, "load_average": [1.9, 2.0], "other_cpu_cores": 0.01}
    text = tables.cache_table(alone)
    assert text.startswith("| frames |") and "other processes 0.01 CPU cores on average" in text
    shared = {**busy, "load_average": [1.9, 2.0], "other_cpu_cores": 1.2}
    assert tables.cache_table(shared).startswith("*Taken on a busy machine (other processes used 1.20 CPU cores")
