"""scripts/gate_report_table.py: the README's gate table from a gate report's results.json."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gate_report_table.py"


def _row(policy: str, budget: int, success: float, **extra) -> dict:
    return {"task": "MiniGrid-MemoryS37-v0", "policy": policy, "cache": {"budget_tokens": budget},
            "success_rate": success, "mean_length": 61.44, "mean_tokens_held": 72.6,
            "cache_policy_share": 0.081, "cache_scoring_share": 0.0493, **extra}


def _table(tmp_path, rows) -> subprocess.CompletedProcess:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": {}, "results": rows}))
    return subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)


def test_table_names_policies_and_budgets_and_leaves_missing_metrics_blank(tmp_path):
    proc = _table(tmp_path, [
        _row("full", 96, 1.0, decision_accuracy=1.0, cue_held_at_decision=1.0),
        _row("gated:gate_threshold=0,summarize=true,summary_threshold=0,budget_frac=0.125", 40, 0.965,
             decision_accuracy=0.965, cue_held_at_decision=float("nan")),
        _row("window:budget_frac=0.25", 80, 0.495),
    ])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| task | policy (budget) | success |") and len(lines) == 5
    assert lines[2] == "| MemoryS37 | full | 100.0% | 100.0% | 100.0% | 61.4 | 73 | 8.1% | 4.9% |"
    assert lines[3].startswith("| MemoryS37 | trained gate + summaries (40 tok) | 96.5% | 96.5% | - |")
    assert lines[4].startswith("| MemoryS37 | window (80 tok) | 49.5% | - | - |")


def test_unknown_policy_or_bad_file_is_a_clear_error(tmp_path):
    proc = _table(tmp_path, [_row("lru:budget_frac=0.25", 80, 0.5)])
    assert proc.returncode == 1 and "'lru:budget_frac=0.25' is not one of the report's policies" in proc.stderr
    (tmp_path / "broken.json").write_text("{")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "broken.json")], capture_output=True, text=True)
    assert proc.returncode == 1 and "broken.json" in proc.stderr
