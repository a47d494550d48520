"""Tables and plots for evaluation results (matplotlib Agg: works headless)."""

from __future__ import annotations

from pathlib import Path

COLUMNS = [
    ("task", "task", "{}"),
    ("policy", "cache", "{}"),
    ("episodes", "episodes", "{}"),
    ("success_rate", "success", "{:.1%}"),
    ("decision_accuracy", "decision acc", "{:.1%}"),
    ("cue_held_at_decision", "cue held", "{:.1%}"),
    ("mean_length", "mean steps", "{:.1f}"),
    ("mean_tokens_seen", "tokens seen", "{:.0f}"),
    ("mean_tokens_held", "mean held", "{:.0f}"),
    ("peak_tokens_held", "peak held", "{:.0f}"),
    ("peak_kv_bytes", "peak KV", "{}"),
    ("latency_p50_ms", "step p50 ms", "{:.1f}"),
    ("latency_p99_ms", "step p99 ms", "{:.1f}"),
    ("cache_policy_share", "cache policy share", "{:.1%}"),
    ("cache_scoring_share", "of it scoring", "{:.1%}"),
]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GiB"


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]] = COLUMNS) -> str:
    """One row per (task, cache policy) result dict; rows with an ``error`` show it. ``columns``:
    ``(key, title, format)`` triples, by default `COLUMNS`."""
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    sep = "|" + "|".join(" --- " for _ in columns) + "|"
    lines = [head, sep]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get("cache_label", row.get(key)) if key == "policy" else row.get(key)
            if value is None or value != value:  # absent, or NaN (e.g. decisions on a BabyAI task)
                cells.append(str(row.get("error", "-")) if key == "success_rate" else "-")
            elif key == "peak_kv_bytes":
                cells.append(human_bytes(value))
            else:
                cells.append(fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(rows: list[dict], path: str | Path) -> Path:
    """Bar chart: success per task and cache policy (left), mean tokens held (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if r.get("success_rate") is not None]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(policies))
    x = np.arange(len(tasks))
    for i, pol in enumerate(policies):
        by_task = {r["task"]: r for r in rows if r["policy"] == pol}
        succ = [by_task[t]["success_rate"] if t in by_task else np.nan for t in tasks]
        held = [by_task[t]["mean_tokens_held"] if t in by_task else np.nan for t in tasks]
        # as the table names the row (budget resolved); a budget_frac resolves per task: then the spec
        names = {r.get("cache_label", pol) for r in by_task.values()}
        name = names.pop() if len(names) == 1 else pol
        axes[0].bar(x + i * width, succ, width, label=name)
        axes[1].bar(x + i * width, held, width, label=name)
    short = [t.replace("MiniGrid-", "").replace("BabyAI-", "").replace("-v0", "") for t in tasks]
    for ax, title in zip(axes, ("closed-loop success rate", "mean KV tokens held per step")):
        ax.set_xticks(x + width * (len(policies) - 1) / 2, short)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.05)
    # beside the plots, not over them: with many cache rows an inner legend hides the bars
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["markdown_table", "plot_results", "human_bytes", "COLUMNS"]
