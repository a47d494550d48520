"""Cache specs, the one syntax every tool takes for a cache setting (``kv-vla eval``, ``bag eval``,
the benchmarks): ``EVICTION[:field=value,...]`` applied to a checkpoint's cache config, e.g.
``full``, ``window:budget_tokens=300``, ``gated:budget_tokens=400,gate_threshold=0.3``.

``budget_frac=F`` sets ``budget_tokens`` to F x the mean tokens seen by the previous ``full`` run
on the same task or bag (so ``window:budget_frac=0.25`` is "a quarter of the mean history").
Two keys choose what the cache is paired with rather than a cache field: ``gate=untrained``
(``gated`` with a randomly initialised gate instead of the checkpoint's ``gate.safetensors``) and
``layer_budgets=calibrated`` (per-layer budgets from the checkpoint's ``calibration.json``, same
total as the uniform budget).
"""

from __future__ import annotations

import argparse
import sys

SPEC_HELP = "cache spec EVICTION[:field=value,...], e.g. window:budget_frac=0.25"


class _RenamedFlag(argparse.Action):
    """An old flag name (e.g. ``--policy`` for ``--cache``) that still works for one release, with a
    warning on stderr; ``const`` is ``(new flag, "append" or "store")``."""

    def __call__(self, parser, namespace, values, option_string=None):
        new, mode = self.const
        print(f"{parser.prog}: warning: {option_string} is deprecated: use {new} (the old name goes in the "
              "next release)", file=sys.stderr, flush=True)
        if mode == "append":
            values = (getattr(namespace, self.dest) or []) + [values]
        setattr(namespace, self.dest, values)


def add_renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, dest: str, append: bool = False) -> None:
    """``old`` as a hidden alias of the flag ``new`` (same ``dest``), with a deprecation warning."""
    parser.add_argument(old, dest=dest, action=_RenamedFlag, const=(new, "append" if append else "store"),
                        help=argparse.SUPPRESS)


def add_cache_argument(parser: argparse.ArgumentParser, repeat: bool = True, default_help: str = "full") -> None:
    """``--cache SPEC`` (``args.cache``: a list when ``repeat``, else one spec or None), and its old
    name ``--policy``."""
    help_text = f"{SPEC_HELP} ({'repeatable; ' if repeat else ''}default: {default_help})"
    parser.add_argument("--cache", action="append" if repeat else "store", default=None, metavar="SPEC",
                        help=help_text)
    add_renamed_flag(parser, "--policy", "--cache", "cache", append=repeat)


def parse_spec(spec: str, base) -> tuple[dict, float | None]:
    """``"window:budget_tokens=300"`` -> (changes for ``base.replace``, budget_frac or None)."""
    from kv_vla_ros.cache.config import CacheConfig, field_names

    eviction, _, rest = spec.partition(":")
    changes: dict = {"eviction": eviction.strip()}
    frac = None
    types = {f: type(getattr(base, f)) for f in field_names()}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"--cache: expected FIELD=VALUE in {spec!r}, got {item!r}")
        if key == "budget_frac":
            frac = float(raw)
            continue
        if key == "gate":
            if raw.strip() not in ("untrained", "trained"):
                raise ValueError(f"--cache: gate must be 'trained' or 'untrained' in {spec!r}, got {raw!r}")
            changes["_gate"] = raw.strip()
            continue
        if key == "layer_budgets" and raw.strip() == "calibrated":
            changes["_layer_budgets"] = "calibrated"
            continue
        if key not in types:
            raise ValueError(f"--cache: unknown cache field {key!r} in {spec!r} (known: {', '.join(types)})")
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
    if changes["eviction"] != "full" and "budget_tokens" not in changes and frac is None and base.budget_tokens is None:
        changes["budget_tokens"] = CacheConfig(eviction="full").budget_tokens
    return changes, frac


__all__ = ["parse_spec", "add_cache_argument", "add_renamed_flag", "SPEC_HELP"]
