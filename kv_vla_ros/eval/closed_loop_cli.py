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
from kv_vla_ros.vla.action_queue import MERGE_RULES


def threshold_arg(text: str) -> float | None:
    """``--action-chunk-threshold``: a share in [0, 1], or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or auto, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


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
    parser.add_argument("--inference-delay-steps", type=int, nargs="+", default=[0], metavar="D",
                        help="control steps from an inference's observation to its action chunk, in simulated time "
                             "(the world keeps stepping while the model thinks; a list: a sweep); 0: the world waits")
    parser.add_argument("--action-chunk-merge", nargs="+", default=["replace"], choices=MERGE_RULES, metavar="RULE",
                        help="how a late chunk merges with the queued actions, as kv_vla_node's action_chunk_merge: "
                             f"{', '.join(MERGE_RULES)} (rtc: real-time chunking, flow policies; a list: a sweep)")
    parser.add_argument("--action-chunk-threshold", default="0", type=threshold_arg,
                        help="kv_vla_node's action_chunk_threshold (0-1), or auto: RTC's schedule, start each "
                             "inference with D actions queued and execute the checkpoint's actions_per_inference "
                             "rows after the D it overtakes (the node with actions_per_inference n + D, threshold "
                             "D / (n + D)): an inference every n steps as without delay")
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
    if any(d < 0 for d in args.inference_delay_steps):
        raise ValueError(f"--inference-delay-steps: must be >= 0, got {args.inference_delay_steps}")
    regimes = [(d, merge, args.action_chunk_threshold) for merge in dict.fromkeys(args.action_chunk_merge)
               for d in dict.fromkeys(args.inference_delay_steps)]
    rows, how = evaluate_grid(model, model_path, tasks, parsed, seeds, args.max_steps, runner,  # capped per task
                              regimes)
    for row in rows:
        if "success_rate" in row:
            memory = (f" decision {row['decision_accuracy']:.1%} cue held {row['cue_held_at_decision']:.1%}"
                      if "decision_accuracy" in row else "")
            print(f"{row['task']:32s} {row['cache_label']:40s} success {row['success_rate']:.1%} "
                  f"seen {row['mean_tokens_seen']:.0f} held {row['mean_tokens_held']:.0f}{memory}", flush=True)
        else:
            print(f"{row['task']:32s} {row['policy']:40s} ERROR {row['error']}", flush=True)
    meta = {"model": model_path, "episodes": args.episodes, "seed_offset": args.seed_offset,
            "inference_delay_steps": args.inference_delay_steps, "action_chunk_merge": args.action_chunk_merge,
            "action_chunk_threshold": "auto" if args.action_chunk_threshold is None else args.action_chunk_threshold,
            "max_steps": args.max_steps, "threads": args.threads, **how,
            "wall_s": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "results.md").write_text(table)
    plot_results(rows, out / "results.png")
    print(table)
    if len(regimes) > 1 or regimes[0][:2] != (0, "replace"):  # the latency sweep's own table and plot
        from kv_vla_ros.eval.latency_report import latency_table, plot_latency

        (out / "latency.md").write_text(latency_table(rows))
        plot_latency(rows, out / "latency.png")
        print(latency_table(rows))
    return 0


__all__ = ["configure", "run"]
