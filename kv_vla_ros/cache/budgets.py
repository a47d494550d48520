"""Per-layer budgets (ScaleKV): layers whose attention spreads over history ("drafters") get
more tokens, layers that look at the current frame ("refiners") fewer, same total as uniform.

``kv-vla calibrate`` measures each layer's dispersion and writes it beside the checkpoint in
``calibration.json``; `calibrated_budgets` turns it into budgets for any uniform budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

CALIBRATION_FILE = "calibration.json"


def allocate_layer_budgets(dispersion: Sequence[float], total: int, minimum: int, chunk_size: int) -> list[int]:
    """Split ``total`` tokens over layers in proportion to their attention ``dispersion``.

    Args:
        dispersion: per layer, the share of attention that goes to history (>= 0).
        total: sum of the budgets (``layers x uniform budget``).
        minimum: smallest budget of any layer (prefix + recent window).
        chunk_size: budgets above ``minimum`` are whole chunks (a partial chunk holds nothing).
    Returns:
        one budget per layer, each ``>= minimum``, summing to at most ``total``.
    """
    n = len(dispersion)
    if n == 0:
        raise ValueError("dispersion: needs at least one layer")
    if any(d < 0 for d in dispersion):
        raise ValueError("dispersion: values must be >= 0")
    if total < n * minimum:
        raise ValueError(f"total: {total} cannot give {n} layers their minimum of {minimum} tokens")
    spare_chunks = (total - n * minimum) // chunk_size
    weights = [float(d) for d in dispersion]
    if sum(weights) <= 0:
        weights = [1.0] * n
    raw = [spare_chunks * w / sum(weights) for w in weights]
    chunks = [int(r) for r in raw]
    # Largest remainders get the chunks lost to rounding.
    for i in sorted(range(n), key=lambda i: raw[i] - chunks[i], reverse=True)[: spare_chunks - sum(chunks)]:
        chunks[i] += 1
    return [minimum + c * chunk_size for c in chunks]


def budgets_for(dispersion: list[float], cache_config, budget_tokens: int) -> list[int]:
    """Per-layer budgets with the same total as ``budget_tokens`` in every layer."""
    return allocate_layer_budgets(dispersion, total=len(dispersion) * budget_tokens,
                                  minimum=cache_config.min_budget, chunk_size=cache_config.chunk_size)


def calibrated_budgets(model_path: str, cfg) -> list[int]:
    """Per-layer budgets for ``cfg.budget_tokens`` from ``calibration.json`` (``kv-vla calibrate``)."""
    path = Path(model_path) / CALIBRATION_FILE
    if not path.is_file():
        raise ValueError(f"layer_budgets=calibrated: no {CALIBRATION_FILE} in {model_path} (run kv-vla calibrate)")
    if cfg.budget_tokens is None:
        raise ValueError("layer_budgets=calibrated: needs a budget (budget_tokens or budget_frac)")
    return budgets_for(json.loads(path.read_text())["dispersion"], cfg, cfg.budget_tokens)
