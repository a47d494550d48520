"""Training curves beside a checkpoint: ``train_log.jsonl`` (one JSON object per logged step) drawn
as ``train_curves.png``. Shared by every trainer (π0 from bags, the package's own VLA)."""

from __future__ import annotations

import json
from pathlib import Path

LOG_FILE, CURVES_FILE = "train_log.jsonl", "train_curves.png"
# second curves on the loss panel, when the rows carry them
LOSS_OVERLAYS = (("probe_loss", "fixed probe (full history)"), ("loss_ema", "running mean"))


def write_curves(out: Path, loss_title: str = "flow-matching loss") -> Path | None:
    """``train_curves.png`` from ``out/train_log.jsonl``: rows ``{"step", "loss"}`` and optionally
    ``probe_loss``/``loss_ema`` (left panel) and ``aux_loss`` (right panel); None without rows."""
    out = Path(out)
    rows = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot([r["step"] for r in rows], [r["loss"] for r in rows], label="training batch", alpha=0.5)
    for key, label in LOSS_OVERLAYS:
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax[0].plot([a for a, _ in points], [b for _, b in points], label=label)
    ax[0].set(title=loss_title, xlabel="step", yscale="log")
    ax[0].legend(fontsize=8)
    aux = [(r["step"], r["aux_loss"]) for r in rows if r.get("aux_loss") is not None]
    ax[1].plot([a for a, _ in aux], [b for _, b in aux], color="tab:orange")
    ax[1].set(title="auxiliary loss (whole-history episodes)", xlabel="step")
    fig.tight_layout()
    fig.savefig(out / CURVES_FILE, dpi=100)
    plt.close(fig)
    return out / CURVES_FILE


__all__ = ["CURVES_FILE", "LOG_FILE", "write_curves"]
