"""The inference-delay sweep's table and plot (`kv-vla eval --inference-delay-steps ...
--action-chunk-merge ...`): per merge rule and delay, success, decision accuracy, episode length,
stale ticks, and the step and jerk of the commands at chunk seams against inside chunks."""

from __future__ import annotations

from pathlib import Path

from kv_vla_ros.eval.report import markdown_table

COLUMNS = [
    ("action_chunk_merge", "merge", "{}"),
    ("inference_delay_steps", "D", "{}"),
    ("episodes", "episodes", "{}"),
    ("success_rate", "success", "{:.1%}"),
    ("decision_accuracy", "decision acc", "{:.1%}"),
    ("mean_length", "mean steps", "{:.1f}"),
    ("mean_stale_ticks", "stale ticks", "{:.1f}"),
    ("seam_step_p50", "seam step p50", "{:.3f}"),
    ("seam_step_p99", "seam step p99", "{:.3f}"),
    ("inner_step_p99", "in-chunk step p99", "{:.3f}"),
    ("seam_jerk_p50", "seam jerk p50", "{:.3f}"),
    ("seam_jerk_p99", "seam jerk p99", "{:.3f}"),
    ("inner_jerk_p50", "in-chunk jerk p50", "{:.3f}"),
    ("inner_jerk_p99", "in-chunk jerk p99", "{:.3f}"),
    ("jerk_ratio_p99", "seam/in-chunk jerk p99", "{:.2f}"),
]


def with_ratio(rows: list[dict]) -> list[dict]:
    """Rows with ``jerk_ratio_p99`` (seam jerk p99 / in-chunk jerk p99)."""
    out = []
    for row in rows:
        row = dict(row)
        seam, inner = row.get("seam_jerk_p99"), row.get("inner_jerk_p99")
        if seam is not None and inner:
            row["jerk_ratio_p99"] = seam / inner
        out.append(row)
    return out


def latency_table(rows: list[dict]) -> str:
    return markdown_table(with_ratio(rows), COLUMNS)


def plot_latency(rows: list[dict], path: str | Path) -> Path:
    """Success (left) and seam jerk p99 (right) against the delay D, one line per merge rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in with_ratio(rows) if r.get("success_rate") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for merge in dict.fromkeys(r["action_chunk_merge"] for r in rows):
        mine = sorted((r for r in rows if r["action_chunk_merge"] == merge), key=lambda r: r["inference_delay_steps"])
        delays = [r["inference_delay_steps"] for r in mine]
        axes[0].plot(delays, [r["success_rate"] for r in mine], marker="o", label=merge)
        axes[1].plot(delays, [r.get("seam_jerk_p99", float("nan")) for r in mine], marker="o", label=f"{merge}: seams")
        axes[1].plot(delays, [r.get("inner_jerk_p99", float("nan")) for r in mine], marker=".", linestyle=":",
                     label=f"{merge}: inside chunks")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("closed-loop success against inference delay")
    axes[1].set_title("jerk p99 (third difference, motion dims)")
    for ax in axes:
        ax.set_xlabel("inference delay D (control steps)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["latency_table", "plot_latency", "COLUMNS"]
