#!/usr/bin/env python3
"""The README's gate table from a `kv-vla gate-report` results.json (shorter names, fewer columns).

    scripts/gate_report_table.py runs/gate_report/results.json > runs/gate_report/readme_table.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys

# the report's policy specs -> the README's names
NAMES = {
    "full": "full",
    "window": "window",
    "sink_window": "sink_window",
    "h2o": "h2o",
    "key_norm": "key_norm",
    "random": "random",
    "gated:gate=untrained,gate_threshold=0": "untrained gate",
    "gated:gate_threshold=0": "trained gate",
    "gated:gate_threshold=0,layer_budgets=calibrated": "trained gate + layer budgets",
    "gated:gate_threshold=0,summarize=true,summary_threshold=0": "trained gate + summaries",
}
COLUMNS = ("task", "policy (budget)", "success", "decision acc", "cue held", "mean steps", "mean held",
           "cache policy share", "of it scoring")


def short_task(task: str) -> str:
    return task.removeprefix("MiniGrid-").removeprefix("BabyAI-").removesuffix("-v0")


def policy_name(row: dict) -> str:
    spec = re.sub(r"[:,]budget_frac=[0-9.]+", "", row["policy"])
    if spec not in NAMES:
        raise ValueError(f"policy: {row['policy']!r} is not one of the report's policies")
    name = NAMES[spec]
    return name if spec == "full" else f"{name} ({row['cache']['budget_tokens']} tok)"


def pct(value) -> str:
    return "-" if value is None or value != value else f"{100 * value:.1f}%"


def table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for r in results:
        cells = [short_task(r["task"]), policy_name(r), pct(r["success_rate"]), pct(r.get("decision_accuracy")),
                 pct(r.get("cue_held_at_decision")), f"{r['mean_length']:.1f}", f"{r['mean_tokens_held']:.0f}",
                 pct(r["cache_policy_share"]), pct(r.get("cache_scoring_share"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results.json written by kv-vla gate-report")
    args = parser.parse_args(argv)
    try:
        with open(args.results) as f:
            results = json.load(f)["results"]
        sys.stdout.write(table(results))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"gate_report_table: {args.results}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
