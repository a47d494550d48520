"""Table (Markdown), JSON and a bar plot of an ablation run (scripts/ablation.sh):
python scripts/ablation_report.py OUT"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VARIANTS = [  # run name, tokens per frame, auxiliary loss
    ("recipe_4tok_aux", 4, True),
    ("4tok_noaux", 4, False),
    ("49tok_aux", 49, True),
    ("49tok_noaux", 49, False),
]
SHORT = {"MiniGrid-MemoryS13Random-v0": "S13Random", "MiniGrid-MemoryS37-v0": "S37"}


def collect(out: Path) -> list[dict]:
    rows = []
    for name, tokens, aux in VARIANTS:
        summary_path, results_path = out / name / "train_summary.json", out / name / "eval" / "results.json"
        if not (summary_path.is_file() and results_path.is_file()):
            print(f"ablation: {name} has no train_summary.json or eval/results.json yet; skipped", file=sys.stderr)
            continue
        summary = json.loads(summary_path.read_text())
        row = {"run": name, "frame_tokens": tokens, "aux_loss": aux, "steps": summary["step"],
               "minutes": round(summary["elapsed_s"] / 60, 1), "episodes_seen": summary["episodes_seen"],
               "aux_cue_acc": summary.get("aux", {}).get("acc", {}).get("cue")}
        for r in json.loads(results_path.read_text())["results"]:
            task = SHORT.get(r["task"], r["task"])
            row[f"{task}_success"], row[f"{task}_decision"] = r["success_rate"], r.get("decision_accuracy")
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    lines = ["| tokens per frame | auxiliary loss | steps (min) | episodes seen | `cue` acc (train) "
             "| S13Random success | "
             "S37 success |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['frame_tokens']} | {'on' if r['aux_loss'] else 'off'} | {r['steps']} ({r['minutes']}) | "
                     f"{r['episodes_seen']} | {pct(r['aux_cue_acc'])} | {pct(r.get('S13Random_success'))} | "
                     f"{pct(r.get('S37_success'))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    for k, task in enumerate(("S13Random", "S37")):
        xs = [i + (k - 0.5) * width for i in range(len(rows))]
        ax.bar(xs, [100 * (r.get(f"{task}_success") or 0) for r in rows], width, label=task)
    ax.axhline(50, color="grey", linestyle=":", label="chance")
    ax.set_xticks(range(len(rows)), [f"{r['frame_tokens']} tok, aux {'on' if r['aux_loss'] else 'off'}" for r in rows])
    ax.set_ylabel("success, full cache (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    rows = collect(out)
    if not rows:
        print(f"ablation: no finished run under {out}", file=sys.stderr)
        return 1
    (out / "ablation.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    (out / "ablation.md").write_text(table)
    plot(rows, out / "ablation.png")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
