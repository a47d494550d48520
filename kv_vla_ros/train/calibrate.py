"""`kv-vla calibrate`: per-layer attention selectivity on a few rollouts (ScaleKV) and the
per-layer budgets it implies: layers whose frames attend far into history ("drafters") get large
budgets, layers that look at the current step ("refiners") small ones, with the same total as a
uniform budget. Writes `calibration.json` and the budgets into the checkpoint's cache config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kv_vla_ros.cache.budgets import CALIBRATION_FILE, budgets_for


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.parallel.runner import add_runner_arguments
    from kv_vla_ros.vla import DEFAULT_MODEL_PATH

    parser.add_argument("--model", default=str(DEFAULT_MODEL_PATH), help="VLA checkpoint directory")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to roll out (default: the eval tasks)")
    parser.add_argument("--episodes", type=int, default=8, help="rollouts per task (default 8)")
    parser.add_argument("--budget-tokens", type=int, default=None,
                        help="uniform per-layer budget whose total is redistributed (default: the checkpoint's)")
    parser.add_argument("--seed-offset", type=int, default=600_000, help="first train seed of the rollouts")
    parser.add_argument("--dry-run", action="store_true", help="print the budgets, write nothing")
    add_runner_arguments(parser)


def write_calibration(model_dir: Path, dispersion: list[float], budgets: list[int], budget_tokens: int) -> None:
    """``calibration.json`` (dispersion, for any budget) and ``config.json``'s ``cache.layer_budgets``."""
    (model_dir / CALIBRATION_FILE).write_text(json.dumps(
        {"dispersion": dispersion, "budget_tokens": budget_tokens, "layer_budgets": budgets}, indent=1) + "\n")
    config_path = model_dir / "config.json"
    meta = json.loads(config_path.read_text())
    meta.setdefault("cache", {})
    meta["cache"]["budget_tokens"] = budget_tokens
    meta["cache"]["layer_budgets"] = budgets
    tmp = config_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(config_path)  # never leave a half-written config.json


def run(args: argparse.Namespace) -> int:
    from kv_vla_ros.parallel.runner import runner_config
    from kv_vla_ros.sim.tasks import EVAL_TASKS
    from kv_vla_ros.train.gate_data import layer_dispersion
    from kv_vla_ros.train.gate_train import collect
    from kv_vla_ros.vla import VLAModel

    if args.episodes < 1:
        raise SystemExit("kv-vla calibrate: --episodes must be >= 1")
    torch.set_num_threads(2)
    try:
        model = VLAModel.from_pretrained(args.model)
        cache_cfg = model.config.cache
        budget = args.budget_tokens or cache_cfg.budget_tokens
        if budget is None:
            raise ValueError("budget_tokens: the checkpoint's cache has no budget; pass --budget-tokens")
        cache_cfg.replace(budget_tokens=budget, layer_budgets=None)  # validates the budget
        items = collect(model, args.tasks or EVAL_TASKS, args.episodes, args.seed_offset,
                        runner=runner_config(args), model_path=args.model)
        dispersion = layer_dispersion(items)
        budgets = budgets_for(dispersion, cache_cfg, budget)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"kv-vla calibrate: {exc}") from None
    print("layer  history-share  budget")
    for i, (d, b) in enumerate(zip(dispersion, budgets)):
        print(f"{i:5d}  {d:13.3f}  {b:6d}")
    print(f"total {sum(budgets)} tokens (uniform: {len(budgets)} x {budget} = {len(budgets) * budget})")
    if not args.dry_run:
        write_calibration(Path(args.model), dispersion, budgets, budget)
        print(f"wrote {Path(args.model) / CALIBRATION_FILE} and cache.layer_budgets in config.json")
    return 0
