"""`kv-vla eval`: closed-loop evaluation of a VLA checkpoint on held-out simulator seeds, per task
and per cache configuration: success rate, episode length, tokens seen / held, KV bytes, step
latency p50/p99. Writes results.json, results.md (a Markdown table) and results.png into --out.

Cache specs: ``POLICY[:field=value,...]`` applied to the model's default cache config, e.g.
``full``, ``window:budget_tokens=300``, ``window:budget_frac=0.25`` (see `kv_vla_ros.cache.spec`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kv_vla_ros.data.errors import cli_errors
from kv_vla_ros.sim.tasks import EVAL_TASKS


def configure(parser: argparse.ArgumentParser) -> None:
    from kv_vla_ros.cache.spec import add_cache_argument
    from kv_vla_ros.parallel.runner import add_runner_arguments

    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped model)")
    parser.add_argument("--tasks", nargs="+", default=EVAL_TASKS)
    parser.add_argument("--episodes", type=int, default=200, help="held-out eval seeds per task")
    add_cache_argument(parser)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="episode step cap, applied only below the env's own limit (a timeout is a failure; "
                             "default: 100 for MiniGrid/BabyAI, an arm task's own cap)")
    parser.add_argument("--seed-offset", type=int, default=0, help="offset into the eval seed range")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="output directory for results.json/.md/.png")
    add_runner_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")


@cli_errors("eval")
def run(args: argparse.Namespace) -> int:
    import torch

    from kv_vla_ros.cache.spec import parse_spec
    from kv_vla_ros.eval.grid import evaluate_grid
    from kv_vla_ros.parallel.runner import runner_config
    from kv_vla_ros.eval.report import markdown_table, plot_results
    from kv_vla_ros.sim import eval_seeds, normalize_task
    from kv_vla_ros.vla import load_policy, model_path_or_default

    torch.set_num_threads(args.threads)
    model_path = model_path_or_default(args.model)
    model = load_policy(model_path)  # by config.json model_type: the package's own VLA or π0
    base = model.default_cache_config()
    specs = args.cache or ["full"]
    parsed = [(spec, *parse_spec(spec, base)) for spec in specs]  # fail fast on a bad spec
    seeds = eval_seeds(args.episodes, args.seed_offset)
    runner = runner_config(args, progress=not args.no_progress)  # a bad --workers fails before any work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tasks = [normalize_task(t) for t in args.tasks]
    rows, how = evaluate_grid(model, model_path, tasks, parsed, seeds, args.max_steps, runner)  # capped per task
    for row in rows:
        if "success_rate" in row:
            memory = (f" decision {row['decision_accuracy']:.1%} cue held {row['cue_held_at_decision']:.1%}"
                      if "decision_accuracy" in row else "")
            print(f"{row['task']:32s} {row['cache_label']:40s} success {row['success_rate']:.1%} "
                  f"seen {row['mean_tokens_seen']:.0f} held {row['mean_tokens_held']:.0f}{memory}", flush=True)
        else:
            print(f"{row['task']:32s} {row['policy']:40s} ERROR {row['error']}", flush=True)
    meta = {"model": model_path, "episodes": args.episodes, "seed_offset": args.seed_offset,
            "max_steps": args.max_steps, "threads": args.threads, **how,
            "wall_s": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "results.md").write_text(table)
    plot_results(rows, out / "results.png")
    print(table)
    return 0


__all__ = ["configure", "run"]
