"""Smoke run of `kv-vla bench cache` (the real benchmark is a command, not a test)."""

import json
import subprocess
import sys

from kv_vla_ros.cli import main


def test_bench_cache_smoke_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "cache", "--frames", "20", "--hidden", "64", "--layers", "2", "--budget-frames", "4",
               "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench_cache.json").read_text())
    row = data["table"][-1]
    assert row["frames"] == 16
    # window and gated hold the budget (prefix 16 + 4 frames x 16), full holds everything seen
    assert row["full_held"] == row["tokens_seen"] == 16 + 16 * 16
    assert row["gated_held"] <= 16 + 4 * 16 and row["window_held"] <= 16 + 4 * 16
    assert row["full_bytes"] / row["gated_bytes"] > 3
    assert (out / "bench_cache.png").stat().st_size > 1000
    assert "full/gated latency" in capsys.readouterr().out


def test_cli_rejects_unknown_command_and_bad_option():
    bad = subprocess.run([sys.executable, "-m", "kv_vla_ros.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "kv_vla_ros.cli", "bench", "cache", "--frames", "0"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--frames must be >= 1" in bad.stderr
    ok = subprocess.run([sys.executable, "-m", "kv_vla_ros.cli", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "bench" in ok.stdout
