"""Cache specs, the one syntax every tool takes for a cache setting (``kv-vla eval``, ``bag eval``,
the benchmarks): ``POLICY[:field=value,...]`` applied to a checkpoint's cache config, e.g.
``full``, ``window:budget_tokens=300``, ``gated:budget_tokens=400,gate_threshold=0.3``.

``budget_frac=F`` sets ``budget_tokens`` to F x the mean tokens seen by the previous ``full`` run
on the same task or bag (so ``window:budget_frac=0.25`` is "a quarter of the mean history").
Two keys choose what the cache is paired with rather than a cache field: ``gate=untrained``
(``gated`` with a randomly initialised gate instead of the checkpoint's ``gate.safetensors``) and
``layer_budgets=calibrated`` (per-layer budgets from the checkpoint's ``calibration.json``, same
total as the uniform budget).
"""

from __future__ import annotations


def parse_spec(spec: str, base) -> tuple[dict, float | None]:
    """``"window:budget_tokens=300"`` -> (changes for ``base.replace``, budget_frac or None)."""
    from kv_vla_ros.cache.config import CacheConfig, field_names

    policy, _, rest = spec.partition(":")
    changes: dict = {"policy": policy.strip()}
    frac = None
    types = {f: type(getattr(base, f)) for f in field_names()}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"--policy: expected FIELD=VALUE in {spec!r}, got {item!r}")
        if key == "budget_frac":
            frac = float(raw)
            continue
        if key == "gate":
            if raw.strip() not in ("untrained", "trained"):
                raise ValueError(f"--policy: gate must be 'trained' or 'untrained' in {spec!r}, got {raw!r}")
            changes["_gate"] = raw.strip()
            continue
        if key == "layer_budgets" and raw.strip() == "calibrated":
            changes["_layer_budgets"] = "calibrated"
            continue
        if key not in types:
            raise ValueError(f"--policy: unknown cache field {key!r} in {spec!r} (known: {', '.join(types)})")
        raw = raw.strip()
        if raw.lower() == "none":
            value = None
        elif key in ("budget_tokens", "chunk_size", "recent_chunks", "sink_tokens", "seed"):
            value = int(raw)
        elif key in ("gate_threshold", "summary_threshold"):
            value = float(raw)
        elif key in ("summarize", "static"):
            value = raw.lower() in ("1", "true", "yes")
        elif key == "layer_budgets":
            value = [int(v) for v in raw.split("/")]
        else:
            value = raw
        changes[key] = value
    if changes["policy"] != "full" and "budget_tokens" not in changes and frac is None and base.budget_tokens is None:
        changes["budget_tokens"] = CacheConfig(policy="full").budget_tokens
    return changes, frac


__all__ = ["parse_spec"]
