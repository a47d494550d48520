#!/usr/bin/env python3
"""The README's gate table from a `kv-vla gate-report` results.json (shorter names, fewer columns).

    scripts/gate_report_table.py runs/gate_report/results.json > runs/gate_report/readme_table.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from kv_vla_ros.eval.report import COLUMNS, markdown_table

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
# the README's columns: a subset of the report's, the policy column titled by what it shows
README_KEYS = ("task", "policy", "success_rate", "decision_accuracy", "cue_held_at_decision", "mean_length",
               "mean_tokens_held", "cache_policy_share", "cache_scoring_share")


def short_task(task: str) -> str:
    return task.removeprefix("MiniGrid-").removeprefix("BabyAI-").removesuffix("-v0")


def policy_name(row: dict) -> str:
    spec = re.sub(r"[:,]budget_frac=[0-9.]+", "", row["policy"])
    if spec not in NAMES:
        raise ValueError(f"policy: {row['policy']!r} is not one of the report's policies")
    name = NAMES[spec]
    return name if spec == "full" else f"{name} ({row['cache']['budget_tokens']} tok)"


def table(results: list[dict]) -> str:
    by_key = {key: (key, "policy (budget)" if key == "policy" else title, fmt) for key, title, fmt in COLUMNS}
    rows = [{**r, "task": short_task(r["task"]), "cache_label": policy_name(r)} for r in results]
    return markdown_table(rows, [by_key[key] for key in README_KEYS])


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
