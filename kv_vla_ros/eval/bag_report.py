"""Bag evaluation output: a Markdown table and PNG plots (tokens held over time, gate scores per
chunk, agreement), written atomically: every file goes to a temporary name first and all are
renamed together at the end, so a failed run leaves no result that looks complete."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def agreement_text(agreement: dict, discrete: bool) -> str:
    if not agreement.get("n"):
        return "-"
    if discrete:
        return f"{agreement['match']:.1%}"
    return f"L1 {agreement['l1']:.3g} / L2 {agreement['l2']:.3g}"


def markdown_table(result: dict) -> str:
    discrete = result["meta"]["action_kind"] == "discrete"
    what = "exact match" if discrete else "mean L1 / L2"
    lines = [f"| config | steps | vs recorded ({what}) | vs full ({what}) | tokens held mean / peak | "
             "KV KiB mean / peak | p50 ms | p99 ms | MFLOP/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        flops = None if r["flops_per_step"] is None else r["flops_per_step"] / 1e6
        lines.append(
            f"| {r['policy']} | {r['steps']} | {agreement_text(r['agreement_recorded'], discrete)} | "
            f"{agreement_text(r['agreement_full'], discrete)} | "
            f"{r['mean_tokens_held']:.0f} / {r['peak_tokens_held']} | "
            f"{r['mean_kv_bytes'] / 1024:.0f} / {r['peak_kv_bytes'] / 1024:.0f} | {_fmt(r['latency_p50_ms'], '.2f')} | "
            f"{_fmt(r['latency_p99_ms'], '.2f')} | {_fmt(flops, '.2f')} |")
    return "\n".join(lines) + "\n"


def _plots(result: dict) -> dict[str, object]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, series in result["series"].items():
        ax.plot(series["tokens_held"], label=label, linewidth=1)
    ax.set(xlabel="step (whole bag; bags one after another)", ylabel="tokens held", title="KV tokens held over the bag")
    ax.legend(fontsize=8)
    figs["tokens_held.png"] = fig

    fig, ax = plt.subplots(figsize=(8, 4))
    for label, series in result["series"].items():
        scores = series["gate_scores"]
        if scores:
            ax.scatter([c for _, c, _ in scores], [s for _, _, s in scores], s=8, alpha=0.6, label=label)
    ax.set(xlabel="chunk (control step) within its episode", ylabel="gate score", title="gate scores per chunk")
    if ax.collections:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no scored chunks (no gated config, or no chunk left the recent window)",
                ha="center", va="center", transform=ax.transAxes)
    figs["gate_scores.png"] = fig

    discrete = result["meta"]["action_kind"] == "discrete"
    key = "match" if discrete else "l1"
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [r["policy"] for r in result["results"]]
    x = range(len(labels))
    bars = (("agreement_recorded", "vs recorded"), ("agreement_full", "vs full"))
    for offset, (which, name) in zip((-0.2, 0.2), bars):
        vals = [r[which].get(key, float("nan")) for r in result["results"]]
        ax.bar([i + offset for i in x], vals, width=0.4, label=name)
    ax.set_xticks(list(x), labels, rotation=15, fontsize=8)
    ax.set(ylabel="exact-match rate" if discrete else "mean L1 distance", title="action agreement")
    ax.legend(fontsize=8)
    figs["agreement.png"] = fig
    return figs


def write_report(result: dict, out_dir) -> list[Path]:
    """``bag_eval.json``, ``bag_eval.md`` and three PNGs in ``out_dir``; returns their paths."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {k: result[k] for k in ("meta", "results", "instructions")}
    if "per_bag" in result:
        doc["per_bag"] = result["per_bag"]
    doc["series"] = result["series"]
    doc["actions"] = {label: [[a.tolist() for a in ep] for ep in eps] for label, eps in result["actions"].items()}
    doc["recorded"] = [[None if a is None else a.tolist() for a in ep] for ep in result["recorded"]]
    staged: list[tuple[Path, Path]] = []
    try:
        texts = (("bag_eval.json", json.dumps(doc, indent=1) + "\n"), ("bag_eval.md", markdown_table(result)))
        for name, text in texts:
            tmp = out / f".{name}.partial"
            tmp.write_text(text)
            staged.append((tmp, out / name))
        for name, fig in _plots(result).items():
            tmp = out / f".{name}.partial"
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
            plt.close(fig)
            staged.append((tmp, out / name))
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
    return [final for _, final in staged]


__all__ = ["markdown_table", "write_report", "agreement_text"]
