#!/usr/bin/env python3
"""Table (Markdown), JSON and a bar plot of the arm recipe's ablation (scripts/ablation_arm.sh).

    python scripts/ablation_arm_report.py --out OUT "NAME=CHECKPOINT:EVAL" ...

Each variant is a trained checkpoint (its train_log.jsonl / train_config.json) and a `kv-vla eval
--out` directory. Every row counts the same held-out seeds: the seeds all variants' evaluations
ran (a 200-seed `make model-arm` table is cut to the ablation's 40). A variant not finished yet is
skipped with a line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = [  # (column, cache spec as evaluated)
    ("full", "full"),
    ("no history", "window:recent_chunks=1,budget_tokens=33"),
    ("window 1/4", "window:budget_frac=0.25"),
    ("gated 1/4", "gated:budget_frac=0.25"),
    ("h2o 1/8", "h2o:budget_frac=0.125"),
    ("random 1/8", "random:budget_frac=0.125"),
    ("gated 1/8", "gated:budget_frac=0.125"),
]


def read_variant(name: str, ckpt: Path, eval_dir: Path) -> dict | None:
    log_path, results_path = ckpt / "train_log.jsonl", eval_dir / "results.json"
    if not (log_path.is_file() and results_path.is_file()):
        print(f"ablation-arm: {name}: no {log_path} or {results_path} yet; skipped", file=sys.stderr)
        return None
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    cfg = json.loads((ckpt / "train_config.json").read_text())
    per_spec = {r["policy"]: r["per_episode"] for r in json.loads(results_path.read_text())["results"]}
    return {"variant": name, "steps": log[-1]["step"], "minutes": round(log[-1]["elapsed_s"] / 60, 1),
            "aux_weight": cfg["aux_weight"], "evict_prob": cfg["evict_prob"], "evict_from": cfg["evict_from"],
            "final_aux_loss": log[-1].get("aux_loss"), "final_probe_loss": log[-1].get("probe_loss"),
            "per_spec": per_spec}


def success_on(per_episode: dict, seeds: set[int]) -> float:
    picked = [ok for seed, ok in zip(per_episode["seed"], per_episode["success"]) if seed in seeds]
    return sum(map(bool, picked)) / len(picked)


def summarize(variants: list[dict]) -> tuple[list[dict], int]:
    """One row per variant: success per column on the seeds every variant ran."""
    seed_sets = [set(pe["seed"]) for v in variants for pe in v["per_spec"].values()]
    common = set.intersection(*seed_sets) if seed_sets else set()
    rows = []
    for v in variants:
        row = {k: v[k] for k in ("variant", "steps", "minutes", "aux_weight", "evict_prob", "evict_from",
                                 "final_aux_loss", "final_probe_loss")}
        for column, spec in COLUMNS:
            row[column] = success_on(v["per_spec"][spec], common) if spec in v["per_spec"] and common else None
        rows.append(row)
    return rows, len(common)


def markdown(rows: list[dict], seeds: int) -> str:
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    head = "| variant | aux weight | eviction training | steps (min) | " + " | ".join(c for c, _ in COLUMNS) + " |"
    lines = [f"Closed-loop success on the same {seeds} held-out seeds of Arm-CueCarryLong-v0 per row.", "",
             head, "|" + "---|" * (4 + len(COLUMNS))]
    for r in rows:
        evict = f"{r['evict_prob']:.0%} of episodes from {r['evict_from']:.0%}" if r["evict_prob"] else "off"
        lines.append(f"| {r['variant']} | {r['aux_weight']:g} | {evict} | {r['steps']} ({r['minutes']:g}) | "
                     + " | ".join(pct(r[c]) for c, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(COLUMNS))]
        ax.bar(xs, [100 * (r[c] or 0) for c, _ in COLUMNS], width, label=r["variant"])
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(COLUMNS))], [c for c, _ in COLUMNS])
    ax.set_ylabel("success %")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_title("Arm-CueCarryLong: what each part of the recipe from bags buys (equal wall time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for ablation.{md,json,png}")
    parser.add_argument("variants", nargs="+", help="NAME=CHECKPOINT_DIR:EVAL_DIR")
    args = parser.parse_args(argv)
    variants = []
    for item in args.variants:
        name, sep, dirs = item.partition("=")
        ckpt, sep2, eval_dir = dirs.partition(":")
        if not (sep and sep2 and name):
            print(f"ablation-arm: variant {item!r}: expected NAME=CHECKPOINT_DIR:EVAL_DIR", file=sys.stderr)
            return 1
        v = read_variant(name, Path(ckpt), Path(eval_dir))
        if v is not None:
            variants.append(v)
    if not variants:
        print("ablation-arm: no finished variant", file=sys.stderr)
        return 1
    rows, seeds = summarize(variants)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(markdown(rows, seeds))
    (out / "ablation.json").write_text(json.dumps({"seeds": seeds, "rows": rows}, indent=2) + "\n")
    plot(rows, out / "ablation.png")
    print(markdown(rows, seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
