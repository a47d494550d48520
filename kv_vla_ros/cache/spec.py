"""Cache specs, the one syntax every tool takes for a cache setting (``kv-vla eval``, ``bag eval``,
the benchmarks): ``EVICTION[:field=value,...]`` applied to a checkpoint's cache config, e.g.
``full``, ``window:budget_tokens=300``, ``gated:budget_tokens=400,gate_threshold=0.3``.

``budget_frac=F`` sets ``budget_tokens`` to F x the mean tokens seen by the previous ``full`` run
on the same task or bag (so ``window:budget_frac=0.25`` is "a quarter of the mean history").
Two keys choose what the cache is paired with rather than a cache field: ``gate=untrained``
(``gated`` with a randomly initialised gate instead of the checkpoint's ``gate.safetensors``) and
``layer_budgets=calibrated`` (per-layer budgets from the checkpoint's ``calibration.json``, same
total as the uniform budget). ``history=none`` runs the session on the current frame alone (its
cache emptied before every step: `VLASession`'s ``history=False``); ``no_history`` is short for
``full:history=none``, the true no-history baseline (not ``window:recent_chunks=1``, whose one held
step still carries earlier frames through its keys and values at layers >= 1).

``full`` holds everything: its config says so (no budget, no per-layer budgets, not static) unless
the spec sets them. A spec without a budget keeps the checkpoint's; where the checkpoint has none (``full``), an
eviction that ranks chunks must be given one (``budget_tokens=N`` or ``budget_frac=F``), or its
config is refused naming ``budget_tokens``.
"""

from __future__ import annotations

import argparse

SPEC_HELP = "cache spec EVICTION[:field=value,...], e.g. window:budget_frac=0.25 (no_history: the current frame alone)"
NO_HISTORY = "no_history"


def spec_fields_help() -> str:
    """The fields a spec may set, with their help (from `CacheConfig`'s field metadata)."""
    from kv_vla_ros.cache.config import CacheConfig
    from kv_vla_ros.cache.settings import settings_of

    return "; ".join(f"{info.name} ({info.annotation}): {info.help}" for info in settings_of(CacheConfig))


def add_cache_argument(parser: argparse.ArgumentParser, repeat: bool = True, default_help: str = "full") -> None:
    """``--cache SPEC`` (``args.cache``: a list when ``repeat``, else one spec or None)."""
    help_text = f"{SPEC_HELP} ({'repeatable; ' if repeat else ''}default: {default_help}); fields: {spec_fields_help()}"
    parser.add_argument("--cache", action="append" if repeat else "store", default=None, metavar="SPEC",
                        help=help_text)


def parse_spec(spec: str, base) -> tuple[dict, float | None]:
    """``"window:budget_tokens=300"`` -> (changes for ``base.replace``, budget_frac or None). Values
    are read by each field's type annotation (`kv_vla_ros.cache.settings.parse_setting`)."""
    from kv_vla_ros.cache.config import CacheConfig
    from kv_vla_ros.cache.settings import parse_setting, settings_of

    eviction, _, rest = spec.partition(":")
    if eviction.strip() == NO_HISTORY:
        eviction, rest = "full", f"history=none,{rest}"
    changes: dict = {"eviction": eviction.strip()}
    frac = None
    fields = {info.name: info for info in settings_of(CacheConfig)}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not eq:
            raise ValueError(f"--cache: expected FIELD=VALUE in {spec!r}, got {item!r}")
        if key == "budget_frac":
            frac = float(raw)
            continue
        if key == "gate":
            if raw not in ("untrained", "trained"):
                raise ValueError(f"--cache: gate must be 'trained' or 'untrained' in {spec!r}, got {raw!r}")
            changes["_gate"] = raw
            continue
        if key == "history":
            if raw not in ("none", "all"):
                raise ValueError(f"--cache: history must be 'none' (the current frame alone) or 'all' in {spec!r}, "
                                 f"got {raw!r}")
            if raw == "none":
                changes["_history"] = "none"
            continue
        if key == "layer_budgets" and raw == "calibrated":
            changes["_layer_budgets"] = "calibrated"
            continue
        if key not in fields:
            raise ValueError(f"--cache: unknown cache field {key!r} in {spec!r} (known: {', '.join(fields)})")
        try:
            changes[key] = parse_setting(fields[key], raw)
        except ValueError as exc:
            raise ValueError(f"--cache {spec!r}: {exc}") from None
    from kv_vla_ros.cache.eviction import eviction_class

    if not eviction_class(changes["eviction"]).evicts:  # holds everything: a budget would be reported, never applied
        changes.setdefault("budget_tokens", None)
        changes.setdefault("layer_budgets", None)
        changes.setdefault("static", False)
    return changes, frac


def is_full_history(changes: dict) -> bool:
    """Whether parsed ``changes`` are a ``full`` cache over the whole history (what ``budget_frac``
    is a share of), not the no-history baseline."""
    return changes.get("eviction") == "full" and changes.get("_history") != "none"


__all__ = ["NO_HISTORY", "is_full_history", "parse_spec", "add_cache_argument", "SPEC_HELP"]
