"""scripts/ablation_report.py: table, JSON and plot from finished runs; unfinished runs skipped."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, name: str, step: int, success: dict) -> None:
    (out / name / "eval").mkdir(parents=True)
    (out / name / "train_summary.json").write_text(json.dumps(
        {"step": step, "elapsed_s": 840.0, "episodes_seen": 10 * step, "aux": {"acc": {"cue": 0.99}}}))
    results = [{"task": task, "success_rate": rate, "decision_accuracy": rate} for task, rate in success.items()]
    (out / name / "eval" / "results.json").write_text(json.dumps({"results": results}))


def test_report_writes_table_json_and_plot_and_skips_unfinished_runs(tmp_path):
    _run(tmp_path, "recipe_4tok_aux", 2375, {"MiniGrid-MemoryS13Random-v0": 1.0, "MiniGrid-MemoryS37-v0": 0.97})
    _run(tmp_path, "4tok_noaux", 2311, {"MiniGrid-MemoryS13Random-v0": 0.55, "MiniGrid-MemoryS37-v0": 0.5})
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation_report.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "49tok_aux" in proc.stderr  # not run: named, not invented
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["run"] for r in rows] == ["recipe_4tok_aux", "4tok_noaux"]
    assert rows[0]["S37_success"] == 0.97 and rows[1]["aux_loss"] is False
    table = (tmp_path / "ablation.md").read_text()
    assert "| 4 | on | 2375 (14.0) |" in table and "97.0%" in table and "55.0%" in table
    assert (tmp_path / "ablation.png").read_bytes()[:4] == b"\x89PNG"


def test_report_without_runs_fails_with_a_message(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation_report.py"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no finished run" in proc.stderr
